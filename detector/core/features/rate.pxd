import cython
# libm for the .py's math.f (see surprise.pxd); math.inf stays Python's
from libc cimport math

from detector.core.features.clock cimport Clock
from detector.core.features.drift cimport DriftTable
from detector.core.features.moments cimport MomentsTable
from detector.core.features.surprise cimport two_sided

cdef double _HALF

@cython.locals(count=cython.longlong, smoothed=double, z=double, s=double)
cpdef tuple rate_surprise(MomentsTable moments, DriftTable drifts, Clock clock, Py_ssize_t slot, long long t_ms, long long min_count, double min_sd)

@cython.locals(gap=double)
cpdef void learn_rate(MomentsTable moments, DriftTable drifts, Clock clock, Py_ssize_t slot, long long t_ms, double horizon_ms)

from detector.core.events cimport Event
from detector.core.features.feature cimport Feature

cdef class RateFeature(Feature):
    cdef public MomentsTable moments
    cdef public DriftTable drifts
    cdef public object events
    cpdef void reset(self, Py_ssize_t slot)
    cpdef void skip(self, long long gap_ms)
    cpdef double judge(self, Py_ssize_t slot, Event event) except? -1
    cpdef object explain(self, Py_ssize_t slot, Event event)
    cpdef void learn(self, Py_ssize_t slot, Event event)
