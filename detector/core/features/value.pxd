import cython
# libm for the .py's math.f on C doubles (see surprise.pxd)
from libc cimport math

from detector.core.features.moments cimport Moments
from detector.core.features.surprise cimport signed_log, two_sided, type_prefix

# The arrays stay numpy objects (checkpoints, the window's numpy judgement); the methods run
# per event on typed memoryviews of them.
cdef class Seasonal:
    cdef public object count, mean, var
    @cython.locals(count="long long[:]", mean="double[:]", var="double[:]", d=double, inc=double)
    cpdef void update(self, Py_ssize_t b, double x, double fading)
    cpdef double sd(self, Py_ssize_t b, double min_sd)
    cpdef double z(self, Py_ssize_t b, double x, double min_sd)

cdef class ValueWindow:
    cdef public object values
    cdef public long long n, pos
    @cython.locals(values="double[:]")
    cpdef void update(self, double x)

@cython.locals(numeric=dict, m=Moments, x=double, y=double, s=double, best=double, best_x=double,
               min_count=cython.longlong, min_sd=double, profiled=cython.bint)
cpdef tuple best_value(object f, str prefix, dict numbers, long long b, object cfg)

@cython.locals(ss=double, ws=double)
cpdef tuple judge_profiles(object f, str key, double y, long long b, double s, str source, object cfg)

@cython.locals(numeric=dict, m=Moments, x=double, y=double, fading=double, cap=Py_ssize_t,
               profiles=cython.bint)
cpdef void learn_values(object f, str prefix, dict numbers, long long b, object cfg)

cpdef void learn_profiles(object f, str key, double y, long long b, object cfg)
