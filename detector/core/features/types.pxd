from detector.core.events cimport Event
from detector.core.features.categories cimport Counts, Novelty
from detector.core.features.feature cimport Feature

cdef class TypeFeature(Feature):
    cdef public Counts counts
    cdef public Novelty novel
    cdef public object adoption
    cdef public bint track_first
    cdef public Py_ssize_t first_slot, _counted
    cpdef void reset(self, Py_ssize_t slot)
    cpdef double judge(self, Py_ssize_t slot, Event event) except? -1
    cpdef object explain(self, Py_ssize_t slot, Event event)
    cpdef object decisive(self, Py_ssize_t slot, Event event)
    cpdef void advance(self, Py_ssize_t slot, Event event)
    cpdef void learn(self, Py_ssize_t slot, Event event)
