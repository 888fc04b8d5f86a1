"""The host-emulation build of the CUDA kernels: the generated .cu sources, compiled unchanged by
the host C++ compiler with `cuda_emulation.h` force-included, loaded as the CUDA target's
`CudaKernel`.

Used by tests/test_cuda_emulation.py (the kernels against the reference) and
tests/test_runtime_device.py (the optimizer on arrays that present host memory as device memory).
"""

from __future__ import annotations

import ctypes
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from lazyadam import Source, Spec, generate
from lazyadam.errors import CompilationError
from lazyadam.targets import cache
from lazyadam.targets.cuda import CudaKernel

HEADER = Path(__file__).with_name("cuda_emulation.h")
FLAGS = ("-std=c++17", "-O1", "-ffp-contract=off", "-fPIC", "-shared", "-Wall", "-Wno-unknown-pragmas",
         "-Werror")


def host_compiler() -> str | None:
    return shutil.which("c++") or shutil.which("g++")


def build(specs: Iterable[Spec], defines: Mapping[str, int] | None = None) -> dict[Spec, CudaKernel]:
    """Every spec in one emulation library, built once and kept in the kernel cache (and its
    kernels loaded once in this process, as `lazyadam.compile` loads them).

    `defines` overrides macros of the sources or of cuda_emulation.h (e.g. LAZYADAM_MAX_BLOCKS).

    Raises:
        CompilationError: the host compiler failed (the log says why).
    """
    cxx = host_compiler()
    sources = {spec: generate(spec, "cuda") for spec in specs}
    flags = FLAGS + tuple(f"-D{name}={value}" for name, value in sorted((defines or {}).items()))
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    key = cache.make_key({"target": "cuda-emulation", "emulation": HEADER.read_text(),
                          "sources": [s.text + s.header for s in sources.values()],
                          "compiler": cxx, "version": version, "flags": flags})
    path = cache.fetch(key, "emulation.so",
                       lambda folder: compile_library(sources.values(), folder, flags))
    for spec, source in sources.items():  # one kernel object per library and spec, as in the target
        if (key, spec) not in _KERNELS:
            _KERNELS[key, spec] = CudaKernel(spec, source, path)
    return {spec: _KERNELS[key, spec] for spec in sources}


def compile_library(sources: Iterable[Source], folder: Path, flags: Sequence[str] = FLAGS) -> Path:
    """Builds the .cu `sources` for the host into `folder/emulation.so`; returns its path (what
    the CUDA target's `build` does with nvcc, so a test can stand it in for `cuda.TARGET.build`).

    Raises:
        CompilationError: the host compiler failed (the log says why).
    """
    sources = list(sources)
    for source in sources:
        (folder / source.filename).write_text(source.text)
        (folder / f"{source.symbol}.h").write_text(source.header)
    unit = folder / "emulation.cu"
    unit.write_text("".join(f'#include "{s.filename}"\n' for s in sources))
    out = folder / "emulation.so"
    cmd = [host_compiler(), *flags, "-include", str(HEADER), "-x", "c++", str(unit), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=folder)
    if proc.returncode != 0:
        raise CompilationError("the CUDA emulation build failed",
                               log=f"$ {shlex.join(cmd)}\n{proc.stdout}{proc.stderr}")
    return out


#: The kernels loaded in this process, by library and spec.
_KERNELS: dict[tuple[str, Spec], CudaKernel] = {}

def control() -> ctypes.CDLL:
    """The emulation's own functions (emu_counters, emu_reset_counters, emu_begin_capture,
    emu_end_capture, emu_replay: see cuda_emulation.h) and its driver's cuStreamIsCapturing, from
    one of its libraries. They act on the state that every emulation library of the process
    shares, so any library will do."""
    kernel = next(iter(_KERNELS.values()), None) or build([Spec(sparse=False)])[Spec(sparse=False)]
    return ctypes.CDLL(str(kernel.path))


class Emulated:
    """A host array presented as a device array: the emulated kernels address host memory."""

    def __init__(self, array: np.ndarray):
        self.array = array

    @property
    def __cuda_array_interface__(self) -> dict:
        a = self.array
        return {"shape": a.shape, "typestr": a.dtype.str, "version": 3,
                "data": (a.ctypes.data, not a.flags.writeable),
                "strides": None if a.flags.c_contiguous else a.strides}
