import cython
# libm for the .py's math.sqrt (see surprise.pxd)
from libc cimport math

from detector.core.codec cimport Writer

# The columns are arrays (Python attributes: dump, views); the per-event methods index typed
# memoryviews of them.
cdef long long MAX_COUNT

cdef class MomentsTable:
    cdef public double fading
    cdef public object count, mean, sq
    cdef int[:] _count
    cdef double[:] _mean, _sq
    cpdef void reserve(self, Py_ssize_t rows)
    cpdef void clear(self, Py_ssize_t row)
    @cython.locals(a=double)
    cpdef void update(self, Py_ssize_t row, double x)
    @cython.locals(m=double)
    cpdef double var(self, Py_ssize_t row)
    @cython.locals(m=double, sd=double)
    cpdef double z(self, Py_ssize_t row, double x, double min_sd)
    cpdef void dump(self, Py_ssize_t row, Writer w)
