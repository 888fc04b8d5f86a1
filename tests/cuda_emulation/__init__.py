"""The host-emulation build of the CUDA kernels: the generated .cu sources, compiled unchanged by
the host C++ compiler with `cuda_emulation.h` force-included, loaded as the CUDA target's
`CudaKernel`.

`EmulatedCuda` is a target (`lazyadam.targets.target.Target`) like the CUDA target, with the host
compiler for nvcc: its kernels are cached one by one, and built many to a compiler call by
`lazyadam.targets.batch` (its sources share one translation unit, as the emulation needs: it
defines its functions in every unit). Used through the `emulated_cuda` fixture (tests/conftest.py)
and by the tests of the kernels against the reference.
"""

from __future__ import annotations

import ctypes
import functools
import shutil
import subprocess
from pathlib import Path
from collections.abc import Iterable, Iterator, Mapping

import numpy as np

from lazyadam import Spec
from lazyadam.errors import CompilerNotFoundError
from lazyadam.targets import batch, cache
from lazyadam.targets.cuda import CudaTarget

HEADER = Path(__file__).with_name("cuda_emulation.h")
FLAGS = ("-std=c++17", "-ffp-contract=off", "-fPIC", "-shared", "-Wall", "-Wno-unknown-pragmas",
         "-Werror")


def host_compiler() -> str | None:
    return shutil.which("c++") or shutil.which("g++")


class EmulatedCuda(CudaTarget):
    """The CUDA target built for the host: `host_compiler()` with `FLAGS`, the optimization level
    `optimize` (see `target`) and `defines` (macros of the sources or of cuda_emulation.h, e.g.
    LAZYADAM_MAX_BLOCKS) for nvcc."""

    environment = ("PATH",)
    unavailable_error = CompilerNotFoundError
    one_unit = True

    def __init__(self, defines: Mapping[str, int] | None = None, optimize: str = "-O0"):
        self.flags = (*FLAGS, optimize, *(f"-D{name}={value}"
                                          for name, value in sorted((defines or {}).items())))

    def unavailable(self) -> str | None:
        return None if host_compiler() else "no host C++ compiler (c++ or g++) to build the CUDA emulation"

    def key_parts(self) -> dict:
        cxx = host_compiler()
        return {"emulation": HEADER.read_text(), "compiler": cxx, "flags": self.flags,
                "version": _version(cxx)}

    def command(self, src: Path, out: Path) -> list[str]:
        return [host_compiler(), *self.flags, "-include", str(HEADER), "-x", "c++", str(src), "-o",
                str(out)]

    def compiler_name(self) -> str:
        return "the CUDA emulation build"


@functools.lru_cache(maxsize=None)
def _version(cxx: str) -> str:
    return subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout


#: The emulation target of each set of defines met so far.
_TARGETS: dict[tuple, EmulatedCuda] = {}


def target(defines: Mapping[str, int] | None = None, optimize: str = "-O0") -> EmulatedCuda:
    """The emulation target with `defines` and the optimization level `optimize` (one object per
    set, so that its kernels load once).

    -O0 builds in a third of the time of -O1 (0.06 CPU-seconds a kernel against 0.16, measured on
    20 kernels in one unit); the tests run the emulated kernels on small arrays, so a warm run
    took the same time with either (every test file that uses the emulation: 56 CPU-seconds at
    -O0, 57 at -O1)."""
    found = (tuple(sorted((defines or {}).items())), optimize)
    if found not in _TARGETS:
        _TARGETS[found] = EmulatedCuda(defines, optimize)
    return _TARGETS[found]


def build(specs: Iterable[Spec], defines: Mapping[str, int] | None = None,
          report=None, optimize: str = "-O0") -> Kernels:
    """The emulated kernel of every spec, built in batches where the kernel cache lacks them; each
    is loaded once in this process (as `lazyadam.compile` loads them), when first looked up.

    Raises:
        CompilationError: the host compiler failed (the log says why).
    """
    emulated = target(defines, optimize)
    specs = list(dict.fromkeys(specs))
    if len(specs) > 1:
        batch.build(specs, emulated, report=report)
    return Kernels(emulated, specs)


class Kernels(Mapping):
    """The emulated kernel of each of `specs`, loaded at its first lookup: a test worker that runs
    a few of a thousand kernels loads those (about 10 ms each)."""

    def __init__(self, emulated: EmulatedCuda, specs: list):
        self.emulated = emulated
        self.specs = dict.fromkeys(specs)

    def __getitem__(self, spec: Spec):
        if spec not in self.specs:
            raise KeyError(spec)
        return self.emulated.load(spec)

    def __contains__(self, spec: object) -> bool:
        return spec in self.specs

    def __iter__(self) -> Iterator[Spec]:
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)


def compile_library(sources: Iterable) -> Path:
    """The .cu `sources` built for the host as one translation unit (what a test that needs
    several kernels, or several rules, in one unit builds), kept in the kernel cache keyed by the
    sources and the emulation's compiler and flags; returns the library's path.

    Raises:
        CompilationError: the host compiler failed (the log says why).
    """
    sources = list(sources)
    emulated = target()

    def build(folder: Path) -> Path:
        for source in sources:
            (folder / source.filename).write_text(source.text)
            (folder / f"{source.symbol}.h").write_text(source.header)
        unit = folder / "emulation.cu"
        unit.write_text("".join(f'#include "{s.filename}"\n' for s in sources))
        return emulated.run_compiler([unit], folder / "emulation.so",
                                     f"{len(sources)} emulated CUDA kernels in one unit")
    key = cache.make_key({"test": "emulation-unit", **emulated.key_parts(),
                          "sources": [s.text + s.header for s in sources]})
    return cache.fetch(key, "emulation.so", build)


def control() -> ctypes.CDLL:
    """The emulation's own functions (emu_counters, emu_reset_counters, emu_begin_capture,
    emu_end_capture, emu_replay: see cuda_emulation.h) and its driver's cuStreamIsCapturing, from
    one of its libraries. They act on the state that every emulation library of the process
    shares, so any library will do."""
    return ctypes.CDLL(str(target().load(Spec(sparse=False)).path))


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
