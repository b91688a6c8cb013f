# The writer's methods as C calls from the compiled parts' dump methods (a record is dozens
# of fields); its buffer typed, so `+=` is bytearray's own in-place concatenation.
cdef class Writer:
    cdef bytearray _buf
    cpdef void i64(self, long long v)
    cpdef void f64(self, double v)
    cpdef void count(self, unsigned int v)
    cpdef void text(self, str s)
    cpdef void blob(self, bytes raw)
    cdef void _many(self, object values, str dtype)
    cpdef void f64s(self, object values)
    cpdef void i64s(self, object values)
    cpdef void u64s(self, object values)
    cpdef Py_ssize_t open_blob(self)
    cpdef void close_blob(self, Py_ssize_t at)
    cpdef bytes bytes(self)
    cpdef bytearray detach(self)
