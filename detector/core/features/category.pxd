import cython

from detector.core.features.categories cimport Categories, Novelties

@cython.locals(c=Categories, s=cython.double, best=cython.double, burst=cython.double, bursts=cython.bint)
cpdef tuple best_category(dict values, Novelties novel, str prefix, dict strings, long long t_ms, double burst_ms, double prior, long long min_count)

@cython.locals(c=Categories)
cpdef void note_novelties(dict values, Novelties novel, str prefix, dict strings, long long t_ms, double burst_ms, long long min_count)

@cython.locals(c=Categories)
cpdef void learn_categories(dict values, str prefix, dict strings, long long max_fields, long long cap)
