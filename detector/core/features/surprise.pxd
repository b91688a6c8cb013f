import cython

# The .py's `math.f(x)` on C doubles become calls of libm's f (what CPython's math module
# calls), not Python calls; none of these can raise for the arguments given here.
from libc cimport math

cpdef double signed_log(double x)
cpdef double unlog(double y)

@cython.locals(x=double)
cpdef double two_sided(double z)

cpdef str type_prefix(object etype)
