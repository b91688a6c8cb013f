import cython
# libm for the .py's math.log10 and math.exp (see surprise.pxd)
from libc cimport math

from detector.core.codec cimport Writer
from detector.core.fingerprints cimport fingerprint

cpdef object resized(object old, str code, Py_ssize_t size)

cdef long long MAX_COUNT

cdef class Pool:
    cdef public Py_ssize_t top, garbage
    @cython.locals(start=Py_ssize_t)
    cpdef Py_ssize_t alloc(self, Py_ssize_t size)
    cpdef void release(self, Py_ssize_t start, Py_ssize_t size)
    cpdef bint full_of_garbage(self)

cpdef Py_ssize_t block_size(Py_ssize_t n)
cpdef Py_ssize_t grown_block(Py_ssize_t size)
@cython.locals(olds=list, news=list, top=Py_ssize_t, r=Py_ssize_t, s=Py_ssize_t, u=Py_ssize_t, n=Py_ssize_t, k=Py_ssize_t)
cpdef list compact(Pool pool, int[:] start, int[:] size, int[:] used, Py_ssize_t rows, list columns)
@cython.locals(new=list, s=Py_ssize_t, total=Py_ssize_t, old=Py_ssize_t, u=Py_ssize_t)
cpdef list regrow(Pool pool, int[:] start, int[:] size, int[:] used, Py_ssize_t rows, Py_ssize_t r, Py_ssize_t new_size, list columns)

cdef class Vocab:
    cdef public dict ids
    cdef public list strs, refs, free
    @cython.locals(i=object)
    cpdef Py_ssize_t add(self, str s)
    cpdef bint release(self, Py_ssize_t i)
    cpdef str text(self, Py_ssize_t i)

# The columns as typed memoryviews over array('Q'), array('i'), array('b'): C reads and
# writes; resized() replaces them when they grow.
cdef class Counts:
    cdef public Vocab values
    cdef public unsigned long long[:] vfp, fp
    cdef public Py_ssize_t rows
    cdef public object free_rows
    cdef public int[:] n, cnt, ostart, mstart, osize, oused, msize, mused, vid
    cdef public signed char[:] sat
    cdef public Pool once_pool, multi_pool

    @cython.locals(r=Py_ssize_t, size=Py_ssize_t)
    cpdef Py_ssize_t add_row(self)
    @cython.locals(start=Py_ssize_t, i=Py_ssize_t)
    cpdef void clear(self, Py_ssize_t r)
    cpdef void reset(self, Py_ssize_t r)
    cpdef void drop(self, Py_ssize_t r)
    cdef void _grow_once(self, Py_ssize_t r, Py_ssize_t size)
    cdef void _grow_multi(self, Py_ssize_t r, Py_ssize_t size)
    @cython.locals(vid=Py_ssize_t)
    cdef int _intern(self, str value, unsigned long long fp)
    cdef void _add_once(self, Py_ssize_t r, unsigned long long fp)
    @cython.locals(i=Py_ssize_t)
    cdef void _add_multi(self, Py_ssize_t r, int vid, long long count)
    @cython.locals(start=Py_ssize_t, i=Py_ssize_t)
    cpdef Py_ssize_t find_multi(self, Py_ssize_t r, int vid)
    @cython.locals(start=Py_ssize_t, i=Py_ssize_t)
    cpdef Py_ssize_t find_once(self, Py_ssize_t r, unsigned long long fp)
    @cython.locals(i=Py_ssize_t, fp="unsigned long long", vid=object)
    cpdef long long count(self, Py_ssize_t r, str value)
    @cython.locals(n=cython.longlong, once=cython.longlong, j=Py_ssize_t, start=Py_ssize_t, count=cython.longlong, below=cython.longlong, p=double)
    cpdef double surprise(self, Py_ssize_t r, str value, double prior, double burst=*, long long min_count=*)
    cpdef bint is_new(self, Py_ssize_t r, str value, long long min_count)
    @cython.locals(i=Py_ssize_t, j=Py_ssize_t, end=Py_ssize_t, fp="unsigned long long", vid=object)
    cpdef void update(self, Py_ssize_t r, str value, long long cap)
    @cython.locals(start=Py_ssize_t, i=Py_ssize_t)
    cpdef object once(self, Py_ssize_t r)
    @cython.locals(start=Py_ssize_t, used=Py_ssize_t, i=Py_ssize_t)
    cpdef void dump(self, Py_ssize_t r, Writer w)

cdef class Novelty:
    cdef public str key
    cdef public int[:] has
    cdef public double[:] recent
    cdef public long long[:] last_ms
    @cython.locals(size=Py_ssize_t)
    cpdef void reset(self, Py_ssize_t slot)
    cpdef double burst(self, Py_ssize_t slot, long long t_ms, double burst_ms)
    cpdef void note(self, Py_ssize_t slot, long long t_ms, double burst_ms)
