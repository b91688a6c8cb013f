import cython
# libm for the .py's math.exp (see surprise.pxd)
from libc cimport math

from detector.core.codec cimport Writer
from detector.core.features.categories cimport Counts, Pool, Vocab, regrow
from detector.core.features.surprise cimport type_prefix

cdef class Fields:
    cdef public Counts counts
    cdef public Vocab keys
    cdef public dict by_type
    cdef public list pairs
    cdef public Pool pool, npool
    cdef public Vocab names
    cdef public int[:] key, row, start, size, used, name, nstart, nsize, nused
    cdef public long long[:] last_ms
    cdef public double[:] recent

    @cython.locals(size=Py_ssize_t, start=Py_ssize_t, i=Py_ssize_t)
    cpdef void reset(self, Py_ssize_t slot)
    @cython.locals(kid=Py_ssize_t)
    cpdef int hold(self, str key)
    @cython.locals(names=dict, kid=object, found=object)
    cpdef int kid_of(self, object etype, str name)
    @cython.locals(names=dict)
    cpdef void _release_key(self, Py_ssize_t kid)
    @cython.locals(i=Py_ssize_t)
    cpdef void add(self, Py_ssize_t slot, int kid, int row)
    cdef void _grow(self, Py_ssize_t slot, Py_ssize_t size)
    @cython.locals(start=Py_ssize_t, i=Py_ssize_t)
    cpdef Py_ssize_t find(self, Py_ssize_t slot, int kid)
    @cython.locals(nid=object, start=Py_ssize_t, i=Py_ssize_t)
    cpdef Py_ssize_t _find_name(self, Py_ssize_t slot, str name)
    @cython.locals(i=Py_ssize_t)
    cpdef double burst(self, Py_ssize_t slot, str name, long long t_ms, double burst_ms)
    cpdef void note(self, Py_ssize_t slot, str name, long long t_ms, double burst_ms)
    @cython.locals(i=Py_ssize_t)
    cpdef void set_novelty(self, Py_ssize_t slot, str name, double recent, long long last_ms)
    cdef void _grow_novel(self, Py_ssize_t slot, Py_ssize_t size)
    @cython.locals(start=Py_ssize_t, used=Py_ssize_t, i=Py_ssize_t)
    cpdef void dump(self, Py_ssize_t slot, Writer w)

@cython.locals(counts=Counts, kid=int, i=Py_ssize_t, row=int, s=double, best=double, burst=double, bursts=cython.bint, best_row=int)
cpdef tuple best_category(Fields f, Py_ssize_t slot, object etype, dict strings, long long t_ms, double burst_ms, double prior, long long min_count)

@cython.locals(counts=Counts, kid=int, i=Py_ssize_t)
cpdef void note_novelties(Fields f, Py_ssize_t slot, object etype, dict strings, long long t_ms, double burst_ms, long long min_count)

@cython.locals(counts=Counts, kid=int, i=Py_ssize_t, row=int)
cpdef void learn_categories(Fields f, Py_ssize_t slot, object etype, dict strings, long long max_fields, long long cap)

from detector.core.events cimport Event
from detector.core.features.feature cimport Feature

cdef class CategoryFeature(Feature):
    cdef public Fields fields
    cpdef void reset(self, Py_ssize_t slot)
    cpdef double judge(self, Py_ssize_t slot, Event event) except? -1
    cpdef object explain(self, Py_ssize_t slot, Event event)
    cpdef void advance(self, Py_ssize_t slot, Event event)
    cpdef void learn(self, Py_ssize_t slot, Event event)
