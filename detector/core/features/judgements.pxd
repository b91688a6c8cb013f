import cython

# The rows are arrays (Python attributes); the per-event methods index typed memoryviews.
cdef Py_ssize_t _WIDTH

cdef class Judgements:
    cdef public object surprise, history, slot, events
    cdef double[:] _surprise
    cdef long long[:] _history, _slot
    cpdef void _bind(self)
    cpdef void start(self, object events)
    cpdef void reserve(self, Py_ssize_t n)
    @cython.locals(base=Py_ssize_t, k=Py_ssize_t)
    cpdef void clear(self, Py_ssize_t i, Py_ssize_t slot, long long history)
    cpdef void put(self, Py_ssize_t i, Py_ssize_t feature, double surprise)
    cpdef double get(self, Py_ssize_t i, Py_ssize_t feature)
    @cython.locals(base=Py_ssize_t, k=Py_ssize_t, top=double, s=double)
    cpdef double largest(self, Py_ssize_t i)
