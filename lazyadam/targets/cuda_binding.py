"""CUDA kernels bound to one parameter's state arrays (`CudaBinding`), and multi-tensor launches of
a dense kernel over bound calls (`MultiPlan`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ..interop.device import DeviceArray, locate, stream_handle, torch_kind
from .base import RuleHParams, check_array, check_state

if TYPE_CHECKING:
    from .cuda import CudaKernel


class CudaBinding:
    """A CUDA kernel bound to one parameter's state arrays (`CudaKernel.bind`).

    The state arrays (var and those of the rule that the kernel keeps) are checked once, here:
    dtypes, shapes, layout, no overlap, one device; their pointers are made once. A step then
    checks only the gradient (its dtype, shape, layout, device, and that it shares no memory with
    the state), and `current()` tells in a few hundred nanoseconds an array whether the state
    arrays are still where they were (the same objects, at the same address, with the same shape
    and dtype): a PyTorch tensor given new storage (`param.data = ...`, `resize_`) is not, and its
    owner binds again rather than launch on a stale pointer. Calling a binding that is no longer
    current raises.

    Attributes:
        kernel: the `CudaKernel`.
        shape, size, device: the parameter's shape, element count and GPU ordinal (None unknown).
        spans: `(first byte, past the last byte)` of each state array.
    """

    __slots__ = ("kernel", "batch", "arrays", "keys", "torch", "ptrs", "spans", "shape", "size",
                 "rows", "row_size", "device", "grad_dtype", "index_dtype", "home")

    def __init__(self, kernel: CudaKernel, var: Any, states: Mapping[str, Any]):
        spec = kernel.spec
        given = {"var": DeviceArray(var, "var")} | {
            name: None if array is None else DeviceArray(array, name)
            for name, array in states.items()}
        names = tuple(check_state(spec, given["var"],
                                  {name: given[name] for name in states}))
        views = tuple(given[name] for name in names)
        arrays = (var, *(states[name] for name in names[1:]))
        devices = {view.device for view in views} - {None}
        if len(devices) > 1:
            raise ValueError(f"the state arrays are on CUDA devices {sorted(devices)}; a kernel "
                             "updates arrays on one device")
        self.kernel = kernel
        self.arrays = arrays
        self.keys = tuple(locate(a) for a in arrays)
        #: Every state array is a PyTorch tensor: `current()` reads their attributes inline.
        self.torch = all(torch_kind(type(a)) for a in arrays)
        #: A view of var, for the stream that its library makes current.
        self.home = views[0]
        ffi = kernel.ffi
        self.ptrs = tuple(ffi.cast(kernel._ctypes[n], view.ptr) for n, view in zip(names, views))
        self.spans = tuple((view.ptr, view.ptr + view.nbytes) for view in views)
        self.shape, self.size = views[0].shape, views[0].size
        self.device = devices.pop() if devices else None
        #: The launcher batches the dense steps of one kernel on one device in one plan.
        self.batch = (kernel, self.device)
        self.rows = self.shape[0] if self.shape else 1
        self.row_size = int(np.prod(self.shape[1:], dtype=np.int64))
        self.grad_dtype = spec.storage("grad")
        self.index_dtype = spec.index_dtype

    def current(self) -> bool:
        """True while every state array is the object, at the address, of the shape and dtype
        it was bound with."""
        if self.torch:
            for array, (ptr, shape, dtype) in zip(self.arrays, self.keys):
                if array.data_ptr() != ptr or array.dtype is not dtype or array.shape != shape:
                    return False
            return True
        for array, key in zip(self.arrays, self.keys):
            if locate(array) != key:
                return False
        return True

    def stream(self, stream: Any = None) -> int:
        """The stream handle to launch on (see `stream_handle`; None: the current one of the
        state's library)."""
        return stream_handle(stream, [self.home])

    def check_grad(self, grad: Any, what: str = "grad") -> Any:
        """Views of a gradient this binding's kernel can take: a `DeviceArray` (dense), or a pair
        of them (sparse `(indices, values)`).

        Raises:
            TypeError: not a device array, or of the wrong dtype; ValueError: of the wrong shape,
                not C-contiguous, on another device, or sharing memory with the state.
        """
        if not self.kernel.spec.sparse:
            view = DeviceArray(grad, what)
            self._check_part(what, view, self.grad_dtype, self.shape)
            return view
        if not (isinstance(grad, tuple) and len(grad) == 2):
            raise TypeError("a sparse kernel takes its gradient as an (indices, values) pair")
        if not self.shape:
            raise ValueError("a sparse kernel needs var of rank >= 1 (rows first)")
        indices, values = DeviceArray(grad[0], "indices"), DeviceArray(grad[1], "values")
        if indices.ndim != 1:
            raise ValueError(f"indices must be 1-d, got shape {indices.shape}")
        self._check_part("indices", indices, self.index_dtype, indices.shape)
        self._check_part("values", values, self.grad_dtype, indices.shape + self.shape[1:])
        return indices, values

    def _check_part(self, name: str, view: DeviceArray, dtype: str, shape: tuple) -> None:
        check_array(name, view, dtype)
        if view.shape != shape:
            raise ValueError(f"{name} has shape {view.shape}, expected {shape}")
        if view.device is not None and self.device is not None and view.device != self.device:
            raise ValueError(f"{name} is on CUDA device {view.device}, the state on {self.device}")
        start, end = view.ptr, view.ptr + view.nbytes
        if view.size and any(start < b1 and b0 < end for b0, b1 in self.spans):
            raise ValueError(f"{name} shares memory with the state arrays; each must be an array "
                             "of its own")

    def __call__(self, grad: Any, hp: RuleHParams | tuple | None, stream: Any = None,
                 record: Any = None, workspace: Any = None, device_hparams: Any = None) -> None:
        """One step: the gradient checked (`check_grad`), then the launches.

        Args: as `CudaKernel.__call__` (`hp` may be an `HParams.as_tuple()` tuple).

        Raises:
            RuntimeError: the state arrays are no longer where they were bound.
            TypeError, ValueError, IndexError, MemoryError, KernelError: as `CudaKernel.__call__`.
        """
        if not self.current():
            raise RuntimeError(f"{self.kernel.source.symbol}: a state array moved or changed "
                               "since it was bound (new storage, shape or dtype); bind again")
        if self.kernel.spec.sparse and device_hparams is not None and record is None:
            raise TypeError("device_hparams= takes a deferred sparse step (record=): a checking "
                            "step waits, and cannot be replayed from a CUDA graph")
        one_source(hp, device_hparams)
        views = self.check_grad(grad)
        handle = stream_handle(stream, [views[0] if isinstance(views, tuple) else views])
        kernel = self.kernel
        if isinstance(hp, RuleHParams):
            hp = hp.as_tuple()
        table = None if device_hparams is None else kernel.device_hparams_pointer(device_hparams)
        if not kernel.spec.sparse:
            kernel.plan([self]).launch([views.ptr], [hp] if table is None else table, None, handle)
            return
        space = None
        if workspace is not None:
            space = DeviceArray(workspace, "workspace")
        if record is None:
            self.checked(views, hp, handle, space)
        else:
            self.deferred(views, hp if table is None else table, handle, space, kernel._record(record))

    def deferred(self, grad: tuple[DeviceArray, DeviceArray], hp: tuple | Any, stream: int,
                 workspace: DeviceArray | None, record: Any) -> None:
        """The sparse step that waits for nothing, on checked views (`check_grad`): `hp` is a
        tuple of hyperparameters, or a pointer to its struct in device memory; `record` a
        `lazyadam_index_record *`."""
        kernel = self.kernel
        ffi = kernel.ffi
        on_device = not isinstance(hp, tuple)
        params = hp if on_device else ffi.new(f"{kernel.hparams_type} *", hp)
        space, size = ((ffi.NULL, 0) if workspace is None else
                       (ffi.cast("void *", workspace.ptr), workspace.nbytes))
        indices, values = grad
        kernel._raise_for(kernel._deferred(
            *self.ptrs, self.rows, self.row_size, ffi.cast(kernel._itype, indices.ptr),
            ffi.cast(kernel._ctypes["grad"], values.ptr), indices.size, params, int(on_device),
            space, size, record, ffi.cast("cudaStream_t", stream)))

    def checked(self, grad: tuple[DeviceArray, DeviceArray], hp: tuple, stream: int,
                workspace: DeviceArray | None) -> None:
        """The checking sparse step (it waits for its index check alone), on checked views."""
        kernel = self.kernel
        ffi = kernel.ffi
        indices, values = grad
        args = (*self.ptrs, self.rows, self.row_size, ffi.cast(kernel._itype, indices.ptr),
                ffi.cast(kernel._ctypes["grad"], values.ptr), indices.size,
                ffi.new(f"{kernel.hparams_type} *", hp))
        handle = ffi.cast("cudaStream_t", stream)
        if workspace is None:
            kernel._raise_for(kernel.fn(*args, handle))
        else:
            kernel._raise_for(kernel._with_workspace(*args, ffi.cast("void *", workspace.ptr),
                                                     workspace.nbytes, handle))


class MultiPlan:
    """Multi-tensor launches of one dense kernel over bound calls (`CudaKernel.plan`).

    The host tables of the `<symbol>_multi_hparams` launcher (each tensor's state pointers and
    size) are made once, here; a launch adds tables of the gradients' addresses and of which
    hyperparameter entry each tensor takes (its own, so that threads may launch one plan at once),
    and the launcher packs `TENSORS_PER_LAUNCH` tensors into each kernel.
    A plan is valid while its bindings are `current()`: its owner makes a new one when a binding
    is replaced.
    """

    __slots__ = ("kernel", "bindings", "count", "columns", "sizes")

    def __init__(self, kernel: CudaKernel, bindings: Sequence[CudaBinding]):
        if kernel.spec.sparse:
            raise TypeError(f"{kernel.source.symbol} is sparse; multi-tensor launches are dense")
        ffi = kernel.ffi
        self.kernel, self.bindings, self.count = kernel, tuple(bindings), len(bindings)
        self.columns = [ffi.new(f"{kernel._ctypes[name]}[]", [b.ptrs[k] for b in bindings])
                        for k, name in enumerate(kernel.arrays)]
        # Each tensor's size: its element count, or for a kernel that runs rows (`per_row`) its
        # rows and row size.
        self.sizes = ((ffi.new("int64_t[]", [b.rows for b in bindings]),
                       ffi.new("int64_t[]", [b.row_size for b in bindings]))
                      if kernel.per_row else (ffi.new("int64_t[]", [b.size for b in bindings]),))

    def launch(self, grads: Sequence[int], hparams: Sequence[tuple] | Any,
               which: Sequence[int] | None, stream: int) -> None:
        """Queues the step of every tensor of the plan.

        Args:
            grads: each tensor's gradient address (checked by the caller: dtype, size, layout).
            hparams: hyperparameter entries in host memory (tuples in `HParams` order), or a
                pointer to the struct in device memory, read when the kernels run.
            which: each tensor's entry of `hparams` (None: entry 0 for all).
            stream: the `cudaStream_t` handle.

        Raises:
            KernelError: the launcher failed (earlier launches of the plan may have run).
        """
        kernel = self.kernel
        ffi = kernel.ffi
        addresses = ffi.new("uintptr_t[]", grads)
        on_device = not isinstance(hparams, (list, tuple))
        table = hparams if on_device else ffi.new(f"{kernel.hparams_type}[]", hparams)
        kernel._raise_for(kernel._multi_hparams(
            self.count, *self.columns, ffi.cast(f"{kernel._ctypes['grad']} *", addresses),
            *self.sizes, table, ffi.NULL if which is None else ffi.new("int32_t[]", which),
            int(on_device), ffi.cast("cudaStream_t", stream)))


def one_source(hp: Any, device_hparams: Any) -> None:
    """A step takes its hyperparameters from `hp` or from `device_hparams`: exactly one.

    Raises:
        TypeError: both or neither given.
    """
    if (hp is None) == (device_hparams is None):
        raise TypeError("give the step's hyperparameters as hp or as device_hparams (one of "
                        f"them), got {'both' if hp is not None else 'neither'}")


