# libm for the .py's math.log (see surprise.pxd)
from libc cimport math

from detector.core.features.moments cimport MomentsTable
from detector.core.features.surprise cimport two_sided

cpdef double size_surprise(MomentsTable m, Py_ssize_t row, long long size_bytes, long long min_count, double min_sd)
