"""The `params` of `lazyadam.LazyAdam`: a list of Parameters, or of group dicts (MindSpore's
`params`, `lr`, `weight_decay`, `grad_centralization` and `order_params`), parsed and checked
(`parse_params`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from .parameter import Parameter

GROUP_KEYS = ("params", "lr", "weight_decay", "grad_centralization", "order_params")


def parse_params(params: Any) -> tuple[list[dict] | None, list[Parameter]]:
    """Groups (None without) and the parameters in the order gradients come in.

    Raises:
        ValueError: None or empty; a parameter twice (ungrouped) or a name used twice;
            `order_params` that is not exactly the grouped parameters.
        TypeError: not iterable; an element neither Parameter nor dict; a group's params wrong.
        KeyError: an unknown group key, or a group without `params`.
        RuntimeError: a parameter in two groups.
    """
    if params is None:
        raise ValueError("params must not be None: pass a list of Parameters or of group dicts")
    if isinstance(params, (Parameter, Mapping, str, bytes)) or not isinstance(params, Iterable):
        raise TypeError(f"params must be a list of Parameters or of group dicts, got "
                        f"{type(params).__name__}")
    params = list(params)
    if not params:
        raise ValueError("params must not be empty")
    for position, element in enumerate(params):
        if not isinstance(element, (Parameter, dict)):
            raise TypeError(f"params[{position}] must be a Parameter or a dict, got "
                            f"{type(element).__name__}")
    if all(isinstance(p, Parameter) for p in params):
        _unique(params, ValueError)
        return None, params
    if not all(isinstance(p, dict) for p in params):
        raise TypeError("params mixes Parameters and group dicts; put every Parameter in a group")
    groups, order = [], None
    for number, group in enumerate(params):
        unknown = [k for k in group if k not in GROUP_KEYS]
        if unknown:
            raise KeyError(f"group {number} has unknown key(s) {unknown}; allowed: "
                           f"{', '.join(GROUP_KEYS)}")
        if "order_params" in group:
            if len(group) > 1:
                raise ValueError(f"group {number}: the order_params dict must hold only "
                                 f"'order_params', got keys {list(group)}")
            order = _group_params(group["order_params"], f"group {number} order_params")
            continue
        if "params" not in group:
            raise KeyError(f"group {number} has no 'params'")
        groups.append({**group, "params": _group_params(group["params"], f"group {number}")})
    if not groups:
        raise ValueError("params holds no parameter group, only order_params")
    grouped = [p for g in groups for p in g["params"]]
    _unique(grouped, RuntimeError)
    if order is not None:
        _unique(order, ValueError)
        if {id(p) for p in order} != {id(p) for p in grouped}:
            extra = [p.name for p in order if all(p is not q for q in grouped)]
            absent = [p.name for p in grouped if all(p is not q for q in order)]
            raise ValueError(f"order_params must hold exactly the grouped parameters; not in a "
                             f"group: {extra}, missing from order_params: {absent}")
    return groups, order if order is not None else grouped


def _group_params(params: Any, where: str) -> list[Parameter]:
    if isinstance(params, (Parameter, Mapping, str, bytes)) or not isinstance(params, Iterable):
        raise TypeError(f"{where}: params must be a list of Parameters, got "
                        f"{type(params).__name__}")
    params = list(params)
    if not params:
        raise ValueError(f"{where}: params must not be empty")
    for position, param in enumerate(params):
        if not isinstance(param, Parameter):
            raise TypeError(f"{where}: params[{position}] must be a Parameter, got "
                            f"{type(param).__name__}")
    return params


def _unique(params: list[Parameter], error: type[Exception]) -> None:
    """Raises `error` naming the first parameter (or name) that appears twice."""
    seen: dict[str, Parameter] = {}
    counts = Counter(map(id, params))  # not params.count: quadratic, minutes for 100,000
    for param in params:
        other = seen.setdefault(param.name, param)
        if other is param and counts[id(param)] > 1:
            raise error(f"parameter {param.name!r} appears more than once")
        if other is not param:
            raise error(f"two parameters are named {param.name!r}; names must be unique")
