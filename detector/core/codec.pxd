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


# The reader's too, for the records read slot by slot at a restore (the joint feature's, the
# peers', ...: millions of fields at 100k producers).
cdef class Reader:
    cdef object _buf
    cdef Py_ssize_t _end
    cdef Py_ssize_t _pos
    cdef Py_ssize_t _at(self, Py_ssize_t n) except -1
    cdef object _take(self, Py_ssize_t n)
    cpdef long long i64(self)
    cpdef double f64(self)
    cpdef unsigned int count(self)
    cpdef str text(self)
    cpdef bytes blob(self)
    cpdef Reader section(self)
    cpdef object f64s(self)
    cpdef object i64s(self)
    cpdef object u64s(self)
    cpdef object column(self)
    cpdef bint done(self)
