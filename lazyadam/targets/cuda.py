"""The CUDA target: kernels and their host launchers built by nvcc, loaded through cffi.

Each kernel source (`render_cuda`) holds the `__global__` kernels and `extern "C"` host launchers with
the C ABI plus a trailing `cudaStream_t`. nvcc builds it into a shared library with the CUDA runtime
linked statically; the runtime API works in the device's primary context (or in the context the
calling thread has made current), so device pointers from PyTorch, CuPy or pycuda work side by side.
Arrays are accepted from any library through `__cuda_array_interface__`.

The launch sequence lives in the launchers, in C++, so that the host-emulation build of the tests
(tests/cuda_emulation) runs exactly the code a GPU runs: kernels and launchers alike.

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
from typing import Any, Sequence

import cffi
import numpy as np

from ..codegen.pipeline import generate
from ..codegen.render import Source
from ..codegen.spec import Spec
from ..errors import CompilationError, CompilerNotFoundError, KernelError, TargetUnavailableError
from . import cache
from .base import CFFI_TYPES, HParams, LoadedKernel, check_arrays

name = "cuda"

#: -O3 for host and device; no --use_fast_math, so that the kernels keep IEEE division and sqrt, and
#: --fmad=false, so that a*b + c is rounded twice, as the C kernels round it: the two give bitwise the
#: same numbers.
BASE_FLAGS = ("-O3", "-std=c++17", "--fmad=false", "-shared", "-Xcompiler", "-fPIC", "--cudart",
              "static")

# CUDA driver API status codes used below.
_CUDA_SUCCESS = 0
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


@functools.lru_cache(maxsize=None)
def _driver() -> ctypes.CDLL | str:
    """The initialised CUDA driver library, or why it cannot be had."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError as err:
        return f"no CUDA driver: libcuda.so.1 could not be loaded ({err})"
    status = lib.cuInit(0)
    if status != _CUDA_SUCCESS:
        return f"no CUDA GPU found: cuInit failed with CUDA driver error {status}"
    return lib


def device_count() -> int:
    """The number of CUDA GPUs visible to this process (0 without a driver)."""
    lib = _driver()
    if isinstance(lib, str):
        return 0
    count = ctypes.c_int(0)
    return count.value if lib.cuDeviceGetCount(ctypes.byref(count)) == _CUDA_SUCCESS else 0


def unavailable() -> str | None:
    """None when CUDA kernels can build and run here; otherwise what is missing."""
    if nvcc() is None:
        return ("nvcc not found: tried LAZYADAM_NVCC, PATH, $CUDA_HOME/bin and /usr/local/cuda/bin; "
                "install the CUDA toolkit or set LAZYADAM_NVCC to the nvcc command")
    lib = _driver()
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
    lib = _driver()
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


def cache_key(source: Source) -> str:
    return cache.make_key({"target": name, "source": source.text, "header": source.header,
                           **identity()})


def build(source: Source, folder: Path) -> Path:
    """Compiles `source` into `folder/<symbol>.so` with nvcc; returns that path.

    Raises:
        CompilerNotFoundError: no nvcc.
        CompilationError: nvcc failed; carries its log and the source path.
    """
    path = nvcc()
    if path is None:
        raise CompilerNotFoundError(unavailable() or "nvcc not found")
    src = folder / source.filename
    src.write_text(source.text)
    (folder / f"{source.symbol}.h").write_text(source.header)
    out = folder / f"{source.symbol}.so"
    cmd = [path, *flags(), str(src), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=folder)
    log = f"$ {shlex.join(cmd)}\n{proc.stdout}{proc.stderr}"
    (folder / "build.log").write_text(log)
    if proc.returncode != 0 or not out.exists():
        raise CompilationError(f"nvcc failed to build {source.symbol} (exit {proc.returncode})",
                               log=log, log_path=folder / "build.log", source_path=src)
    return out


class DeviceArray:
    """A view of an array's `__cuda_array_interface__`: what the checks and the launchers need.

    Attributes:
        obj: the array it describes (kept alive while the view is).
        shape, dtype, ndim, size, ptr: as their names say; `ptr` is the device address.
        flags: `c_contiguous` and `writeable`, as numpy names them.
    """

    class _Flags:
        def __init__(self, c_contiguous: bool, writeable: bool):
            self.c_contiguous = c_contiguous
            self.writeable = writeable

    def __init__(self, obj: Any, what: str):
        interface = getattr(obj, "__cuda_array_interface__", None)
        if interface is None:
            raise TypeError(f"{what} must be a CUDA device array (an object with "
                            f"__cuda_array_interface__, e.g. a torch CUDA tensor, a CuPy array or a "
                            f"pycuda GPUArray), got {type(obj).__module__}.{type(obj).__name__}")
        self.obj = obj
        self.shape = tuple(int(n) for n in interface["shape"])
        self.dtype = np.dtype(interface["typestr"])
        self.ndim = len(self.shape)
        self.size = int(np.prod(self.shape, dtype=np.int64))
        self.ptr, readonly = interface["data"]
        strides = interface.get("strides")
        contiguous = strides is None or self.size <= 1 or tuple(strides) == _c_strides(
            self.shape, self.dtype.itemsize)
        self.flags = self._Flags(contiguous, not readonly)


def _c_strides(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    strides, step = [], itemsize
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def stream_handle(stream: Any, arrays: Sequence[DeviceArray]) -> int:
    """The raw `cudaStream_t` to launch on.

    `stream` may be None, an int handle, or a stream object of PyTorch (`.cuda_stream`), CuPy (`.ptr`)
    or pycuda (`.handle`). None means PyTorch's current stream for torch tensors, and otherwise the
    legacy default stream (0), which orders the launch after work on every blocking stream.

    Raises:
        TypeError: an object that is none of these.
    """
    if stream is None:
        first = arrays[0].obj
        if type(first).__module__.startswith("torch"):
            import torch  # only reached with torch tensors in hand
            return int(torch.cuda.current_stream(first.device).cuda_stream)
        return 0
    if isinstance(stream, (int, np.integer)) and not isinstance(stream, bool):
        return int(stream)
    for attr in ("cuda_stream", "ptr", "handle"):
        if hasattr(stream, attr):
            return int(getattr(stream, attr))
    raise TypeError(f"stream must be None, an int handle or a CUDA stream object, "
                    f"got {type(stream).__name__}")


class CudaKernel(LoadedKernel):
    """A compiled CUDA kernel, called on device arrays in place.

    Calls return once the work is queued on the stream; a checking sparse call first waits for its
    index check (the step itself runs on). The launchers run without the GIL (cffi releases it).

    Sparse kernels also run deferred (`record=`): the call waits for nothing, so that it can be
    captured in a CUDA graph; a bad index makes the step write nothing and is left in `record` (a
    zeroed device array of `RECORD_WORDS` int64), and every later deferred step given that record
    writes nothing either until `check(record)` reports it.
    """

    #: int64 words of a `lazyadam_index_record`.
    RECORD_WORDS = 4

    def __init__(self, spec: Spec, source: Source, path: Path):
        super().__init__(spec, source, path)
        self.multi_fn = None if spec.sparse else getattr(self.lib, f"{source.symbol}_multi")
        self._error = getattr(self.lib, f"{source.symbol}_error")
        # The cffi pointer type of each array: float *, double *, or uint16_t * for 16-bit storage.
        self._ctypes = {a: f"{CFFI_TYPES[spec.storage(a)]} *"
                        for a in ("var", "m", "v", "vmax", "grad")}
        self._itype = f"{spec.index_dtype}_t *"
        if spec.sparse:
            self._deferred = getattr(self.lib, f"{source.symbol}_deferred")
            self._with_workspace = getattr(self.lib, f"{source.symbol}_with_workspace")
            self._check = getattr(self.lib, f"{source.symbol}_check")
            self._workspace_size = getattr(self.lib, f"{source.symbol}_workspace_size")

    def __call__(self, var: Any, m: Any, v: Any, grad: Any, hp: HParams, vmax: Any = None,
                 stream: Any = None, record: Any = None, workspace: Any = None) -> None:
        """One step, in place. `grad` is an array (dense) or an `(indices, values)` pair (sparse).

        Args:
            var, m, v, vmax: device arrays (`__cuda_array_interface__`), C-contiguous.
            grad: a device array, or a pair of device arrays (indices, values).
            hp: this step's hyperparameters.
            stream: where to queue the work (see `stream_handle`).
            record: sparse only: run deferred, leaving a bad index in this device array (int64,
                `RECORD_WORDS` long, zeroed before first use) instead of waiting to check it.
            workspace: sparse only: a device array of at least `workspace_size(...)` bytes,
                256-byte aligned, for the step's scratch (else it is allocated on the stream), so
                that a caller can allocate every step's scratch before any step writes.

        Raises:
            TypeError, ValueError: a host array, a wrong dtype, shape or layout, too small a
                workspace, too many indices (nothing was written).
            IndexError: an index outside [0, var.shape[0]), naming the first (nothing was written).
            MemoryError: no device memory for the scratch (nothing was written).
            KernelError: the CUDA runtime reported an error.
        """
        state = [DeviceArray(a, n) for a, n in zip((var, m, v), ("var", "m", "v"))]
        dvmax = None if vmax is None else DeviceArray(vmax, "vmax")
        if self.spec.sparse:
            if not (isinstance(grad, tuple) and len(grad) == 2):
                raise TypeError("a sparse kernel takes its gradient as an (indices, values) pair")
            dgrad = (DeviceArray(grad[0], "indices"), DeviceArray(grad[1], "values"))
        else:
            if record is not None or workspace is not None:
                raise TypeError("record= and workspace= are for sparse kernels; a dense step "
                                "never waits")
            dgrad = DeviceArray(grad, "grad")
        check_arrays(self.spec, *state, dvmax, dgrad)
        arrays = state + ([dvmax] if dvmax is not None else [])
        handle = self.ffi.cast("cudaStream_t", stream_handle(stream, arrays))
        params = self.ffi.new("lazyadam_hparams *", hp.as_tuple())
        ptrs = [self.ffi.cast(self._ctypes[name], a.ptr)
                for name, a in zip(("var", "m", "v", "vmax"), arrays)]
        if not self.spec.sparse:
            self._raise_for(self.fn(*ptrs, self.ffi.cast(self._ctypes["grad"], dgrad.ptr),
                                    state[0].size,
                                    params, handle))
            return
        indices, values = dgrad
        rows = state[0].shape[0]
        row_size = int(np.prod(state[0].shape[1:], dtype=np.int64))
        args = (*ptrs, rows, row_size, self.ffi.cast(self._itype, indices.ptr),
                self.ffi.cast(self._ctypes["grad"], values.ptr), indices.shape[0], params)
        if workspace is None:
            space, size = self.ffi.NULL, 0
        else:
            dspace = DeviceArray(workspace, "workspace")
            space, size = self.ffi.cast("void *", dspace.ptr), dspace.size * dspace.dtype.itemsize
        if record is not None:
            self._raise_for(self._deferred(*args, space, size, self._record(record), handle))
        elif workspace is not None:
            self._raise_for(self._with_workspace(*args, space, size, handle))
        else:
            self._raise_for(self.fn(*args, handle))

    def workspace_size(self, rows: int, row_size: int, nnz: int) -> int:
        """Bytes of device scratch a sparse step of these sizes needs.

        Raises:
            TypeError: a dense kernel.
            ValueError: sizes the kernel refuses (negative, or nnz >= 2^31 - 1).
        """
        if not self.spec.sparse:
            raise TypeError(f"{self.source.symbol} is dense; only sparse steps take a workspace")
        size = self._workspace_size(rows, row_size, nnz)
        if size == 0 and nnz > 0:
            raise ValueError(f"{self.source.symbol} refuses rows={rows}, row_size={row_size}, "
                             f"nnz={nnz} (sizes must be >= 0, nnz < 2**31 - 1)")
        return int(size)

    def check(self, record: Any, stream: Any = None) -> None:
        """Waits for `stream`, then raises what deferred steps left in `record`, and clears it.

        Raises:
            IndexError: a deferred step found an index outside its table (it, and every deferred
                step after it with this record, wrote nothing).
        """
        if not self.spec.sparse:
            raise TypeError(f"{self.source.symbol} is dense; dense steps leave no record")
        drecord = self._record(record)
        handle = self.ffi.cast("cudaStream_t", stream_handle(stream, [DeviceArray(record, "record")]))
        self._raise_for(self._check(drecord, handle))

    def _record(self, record: Any):
        array = DeviceArray(record, "record")
        if array.dtype != np.dtype(np.int64) or array.size != self.RECORD_WORDS:
            raise TypeError(f"record must be a device array of {self.RECORD_WORDS} int64, got "
                            f"{array.size} {array.dtype}")
        if not array.flags.c_contiguous or not array.flags.writeable:
            raise ValueError("record must be a contiguous, writable device array")
        return self.ffi.cast("lazyadam_index_record *", array.ptr)

    def multi(self, variables: Sequence[Any], ms: Sequence[Any], vs: Sequence[Any],
              grads: Sequence[Any], hp: HParams, vmaxes: Sequence[Any] | None = None,
              stream: Any = None) -> None:
        """One dense step on many tensors with the same hyperparameters, 16 tensors per launch.

        Raises:
            TypeError: a sparse kernel, or as `__call__`.
            ValueError: lists of different lengths, or as `__call__`.
            KernelError: the CUDA runtime reported an error (earlier launches may have run).
        """
        if self.multi_fn is None:
            raise TypeError(f"{self.source.symbol} is sparse; multi() updates dense tensors")
        lists = [variables, ms, vs, grads] + ([vmaxes] if self.spec.amsgrad else [])
        if len({len(x) for x in lists}) != 1:
            raise ValueError(f"variables, ms, vs, grads{', vmaxes' if self.spec.amsgrad else ''} must "
                             f"have one entry per tensor; got lengths {[len(x) for x in lists]}")
        if not self.spec.amsgrad and vmaxes is not None:
            raise TypeError("vmaxes is required by amsgrad kernels and only by them")
        names = ("var", "m", "v", "grad", "vmax")
        columns = [[DeviceArray(a, f"{names[c]}[{k}]") for k, a in enumerate(col)]
                   for c, col in enumerate(lists)]
        for k in range(len(variables)):
            vmax = columns[4][k] if self.spec.amsgrad else None
            check_arrays(self.spec, columns[0][k], columns[1][k], columns[2][k], vmax,
                         columns[3][k])
        if not variables:
            return
        state = [columns[0], columns[1], columns[2]] + ([columns[4]] if self.spec.amsgrad else [])
        handle = self.ffi.cast("cudaStream_t", stream_handle(stream, columns[0]))
        ctypes = [self._ctypes[name] for name in ("var", "m", "v", "vmax")]
        ptr_arrays = [self.ffi.new(f"{ctype}[]", [self.ffi.cast(ctype, a.ptr) for a in col])
                      for ctype, col in zip(ctypes, state)]
        grad_type = self._ctypes["grad"]
        grad_ptrs = self.ffi.new(f"const {grad_type}[]", [self.ffi.cast(grad_type, a.ptr)
                                                          for a in columns[3]])
        sizes = self.ffi.new("int64_t[]", [a.size for a in columns[0]])
        params = self.ffi.new("lazyadam_hparams *", hp.as_tuple())
        self._raise_for(self.multi_fn(len(variables), *ptr_arrays, grad_ptrs, sizes, params, handle))

    def _raise_for(self, status: int) -> None:
        if status == self.lib.LAZYADAM_OK:
            return
        detail = self.ffi.string(self._error()).decode()
        if status == self.lib.LAZYADAM_EINDEX:
            raise IndexError(detail)
        if status == self.lib.LAZYADAM_ENOMEM:
            raise MemoryError(f"{self.source.symbol}: out of device memory for its scratch "
                              f"({detail})")
        if status == self.lib.LAZYADAM_ESIZE and self.spec.sparse:
            raise ValueError(f"{self.source.symbol}: {detail}")
        raise KernelError(f"{self.source.symbol} returned {status}"
                          + (f": {detail}" if status == self.lib.LAZYADAM_ECUDA else ""))


def load(spec: Spec) -> CudaKernel:
    """The compiled kernel for `spec`: from this process, the disk cache, or a fresh nvcc build.

    Raises:
        TargetUnavailableError: no nvcc, driver or GPU (the message says which).
        CompilationError: nvcc failed.
    """
    problem = unavailable()
    if problem:
        raise TargetUnavailableError(problem)
    source = generate(spec.validate(), "cuda")
    return cache.load(cache_key(source), f"{source.symbol}.so",
                      lambda folder: build(source, folder),
                      lambda path: CudaKernel(spec, source, path))
