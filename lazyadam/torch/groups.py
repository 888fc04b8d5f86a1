"""A param group's options, read and checked for one step (`Options`): the rule's settable
hyperparameters, the rule's options (which pick the kernel, with the common flags: `Flags`), the
seed and capturable; and the common keywords every `lazyadam.torch` optimizer takes
(`COMMON`, `read_common`), through the checks written once in `runtime.options`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from ..codegen.rule import Option, Rule
from ..runtime import options as check
from ..runtime.layout import settable

#: The keywords of every optimizer, with their defaults: the kernel's locking, half-precision
#: storage, CUDA graphs, and torch's own keywords (accepted, saved with the group).
COMMON = dict(use_locking=False, state_dtype=None, rounding="nearest", seed=0, capturable=False,
              foreach=None, fused=None, differentiable=False)


class Flags(NamedTuple):
    """What picks a group's kernel spec (with the parameter's dtype)."""

    options: tuple  # the rule's options, as (name, value) pairs
    use_locking: bool
    state_dtype: str | None
    rounding: str


class Options(NamedTuple):
    """A group's options for one step, checked."""

    values: dict  # the rule's settable hyperparameters, by name (`layout.entry` takes them)
    seed: int
    flags: Flags
    capturable: bool


def read_common(group: dict[str, Any], where: str, options: tuple) -> tuple[int, Flags, bool]:
    """The common keywords of `group` (`COMMON`), with the rule's `options` (name, value) pairs:
    `(seed, flags, capturable)`.

    Raises:
        TypeError: a flag that is not a bool (foreach and fused: None or a bool), a seed that is
            not an int.
        ValueError: an unknown state_dtype or rounding, a seed outside [0, 2**64);
            differentiable=True (as torch's optimizers where they do not support it).
        RuntimeError: fused and foreach both True (torch's error).
    """
    for name in ("use_locking", "capturable", "differentiable"):
        check.flag(group[name], where, name)
    for name in ("foreach", "fused"):
        if not (group[name] is None or isinstance(group[name], bool)):
            raise TypeError(f"{where}: {name} must be None or a bool, got "
                            f"{type(group[name]).__name__}: {group[name]!r}")
    if group["fused"] and group["foreach"]:
        raise RuntimeError(f"{where}: `fused` and `foreach` cannot be `True` together.")
    if group["differentiable"]:
        raise ValueError(f"{where}: differentiable=True is not supported: the kernels update "
                         "parameters in place, outside autograd")
    state_dtype, rounding, seed = check.rounding_options(group["state_dtype"], group["rounding"],
                                                         group["seed"], where)
    flags = Flags(options, group["use_locking"], state_dtype, rounding)
    return seed, flags, group["capturable"]


#: The types of the values a group may hold that nobody changes in place.
_IMMUTABLE = (type(None), bool, int, float, str)


def immutable(group: dict[str, Any]) -> bool:
    """Whether every option of `group` (its params and param_names aside) is a number, a string,
    None or a tuple of them: values that stay what they were while they are the same objects
    (a one-element tensor, or a list of betas, may change in place)."""
    for key, value in group.items():
        if key in ("params", "param_names"):
            continue
        if type(value) is tuple:
            if not all(type(item) in _IMMUTABLE for item in value):
                return False
        elif type(value) not in _IMMUTABLE:
            return False
    return True


def hparam_names(rule: Rule) -> tuple[str, ...]:
    """The hyperparameters a torch optimizer of `rule` takes as keywords: the settable ones but
    loss_scale (torch scales losses with a `GradScaler`; the kernels take 1)."""
    return tuple(name for name in settable(rule) if name != "loss_scale")


def read_values(rule: Rule, group: dict[str, Any], where: str,
                given: dict[str, Any] | None = None,
                keywords: dict[str, str] | None = None) -> dict[str, float]:
    """The rule's settable hyperparameters (`hparam_names`) from `group`, or from `given` where
    it has them (under the rule's names: `betas` read as beta1 and beta2), each a real number or
    a one-element tensor in its domain; and loss_scale 1. An error names a hyperparameter by
    its keyword in `keywords` (SGD's `mu` is torch's `momentum`), else by the rule's name.

    Raises:
        TypeError, ValueError: as `runtime.options.number`.
    """
    domains, scaled = _domains(rule)
    given = given or _NONE
    keywords = keywords or _NONE
    values = {name: check.number(given[name] if name in given else group[name], domain, where,
                                 keywords.get(name, name), torch.Tensor)
              for name, domain in domains}
    if scaled:
        values["loss_scale"] = 1.0
    return values


_NONE: dict[str, Any] = {}


def _domains(rule: Rule) -> tuple[tuple[tuple[str, Any], ...], bool]:
    """`(name, domain)` of each of `hparam_names(rule)`, and whether the rule has a loss_scale:
    made once a rule (read every step, for every group)."""
    found = _DOMAINS.get(id(rule))
    if found is None or found[0] is not rule:
        found = _DOMAINS[id(rule)] = (rule, (
            tuple((name, rule.hparam(name).domain) for name in hparam_names(rule)),
            "loss_scale" in settable(rule)))
    return found[1]


#: `_domains` of each rule read so far, by its id (with the rule, which keeps the id its own).
_DOMAINS: dict[int, tuple[Rule, tuple]] = {}


def read_option(option: Option, value: Any, where: str) -> Any:
    """A rule's option as a keyword: a bool flag, or one of its values.

    Raises:
        TypeError: a flag that is not a bool. ValueError: another value.
    """
    if set(option.values) == {False, True}:
        return check.flag(value, where, option.name)
    return check.choice(value, option.values, where, option.name)


def read_betas(rule: Rule, group: dict[str, Any], where: str) -> dict[str, float]:
    """`read_values` with beta1 and beta2 from the group's `betas`, a pair of numbers or of
    one-element tensors (torch's Adam convention).

    Raises:
        TypeError: betas that are not a pair; a value that is not a real number (or a
            one-element tensor).
        ValueError: a value outside its domain; as torch.optim.Adam: a tensor of more than one
            element, one beta a tensor and the other not.
    """
    betas = group["betas"]
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise TypeError(f"{where}: betas must be a pair (beta1, beta2), got {betas!r}")
    if isinstance(betas[0], torch.Tensor) != isinstance(betas[1], torch.Tensor):
        raise ValueError(f"{where}: betas must be both floats or both tensors (as in "
                         f"torch.optim.Adam), got {betas!r}")
    return read_values(rule, group, where, {"beta1": betas[0], "beta2": betas[1]})
