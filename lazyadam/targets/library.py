"""A built kernel library opened for calls, its declarations parsed once per signature.

cffi parses a kernel's declarations (`Source.cdef`) with pycparser, about 2 ms a kernel, and a
fresh `cffi.FFI` parses again every type string it is given (`ffi.cast("float *", ...)`). Most
kernels share their declarations but for the kernel's symbol (the test products' 2379 kernels
have 262 signatures per target), so the kernels of one signature share one FFI: their
declarations without comments, each function of the kernel declared as a function type named
after `PLACEHOLDER` (`int lazyadam_sparse_f32_i64_with_workspace(...)` becomes `typedef int
lazyadam_kernel_with_workspace_fn(...)`). A library's functions are then found by name in the
library and cast to those types: `Library` gives them, and the declared constants, as an
attribute of cffi's `lib` would.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
from pathlib import Path
from typing import Any

import cffi

#: The name under which a signature declares the kernel's functions' types.
PLACEHOLDER = "lazyadam_kernel"


def signature(cdef: str, symbol: str) -> str:
    """`cdef` without its comments, its white space one blank (a declaration's continued lines
    are aligned after the symbol), each function whose name starts with `symbol` declared as a
    function type: `<PLACEHOLDER><rest of the name>_fn`."""
    text = " ".join(re.sub(r"/\*.*?\*/", "", cdef, flags=re.S).split())
    return re.sub(rf"(^|[;{{}}])(\s*)([^;{{}}]*?)\b{re.escape(symbol)}(\w*)\s*\(",
                  rf"\1\2typedef \3{PLACEHOLDER}\4_fn(", text)


@functools.lru_cache(maxsize=1024)
def declarations(signature_text: str) -> cffi.FFI:
    """The FFI of a signature (see `signature`), parsed once per process."""
    ffi = cffi.FFI()
    ffi.cdef(signature_text)
    return ffi


class Library:
    """The functions and constants that a kernel library exports, by name: `lib.<symbol>`,
    `lib.<symbol>_with_workspace`, `lib.LAZYADAM_OK`, as from cffi's `lib`.

    Opened with RTLD_NOW and never unloaded (RTLD_NODELETE): unloading an OpenMP kernel would
    unload libgomp under its idle worker threads, which crashes the process at exit.

    Attributes:
        ffi: the FFI of the kernel's signature (shared with the kernels of the same one).
    """

    def __init__(self, cdef: str, symbol: str, path: Path):
        self.ffi = declarations(signature(cdef, symbol))
        self._symbol = symbol
        mode = os.RTLD_NOW | os.RTLD_NODELETE
        self._constants = self.ffi.dlopen(str(path), mode)  # the declared enums' values
        self._exports = ctypes.CDLL(str(path), mode=mode)  # the functions' addresses, by name

    def __getattr__(self, name: str) -> Any:
        """A function of the kernel or a declared constant, kept in the instance once found.

        Raises:
            AttributeError: the library exports no such function, or nothing declares the name.
        """
        if name.startswith("_"):  # e.g. asked before __init__ set them (copy, pickle)
            raise AttributeError(name)
        if name.startswith(self._symbol):
            address = ctypes.cast(getattr(self._exports, name), ctypes.c_void_p).value
            found = self.ffi.cast(f"{PLACEHOLDER}{name[len(self._symbol):]}_fn *", address)
        else:
            found = getattr(self._constants, name)
        setattr(self, name, found)
        return found
