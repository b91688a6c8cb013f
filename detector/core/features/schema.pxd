from detector.core.events cimport Event
from detector.core.features.categories cimport Counts, Novelty, Vocab
from detector.core.features.feature cimport Feature

cdef class SchemaFeature(Feature):
    cdef public Counts counts
    cdef public Vocab shapes
    cdef public Novelty novel
    cdef public list names, fields
    cdef public object adoption
    cpdef void reset(self, Py_ssize_t slot)
    cpdef double judge(self, Py_ssize_t slot, Event event) except? -1
    cpdef object explain(self, Py_ssize_t slot, Event event)
    cpdef void advance(self, Py_ssize_t slot, Event event)
    cpdef void learn(self, Py_ssize_t slot, Event event)
