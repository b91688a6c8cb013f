import cython
# libm for the .py's math.sqrt and math.expm1 (see surprise.pxd)
from libc cimport math

from detector.core.features.surprise cimport signed_log, type_prefix

cdef class Drift:
    cdef public long long count, first_ms, last_ms
    cdef public double mean, var, hi, lo
    cpdef double z(self, double y, double min_sd)
    cpdef double clipped_z(self, double y, double min_sd, double clip)
    cpdef double statistic(self, double y, double k, double min_sd, double clip)
    cpdef double statistic_of(self, double z, double k)
    cpdef void step(self, double y, double k, double min_sd, double clip)
    cpdef void step_by(self, double z, double k)
    @cython.locals(dt=cython.longlong, covered=double, w=double, d=double)
    cpdef void learn(self, double y, long long t_ms, double horizon_ms, double restart)

@cython.locals(d=Drift, x=double, z=double, s=double, best=double)
cpdef tuple best_drift(dict drifts, str prefix, dict numbers, long long min_count, double min_sd, double clip, double k)

@cython.locals(d=Drift, x=double)
cpdef void step_drifts(dict drifts, str prefix, dict numbers, long long min_count, double min_sd, double clip, double k)

@cython.locals(d=Drift, x=double)
cpdef void learn_drifts(dict drifts, dict numeric, str prefix, dict numbers, long long t_ms, double horizon_ms, double restart)
