"""The C target: C99 + OpenMP, built by the system C compiler, loaded through cffi.

After `fork`: OpenMP's worker threads stay in the parent, and in the child a thread that had run
parallel regions before the fork would wait for them forever (libgomp). Results do not depend on the
number of threads, so in a forked child the forking thread runs its kernels on one thread (as
PyTorch does after a fork); threads started in the child get a team of their own.

OpenMP's threads spin briefly, then sleep, while they wait: the first kernel loaded starts gcc's
OpenMP runtime (libgomp) with GOMP_SPINCOUNT=`SPIN_COUNT` (about 0.35 ms of spinning on a 2020s
x86 core, where libgomp's default spins about 10 ms), unless the environment sets OMP_WAIT_POLICY or
GOMP_SPINCOUNT, or the runtime was already started (PyTorch ships and starts a libgomp.so.1 too,
which the kernels then share: its policy stands). Threads that spin long while they wait take the
cores that a late thread needs; on a busy machine a step then waits for the scheduler; with no spin
at all, every barrier of a quiet step pays a wake-up (docs/threads.md has the measurements).
Whatever the policy, a kernel runs a step on one thread when it is small (`Spec.parallel_min`) or
when more tasks are runnable than the machine has processors (lazyadam/templates/c_parallel.j2).

Environment:
    LAZYADAM_CC (else CC): the compiler command (default `cc`).
    LAZYADAM_CFLAGS: extra flags, appended after the defaults.
    LAZYADAM_PARALLEL_MIN: steps of fewer elements run on one thread, for kernels whose spec has no
        `parallel_min` (default `PARALLEL_MIN` in lazyadam.codegen.spec); read when a kernel is
        built or loaded, part of its cache key.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import cffi
import numpy as np

from ..codegen.render import Source
from ..codegen.spec import SpecBase
from ..dtypes import storage_name
from ..errors import CompilerNotFoundError, KernelError
from .base import (CFFI_TYPES, SCALAR_SPARSE, LoadedKernel, call_arguments,
                   check_arrays, check_sizes, check_state, index_error, state_arrays)
from .target import Target

#: -fno-math-errno lets sqrt vectorize (an Adam loop ran 5x slower without it); no -ffast-math: the
#: kernels keep IEEE semantics so that they match the reference and are reproducible; no fused
#: multiply-add (-ffp-contract=off, already the default of gcc's -std=c99, not of every compiler):
#: each operation is rounded, as in the CUDA kernels (built with --fmad=false), so both agree bitwise.
BASE_FLAGS = ("-std=c99", "-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math",
              "-ffp-contract=off", "-fPIC", "-shared", "-fopenmp")

#: The environment variables that choose the compiler and its flags (`compiler`, `flags`).
ENVIRONMENT = ("LAZYADAM_CC", "CC", "PATH", "LAZYADAM_CFLAGS", "LAZYADAM_PARALLEL_MIN")


def compiler() -> list[str]:
    """The compiler command, split into words."""
    return shlex.split(os.environ.get("LAZYADAM_CC") or os.environ.get("CC") or "cc")


def flags() -> list[str]:
    return [*BASE_FLAGS, *parallel_min_flags(), *shlex.split(os.environ.get("LAZYADAM_CFLAGS", ""))]


def parallel_min_flags() -> list[str]:
    """`-DLAZYADAM_PARALLEL_MIN=n` from the environment variable of that name, if set.

    Raises:
        ValueError: the variable is not a whole number in [0, 2**62).
    """
    value = os.environ.get("LAZYADAM_PARALLEL_MIN", "").strip()
    if not value:
        return []
    if not value.isdigit() or int(value) >= 2 ** 62:
        raise ValueError(f"LAZYADAM_PARALLEL_MIN must be a whole number of elements in [0, 2**62), "
                         f"got {value!r}")
    return [f"-DLAZYADAM_PARALLEL_MIN={int(value)}"]


def unavailable() -> str | None:
    """None when the C target can build here; otherwise what is missing."""
    cmd = compiler()
    if not cmd or shutil.which(cmd[0]) is None:
        tried = " ".join(cmd) or "(empty)"
        return (f"no C compiler: tried {tried!r} (from LAZYADAM_CC, CC or the default 'cc'); "
                "install gcc or clang, or set LAZYADAM_CC to a C compiler command")
    return None


@functools.lru_cache(maxsize=None)
def _identity(cmd: tuple[str, ...]) -> dict:
    version = subprocess.run([*cmd, "--version"], capture_output=True, text=True).stdout
    return {
        "compiler": " ".join(cmd),
        "version": version.strip(),
        "isa": _isa(),
        "python": sys.implementation.cache_tag,
        "cffi": cffi.__version__,
    }


def identity() -> dict:
    """Everything about the toolchain and machine that can change a binary."""
    problem = unavailable()
    if problem:
        raise CompilerNotFoundError(problem)
    return _identity(tuple(compiler()))


def _isa() -> str:
    """The machine and, on Linux, its CPU flags (what -march=native builds for)."""
    flags_line = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags_line = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        pass
    return f"{platform.machine()} {' '.join(sorted(flags_line.split(':')[-1].split()))}".strip()




#: The rounds that a waiting OpenMP thread spins before it sleeps, when lazyadam starts libgomp.
SPIN_COUNT = 10_000


@functools.lru_cache(maxsize=None)
def _start_openmp() -> None:
    """Starts libgomp with a short spin (`SPIN_COUNT`), once, if nothing has started it and the
    environment does not choose a policy (see the module). The process's environment is left as
    it was."""
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return
    try:
        ctypes.CDLL("libgomp.so.1", mode=os.RTLD_NOLOAD)
        return  # already started: its policy stands
    except OSError:
        pass
    os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)  # read once, as the runtime starts
    try:
        ctypes.CDLL("libgomp.so.1")
    except OSError:
        pass  # no libgomp: kernels built with another OpenMP runtime, or none
    finally:
        del os.environ["GOMP_SPINCOUNT"]


#: `omp_set_num_threads` of each OpenMP runtime that a loaded kernel uses, by its address.
_openmp_runtimes: dict[int, Callable[[int], Any]] = {}


def _track_openmp(path: Path) -> None:
    """Remembers the OpenMP runtime of the kernel library at `path` (none if built without it)."""
    try:  # dlsym through the library's own handle finds the runtime it was linked with
        set_threads = ctypes.CDLL(str(path)).omp_set_num_threads
    except AttributeError:
        return
    _openmp_runtimes.setdefault(ctypes.cast(set_threads, ctypes.c_void_p).value, set_threads)


def _one_thread_after_fork() -> None:
    """In a forked child: this thread's parallel regions run on one thread from now on."""
    for set_threads in _openmp_runtimes.values():
        set_threads(1)


os.register_at_fork(after_in_child=_one_thread_after_fork)


class CKernel(LoadedKernel):
    """A compiled C kernel, called on numpy arrays in place (no copies).

    The C function runs without the GIL (cffi releases it), so several Python threads can run kernels
    at once. In a forked child, the forking thread runs kernels on one thread (see the module).
    """

    def __init__(self, spec: SpecBase, source: Source, path: Path):
        _start_openmp()
        super().__init__(spec, source, path)
        _track_openmp(path)
        # The cffi type of each array's buffer: float[], double[], or uint16_t[] for 16-bit storage.
        self._buffers = {a: f"{CFFI_TYPES[spec.storage(a)]}[]" for a in (*self.arrays, "grad")}
        self._pointers = {a: f"{CFFI_TYPES[spec.storage(a)]} *" for a in self.arrays}
        self._index = f"{spec.index_dtype}_t[]"
        self._grad_dtype = spec.storage("grad")
        self._hparams = self.ffi.typeof(f"{self.hparams_type} *")
        #: (fields, their struct) of the last call: see `hparams`.
        self._last_hparams: tuple[tuple | None, Any] = (None, None)
        if spec.sparse:
            self._with_workspace = getattr(self.lib, f"{source.symbol}_with_workspace")
            self._workspace_size = getattr(self.lib, f"{source.symbol}_workspace_size")

    def workspace_size(self, rows: int, row_size: int, nnz: int) -> int:
        """Bytes of scratch a sparse step of these sizes needs, on the threads OpenMP would use now.

        Returns:
            The bytes; 2**64 - 1 (SIZE_MAX: no such block can be allocated) where they do not fit
            a size_t.

        Raises:
            TypeError: a dense kernel (dense steps need no scratch).
            ValueError: sizes the kernel refuses: negative (`check_sizes`), or see `pair_error`.
        """
        if not self.spec.sparse:
            raise TypeError(f"{self.source.symbol} is dense; only sparse steps take a workspace")
        check_sizes(rows, row_size, nnz)
        error = pair_error(rows, nnz)
        if error:
            raise error
        return int(self._workspace_size(rows, row_size, nnz))

    def __call__(self, var: np.ndarray, *args: Any, **named: np.ndarray) -> None:
        """One step, in place: `kernel(var, <state arrays>, grad, hp)`, e.g. LazyAdam's
        `kernel(var, m, v, grad, hp, vmax=None)` (see `base.call_arguments`). `grad` is an array
        (dense) or an `(indices, values)` pair (sparse); `hp` the rule's `HParams`.

        Raises:
            TypeError, ValueError: a wrong dtype, shape or layout (nothing was written).
            IndexError: an index outside [0, var.shape[0]), naming the first (nothing was written).
        """
        states, grad, hp = call_arguments(self.spec, args, named)
        check_arrays(self.spec, var, states, grad)
        self.bind(var, **states)(grad, hp.as_tuple())

    def bind(self, var: np.ndarray, *state: np.ndarray | None, **named: np.ndarray | None) -> Step:
        """`step(grad, hparams)` on these state arrays (in the rule's order, or by name: for
        LazyAdam `bind(var, m, v, vmax=None)`), for callers that check the gradients.

        The state arrays are checked and their pointers made once, here. A step then checks only
        what could make the kernel read out of bounds or misread memory (the gradient's dtype and
        size), so it costs a few microseconds less than `__call__`; the caller vouches for the rest
        (contiguity, no overlap with the state, finite hyperparameters in `HParams.as_tuple()`
        order). The kernel itself rejects out-of-range indices (IndexError, nothing written).

        Returns:
            A `Step`: a small object, not a closure, since an optimizer holds one per parameter.

        Raises:
            TypeError, ValueError: as `__call__`, for the state arrays here and for a gradient of
                the wrong dtype or size at each step.
        """
        states = state_arrays(self.spec, state, named)
        spans = check_state(self.spec, var, states)
        if self.spec.sparse and var.ndim < 1:
            raise ValueError(SCALAR_SPARSE)
        kind = SparseStep if self.spec.sparse else RowStep if self.per_row else Step
        arrays = tuple(var if name == "var" else states[name] for name in spans)
        return kind(self, arrays, spans)

    def hparams(self, fields: tuple) -> Any:
        """The hyperparameter struct of `fields` (`as_tuple()` order), made once for consecutive
        calls that pass the same tuple object: an optimizer's parameters of one group share their
        step's (a struct takes about a microsecond to make, a kernel call on 4 elements a few).
        Kernel calls never write the struct; the pair is replaced at once, so threads calling the
        kernel together each get the struct of their own fields."""
        last = self._last_hparams
        if last[0] is fields:
            return last[1]
        made = self.ffi.new(self._hparams, fields)
        self._last_hparams = (fields, made)
        return made

    def check_values(self, name: str, values: np.ndarray, size: int) -> None:
        """A gradient (or sparse values) of the kernel's gradient dtype with `size` elements.

        Raises:
            TypeError: non-native byte order. ValueError: another dtype or size.
        """
        dtype = self._grad_dtype
        if storage_name(values.dtype) != dtype or values.size != size:
            raise ValueError(f"{name} must hold {size} {dtype} elements, got {values.size} "
                             f"{storage_name(values.dtype)}")

    def check_status(self, status: int, rows: int, row_size: int,
                     indices: np.ndarray | None = None) -> None:
        """Raises what a kernel's status says went wrong (nothing was written), if anything.

        Raises:
            IndexError, ValueError, MemoryError: a bad index, sizes the kernel refuses or a
                workspace that overlaps an array, no memory for its scratch. KernelError: any
                other status.
        """
        lib = self.lib
        if status == lib.LAZYADAM_OK:
            return
        if status == lib.LAZYADAM_EINDEX and indices is not None:
            raise index_error(indices, rows)
        if status == lib.LAZYADAM_ESIZE and indices is not None:
            error = pair_error(rows, indices.shape[0])
            if error:
                raise error
        if status == lib.LAZYADAM_EOVERLAP:
            raise ValueError(f"the workspace of {self.source.symbol} shares memory with an array "
                             f"of the step ({', '.join(self.arrays)}, indices or values); give it "
                             "scratch of its own")
        if status == lib.LAZYADAM_ENOMEM and indices is not None:
            raise MemoryError(f"out of memory: {self.source.symbol} could not allocate "
                              f"{self.workspace_size(rows, row_size, indices.shape[0]):,} "
                              f"bytes of scratch for {indices.shape[0]:,} indices")
        raise KernelError(f"{self.source.symbol} returned {status}")


class Step:
    """A kernel bound to one parameter's state arrays (`CKernel.bind`): `step(grad, hparams)`.

    It holds the arrays (so that their memory outlives the pointers made from it) and the pointers.
    """

    __slots__ = ("kernel", "arrays", "state", "rows", "row_size")

    def __init__(self, kernel: CKernel, arrays: tuple, spans: dict[str, tuple[int, int]]):
        self.kernel, self.arrays = kernel, arrays
        # Bare pointers (a third of the memory of `from_buffer`'s, which an optimizer holds for
        # each of its parameters) to the arrays' first bytes (`check_state`'s spans, in argument
        # order): `arrays` keeps the memory they point to.
        cast, pointers = kernel.ffi.cast, kernel._pointers
        self.state = tuple(cast(pointers[name], first) for name, (first, _) in spans.items())
        var = arrays[0]
        self.rows = var.shape[0] if var.ndim else 1
        self.row_size = var.size // self.rows if self.rows else int(np.prod(var.shape[1:]))

    def __call__(self, grad: np.ndarray, hp: tuple) -> None:
        kernel = self.kernel
        size = self.arrays[0].size
        kernel.check_values("grad", grad, size)
        status = kernel.fn(*self.state, kernel.ffi.from_buffer(kernel._buffers["grad"], grad),
                           size, kernel.hparams(hp))
        if status != kernel.lib.LAZYADAM_OK:
            kernel.check_status(status, self.rows, self.row_size)


class RowStep(Step):
    """`step(grad, hparams)`: a dense kernel that runs a row at a time (per-row state or sums),
    which takes the rows and their size instead of the element count."""

    __slots__ = ()

    def __call__(self, grad: np.ndarray, hp: tuple) -> None:
        kernel = self.kernel
        kernel.check_values("grad", grad, self.arrays[0].size)
        status = kernel.fn(*self.state, kernel.ffi.from_buffer(kernel._buffers["grad"], grad),
                           self.rows, self.row_size, kernel.hparams(hp))
        if status != kernel.lib.LAZYADAM_OK:
            kernel.check_status(status, self.rows, self.row_size)


class SparseStep(Step):
    """`step((indices, values), hparams, workspace=None)`: a lazy sparse kernel, bound; the
    workspace (see `CKernel.workspace_size`) is its scratch, else the kernel allocates it."""

    __slots__ = ()

    def __call__(self, grad: tuple[np.ndarray, np.ndarray], hp: tuple,
                 workspace: np.ndarray | None = None) -> None:
        kernel, rows, row_size = self.kernel, self.rows, self.row_size
        indices, values = grad
        index_dtype = kernel.spec.index_dtype
        if storage_name(indices.dtype) != index_dtype or indices.ndim != 1:
            raise ValueError(f"indices must be a 1-d {index_dtype} array")
        kernel.check_values("values", values, indices.shape[0] * row_size)
        ffi = kernel.ffi
        args = (*self.state, rows, row_size, ffi.from_buffer(kernel._index, indices),
                ffi.from_buffer(kernel._buffers["grad"], values), indices.shape[0],
                kernel.hparams(hp))
        if workspace is None:
            kernel.check_status(kernel.fn(*args), rows, row_size, indices)
            return
        status = kernel._with_workspace(*args, ffi.from_buffer("char[]", workspace,
                                                               require_writable=True),
                                        workspace.nbytes)
        if status == kernel.lib.LAZYADAM_ESIZE and not pair_error(rows, indices.shape[0]):
            raise ValueError(f"a workspace of {workspace.nbytes:,} bytes is too small for "
                             f"{indices.shape[0]:,} indices: workspace_size() gives "
                             f"{kernel.workspace_size(rows, row_size, indices.shape[0]):,}")
        kernel.check_status(status, rows, row_size, indices)


def pair_error(rows: int, nnz: int) -> ValueError | None:
    """Why a sparse step of `nnz` indices into `rows` rows cannot run, or None: it sorts the
    occurrences as (row, position) packed into 64 bits, so bits(rows - 1) + bits(nnz - 1) <= 64."""
    need = (max(rows, 1) - 1).bit_length() + (max(nnz, 1) - 1).bit_length()
    if need <= 64:
        return None
    return ValueError(f"{nnz:,} indices into {rows:,} rows: a sparse step packs (row, position) "
                      f"into 64 bits, and these need {need}")


class CTarget(Target):
    """The C target: the system C compiler with `flags()`, `CKernel`s (see `Target`)."""

    name = "c"
    environment = ENVIRONMENT
    unavailable_error = CompilerNotFoundError
    unavailable = staticmethod(unavailable)

    def key_parts(self) -> dict:
        return {"flags": flags(), **identity()}

    def command(self, src: Path, out: Path) -> list[str]:
        problem = unavailable()
        if problem:
            raise CompilerNotFoundError(problem)
        return [*compiler(), *flags(), str(src), "-o", str(out), "-lm"]

    def compiler_name(self) -> str:
        return compiler()[0]

    def kernel(self, spec: SpecBase, source: Source, path: Path) -> CKernel:
        return CKernel(spec, source, path)


TARGET = CTarget()
