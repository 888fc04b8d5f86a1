"""The CUDA toolchain: nvcc, the flags and archs it builds for, and the GPUs the driver sees.

Environment:
    LAZYADAM_NVCC: the nvcc command (default: `nvcc` on PATH, then $CUDA_HOME/bin, /usr/local/cuda/bin).
    LAZYADAM_CUDA_ARCH: compute capabilities to build for, e.g. "80,90" (default: those of the GPUs
        present).
    LAZYADAM_NVCCFLAGS: extra flags, appended after the defaults.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import cffi

from ..errors import CompilerNotFoundError, TargetUnavailableError
from ..interop.device import CUDA_SUCCESS, driver

#: The environment variables that choose nvcc, its flags and archs (`nvcc`, `flags`).
ENVIRONMENT = ("LAZYADAM_NVCC", "PATH", "CUDA_HOME", "CUDA_PATH", "LAZYADAM_CUDA_ARCH",
               "LAZYADAM_NVCCFLAGS")

#: -O3 for host and device; no --use_fast_math, so that the kernels keep IEEE division and sqrt, and
#: --fmad=false, so that a*b + c is rounded twice, as the C kernels round it: the two give bitwise the
#: same numbers.
BASE_FLAGS = ("-O3", "-std=c++17", "--fmad=false", "-shared", "-Xcompiler", "-fPIC", "--cudart",
              "static")

# CUDA driver API device attributes read below.
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76


def nvcc() -> str | None:
    """The nvcc executable, or None when there is none."""
    if os.environ.get("LAZYADAM_NVCC"):
        return shutil.which(os.environ["LAZYADAM_NVCC"])
    found = shutil.which("nvcc")
    if found:
        return found
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    for home in filter(None, homes):
        candidate = Path(home) / "bin" / "nvcc"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def device_count() -> int:
    """The number of CUDA GPUs visible to this process (0 without a driver)."""
    lib = driver()
    if isinstance(lib, str):
        return 0
    count = ctypes.c_int(0)
    return count.value if lib.cuDeviceGetCount(ctypes.byref(count)) == CUDA_SUCCESS else 0


def unavailable() -> str | None:
    """None when CUDA kernels can build and run here; otherwise what is missing."""
    if nvcc() is None:
        return ("nvcc not found: tried LAZYADAM_NVCC, PATH, $CUDA_HOME/bin and /usr/local/cuda/bin; "
                "install the CUDA toolkit or set LAZYADAM_NVCC to the nvcc command")
    lib = driver()
    if isinstance(lib, str):
        return lib
    if device_count() == 0:
        return "no CUDA GPU found: the CUDA driver sees no device"
    return None


def archs() -> tuple[str, ...]:
    """The compute capabilities to build for, e.g. ("80", "90"): LAZYADAM_CUDA_ARCH, else the GPUs'.

    Raises:
        TargetUnavailableError: no LAZYADAM_CUDA_ARCH and no GPU to ask.
    """
    given = os.environ.get("LAZYADAM_CUDA_ARCH", "").replace(";", ",")
    if given.strip():
        return tuple(sorted({a.strip().removeprefix("sm_") for a in given.split(",") if a.strip()}))
    lib = driver()
    if isinstance(lib, str) or device_count() == 0:
        raise TargetUnavailableError(lib if isinstance(lib, str) else "no CUDA GPU found")
    found = set()
    for ordinal in range(device_count()):
        major, minor, device = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        lib.cuDeviceGet(ctypes.byref(device), ordinal)
        lib.cuDeviceGetAttribute(ctypes.byref(major), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                                 device)
        lib.cuDeviceGetAttribute(ctypes.byref(minor), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                                 device)
        found.add(f"{major.value}{minor.value}")
    return tuple(sorted(found))


def gencode(arch_list: Sequence[str]) -> list[str]:
    """nvcc flags for native code on each arch, plus PTX of the newest for later GPUs."""
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in arch_list]
    newest = max(arch_list, key=int)
    return flags + [f"-gencode=arch=compute_{newest},code=compute_{newest}"]


def flags() -> list[str]:
    return [*BASE_FLAGS, *gencode(archs()), *shlex.split(os.environ.get("LAZYADAM_NVCCFLAGS", ""))]


@functools.lru_cache(maxsize=None)
def _nvcc_version(path: str) -> str:
    return subprocess.run([path, "--version"], capture_output=True, text=True).stdout.strip()


def identity() -> dict:
    """Everything about the toolchain that can change a binary: nvcc, its version, flags and archs."""
    path = nvcc()
    if path is None:
        raise CompilerNotFoundError(unavailable() or "nvcc not found")
    return {"compiler": path, "version": _nvcc_version(path), "flags": flags(),
            "python": sys.implementation.cache_tag, "cffi": cffi.__version__}
