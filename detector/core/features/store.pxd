import cython

from detector.core.events cimport Event
from detector.core.features.feature cimport Feature
from detector.core.features.judgements cimport Judgements

# The per-event loops over the features: C calls of each feature's cpdef methods.
@cython.locals(k=Py_ssize_t, feature=Feature, s=double)
cpdef void judged(list features, list columns, Py_ssize_t slot, Event event, Judgements out, Py_ssize_t i)
@cython.locals(feature=Feature)
cpdef object first_decisive(list features, Py_ssize_t slot, Event event)
@cython.locals(feature=Feature)
cpdef void advanced(list features, Py_ssize_t slot, Event event)
@cython.locals(feature=Feature)
cpdef void learned(list features, Py_ssize_t slot, Event event)
