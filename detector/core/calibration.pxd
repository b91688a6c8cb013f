import cython

from detector.core.features.categories cimport Pool

# The histograms as typed columns of C ints: every event reads a slot's count and sums its
# low bins.
cdef long long MAX_COUNT

cdef class TailCounts:
    cdef public long long bins, n
    cdef public object counts

cdef class Tails:
    cdef public Py_ssize_t nbins, slots
    cdef public Pool pool
    cdef public int[:] counts, start, size, used, n
    cpdef void reset(self, Py_ssize_t slot)
    cpdef void new(self, Py_ssize_t slot)
    cpdef void grow(self, Py_ssize_t slot, Py_ssize_t used)
    @cython.locals(start=Py_ssize_t, i=Py_ssize_t)
    cpdef void put(self, Py_ssize_t slot, TailCounts tc)

@cython.locals(below=cython.longlong, i=Py_ssize_t)
cpdef long long counted_from(int[:] counts, Py_ssize_t start, Py_ssize_t used, long long n, Py_ssize_t b)

@cython.locals(above=cython.longlong, j=Py_ssize_t, i=Py_ssize_t, end=Py_ssize_t, total=cython.longlong, excess=double, u=double, scale=double)
cpdef double fitted_tail(int[:] counts, Py_ssize_t start, Py_ssize_t used, long long n, double raw, double width, Py_ssize_t bins, long long tail_points, double min_excess)

cdef class Calibrator:
    cdef public double max_raw, width, min_excess
    cdef public Py_ssize_t bins
    cdef public long long tail_points
    cpdef TailCounts new(self)
    @cython.locals(x=double)
    cpdef Py_ssize_t _bin(self, double raw) except? -1
    @cython.locals(b=Py_ssize_t)
    cpdef void learn(self, TailCounts tc, double raw)
    @cython.locals(b=Py_ssize_t)
    cpdef void learn_at(self, Tails tails, Py_ssize_t slot, double raw)
    @cython.locals(b=Py_ssize_t, at_or_above=cython.longlong)
    cpdef double _tail(self, int[:] counts, Py_ssize_t start, Py_ssize_t used, long long n, double raw)
    cpdef double tail(self, TailCounts tc, double raw)
    cpdef double score(self, TailCounts tc, double raw)
    cpdef double score_at(self, Tails tails, Py_ssize_t slot, double raw)
