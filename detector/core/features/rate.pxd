import cython
# libm for the .py's math.f (see surprise.pxd); math.inf stays Python's
from libc cimport math

from detector.core.features.clock cimport Clock
from detector.core.features.drift cimport Drift
from detector.core.features.moments cimport Moments
from detector.core.features.surprise cimport two_sided

cdef double _HALF

@cython.locals(smoothed=double, z=double, s=double)
cpdef tuple rate_surprise(object usual, Clock clock, Py_ssize_t slot, long long t_ms, long long min_count, double min_sd)

@cython.locals(gap=Moments, timed=Drift, moments=Moments)
cpdef void learn_rate(object usual, Clock clock, Py_ssize_t slot, long long t_ms, double horizon_ms)
