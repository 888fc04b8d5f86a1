"""The OpenMP thread count of the calling thread, set for a while (kernels ask OpenMP how many to use)."""

from __future__ import annotations

import contextlib

import cffi

_ffi = cffi.FFI()
_ffi.cdef("void omp_set_num_threads(int); int omp_get_max_threads(void);")
_gomp = _ffi.dlopen("libgomp.so.1")  # the OpenMP runtime the kernels link (gcc's)


@contextlib.contextmanager
def threads(n: int):
    """Kernels called in this block by this thread run on at most `n` threads."""
    before = _gomp.omp_get_max_threads()
    _gomp.omp_set_num_threads(n)
    try:
        yield
    finally:
        _gomp.omp_set_num_threads(before)
