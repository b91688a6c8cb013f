import cython
# libm for the .py's math.log1p (see surprise.pxd)
from libc cimport math

from detector.core.features.moments cimport MomentsTable

cdef class Clock:
    cdef public double gap_fading
    cdef public MomentsTable gap
    cdef public object n, last_ms, seq, silenced
    cdef long long[:] _n, _last_ms
    cdef signed char[:] _silenced

    @cython.locals(last=cython.longlong, gap=double, a=double)
    cpdef double next_gap(self, Py_ssize_t slot, long long t_ms)

    @cython.locals(last=cython.longlong)
    cpdef void advance(self, Py_ssize_t slot, long long t_ms)

    @cython.locals(last=cython.longlong[:], slot=Py_ssize_t)
    cpdef void skip(self, long long gap_ms)
