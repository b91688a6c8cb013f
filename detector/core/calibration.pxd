import cython

# A producer's histogram as C fields: every event reads its count and sums its low bins.
cdef class TailCounts:
    cdef public long long bins, n
    cdef public object counts

@cython.locals(counts="long long[:]", below=cython.longlong, i=Py_ssize_t)
cpdef long long counted_from(TailCounts tc, Py_ssize_t b)
