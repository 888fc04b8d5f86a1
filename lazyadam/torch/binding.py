"""A parameter's `Slot` over its tensors as they are now (`bind`), and what it stays valid for
(`Binding.matches`); the checks of a parameter's state as a step reads it (`check_state`,
`count`).

State lives in `optimizer.state[param]` under the rule's torch names (`State.names["torch"]`:
Adam's `exp_avg`, `exp_avg_sq`, `max_exp_avg_sq`; a state array without one, under its rule name),
made from the kernel spec's layout (`runtime.state.layout`: shape, per-row state included, dtype
and first value), beside the `step` count where the optimizer keeps one.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable

import numpy as np
import torch

from ..codegen.spec import SpecBase
from ..runtime.checks import check_device_state
from ..runtime.parameter import Parameter
from ..runtime.slot import Slot
from ..runtime.specs import SEED_STRIDE, shared, target_for
from ..runtime.state import layout
from . import tensors
from .tensors import Memory, StateView


def torch_name(state: Any) -> str:
    """The state_dict key of a rule's state array: its torch name, else its own."""
    return state.names.get("torch", state.name)


class Binding:
    """A parameter's `Slot`, bound to the memory its tensors had when it was made.

    The slot's arrays share the tensors' memory and keep it alive; `step` is a numpy view of the
    `step` state tensor (or of a count of the binding's own, for an optimizer that keeps none);
    `tensors` are the state tensors bound, one for each of the optimizer's state keys (None where
    absent) and last `step`, which the state must still hold (the same objects: another view of
    their memory, a `.t()`, may place its elements elsewhere); `key` is what `matches` compares
    with the tensors as they are now, with the group's `flags`; `copy` is None, or
    `(parameter, working copy)` for a parameter stepped through a contiguous copy (see `bind`).
    """

    __slots__ = ("slot", "step", "key", "flags", "copy", "tensors", "keys")

    def __init__(self, slot: Slot, step: Any, key: tuple, flags: Any,
                 copy: tuple[torch.Tensor, torch.Tensor] | None, tensors: tuple,
                 keys: tuple[str, ...]):
        self.slot, self.step, self.key, self.flags, self.copy = slot, step, key, flags, copy
        self.tensors, self.keys = tensors, keys

    def matches(self, param: torch.Tensor, state: dict[str, Any] | None, flags: Any,
                position: int) -> bool:
        """True while the parameter and its state live where they did when this was made (and,
        `flags` given, the group's flags are the same)."""
        if flags is not None and flags != self.flags:
            return False
        get = (state or _EMPTY).get
        for key, tensor in zip(self.keys, self.tensors):
            if get(key) is not tensor:
                return False
        return self.key == key_of(param, self.tensors, position)


_EMPTY: dict[str, Any] = {}


def key_of(param: torch.Tensor, bound: tuple, position: int) -> tuple:
    """What a binding depends on besides the identity of the state tensors (`bound`, None where
    absent): where the parameter's elements are (its memory, dtype, shape, strides, negative
    bit, device type), the state tensors' memory, and, last, the parameter's position (which
    moves its seed)."""
    return (param.data_ptr(), param.dtype, param.shape, param.stride(), param.is_neg(),
            param.is_cuda, *[0 if tensor is None else tensor.data_ptr() for tensor in bound],
            position)


def bind(param: torch.Tensor, state: dict[str, Any] | None, flags: Any, name: str,
         position: int, *, spec_of: Callable[[Parameter, torch.dtype, Any], SpecBase],
         keys: tuple[str, ...], counted: Callable[[SpecBase], bool], who: str,
         inits: dict[str, float] | None = None) -> tuple[Binding, dict[str, Any]]:
    """A parameter's slot over its tensors as they are now, and the state entries to store.

    A parameter that is not contiguous (a transposed or sliced view), or a negative view, is
    stepped through a contiguous working copy of it that the binding keeps (`Binding.copy`):
    each step copies the parameter in before the kernels and writes it back after them (two
    copies of the parameter a step, and the memory of one). Missing state is created (its first
    value, in the spec's storage dtype: the parameter's, or for a half-precision parameter
    float32 or the group's state_dtype; per-row state in the arithmetic's dtype; `step` 0);
    state of another dtype or device is converted; a `step` that is not a 0-d CPU tensor
    (SparseAdam keeps an int) becomes one; state that is not contiguous, or is a negative view
    or a ZeroTensor, is copied. Nothing is stored here: the caller stores the returned entries
    once every gradient of the step has been checked.

    Args:
        flags: the group's flags, which `spec_of(home, dtype, flags)` turns into a spec.
        keys: every state key of the optimizer (whether this spec keeps it or not), in order.
        counted: whether a parameter of a spec keeps a `step` count in its state.
        who: the optimizer's name, for errors.
        inits: first values of state arrays by rule name, where not the rule's.

    Raises:
        TypeError, ValueError: the parameter as `tensors.check_parameter`.
        ValueError: state as `check_state`, or of another shape than the spec keeps (per-row
            state for a scalar parameter included).
    """
    tensors.check_parameter(param, name, who)
    state = state or {}
    check_state(state, name, keys)
    dtype, shape, device = param.dtype, param.shape, param.device
    copy = None
    if not param.is_contiguous() or param.is_neg():
        copy = (param.detach(), torch.empty(shape, dtype=dtype, device=device))
    memory = Memory(())
    array = tensors.view(param if copy is None else copy[1], memory)
    home = Parameter(array, name=name)
    spec = spec_of(home, dtype, flags)
    arrays = layout(spec, tuple(shape), inits)
    created: dict[str, Any] = {}
    kept = []
    for kind in arrays:
        key = torch_name(kind.state)
        kept.append(key)
        tensor, wanted = state.get(key), getattr(torch, kind.dtype)
        if tensor is None:
            created[key] = (torch.zeros(kind.shape, dtype=wanted, device=device) if not kind.init
                            else torch.full(kind.shape, kind.init, dtype=wanted, device=device))
            continue
        if tuple(tensor.shape) != kind.shape:
            raise ValueError(f"state {key!r} of parameter {name!r} is {tuple(tensor.shape)}, the "
                             f"parameter has shape {tuple(shape)}"
                             + (" (it is kept per row)" if kind.state.per == "row" else ""))
        if ((tensor.dtype, tensor.device) != (wanted, device) or not tensor.is_contiguous()
                or tensor.is_neg() or tensor._is_zerotensor()):
            created[key] = tensor.detach().to(device=device, dtype=wanted,
                                              memory_format=torch.contiguous_format, copy=True)
    counts = counted(spec)
    step = state.get("step", 0)
    if counts and not (isinstance(step, torch.Tensor) and step.device.type == "cpu"
                       and step.dim() == 0 and step.dtype in tensors.STEP_DTYPES):
        # `full`: the 0-d tensor `torch.tensor(count)` makes, in half its 5 us
        created["step"] = torch.full((), count(step, name), dtype=tensors.scalar_dtype())
    entries = {**state, **created}
    bound = tuple(entries.get(key) for key in keys) + (entries.get("step") if counts else None,)
    memory.kept = (param.untyped_storage() if copy is None else copy[1], bound)
    states = [StateView(tensors.view(entries[key], memory), key, home) for key in kept]
    if home.on_device:
        check_device_state(home, states)
    slot = Slot(home, id(param), False, spec, target_for(array), states,
                seed_offset=position * SEED_STRIDE % 2**64)
    step_view = memory.view(entries["step"]) if counts else np.zeros((), np.float64)
    key = key_of(param, bound, position)
    key = key[:2] + (shared(key[2]), shared(key[3])) + key[4:]  # shape, strides
    return Binding(slot, step_view, key, flags, copy, bound, keys + ("step",)), created


def check_state(state: dict[str, Any], name: str, keys: tuple[str, ...]) -> None:
    """A parameter's state, as a step reads it (its shapes are `bind`'s to check): state arrays
    (`keys`) that are dense real floating-point tensors (or None, as torch's SGD may keep), a
    `step` that is a count (`count`).

    Raises:
        ValueError: naming the parameter and the field.
    """
    for key in keys:
        tensor = state.get(key)
        if tensor is None:
            continue
        where = f"state {key!r} of parameter {name!r}"
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{where} is a {type(tensor).__name__}, not a tensor")
        if tensor.layout != torch.strided:
            raise ValueError(f"{where} has layout {tensor.layout}; state arrays are dense "
                             "(strided) tensors")
        if not tensor.is_floating_point():
            raise ValueError(f"{where} has dtype {tensor.dtype}; state arrays are real "
                             "floating-point tensors")
    if "step" in state:
        count(state["step"], name)


def count(step: Any, name: str) -> float:
    """The count a `step` state holds (a number, or a tensor of one element; SparseAdam keeps an
    int): an integer in [0, 2**64 - 1), so that the next step's count is one the kernels take.

    Raises:
        ValueError: anything else, naming the parameter.
    """
    where = f"state 'step' of parameter {name!r}"
    if isinstance(step, torch.Tensor):
        if step.numel() != 1:
            raise ValueError(f"{where} has {step.numel()} elements; a step count is one number")
        if step.is_complex():
            raise ValueError(f"{where} has dtype {step.dtype}; a step count is a real number")
        value = float(step)
    elif isinstance(step, numbers.Real) and not isinstance(step, bool):
        value = float(step)
    else:
        what = "None" if step is None else f"a {type(step).__name__}"
        raise ValueError(f"{where} is {what}, not a count")
    if not (0 <= value < 2**64 - 1 and value.is_integer()):
        raise ValueError(f"{where} is {value!r}, not a count (an integer in [0, 2**64 - 1))")
    return value
