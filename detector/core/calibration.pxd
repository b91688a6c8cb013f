import cython

# A producer's histogram as C fields: every event reads its count and sums its low bins.
cdef long long MAX_COUNT

cdef class TailCounts:
    cdef public long long bins, n
    cdef public object counts

@cython.locals(counts="int[:]", below=cython.longlong, i=Py_ssize_t)
cpdef long long counted_from(TailCounts tc, Py_ssize_t b)

@cython.locals(counts="int[:]", above=cython.longlong, j=Py_ssize_t, i=Py_ssize_t, end=Py_ssize_t, total=cython.longlong, excess=double, u=double, scale=double)
cpdef double fitted_tail(TailCounts tc, double raw, double width, Py_ssize_t bins, long long tail_points, double min_excess)

cdef class Calibrator:
    cdef public double max_raw, width, min_excess
    cdef public Py_ssize_t bins
    cdef public long long tail_points
    cpdef TailCounts new(self)
    @cython.locals(x=double)
    cpdef Py_ssize_t _bin(self, double raw) except? -1
    @cython.locals(b=Py_ssize_t)
    cpdef void learn(self, TailCounts tc, double raw)
    @cython.locals(b=Py_ssize_t, at_or_above=cython.longlong)
    cpdef double tail(self, TailCounts tc, double raw)
    cpdef double score(self, TailCounts tc, double raw)
