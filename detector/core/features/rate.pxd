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
