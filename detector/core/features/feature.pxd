from detector.core.events cimport Event
from detector.core.features.clock cimport Clock

# The per-event methods are C calls (a feature's own .pxd overrides them as cpdef); the rest
# (checkpoints, views) stay Python methods.
cdef class Feature:
    cdef public object cfg
    cdef public Clock clock
    cdef public list slots
    cdef public bint on
    cpdef object new(self)
    cpdef void reset(self, Py_ssize_t slot)
    cpdef double judge(self, Py_ssize_t slot, Event event) except? -1
    cpdef object explain(self, Py_ssize_t slot, Event event)
    cpdef object decisive(self, Py_ssize_t slot, Event event)
    cpdef void advance(self, Py_ssize_t slot, Event event)
    cpdef void learn(self, Py_ssize_t slot, Event event)
    cpdef void skip(self, long long gap_ms)
