# libm for the .py's math.sqrt (see surprise.pxd)
from libc cimport math

cdef class Moments:
    cdef public long long count
    cdef public double fading, mean, sq
    cpdef void update(self, double x)
    cpdef double z(self, double x, double min_sd)
