import cython
# libm for the .py's math.log1p (see surprise.pxd)
from libc cimport math

from detector.core.features.moments cimport Moments

cdef class Clock:
    cdef public double gap_fading
    cdef public list n, last_ms, gap, silenced, seq

    @cython.locals(last=cython.longlong, moments=Moments, gap=double, a=double)
    cpdef double next_gap(self, Py_ssize_t slot, long long t_ms)

    @cython.locals(last=cython.longlong, moments=Moments)
    cpdef void advance(self, Py_ssize_t slot, long long t_ms)
