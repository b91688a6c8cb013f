# libm for the .py's math.log (see surprise.pxd)
from libc cimport math

from detector.core.features.moments cimport MomentsTable
from detector.core.features.surprise cimport two_sided

cpdef double size_surprise(MomentsTable m, Py_ssize_t row, long long size_bytes, long long min_count, double min_sd)

from detector.core.events cimport Event
from detector.core.features.feature cimport Feature

cdef class SizeFeature(Feature):
    cdef public MomentsTable moments
    cpdef void reset(self, Py_ssize_t slot)
    cpdef double judge(self, Py_ssize_t slot, Event event) except? -1
    cpdef object explain(self, Py_ssize_t slot, Event event)
    cpdef void learn(self, Py_ssize_t slot, Event event)
