"""What both optimizers share: one parameter's slot, the checks of its gradients, the kernel calls.

`lazyadam.LazyAdam` (MindSpore's API, numpy arrays and device arrays) and `lazyadam.torch.LazyAdam`
(a `torch.optim.Optimizer`) keep one `Slot` per parameter and step in the same two phases, so that a
failed step changes nothing:

    check    `Slot.prepare(position, grad)` for every gradient: dtype, shape, device, index range;
             compiles a missing kernel and binds it to the parameter's arrays; writes nothing
    apply    `apply(work, hparams)`: one kernel call per prepared gradient, with the `HParams`
             fields its slot's `group` selects

`spec_for` chooses a parameter's kernel spec from its dtype and the optimizer's flags; the gradient
then picks the dense or the lazy sparse kernel (and the index dtype, and for a half-precision
parameter the gradient dtype: its own or float32).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import numpy as np

from .. import targets
from ..codegen.spec import GRAD_DTYPES, HALF_DTYPES, Spec
from ..dtypes import storage_name
from ..targets.base import HParams, index_error
from ..targets.cuda import DeviceArray
from .parameter import (Parameter, RowTensor, astype, centralized, contiguous, device_of, dtype_of,
                        empty_bytes, index_bounds, is_device_array, is_out_of_memory, to_host)

FLOAT_DTYPES = ("float32", "float64", "bfloat16", "float16")
#: Stochastic rounding of parameter number i (in the order of gradients) hashes the optimizer's seed
#: plus i times this odd constant (2^64 / the golden ratio), modulo 2^64: parameters of one shape
#: draw unrelated bits.
SEED_STRIDE = 0x9E3779B97F4A7C15
INDEX_DTYPES = {np.dtype(np.int32): "int32", np.dtype(np.int64): "int64"}


def target_for(data: Any) -> str:
    """The kernel target for a parameter's array: "cuda" for device arrays, else "c"."""
    return "cuda" if is_device_array(data) else "c"


def spec_for(param: Parameter, *, decayed: bool, decoupled: bool, nesterov: bool,
             use_locking: bool, amsgrad: bool, maximize: bool, eps_mode: str,
             state_dtype: str | None = None, rounding: str = "nearest") -> Spec:
    """The kernel spec of `param` (dense; each gradient picks dense or sparse and the index dtype).

    Args:
        param: the parameter; its dtype is the kernel's.
        decayed: whether weight decay applies to it; `decoupled` then picks AdamW's form over L2.
        nesterov, use_locking, amsgrad, maximize, eps_mode: the spec's flags.
        state_dtype, rounding: the state dtype and rounding of a bfloat16 or float16 parameter
            (float32 and float64 parameters keep their state in their own dtype, round nothing).

    Raises:
        TypeError: a parameter that is not float32, float64, bfloat16 or float16.
    """
    dtype = storage_name(param.dtype)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"parameter {param.name!r} has dtype {param.dtype}; LazyAdam updates "
                        "float32, float64, bfloat16 or float16 parameters")
    decay = ("decoupled" if decoupled else "l2") if decayed else "none"
    half = dtype in HALF_DTYPES
    return Spec(nesterov=nesterov, use_locking=use_locking, decay=decay, amsgrad=amsgrad,
                maximize=maximize, eps_mode=eps_mode, dtype=dtype,
                state_dtype=state_dtype if half else None,
                rounding=rounding if half else "nearest")


def check_seed(value: Any) -> int:
    """A seed of stochastic rounding: an int (not a bool) in [0, 2**64).

    Raises:
        TypeError: not an int; ValueError: out of range.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(value).__name__}: {value!r}")
    if not 0 <= value < 2**64:
        raise ValueError(f"seed must lie in [0, 2**64), got {value!r}")
    return int(value)


def apply(work: list[tuple[Any, ...]], hparams: Any) -> None:
    """Runs the prepared kernel calls; `hparams[group]` holds the fields of `HParams` in order.

    `hparams` is a list (one entry per group) or a dict (keyed as the slots' `group`).
    """
    for call, grad, group in work:
        call(grad, hparams[group])


def bind(kernel: Any, var: Any, m: Any, v: Any, vmax: Any) -> Callable[..., None]:
    """`step(grad, hparams)`: one step of `kernel` on a parameter's arrays (sparse steps also take
    `workspace=`, their scratch, allocated by the caller).

    The runtime has already checked every argument, so a target that can skip the checks offers
    `kernel.bind` (the C target: pointers made once, about 2 us a call); others get their public call.
    """
    if hasattr(kernel, "bind"):
        return kernel.bind(var, m, v, vmax)

    def step(grad: Any, hparams: tuple, **scratch: Any) -> None:
        kernel(var, m, v, grad, HParams(*hparams), vmax=vmax, **scratch)
    return step


def _seeded(step: Callable[..., None], offset: int) -> Callable[..., None]:
    """`step` rounding with its parameter's own seed: the one in the hparams tuple (field 8) plus
    `offset`, modulo 2**64."""
    def seeded(grad: Any, hparams: tuple, **scratch: Any) -> None:
        step(grad, hparams[:8] + ((hparams[8] + offset) % 2**64, hparams[9]), **scratch)
    return seeded


class Slot:
    """One parameter with its moments, kernel spec and bound kernel calls.

    `group` says which entry of a step's hparams the slot's kernel takes: the parameter group for
    `lazyadam.LazyAdam`, the parameter's own entry for the torch optimizer (whose bias correction
    counts steps per parameter).
    """

    __slots__ = ("param", "dtype", "on_device", "group", "centralize", "spec", "target", "m", "v",
                 "vmax", "written", "calls", "grad_dtypes", "seed_offset")

    def __init__(self, param: Parameter, group: int, centralize: bool, spec: Spec, target: str,
                 m: Parameter, v: Parameter, vmax: Parameter | None = None, seed_offset: int = 0):
        self.param, self.group, self.centralize = param, group, centralize
        self.dtype, self.on_device = param.dtype, param.on_device  # fixed with the array object
        # Gradients come in the parameter's dtype, or in float32 for a half-precision parameter.
        self.grad_dtypes = (spec.dtype,) + (GRAD_DTYPES if spec.dtype in HALF_DTYPES else ())
        #: Added to the seed in the hparams (field 8) by a stochastic call (see `SEED_STRIDE`).
        self.seed_offset = seed_offset
        self.spec, self.target = spec, target
        self.m, self.v, self.vmax = m, v, vmax
        #: (Parameter, array) of each array a step writes, for the gradients' overlap check.
        self.written = tuple((a, a.data) for a in (param, m, v, vmax) if a is not None)
        self.calls: dict[tuple[bool, str, str], tuple[Any, Callable[..., None]]] = {}

    def call(self, sparse: bool, index_dtype: str = "int64",
             grad_dtype: str | None = None) -> Callable[..., None]:
        """The bound kernel call for a dense or sparse gradient; compiled on first use."""
        return self.kernel_and_call(sparse, index_dtype, grad_dtype)[1]

    def kernel_and_call(self, sparse: bool, index_dtype: str = "int64",
                        grad_dtype: str | None = None) -> tuple[Any, Callable[..., None]]:
        """The kernel for a dense or sparse gradient (of `grad_dtype`, by default the
        parameter's) and its call bound to this slot's arrays."""
        key = (sparse, index_dtype, grad_dtype or self.spec.dtype)
        found = self.calls.get(key)
        if found is None:
            spec = dataclasses.replace(self.spec, sparse=sparse, index_dtype=index_dtype,
                                       grad_dtype=key[2])
            kernel = targets.compile(spec, self.target)
            vmax = self.vmax.data if self.vmax is not None else None
            call = bind(kernel, self.param.data, self.m.data, self.v.data, vmax)
            if spec.rounding == "stochastic" and self.seed_offset:
                call = _seeded(call, self.seed_offset)
            found = self.calls[key] = (kernel, call)
        return found

    def _grad_dtype(self, where: str, what: str, array: Any) -> str:
        """The storage dtype of a gradient (or its values), if this parameter takes it.

        Raises:
            TypeError: another dtype, naming the ones the parameter takes.
        """
        dtype = storage_name(_dtype(where, what, array))
        if dtype not in self.grad_dtypes:
            subject = f"{where}: {what} have" if what else f"{where} has"
            takes = " or ".join(self.grad_dtypes)
            raise TypeError(f"{subject} dtype {dtype}, the parameter has {self.dtype}"
                            + (f" (a {self.dtype} parameter takes {takes} gradients)"
                               if len(self.grad_dtypes) > 1 else ""))
        return dtype

    def prepare(self, position: int, grad: Any) -> tuple[Any, ...]:
        """The kernel call for gradient number `position`, after checking it against the parameter.

        Returns:
            `(call, grad, group)`: `call(grad, hparams)` runs the step once `hparams` are known.

        Raises:
            TypeError, ValueError, IndexError: as `LazyAdam.__call__`; nothing is written.
        """
        param = self.param
        where = f"gradient {position} (parameter {param.name!r})"
        if isinstance(grad, RowTensor):
            grad, call = self._sparse(where, grad)
        else:
            grad, call = self._dense(where, grad)
        return (call, grad, self.group)

    def _dense(self, where: str, grad: Any) -> tuple[Any, Any]:
        param = self.param
        if not (hasattr(grad, "shape") and hasattr(grad, "dtype")):
            raise TypeError(f"{where} must be an array or a RowTensor, got {type(grad).__name__}")
        grad_dtype = self._grad_dtype(where, "", grad)
        if tuple(grad.shape) != param.shape:
            raise ValueError(f"{where} has shape {tuple(grad.shape)}, the parameter has "
                             f"{param.shape}")
        self._check_location(where, "", grad)
        grad = contiguous(grad)
        if self.centralize and len(grad.shape) >= 2:
            grad = contiguous(centralized(grad))
        self._check_disjoint(where, "", grad)
        return grad, self.call(False, grad_dtype=grad_dtype)

    def _sparse(self, where: str, grad: RowTensor) -> tuple[Any, Any]:
        param = self.param
        indices, values = grad.indices, grad.values
        if grad.dense_shape != param.shape:
            raise ValueError(f"{where}: RowTensor has dense_shape {grad.dense_shape}, the "
                             f"parameter has {param.shape}")
        if param.ndim < 1:
            raise ValueError(f"{where}: a RowTensor needs a parameter of rank >= 1, "
                             f"{param.name!r} is a scalar")
        index_dtype = _dtype(where, "indices", indices)
        if index_dtype.kind not in "iu":
            raise TypeError(f"{where}: indices must be integers, got dtype {index_dtype}")
        if len(indices.shape) != 1:
            raise ValueError(f"{where}: indices must be 1-d, got shape {tuple(indices.shape)}")
        values_dtype = self._grad_dtype(where, "values", values)
        expected = (indices.shape[0],) + param.shape[1:]
        if tuple(values.shape) != expected:
            raise ValueError(f"{where}: values have shape {tuple(values.shape)}, expected "
                             f"{expected} = (len(indices),) + parameter.shape[1:]")
        self._check_location(where, "indices", indices)
        self._check_location(where, "values", values)
        rows = param.shape[0]
        if indices.shape[0]:
            low, high = index_bounds(indices)
            if low < 0 or high >= rows:
                raise IndexError(f"{where}: {index_error(to_host(indices), rows)}")
        if index_dtype not in INDEX_DTYPES:
            indices, index_dtype = astype(indices, np.int64), np.dtype(np.int64)
        indices, values = contiguous(indices), contiguous(values)
        self._check_disjoint(where, "indices", indices)
        self._check_disjoint(where, "values", values)
        kernel, call = self.kernel_and_call(True, INDEX_DTYPES[index_dtype], values_dtype)
        return (indices, values), functools.partial(call, workspace=self._scratch(
            where, kernel, rows, indices.shape[0]))

    def _scratch(self, where: str, kernel: Any, rows: int, nnz: int) -> Any:
        """The scratch of a sparse step, allocated now, before any kernel of the step writes: so
        that running out of memory, too, changes nothing.

        Raises:
            MemoryError: naming the gradient and the bytes asked for.
        """
        row_size = int(np.prod(self.param.shape[1:], dtype=np.int64))
        nbytes = kernel.workspace_size(rows, row_size, nnz)
        try:
            return empty_bytes(self.param.data, nbytes)
        except Exception as error:  # noqa: BLE001  (each library names running out of memory its way)
            if not is_out_of_memory(error):
                raise
            raise MemoryError(f"{where}: out of memory: its sparse step needs {nbytes:,} bytes of "
                              f"scratch for {nnz:,} indices; nothing was changed") from error

    def _check_disjoint(self, where: str, what: str, array: Any) -> None:
        """A gradient may not share memory with what its kernel writes (the parameter, its
        moments): the kernel would read values it has already overwritten, in an order that
        depends on its threads.

        Raises:
            ValueError: naming the gradient and the array it shares memory with.
        """
        overlaps = _overlap_device if self.on_device else np.may_share_memory
        for state, data in self.written:
            if overlaps(array, data):
                whose = "" if state is self.param else f" {state.name.partition('.')[0]} of"
                raise ValueError(f"{_subject(where, what)} shares memory with the{whose} "
                                 f"parameter {self.param.name!r}, which this step writes; pass "
                                 "a copy")

    def _check_location(self, where: str, what: str, array: Any) -> None:
        """A gradient lives where its parameter does: host memory, or the parameter's device."""
        on_device = is_device_array(array)
        if on_device != self.on_device:
            places = ("in host memory", "on a CUDA device")
            raise TypeError(f"{_subject(where, what)} is a {type(array).__module__}."
                            f"{type(array).__name__} {places[on_device]}, the parameter is "
                            f"{places[self.on_device]}; pass the gradient where the parameter "
                            "lives")
        if on_device:
            device, home = device_of(array), device_of(self.param.data)
            if device is not None and home is not None and device != home:
                raise ValueError(f"{_subject(where, what)} is on CUDA device {device}, the "
                                 f"parameter on device {home}")


def _overlap_device(a: Any, b: Any) -> bool:
    """Whether two contiguous device arrays overlap."""
    (a0, a1), (b0, b1) = (_device_span(x) for x in (a, b))
    return a0 < b1 and b0 < a1


def _device_span(array: Any) -> tuple[int, int]:
    """[first byte, past the last byte) of a contiguous device array."""
    view = DeviceArray(array, "array")
    return view.ptr, view.ptr + view.size * view.dtype.itemsize


def _subject(where: str, what: str) -> str:
    """`gradient 1 (parameter 'w')`, or with the part named: `...: indices`."""
    return f"{where}: {what}" if what else where


def _dtype(where: str, what: str, array: Any) -> np.dtype:
    """`dtype_of(array)`, with the gradient named in the error."""
    try:
        return dtype_of(array)
    except TypeError as error:
        raise TypeError(f"{_subject(where, what)}: {error}") from None


def check_device_state(param: Parameter, moments: list[Parameter]) -> None:
    """Device parameters and their moments must be arrays a CUDA kernel can update in place.

    Checked once, when the optimizer is made, so that no kernel call can refuse them later (after
    the step was counted, or after other parameters were updated).

    Raises:
        TypeError: a moment that is not on the parameter's device (a library whose `zeros_like`
            allocates elsewhere).
        ValueError: a strided or read-only array.
    """
    home = device_of(param.data)
    for array in [param, *moments]:
        if not array.on_device or device_of(array.data) != home:
            raise TypeError(f"{array.name}: zeros_like of a {type(param.data).__name__} on device "
                            f"{home} gave a {type(array.data).__name__} "
                            + ("on device " + str(device_of(array.data)) if array.on_device
                               else "in host memory")
                            + "; moments must live on the parameter's device")
        flags = DeviceArray(array.data, array.name).flags
        if not flags.c_contiguous:
            raise ValueError(f"{array.name} is not C-contiguous on its device; pass a contiguous "
                             "array (e.g. torch's .contiguous(), cupy.ascontiguousarray)")
        if not flags.writeable:
            raise ValueError(f"{array.name} is read-only on its device")
