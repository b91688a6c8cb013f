import cython

from detector.core.calibration cimport Calibrator, Tails
from detector.core.events cimport Event
from detector.core.features.judgements cimport Judgements

# The pipeline's own fields as C members, and the per-event steps as C calls.
cdef class Pipeline:
    cdef public object spec, decision, model, admission, decisions, feedback, store, budget
    cdef public object likelihood, first_ms
    cdef public double threshold
    cdef public Calibrator calibrator
    cdef public long long events_seen, run_streak, run_since
    cdef public bint established
    cdef public Judgements judged
    @cython.locals(slot=Py_ssize_t, tails=Tails, t=cython.longlong, n=cython.longlong, overflowed=cython.bint,
                   flagged=cython.bint, suspect=cython.bint, held=cython.bint)
    cpdef void _one(self, Event event, Py_ssize_t i, object out, object raw=*)
    @cython.locals(t=cython.longlong, streak=cython.longlong, accept=cython.bint, adapted=cython.bint)
    cpdef void _learn(self, Py_ssize_t slot, Event event, Py_ssize_t i, double raw, bint suspect, bint protected)
    @cython.locals(r=Py_ssize_t)
    cpdef void _suspect_run(self, Py_ssize_t slot, Event event, long long t, bint suspect)
    cpdef double _raw(self, Py_ssize_t i, long long n) except? -1
