"""What both optimizers share: one parameter's slot, the checks of its gradients, the kernel calls.

`lazyadam.LazyAdam` (MindSpore's API, numpy arrays and device arrays) and `lazyadam.torch.LazyAdam`
(a `torch.optim.Optimizer`) keep one `Slot` per parameter and step in the same two phases, so that a
failed step changes nothing:

    check    `Slot.prepare(position, grad)` for every gradient: dtype, shape, device, index range;
             compiles a missing kernel and binds it to the parameter's arrays; writes nothing
    apply    `launcher.Launcher.run(work, hparams)`: every prepared gradient's step, with the
             `HParams` fields its slot's `group` selects

A slot on a CUDA device holds `CudaBinding`s: its state arrays checked once, and on every step only
whether they are still where they were (a moved or resized tensor is bound again).

`specs.spec_for` chooses a parameter's kernel spec from its dtype and the optimizer's flags; the
gradient then picks the dense or the lazy sparse kernel (and the index dtype, and for a
half-precision parameter the gradient dtype: its own or float32).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from .. import targets
from ..codegen.spec import GRAD_DTYPES, HALF_DTYPES, SpecBase
from ..dtypes import native, storage_name
from ..interop.arrays import (astype, centralized, contiguous, copy_into, device_of, dtype_of,
                              index_bounds, is_device_array, readable, to_host)
from ..interop.device import DeviceArray, torch_kind
from ..targets.base import index_error
from ..targets.cuda_binding import CudaBinding
from .checks import allocate
from .parameter import Parameter, RowTensor
from .quick import Taken, quick
from .specs import shared, state_names, variant
from .work import Work

INDEX_DTYPES = {np.dtype(np.int32): "int32", np.dtype(np.int64): "int64"}


class Slot:
    """One parameter with its state arrays, kernel spec and bound kernel calls.

    `states` are the state arrays the spec's kernels keep (`Rule.arrays` after var, then
    `Rule.row_arrays`), as `Parameter`s in that order; `state_names` their names in the rule.

    `group` says which entry of a step's hparams the slot's kernel takes: the parameter group for
    `lazyadam.LazyAdam`, the parameter's own entry for the torch optimizer (whose bias correction
    counts steps per parameter).
    """

    __slots__ = ("param", "dtype", "on_device", "shape", "device", "group", "centralize", "spec",
                 "target", "states", "state_names", "calls", "grad_dtypes", "seed_offset",
                 "seed_index", "records", "fast")

    def __init__(self, param: Parameter, group: Any, centralize: bool, spec: SpecBase,
                 target: str, states: Sequence[Parameter], seed_offset: int = 0):
        self.param, self.group, self.centralize = param, group, centralize
        self.dtype, self.on_device = param.dtype, param.on_device  # fixed with the array object
        self.shape = shared(param.shape)
        self.device = device_of(param.data) if self.on_device else None
        # Gradients come in the parameter's dtype, or in float32 for a half-precision parameter.
        self.grad_dtypes = shared((spec.dtype,)
                                  + (GRAD_DTYPES if spec.dtype in HALF_DTYPES else ()))
        #: Added to the seed in the hparams (at `seed_index`) of a stochastic step (see
        #: `SEED_STRIDE`); 0 for a parameter that rounds to nearest, whose steps then share
        #: hyperparameter entries.
        self.seed_offset = seed_offset if spec.rounding == "stochastic" else 0
        self.seed_index = spec.RULE.fields.index("seed")
        #: Device records of the deferred sparse steps, by capturable: (array, address, kernel);
        #: None (as `fast`) until the first is made, as most slots never need one.
        self.records: dict[bool, tuple] | None = None
        #: PyTorch dtype of a dense device gradient that the full check took as it was (not
        #: copied) -> its `Taken`: the next gradients of that dtype take `_fast_dense`.
        self.fast: dict[Any, Taken] | None = None
        self.spec, self.target = spec, target
        self.state_names = state_names(spec)
        if len(states) != len(self.state_names):
            raise TypeError(f"a {spec.RULE.name} kernel of this spec keeps "
                            f"{', '.join(self.state_names)}; got {len(states)} state arrays")
        self.states = tuple(states)
        self.calls: dict[tuple[bool, str, str], tuple[Any, Callable[..., None]]] = {}

    def state(self, name: str) -> Parameter:
        """The state array the rule names `name` (LazyAdam's "m", "v", "vmax").

        Raises:
            ValueError: this slot's kernels keep no such array.
        """
        return self.states[self.state_names.index(name)]

    def call(self, sparse: bool, index_dtype: str = "int64",
             grad_dtype: str | None = None) -> Callable[..., None]:
        """The bound kernel call for a dense or sparse gradient; compiled on first use."""
        return self.kernel_and_call(sparse, index_dtype, grad_dtype)[1]

    def kernel_and_call(self, sparse: bool, index_dtype: str = "int64",
                        grad_dtype: str | None = None) -> tuple[Any, Callable[..., None]]:
        """The kernel for a dense or sparse gradient (of `grad_dtype`, by default the
        parameter's) and its call bound to this slot's arrays.

        A CUDA binding whose arrays are no longer where they were bound (new storage, a resize)
        is made again.

        Raises:
            ValueError, TypeError: the arrays no longer make a valid binding (e.g. the parameter
                was resized and its state was not), naming the parameter.
        """
        key = (sparse, index_dtype, grad_dtype or self.spec.dtype)
        found = self.calls.get(key)
        if found is not None and (self.target != "cuda" or found[1].current()):
            return found
        spec = variant(self.spec, sparse, index_dtype, key[2])
        kernel = targets.compile(spec, self.target)
        try:
            call = kernel.bind(self.param.data, **{name: state.data for name, state
                                                    in zip(self.state_names, self.states)})
        except (TypeError, ValueError) as error:
            if found is None:
                raise
            raise type(error)(f"parameter {self.param.name!r} and its state changed since they "
                              f"were bound, and no longer fit together: {error}") from None
        if isinstance(call, CudaBinding):
            self.shape = call.shape
        found = self.calls[shared(key)] = (kernel, call)
        return found

    def entry(self, hparams: tuple) -> tuple:
        """This slot's hyperparameters from its group's: the seed (at `seed_index`) moved on by
        its offset, modulo 2**64."""
        if not self.seed_offset:
            return hparams
        i = self.seed_index
        return hparams[:i] + ((hparams[i] + self.seed_offset) % 2**64,) + hparams[i + 1:]

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

    def prepare(self, position: int, grad: Any, capturable: bool = False,
                capture: bool = False) -> Work:
        """The kernel call for gradient number `position`, after checking it against the parameter.

        Args:
            position: the gradient's number, for errors.
            grad: an array (dense) or a `RowTensor`.
            capturable: the step never waits: a device `RowTensor`'s indices are checked by the
                kernels (see `Launcher.check_indices`), not on the host.
            capture: the step is being captured into a CUDA graph (nothing may be made that
                needs a copy from the host).

        Returns:
            The `Work` that `Launcher.run` takes: host slots run
            `call(grad, hparams[, workspace=scratch])`; device slots hand the launcher their
            `CudaBinding` and the gradient: `(address, array)` dense, `DeviceArray` views of the
            indices and values sparse, with the step's `(workspace view, record address)`.

        Raises:
            TypeError, ValueError, IndexError, MemoryError: as `LazyAdam.__call__`; nothing is
                written.
        """
        if self.fast:
            found = self._fast_dense(grad)
            if found is not None:
                return found
        where = f"gradient {position} (parameter {self.param.name!r})"
        if isinstance(grad, RowTensor):
            return self._sparse(where, grad, capturable, capture)
        return self._dense(where, grad)

    def _dense(self, where: str, grad: Any) -> Work:
        if not (hasattr(grad, "shape") and hasattr(grad, "dtype")):
            raise TypeError(f"{where} must be an array or a RowTensor, got {type(grad).__name__}")
        grad = readable(grad)
        grad_dtype = self._grad_dtype(where, "", grad)
        if tuple(grad.shape) != self.shape:
            raise ValueError(f"{where} has shape {tuple(grad.shape)}, the parameter has "
                             f"{self.shape}")
        self._check_location(where, "", grad)
        if self.on_device:
            call = self.call(False, grad_dtype=grad_dtype)
            view = DeviceArray(grad, where)
            taken = view.flags.c_contiguous and not (self.centralize and view.ndim >= 2)
            if not taken:
                grad = contiguous(grad)
                if self.centralize and view.ndim >= 2:
                    grad = contiguous(centralized(grad))
                view = DeviceArray(grad, where)
            self._check_disjoint_device(where, "", view, call.spans)
            if taken and call.torch and torch_kind(type(grad)):
                self.fast = self.fast or {}
                self.fast[grad.dtype] = Taken.of(self, call, grad, view.nbytes)
            return Work(self, call, (view.ptr, grad), self.group)
        grad = contiguous(grad)
        if self.centralize and len(grad.shape) >= 2:
            grad = contiguous(centralized(grad))
        self._check_disjoint(where, "", grad)
        return Work(self, self.call(False, grad_dtype=grad_dtype), grad, self.group)

    def _fast_dense(self, grad: Any) -> Work | None:
        """`_dense` of a PyTorch device gradient of a dtype this slot took before (a
        microsecond, not several): the slot's arrays are the ones bound, where they were bound,
        and `quick` confirms the gradient; None where anything differs from what the full check
        accepted (the full check then says what)."""
        taken = self.fast.get(getattr(grad, "dtype", None))
        if taken is None:
            return None
        var, address, shape, dtype, states = taken.arrays
        if (self.param.data is not var or var.data_ptr() != address or var.shape != shape
                or var.dtype is not dtype):
            return None
        for state, array, at in states:
            if state.data is not array or array.data_ptr() != at:
                return None
        return quick(self, taken, grad)

    def _sparse(self, where: str, grad: RowTensor, capturable: bool,
                capture: bool) -> Work:
        param = self.param
        indices, values = readable(grad.indices), readable(grad.values)
        if grad.dense_shape != self.shape:
            raise ValueError(f"{where}: RowTensor has dense_shape {grad.dense_shape}, the "
                             f"parameter has {self.shape}")
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
        rows = self.shape[0]
        if indices.shape[0] and not (capturable and self.on_device):
            low, high = index_bounds(indices)
            if low < 0 or high >= rows:
                raise IndexError(f"{where}: {index_error(to_host(indices), rows)}")
        if index_dtype not in INDEX_DTYPES:
            indices, index_dtype = astype(indices, np.int64), np.dtype(np.int64)
        indices, values = contiguous(indices), contiguous(values)
        kernel, call = self.kernel_and_call(True, INDEX_DTYPES[index_dtype], values_dtype)
        if not self.on_device:
            self._check_disjoint(where, "indices", indices)
            self._check_disjoint(where, "values", values)
            return Work(self, call, (indices, values), self.group,
                        self._scratch(where, kernel, rows, indices.shape[0]))
        views = (DeviceArray(indices, f"{where}: indices"), DeviceArray(values, f"{where}: values"))
        for what, view in zip(("indices", "values"), views):
            self._check_disjoint_device(where, what, view, call.spans)
        scratch = DeviceArray(self._scratch(where, kernel, rows, indices.shape[0]), "scratch")
        return Work(self, call, views, self.group,
                    (scratch, self._record(where, kernel, capturable, capture)))

    def _record(self, where: str, kernel: Any, capturable: bool, capture: bool) -> int:
        """The address of this slot's zeroed device record for deferred sparse steps, one for
        capturable steps (which leave bad indices there for `Launcher.check_indices`) and one
        for the others (whose indices were checked on the host, so it stays clear); made once,
        outside a capture.

        Raises:
            MemoryError: naming the gradient.
            RuntimeError: it would be made while `capture`.
        """
        self.records = self.records or {}
        found = self.records.get(capturable)
        if found is None:
            if capture:
                raise RuntimeError(f"{where}: the first sparse step of parameter "
                                   f"{self.param.name!r} is being captured; make one eager step "
                                   "first (it zeroes the device record of bad indices, a copy "
                                   "that a graph cannot hold)")
            array = allocate(self.param.data, kernel.RECORD_WORDS * 8,
                              f"{where}: out of memory for its index record")
            copy_into(array, np.zeros(kernel.RECORD_WORDS * 8, np.uint8))
            found = self.records[capturable] = (array, DeviceArray(array, "record").ptr, kernel)
        return found[1]

    def _scratch(self, where: str, kernel: Any, rows: int, nnz: int) -> Any:
        """The scratch of a sparse step, allocated now, before any kernel of the step writes: so
        that running out of memory, too, changes nothing.

        Raises:
            MemoryError: naming the gradient and the bytes asked for.
        """
        row_size = int(np.prod(self.shape[1:], dtype=np.int64))
        nbytes = kernel.workspace_size(rows, row_size, nnz)
        return allocate(self.param.data, nbytes, f"{where}: out of memory: its sparse step "
                         f"needs {nbytes:,} bytes of scratch for {nnz:,} indices")

    @property
    def written(self) -> tuple[tuple[Parameter, Any], ...]:
        """(Parameter, array) of each array a step writes, for the gradients' overlap check."""
        return tuple((a, a.data) for a in (self.param, *self.states))

    def _check_disjoint(self, where: str, what: str, array: Any) -> None:
        """A gradient may not share memory with what its kernel writes (the parameter, its
        state arrays): the kernel would read values it has already overwritten, in an order that
        depends on its threads.

        Raises:
            ValueError: naming the gradient and the array it shares memory with.
        """
        for state, data in self.written:
            if np.may_share_memory(array, data):
                raise self._overlap(where, what, state)

    def _overlap(self, where: str, what: str, state: Parameter) -> ValueError:
        whose = "" if state is self.param else f" {state.name.partition('.')[0]} of"
        return ValueError(f"{_subject(where, what)} shares memory with the{whose} parameter "
                          f"{self.param.name!r}, which this step writes; pass a copy")

    def _check_disjoint_device(self, where: str, what: str, view: DeviceArray,
                               spans: tuple) -> None:
        """`_check_disjoint` for a device gradient, against the spans of a binding's arrays."""
        start, end = view.ptr, view.ptr + view.nbytes
        if not view.size:
            return
        for (state, _), (first, last) in zip(self.written, spans):
            if start < last and first < end:
                raise self._overlap(where, what, state)

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
            device, home = device_of(array), self.device
            if device is not None and home is not None and device != home:
                raise ValueError(f"{_subject(where, what)} is on CUDA device {device}, the "
                                 f"parameter on device {home}")


def _subject(where: str, what: str) -> str:
    """`gradient 1 (parameter 'w')`, or with the part named: `...: indices`."""
    return f"{where}: {what}" if what else where


def _dtype(where: str, what: str, array: Any) -> np.dtype:
    """`dtype_of(array)`, in this machine's byte order (`dtypes.native`), with the gradient named
    in the error."""
    try:
        return native(dtype_of(array))
    except TypeError as error:
        raise TypeError(f"{_subject(where, what)}: {error}") from None
