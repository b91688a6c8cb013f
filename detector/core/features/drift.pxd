import cython
# libm for the .py's math.sqrt and math.expm1 (see surprise.pxd)
from libc cimport math

from detector.core.codec cimport Writer
from detector.core.features.surprise cimport signed_log
from detector.core.features.value cimport FieldRows

# The columns are arrays (Python attributes: dump, views); the per-event methods index typed
# memoryviews of them.
cdef long long MAX_COUNT

cdef class DriftTable:
    cdef public object count, first_ms, last_ms, mean, var, hi, lo, seen
    cdef int[:] _count
    cdef long long[:] _first_ms, _last_ms
    cdef double[:] _mean, _var, _hi, _lo
    cdef signed char[:] _seen
    cpdef void reserve(self, Py_ssize_t rows)
    cpdef void clear(self, Py_ssize_t row)
    @cython.locals(first=cython.longlong[:], last=cython.longlong[:], row=Py_ssize_t)
    cpdef void skip(self, long long gap_ms)
    cpdef long long covered_ms(self, Py_ssize_t row)
    cpdef double z(self, Py_ssize_t row, double y, double min_sd)
    @cython.locals(z=double)
    cpdef double clipped_z(self, Py_ssize_t row, double y, double min_sd, double clip)
    cpdef double statistic_of(self, Py_ssize_t row, double z, double k)
    cpdef void step_by(self, Py_ssize_t row, double z, double k)
    @cython.locals(count=cython.longlong, last=cython.longlong, dt=cython.longlong, covered=double, w=double, d=double, mean=double)
    cpdef void learn(self, Py_ssize_t row, double y, long long t_ms, double horizon_ms, double restart)
    cpdef void dump(self, Py_ssize_t row, Writer w)

@cython.locals(known=dict, row=Py_ssize_t, x=double, z=double, s=double, best=double)
cpdef tuple best_drift(FieldRows rows, DriftTable drifts, Py_ssize_t slot, object etype, dict numbers, long long min_count, double min_sd, double clip, double k)

@cython.locals(row=Py_ssize_t)
cpdef Py_ssize_t drift_row(FieldRows rows, DriftTable drifts, Py_ssize_t slot, object kid, long long min_count)

@cython.locals(known=dict, row=Py_ssize_t, x=double)
cpdef void step_drifts(FieldRows rows, DriftTable drifts, Py_ssize_t slot, object etype, dict numbers, long long min_count, double min_sd, double clip, double k)

@cython.locals(known=dict, row=Py_ssize_t, x=double)
cpdef void learn_drifts(FieldRows rows, DriftTable drifts, Py_ssize_t slot, object etype, dict numbers, long long t_ms, double horizon_ms, double restart)

from detector.core.events cimport Event
from detector.core.features.feature cimport Feature
from detector.core.features.value cimport ValueFeature

cdef class DriftFeature(Feature):
    cdef public DriftTable drifts
    cdef public ValueFeature value
    cpdef void reset(self, Py_ssize_t slot)
    cpdef void skip(self, long long gap_ms)
    cpdef double judge(self, Py_ssize_t slot, Event event) except? -1
    cpdef object explain(self, Py_ssize_t slot, Event event)
    cpdef void advance(self, Py_ssize_t slot, Event event)
    cpdef void learn(self, Py_ssize_t slot, Event event)
