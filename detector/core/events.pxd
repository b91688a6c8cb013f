import cython

# The decoder per entry runs as C: its caps as C integers, its helpers as C calls (they were
# Python method calls, most of a decode's cost beside orjson's).
cdef class Decoder:
    cdef object _fmt
    cdef bytes _producer, _time, _type, _payload
    cdef Py_ssize_t _max_bytes, _max_fields, _max_depth, _max_name, _max_string
    @cython.locals(numbers=dict, strings=dict, raw_key=bytes, raw_value=bytes,
                   event_time_ms=cython.longlong)
    cpdef object decode(self, str stream, str entry_id, dict fields)
    cpdef str check_producer(self, bytes raw)
    @cython.locals(size=Py_ssize_t, k=bytes, v=bytes)
    cpdef Py_ssize_t check_shape(self, dict fields) except -1
    cdef void _flat(self, str key, bytes raw, dict numbers, dict strings)
    cdef void _flatten_json(self, bytes raw, dict numbers, dict strings)
    @cython.locals(max_name=Py_ssize_t, max_string=Py_ssize_t, key=str, name=str)
    cdef void _walk(self, dict node, str prefix, Py_ssize_t depth, dict numbers,
                   dict strings)
    cdef void _rare(self, str name, object value, Py_ssize_t depth, dict numbers,
                   dict strings)
    cdef void _check_array(self, list items, str name, Py_ssize_t depth)

cdef str _text(bytes raw, str what, Py_ssize_t limit)
@cython.locals(ms=cython.longlong)
cpdef long long parse_time_ms(bytes raw) except? -1

# An event's fields as C members: compiled code typed on Event reads them without lookups.
cdef class Event:
    cdef public str stream, entry_id, producer
    cdef public long long event_time_ms
    cdef public object type
    cdef public dict numbers, strings
    cdef public Py_ssize_t size_bytes
