import cython
# libm for the .py's math.exp and math.log10 on C doubles (see surprise.pxd)
from libc cimport math

# The window's arrays stay numpy objects (records, growth); the per-event methods probe and
# write typed memoryviews of them: the table's linear probing is C loops.
cdef class IdWindow:
    cdef public long long horizon_ms, max_ids, head, count, newest_ms, _fresh
    cdef public bint changed
    cdef public object fps, times, table
    cdef unsigned long long[::1] _fv
    cdef long long[::1] _tv
    cdef unsigned int[::1] _table
    cdef Py_ssize_t _ring_mask, _mask
    cpdef bint seen(self, unsigned long long fp)
    @cython.locals(repeat=bint, limit=cython.longlong, i=Py_ssize_t, tv="long long[::1]")
    cpdef bint remember(self, unsigned long long fp, long long t_ms)
    @cython.locals(i=Py_ssize_t, x=cython.uint, mask=Py_ssize_t, table="unsigned int[::1]", fv="unsigned long long[::1]")
    cpdef Py_ssize_t _find(self, unsigned long long fp)
    @cython.locals(i=Py_ssize_t, mask=Py_ssize_t, table="unsigned int[::1]")
    cpdef void _insert(self, unsigned long long fp, Py_ssize_t at)
    @cython.locals(i=Py_ssize_t, j=Py_ssize_t, x=cython.uint, mask=Py_ssize_t, table="unsigned int[::1]", fv="unsigned long long[::1]")
    cpdef void _forget_oldest(self)

cdef class IdCounts:
    cdef public long long events, repeats, last_ms
    cdef public double recent
    cdef public bint repeated

# Each slot's repeats as columns (the .py's arrays, and typed views of them for the per-event
# methods).
cdef class IdTable:
    cdef public object events, repeats, recent, last_ms, repeated
    cdef public Py_ssize_t rows
    cdef long long[:] _events, _repeats, _last_ms
    cdef double[:] _recent
    cdef signed char[:] _repeated
    cpdef void reserve(self, Py_ssize_t rows)
    cpdef void clear(self, Py_ssize_t row)
    cpdef void note(self, Py_ssize_t row, bint repeat, long long t_ms, double burst_ms)
    cpdef void learn(self, Py_ssize_t row)
    @cython.locals(events=cython.longlong, one=double, burst=double)
    cpdef double surprise(self, Py_ssize_t row, double prior, long long t_ms, double burst_ms)

from detector.core.events cimport Event
from detector.core.fingerprints cimport pair_fingerprint
from detector.core.features.feature cimport Feature

cdef class ReplayFeature(Feature):
    cdef public IdWindow window
    cdef public IdTable table
    cdef str _last_producer, _last_id
    cdef unsigned long long _last_fp
    # C calls from judge, explain and advance (they were Python method calls: 1.7k
    # instructions per event more, by callgrind).
    cdef unsigned long long _fingerprint(self, str producer, str event_id) except? 0
    @cython.locals(window=IdWindow)
    cdef object _repeat(self, Event event)
    cpdef object new(self)
    cpdef void reset(self, Py_ssize_t slot)
    cpdef double judge(self, Py_ssize_t slot, Event event) except? -1
    cpdef object explain(self, Py_ssize_t slot, Event event)
    cpdef void advance(self, Py_ssize_t slot, Event event)
    cpdef void learn(self, Py_ssize_t slot, Event event)
