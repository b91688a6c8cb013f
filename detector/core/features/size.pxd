# libm for the .py's math.log (see surprise.pxd)
from libc cimport math

from detector.core.features.moments cimport Moments
from detector.core.features.surprise cimport two_sided

cpdef double size_surprise(Moments m, long long size_bytes, long long min_count, double min_sd)
