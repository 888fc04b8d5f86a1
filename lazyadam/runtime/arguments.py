"""The arguments of a MindSpore-style optimizer that come from its rule: the fixed hyperparameters
(`fixed_hparams`) and the options (`rule_options`), checked through `options` with the rule's
domains and values, each error naming the argument as the front end calls it.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from ..codegen.rule import Rule
from .layout import settable
from .options import choice, flag, number

#: The hyperparameters an optimizer reads per group, each step (`Rate`s), not as fixed values.
RATES = ("lr", "weight_decay")


def fixed_hparams(rule: Rule, given: Mapping[str, Any],
                  name_of: Callable[[str], str]) -> dict[str, float]:
    """The rule's settable hyperparameters but the rates, by the rule's names: each given value
    (or the rule's default) checked in its domain.

    Raises:
        TypeError: an unknown hyperparameter, or a value that is not a real number.
        ValueError: a value outside its domain.
    """
    names = [n for n in settable(rule) if n not in RATES]
    unknown = [n for n in given if n not in names]
    if unknown:
        raise TypeError(f"rule {rule.name!r} has no settable hyperparameter {unknown[0]!r}; "
                        f"choose from {', '.join(names)}")
    fixed = {}
    for name in names:
        h = rule.hparam(name)
        fixed[name] = number(given.get(name, h.default), h.domain, "", name_of(name))
    return fixed


def rule_options(rule: Rule, given: Mapping[str, Any],
                 name_of: Callable[[str], str]) -> tuple[dict[str, Any], str | None]:
    """The rule's options but "decay" (each given value, or its default, checked), and the form
    of weight decay of a decayed parameter: "decay" among the rule's forms but "none", the first
    by default; None for a rule without the option.

    Raises:
        TypeError: an unknown option, or a flag that is not a bool.
        ValueError: a value the option does not take.
    """
    known = {o.name: o for o in rule.options}
    unknown = [n for n in given if n not in known]
    if unknown:
        raise TypeError(f"rule {rule.name!r} has no option {unknown[0]!r}; choose from "
                        f"{', '.join(known) or 'none'}")
    options, decay = {}, None
    for name, option in known.items():
        value = given.get(name, option.default)
        if name == "decay":
            forms = tuple(v for v in option.values if v != "none")
            decay = choice(given.get(name, forms[0]), forms, "", "decay")
        elif isinstance(option.default, bool):
            options[name] = flag(value, "", name_of(name))
        else:
            options[name] = choice(value, option.values, "", name_of(name))
    return options, decay
