"""The state dict of a MindSpore-style optimizer (`Optimizer.state_dict`), made from its rule, and
its restoring (`load_state_dict`), which checks all of it before writing anything.

    {"rule": "adam", "global_step": 3,
     "beta1_power": ..., "beta2_power": ...,     the rule's running powers ("power:" fields)
     "beta1": 0.9, "beta2": 0.999,               their bases, which a loaded state must share
     "amsgrad": False,                           the flags that keep state arrays (`State.when`)
     "seed": 0,
     "parameters": {name: array}, "moment1": {name: array}, ...}   by `State.names["mindspore"]`

A state without "rule" is LazyAdam's (state dicts and checkpoints made before rules were).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from ..codegen.rule import Rule, State
from ..interop.arrays import dtype_of, is_device_array, to_host
from .parameter import Parameter
from .rates import is_number
from .specs import check_seed, state_names

if TYPE_CHECKING:
    from .optimizer import Optimizer

#: The rule of a state that names none: every state before there were rules was LazyAdam's.
DEFAULT_RULE = "adam"


def section(state: State) -> str:
    """The key of a state array's section: its MindSpore name (`moment1`), else its own."""
    return state.names.get("mindspore", state.name)


def sections(optimizer: Optimizer) -> list[tuple[str, str | None]]:
    """(key, the rule's state name) of the parameters (None) and of every state array the
    optimizer's kernels keep, in the rule's order."""
    kept = state_names(optimizer._slots[0].spec)
    return [("parameters", None)] + [(section(s), s.name) for s in optimizer.RULE.state
                                     if s.name in kept]


def flags(rule: Rule, options: Mapping[str, Any]) -> dict[str, bool]:
    """The bool options that decide which state arrays the kernels keep (`State.when`)."""
    return {s.when: options[s.when] for s in rule.state
            if s.when is not None and isinstance(options.get(s.when), bool)}


def state_dict(optimizer: Optimizer) -> dict[str, Any]:
    """The optimizer's state (see the module), arrays as host numpy copies keyed by parameter
    name in parameter order; the caller holds the engine quiescent."""
    rule = optimizer.RULE
    state: dict[str, Any] = {"rule": rule.name, "global_step": optimizer._step,
                             **optimizer._powers,
                             **{base: optimizer._fixed[base] for _, base in optimizer._powered},
                             **flags(rule, optimizer._options), "seed": optimizer.seed}
    for key, name in sections(optimizer):
        state[key] = {s.param.name: _array(s, name).asnumpy() for s in optimizer._slots}
    return state


def load_state_dict(optimizer: Optimizer, state: Mapping[str, Any]) -> None:
    """Restores `state` into `optimizer` in place: parameters and state arrays keep their array
    objects (device arrays receive the values through host memory and stay on their device).
    A state without a seed (a checkpoint of format 2) keeps the optimizer's seed.

    Raises:
        ValueError: a state of another rule (naming both); a missing entry, other parameter
            names, shapes or dtypes, other bases of the running powers, state arrays present or
            absent where the optimizer's options differ, a seed that is not an int in
            [0, 2**64), a global_step that is not an int in [0, 2**64 - 1) (the next step must
            fit the kernels' 64-bit count); the message says what differs.
    """
    rule, name_of = optimizer.RULE, optimizer.name_of
    saved_rule = state.get("rule", DEFAULT_RULE)
    if saved_rule != rule.name:
        raise ValueError(f"state was saved by an optimizer of rule {saved_rule!r}; this "
                         f"{type(optimizer).__name__} steps rule {rule.name!r}")
    powers = [name for name, _ in optimizer._powered]
    missing = [k for k in ("global_step", *powers) if k not in state]
    if missing:
        raise ValueError(f"state has no {', '.join(missing)}")
    for _, base in optimizer._powered:
        mine = optimizer._fixed[base]
        if base in state and state[base] != mine:
            raise ValueError(f"state was saved with {name_of(base)}={state[base]!r}, this "
                             f"optimizer has {name_of(base)}={mine!r}")
    step = state["global_step"]
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not (
            0 <= step < 2**64 - 1):
        raise ValueError(f"global_step must be an int in [0, 2**64 - 1): the next step, "
                         f"global_step + 1, is counted in 64 bits; got {step!r}")
    try:
        seed = check_seed(state["seed"]) if "seed" in state else optimizer.seed
    except (TypeError, ValueError) as error:
        raise ValueError(f"state {error}") from None
    values = [state[p] for p in powers]
    for (name, base), value in zip(optimizer._powered, values):
        unit = rule.hparam(base).domain.high <= 1.0  # beta^t underflows to 0, never leaves [0, 1]
        if not (is_number(value) and math.isfinite(value) and value >= 0.0
                and (value <= 1.0 or not unit)):
            raise ValueError(f"{name} must lie in [0, 1], got {value!r}" if unit else
                             f"{name} must be finite and >= 0, got {value!r}")
    wanted = sections(optimizer)
    kept = {key for key, _ in wanted}
    for s in rule.state:
        if section(s) in state and section(s) not in kept and s.when is not None:
            raise ValueError(f"state holds {s.when}'s {section(s)}, this optimizer has "
                             f"{name_of(s.when)}=False")
    whens = {section(s): s.when for s in rule.state}
    names = [s.param.name for s in optimizer._slots]
    arrays = []
    for key, name in wanted:
        saved = state.get(key)
        if saved is None:
            when = whens.get(key)
            raise ValueError(f"state has no {key!r}" + (f" (saved with {name_of(when)}=False?)"
                                                        if when else ""))
        extra = [n for n in saved if n not in names]
        absent = [n for n in names if n not in saved]
        if extra or absent:
            raise ValueError(f"state {key!r} does not match the parameters: not in this "
                             f"optimizer: {extra}, missing from the state: {absent}")
        for slot in optimizer._slots:
            value, target = saved[slot.param.name], _array(slot, name)
            if not is_device_array(value):
                value = to_host(value)
            value_shape, value_dtype = tuple(value.shape), dtype_of(value)
            if value_shape != target.shape or value_dtype != target.dtype:
                raise ValueError(f"state {key}[{slot.param.name!r}] has shape {value_shape} "
                                 f"and dtype {value_dtype}, the optimizer has {target.shape} "
                                 f"and {target.dtype}")
            arrays.append((target, value))
    with optimizer._engine.quiescent():
        for target, value in arrays:
            target.set_data(value)
        optimizer._step = int(step)
        optimizer._powers = {p: float(v) for p, v in zip(powers, values)}
        optimizer.seed = seed


def _array(slot: Any, name: str | None) -> Parameter:
    """The parameter (`name` None) or the state array `name` of a slot."""
    return slot.param if name is None else slot.state(name)
