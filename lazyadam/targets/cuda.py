"""The CUDA target: kernels and their host launchers built by nvcc, loaded through cffi.

Each kernel source (`render_cuda`) holds the `__global__` kernels and `extern "C"` host launchers with
the C ABI plus a trailing `cudaStream_t`. nvcc builds it into a shared library with the CUDA runtime
linked statically; the runtime API works in the device's primary context (or in the context the
calling thread has made current), so device pointers from PyTorch, CuPy or pycuda work side by side.
Arrays are accepted from any library through `__cuda_array_interface__` (`lazyadam.interop.device`).

The launch sequence lives in the launchers, in C++, so that the host-emulation build of the tests
(tests/cuda_emulation) runs exactly the code a GPU runs: kernels and launchers alike.

The toolchain (nvcc, its flags and archs, and the environment variables that choose them) is in
`nvcc`; a kernel bound to one parameter's arrays, and multi-tensor launches over bound kernels, in
`cuda_binding`; the cached build flow that `CudaTarget` shares with the C target in `target.Target`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..codegen.render import Source
from ..codegen.spec import SpecBase
from ..errors import CompilerNotFoundError, KernelError, TargetUnavailableError
from ..interop.device import DeviceArray, stream_handle
from . import nvcc
from ..rules.adam import ADAM
from .base import (CFFI_TYPES, LoadedKernel, RuleHParams, call_arguments, check_arrays,
                   check_sizes, state_arrays)
from .cuda_binding import CudaBinding, MultiPlan, one_source
from .target import Target

#: Bytes of one `lazyadam_hparams` (LazyAdam's eight doubles, then seed and step as uint64), as
#: device memory that the `_hparams` launchers read holds it; a kernel of any rule says its own
#: struct's size as `hparams_bytes`.
HPARAMS_BYTES = 8 * len(ADAM.fields)


class CudaKernel(LoadedKernel):
    """A compiled CUDA kernel, called on device arrays in place.

    Calls return once the work is queued on the stream; a checking sparse call first waits for its
    index check (the step itself runs on). The launchers run without the GIL (cffi releases it).

    Sparse kernels also run deferred (`record=`): the call waits for nothing, so that it can be
    captured in a CUDA graph; a bad index makes the step write nothing and is left in `record` (a
    zeroed device array of `RECORD_WORDS` int64), and every later deferred step given that record
    writes nothing either until `check(record)` reports it.

    Hyperparameters in device memory (`device_hparams=`, filled by `store_hparams`) are read by the
    kernels when they run, not when they are queued: a step captured in a CUDA graph takes the values
    stored there before each replay. `bind` checks a parameter's state arrays once, for calls that
    then cost a launch (see `CudaBinding`); `plan` makes the pointer tables of multi-tensor launches
    over bound calls once (`MultiPlan`).
    """

    #: int64 words of a `lazyadam_index_record`.
    RECORD_WORDS = 4

    def __init__(self, spec: SpecBase, source: Source, path: Path):
        super().__init__(spec, source, path)
        symbol = source.symbol
        self._error = getattr(self.lib, f"{symbol}_error")
        self._store = getattr(self.lib, f"{symbol}_store_hparams")
        # The cffi pointer type of each array: float *, double *, or uint16_t * for 16-bit storage.
        self._ctypes = {a: f"{CFFI_TYPES[spec.storage(a)]} *" for a in (*self.arrays, "grad")}
        self._itype = f"{spec.index_dtype}_t *"
        if spec.sparse:
            self._deferred = getattr(self.lib, f"{symbol}_deferred_hparams")
            self._with_workspace = getattr(self.lib, f"{symbol}_with_workspace")
            self._check = getattr(self.lib, f"{symbol}_check")
            self._workspace_size = getattr(self.lib, f"{symbol}_workspace_size")
        else:
            self._multi_hparams = getattr(self.lib, f"{symbol}_multi_hparams")

    def __call__(self, var: Any, *args: Any, stream: Any = None, record: Any = None,
                 workspace: Any = None, device_hparams: Any = None, **named: Any) -> None:
        """One step, in place: `kernel(var, <state arrays>, grad, hp)`, e.g. LazyAdam's
        `kernel(var, m, v, grad, hp, vmax=None)` (see `base.call_arguments`).

        Args:
            var, args, named: var, the rule's state arrays, the gradient and the hyperparameters.
                Arrays are device arrays (`__cuda_array_interface__`), C-contiguous; the gradient
                is one, or a pair of them (indices, values); the hyperparameters are the rule's
                `HParams` (None with `device_hparams`).
            stream: where to queue the work (see `stream_handle`).
            record: sparse only: run deferred, leaving a bad index in this device array (int64,
                `RECORD_WORDS` long, zeroed before first use) instead of waiting to check it.
            workspace: sparse only: a device array of at least `workspace_size(...)` bytes,
                256-byte aligned, for the step's scratch (else it is allocated on the stream), so
                that a caller can allocate every step's scratch before any step writes.
            device_hparams: a device array of at least `hparams_bytes` bytes holding the step's
                hyperparameter struct (see `store_hparams`), read when the kernels run; sparse
                steps take it only deferred.

        Raises:
            TypeError, ValueError: a host array, a wrong dtype, shape or layout, too small a
                workspace, too many indices (nothing was written).
            IndexError: an index outside [0, var.shape[0]), naming the first (nothing was written).
            MemoryError: no device memory for the scratch (nothing was written).
            KernelError: the CUDA runtime reported an error.
        """
        if not self.spec.sparse and (record is not None or workspace is not None):
            raise TypeError("record= and workspace= are for sparse kernels; a dense step never "
                            "waits")
        states, grad, hp = call_arguments(self.spec, args, named)
        views = {n: None if a is None else DeviceArray(a, n) for n, a in states.items()}
        if self.spec.sparse:
            if not (isinstance(grad, tuple) and len(grad) == 2):
                raise TypeError("a sparse kernel takes its gradient as an (indices, values) pair")
            dgrad = (DeviceArray(grad[0], "indices"), DeviceArray(grad[1], "values"))
        else:
            dgrad = DeviceArray(grad, "grad")
        check_arrays(self.spec, DeviceArray(var, "var"), views, dgrad)
        binding = self.bind(var, **states)
        binding(grad, hp, stream=stream, record=record, workspace=workspace,
                device_hparams=device_hparams)

    def bind(self, var: Any, *state: Any, **named: Any) -> CudaBinding:
        """This kernel bound to one parameter's state arrays, in the rule's order or by name
        (LazyAdam's `bind(var, m, v, vmax=None)`; see `CudaBinding`).

        Raises:
            TypeError, ValueError: as `__call__`, for the state arrays.
        """
        return CudaBinding(self, var, state_arrays(self.spec, state, named))

    def plan(self, bindings: Sequence[CudaBinding]) -> MultiPlan:
        """Multi-tensor launches over dense bound calls of this kernel (see `MultiPlan`)."""
        return MultiPlan(self, bindings)

    def store_hparams(self, device: Any, hparams: Sequence[RuleHParams | tuple], stream: Any = None,
                      offset: int = 0) -> None:
        """Copies `hparams` into the device array `device`, from entry `offset` on, in stream
        order and without waiting (the values travel as launch arguments).

        Raises:
            ValueError: `device` holds fewer than `offset + len(hparams)` entries.
        """
        view, size = DeviceArray(device, "device_hparams"), self.hparams_bytes
        if view.nbytes < (offset + len(hparams)) * size:
            raise ValueError(f"device_hparams holds {view.nbytes} bytes; {offset + len(hparams)} "
                             f"entries take {(offset + len(hparams)) * size}")
        entries = [hp.as_tuple() if isinstance(hp, RuleHParams) else hp for hp in hparams]
        self.store_at(view.ptr + offset * size, entries,
                      stream_handle(stream, [view]))

    def store_at(self, address: int, entries: Sequence[tuple], stream: int) -> None:
        """`store_hparams` to a device address, for callers that checked it (the runtime)."""
        ffi = self.ffi
        self._raise_for(self._store(ffi.cast(f"{self.hparams_type} *", address),
                                    ffi.new(f"{self.hparams_type}[]", list(entries)), len(entries),
                                    ffi.cast("cudaStream_t", stream)))

    def device_hparams_pointer(self, device_hparams: Any) -> Any:
        """The pointer to the hyperparameter struct of a device array of hyperparameters.

        Raises:
            ValueError: fewer than `hparams_bytes` bytes, or misaligned.
        """
        view = DeviceArray(device_hparams, "device_hparams")
        if view.nbytes < self.hparams_bytes or view.ptr % 8:
            raise ValueError(f"device_hparams must hold {self.hparams_bytes} bytes at an 8-byte "
                             f"aligned address, got {view.nbytes} at {view.ptr:#x}")
        return self.ffi.cast(f"{self.hparams_type} *", view.ptr)

    def workspace_size(self, rows: int, row_size: int, nnz: int) -> int:
        """Bytes of device scratch a sparse step of these sizes needs.

        Raises:
            TypeError: a dense kernel.
            ValueError: sizes the kernel refuses (negative, or nnz >= 2^31 - 1).
        """
        if not self.spec.sparse:
            raise TypeError(f"{self.source.symbol} is dense; only sparse steps take a workspace")
        check_sizes(rows, row_size, nnz)
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
        self._record(record)
        view = DeviceArray(record, "record")
        self.check_at(view.ptr, stream_handle(stream, [view]))

    def check_at(self, address: int, stream: int) -> None:
        """`check` of the record at a device address, for callers that made it (the runtime)."""
        self._raise_for(self._check(self.ffi.cast("lazyadam_index_record *", address),
                                    self.ffi.cast("cudaStream_t", stream)))

    def _record(self, record: Any):
        array = DeviceArray(record, "record")
        if array.dtype != np.dtype(np.int64) or array.size != self.RECORD_WORDS:
            raise TypeError(f"record must be a device array of {self.RECORD_WORDS} int64, got "
                            f"{array.size} {array.dtype}")
        if not array.flags.c_contiguous or not array.flags.writeable:
            raise ValueError("record must be a contiguous, writable device array")
        return self.ffi.cast("lazyadam_index_record *", array.ptr)

    def multi(self, variables: Sequence[Any], *args: Any, stream: Any = None,
              device_hparams: Any = None, **named: Sequence[Any]) -> None:
        """One dense step on many tensors with the same hyperparameters (`hp`, or a device array
        of them, `device_hparams`), in launches of up to `TENSORS_PER_LAUNCH` tensors:
        `multi(variables, <a list per state array>, grads, hp)`, the lists of switched state
        arrays also by their plural names (`State.names`), e.g. LazyAdam's
        `multi(variables, ms, vs, grads, hp, vmaxes=None)`.

        With stochastic rounding every tensor hashes the same seed at its own element positions,
        so tensors of one shape get the same random bits; to round each with its own seed (as the
        optimizers do), give each its own entry: `plan(...).launch(grads, entries, which, ...)`.

        Raises:
            TypeError: a sparse kernel, or as `__call__`.
            ValueError: lists of different lengths, or as `__call__`.
            KernelError: the CUDA runtime reported an error (earlier launches may have run).
        """
        if self.spec.sparse:
            raise TypeError(f"{self.source.symbol} is sparse; multi() updates dense tensors")
        plurals = {s.names.get("plural", f"{s.name}s"): s for s in self.spec.RULE.state}
        unknown = sorted(set(named) - set(plurals))
        if unknown:
            raise TypeError(f"multi() got an unexpected keyword argument {unknown[0]!r}")
        lists, grads, hp = call_arguments(
            self.spec, args, {plurals[plural].name: value for plural, value in named.items()})
        one_source(hp, device_hparams)
        for plural, state in plurals.items():
            if state.when is not None and (lists[state.name] is not None) != self.spec.flag(
                    state.when):
                raise TypeError(f"{plural} is required by {state.when} kernels and only by them")
        required = [(plural, lists[s.name]) for plural, s in plurals.items() if s.when is None]
        switched = [(plural, lists[s.name]) for plural, s in plurals.items()
                    if s.when is not None and self.spec.flag(s.when)]
        given = [("variables", variables), *required, ("grads", grads), *switched]
        if len({len(x) for _, x in given}) != 1:
            raise ValueError(f"{', '.join(name for name, _ in given)} must have one entry per "
                             f"tensor; got lengths {[len(x) for _, x in given]}")
        names = self.arrays[1:]
        bindings = [self.bind(var, **{name: lists[name][k] for name in names})
                    for k, var in enumerate(variables)]
        views = [binding.check_grad(grad, f"grads[{k}]")
                 for k, (binding, grad) in enumerate(zip(bindings, grads))]
        if not bindings:
            return
        handle = stream_handle(stream, [views[0]])
        if device_hparams is None:
            self.plan(bindings).launch([g.ptr for g in views], [hp.as_tuple()], None, handle)
        else:
            table = self.device_hparams_pointer(device_hparams)
            self.plan(bindings).launch([g.ptr for g in views], table, None, handle)

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


class CudaTarget(Target):
    """The CUDA target: nvcc with `nvcc.flags()`, `CudaKernel`s (see `Target`)."""

    name = "cuda"
    environment = nvcc.ENVIRONMENT
    unavailable_error = TargetUnavailableError
    #: The sources guard what they share, and nvcc spends most of a call on the CUDA headers: a
    #: batch of 4 built as one unit took 14.6 CPU-s, as 4 files of one call 40.6.
    one_unit = True
    unavailable = staticmethod(nvcc.unavailable)

    def key_parts(self) -> dict:
        return nvcc.identity()

    def command(self, src: Path, out: Path) -> list[str]:
        path = nvcc.nvcc()
        if path is None:
            raise CompilerNotFoundError(nvcc.unavailable() or "nvcc not found")
        return [path, *nvcc.flags(), str(src), "-o", str(out)]

    def compiler_name(self) -> str:
        return "nvcc"

    def kernel(self, spec: SpecBase, source: Source, path: Path) -> CudaKernel:
        return CudaKernel(spec, source, path)


TARGET = CudaTarget()
