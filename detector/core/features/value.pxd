import cython
# libm for the .py's math.f on C doubles (see surprise.pxd)
from libc cimport math

from detector.core.features.moments cimport MomentsTable
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

cdef class Keys:
    cdef public dict ids, by_type
    cdef public list names

# The columns are arrays (Python attributes: dump, views); the per-event methods index typed
# memoryviews of them.
cdef class FieldRows:
    cdef public object cfg
    cdef public Keys keys
    cdef public MomentsTable moments
    cdef public list attached, seasonal, windows
    cdef public object key, next, head, tail, fields, profiles, windowed
    cdef int[:] _key, _next, _head, _tail, _fields, _profiles, _windowed
    cdef public Py_ssize_t used, free, cap, profiled_cap, buckets, window_values
    cdef public long long min_count
    cdef public double min_sd
    cdef public bint profiled

    @cython.locals(row=Py_ssize_t, after=Py_ssize_t)
    cpdef void reset(self, Py_ssize_t slot)
    @cython.locals(row=Py_ssize_t)
    cpdef Py_ssize_t find(self, Py_ssize_t slot, Py_ssize_t kid)
    @cython.locals(row=Py_ssize_t, last=Py_ssize_t)
    cpdef Py_ssize_t add(self, Py_ssize_t slot, Py_ssize_t kid)
    @cython.locals(known=dict, moments=MomentsTable, row=Py_ssize_t, x=double, y=double, s=double,
                   best=double, best_x=double, profiled=cython.bint)
    cpdef tuple best(self, Py_ssize_t slot, object etype, dict numbers, long long b)
    @cython.locals(ss=double, ws=double)
    cpdef tuple judge_profiles(self, Py_ssize_t row, double y, long long b, double s, str source)
    @cython.locals(known=dict, row=Py_ssize_t, x=double, y=double)
    cpdef void learn(self, Py_ssize_t slot, object etype, dict numbers, long long b)
    cpdef void learn_profiles(self, Py_ssize_t slot, Py_ssize_t row, double y, long long b)

from detector.core.events cimport Event
from detector.core.features.feature cimport Feature

cdef class ValueFeature(Feature):
    cdef public FieldRows rows
    cpdef void reset(self, Py_ssize_t slot)
    cpdef double judge(self, Py_ssize_t slot, Event event) except? -1
    cpdef object explain(self, Py_ssize_t slot, Event event)
    cpdef void learn(self, Py_ssize_t slot, Event event)
