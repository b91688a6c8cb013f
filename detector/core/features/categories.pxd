import cython

cdef class Categories:
    cdef public dict counts
    cdef public object once  # array('Q'): read through a typed memoryview in find()
    cdef public long long n
    cdef public bint saturated
    cpdef long long count(self, str value)
    @cython.locals(count=cython.longlong, c=cython.longlong, below=cython.longlong, p=cython.double)
    cpdef double surprise(self, str value, double prior, double burst=*, long long min_count=*)
    cpdef bint is_new(self, str value, long long min_count)
    @cython.locals(count=object, i=Py_ssize_t)
    cpdef void update(self, str value, long long cap)

cdef class Novelties:
    cdef public dict recent
    @cython.locals(count=cython.double, last_ms=cython.longlong)
    cpdef double burst(self, str key, long long t_ms, double burst_ms)
    cpdef void note(self, str key, long long t_ms, double burst_ms)

@cython.locals(view="unsigned long long[:]", i=Py_ssize_t)
cpdef Py_ssize_t find(object once, unsigned long long fp)
