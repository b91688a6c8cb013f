from detector.core.events cimport Event
from detector.core.features.categories cimport Pool, Vocab
from detector.core.features.drift cimport DriftFeature
from detector.core.features.feature cimport Feature
from detector.core.features.rate cimport RateFeature
from detector.core.features.types cimport TypeFeature
from detector.core.features.value cimport ValueFeature

import cython

cdef class Levels:
    cdef public Vocab keys
    cdef public Pool pool
    cdef public int[:] key, start, size, used
    cdef public double[:] level, var
    @cython.locals(start=Py_ssize_t, i=Py_ssize_t)
    cpdef void reset(self, Py_ssize_t slot)
    @cython.locals(kid=object, start=Py_ssize_t, i=Py_ssize_t)
    cpdef Py_ssize_t find(self, Py_ssize_t slot, str key)
    @cython.locals(i=Py_ssize_t)
    cpdef object get(self, Py_ssize_t slot, str key)
    @cython.locals(i=Py_ssize_t, j=Py_ssize_t, end=Py_ssize_t)
    cpdef object pop(self, Py_ssize_t slot, str key)
    @cython.locals(i=Py_ssize_t)
    cpdef void put(self, Py_ssize_t slot, str key, double level, double var)

cdef class PeerFeature(Feature):
    cdef public TypeFeature types
    cdef public RateFeature rate
    cdef public ValueFeature value
    cdef public DriftFeature drift
    # Per-slot columns (lists; a base's tables give them back as it wrote them).
    cdef public object kind, flags, gap, rate_ref, rate_ref_ms
    cdef public Levels levels
    cdef public dict local, remote
    cdef public bint overflowed, changed
    cdef public Py_ssize_t _overflow_slot
    cdef public list _globs, _regexes, _glob
    cpdef void reset(self, Py_ssize_t slot)
    cpdef double judge(self, Py_ssize_t slot, Event event) except? -1
    cpdef object explain(self, Py_ssize_t slot, Event event)
    cpdef object decisive(self, Py_ssize_t slot, Event event)
    cpdef void advance(self, Py_ssize_t slot, Event event)
