"""A parameter's state arrays, as its kernel spec keeps them: which, of what shape, dtype and
first value (`layout`), and made beside the parameter (`allocate`).

Both front ends make state from this: `lazyadam.LazyAdam` and the other MindSpore-style classes
as arrays of the parameter's library (`allocate`), `lazyadam.torch` as tensors in
`optimizer.state`, under each front end's names for them (`State.names`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ..codegen.rule import State
from ..codegen.spec import SpecBase
from ..dtypes import numpy_dtype
from ..interop.arrays import full_beside
from .checks import check_device_state
from .parameter import Parameter
from .specs import state_names


@dataclass(frozen=True)
class StateArray:
    """One state array of a parameter: the rule's `state`, its `shape` (the parameter's, or its
    rows' for per-row state), its storage dtype name (`SpecBase.storage`) and first value."""
    state: State
    shape: tuple[int, ...]
    dtype: str
    init: float

    @property
    def name(self) -> str:
        return self.state.name


def layout(spec: SpecBase, shape: tuple[int, ...],
           inits: Mapping[str, float] | None = None) -> tuple[StateArray, ...]:
    """The state arrays that `spec`'s kernels keep for a parameter of `shape`, in the order the
    kernels take them (`state_names`); `inits` overrides a rule's first values by state name
    (Adagrad's `initial_accumulator_value`).

    Raises:
        ValueError: per-row state for a scalar parameter (rows come first).
    """
    states = {s.name: s for s in spec.RULE.state}
    arrays = []
    for name in state_names(spec):
        state = states[name]
        if state.per == "row" and not shape:
            raise ValueError(f"the {spec.RULE.name} rule keeps {name} per row: its parameters "
                             "need rank >= 1 (rows first), got a scalar")
        init = state.init if inits is None else inits.get(name, state.init)
        arrays.append(StateArray(state, tuple(shape) if state.per == "element" else tuple(shape[:1]),
                                 spec.storage(name), init))
    return tuple(arrays)


def allocate(param: Parameter, spec: SpecBase, front_end: str,
             inits: Mapping[str, float] | None = None) -> tuple[Parameter, ...]:
    """The state arrays of `param` (`layout`), made beside its array (host memory, or its device
    by its library) and named `<front end's name>.<parameter name>` (`moment1.w`).

    Raises:
        ValueError: as `layout`.
        TypeError, ValueError: device state that a kernel could not update in place
            (`check_device_state`).
    """
    made = [Parameter(full_beside(param.data, array.shape, numpy_dtype(array.dtype), array.init),
                      name=f"{array.state.names.get(front_end, array.name)}.{param.name}")
            for array in layout(spec, tuple(param.shape), inits)]
    if param.on_device:
        check_device_state(param, made)
    return tuple(made)
