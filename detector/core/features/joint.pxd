import cython
# libm for the .py's math.f on C doubles (see surprise.pxd)
from libc cimport math

from detector.core.codec cimport Writer
from detector.core.features.surprise cimport signed_log

@cython.locals(h=double, term=double, total=double, s=double, p=double, i=cython.longlong)
cpdef double chi2_surprise(double x, long long k)

# The columns are arrays (Python attributes: dump, views); the per-event methods index typed
# memoryviews of them.
cdef class JointTable:
    cdef public Py_ssize_t k, tri, max_types, used, free
    cdef public object count, next, nf, run, mean, cov, head, types, y, z, chol
    cdef public list etype, names
    cdef public dict shapes
    cdef long long[:] _count
    cdef int[:] _next, _head, _types
    cdef signed char[:] _nf
    cdef double[:] _run, _mean, _cov, _y, _z, _chol
    @cython.locals(row=Py_ssize_t, after=Py_ssize_t)
    cpdef void reset(self, Py_ssize_t slot)
    @cython.locals(row=Py_ssize_t)
    cpdef Py_ssize_t find(self, Py_ssize_t slot, object etype)
    @cython.locals(row=Py_ssize_t, i=Py_ssize_t, held=list)
    cpdef Py_ssize_t add(self, Py_ssize_t slot, object etype, tuple names)
    @cython.locals(held=list)
    cpdef void _let_go(self, tuple names)
    @cython.locals(i=Py_ssize_t)
    cpdef bint gather(self, Py_ssize_t row, dict numbers)
    @cython.locals(nf=Py_ssize_t, k=Py_ssize_t, tri=Py_ssize_t, n=cython.longlong, m0=Py_ssize_t, c0=Py_ssize_t, i=Py_ssize_t, j=Py_ssize_t, base=Py_ssize_t, a=double, di=double)
    cpdef void learn(self, Py_ssize_t row, double fading)
    @cython.locals(nf=Py_ssize_t, k=Py_ssize_t, tri=Py_ssize_t, m0=Py_ssize_t, c0=Py_ssize_t, i=Py_ssize_t, j=Py_ssize_t, m=Py_ssize_t, base=Py_ssize_t, sd=double, keep=double, r=double, s=double, t=double, w=double)
    cpdef double t2(self, Py_ssize_t row, double min_sd, double ridge)
    @cython.locals(step=double, i=Py_ssize_t)
    cpdef double run_after(self, Py_ssize_t row, double t2)
    cpdef void step(self, Py_ssize_t row, double t2)
    @cython.locals(i=Py_ssize_t)
    cpdef void restart(self, Py_ssize_t row)
    @cython.locals(nf=Py_ssize_t, m0=Py_ssize_t, c0=Py_ssize_t, i=Py_ssize_t)
    cpdef void dump(self, Py_ssize_t row, Writer w)

@cython.locals(row=Py_ssize_t)
cpdef Py_ssize_t joint_row(JointTable table, Py_ssize_t slot, object etype, dict numbers, long long min_count)

@cython.locals(row=Py_ssize_t, t=double)
cpdef double judge_joint(JointTable table, Py_ssize_t slot, object etype, dict numbers, long long min_count, double min_sd, double ridge)

@cython.locals(row=Py_ssize_t)
cpdef void step_joint(JointTable table, Py_ssize_t slot, object etype, dict numbers, long long min_count, double min_sd, double ridge)

@cython.locals(row=Py_ssize_t)
cpdef void learn_joint(JointTable table, Py_ssize_t slot, object etype, dict numbers, double fading)

from detector.core.events cimport Event
from detector.core.features.feature cimport Feature

cdef class JointFeature(Feature):
    cdef public JointTable table
    cpdef void reset(self, Py_ssize_t slot)
    cpdef double judge(self, Py_ssize_t slot, Event event) except? -1
    cpdef object explain(self, Py_ssize_t slot, Event event)
    cpdef void advance(self, Py_ssize_t slot, Event event)
    cpdef void learn(self, Py_ssize_t slot, Event event)
