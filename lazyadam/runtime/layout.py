"""A rule's hyperparameter tuple for one step: what a kernel's bound call takes (`Rule.fields`, in
ABI order), made from the values a front end holds (`entry`).

The derived fields come from the others: "power:beta1" is beta1^t, computed here as `beta1 ** t`
(PyTorch's bias correction, per parameter) unless the front end keeps running products
(`powers`: MindSpore's beta powers, multiplied by beta each step); "step" is t itself.
"""

from __future__ import annotations

from typing import Mapping

from ..codegen.rule import Rule


def entry(rule: Rule, values: Mapping[str, float], t: int, seed: int,
          powers: Mapping[str, float] | None = None) -> tuple:
    """The hyperparameters of `rule`'s kernels for step t (1 on the first step).

    Args:
        values: every hyperparameter the caller sets (`HParam.derived` None), by name.
        t: the step, which "step" fields and the stochastic rounding's `step` take.
        seed: the seed of stochastic rounding (a slot moves it on by its own offset).
        powers: the "power:" fields by name, where the front end keeps them; else `base ** t`.
    """
    fields = []
    for h in rule.hparams:
        if h.derived is None:
            fields.append(values[h.name])
        elif h.derived == "step":
            fields.append(float(t))
        elif powers is not None:
            fields.append(powers[h.name])
        else:
            fields.append(values[h.derived.partition(":")[2]] ** t)
    return (*fields, seed, t)


def settable(rule: Rule) -> tuple[str, ...]:
    """The hyperparameters a front end sets (the others are derived), in ABI order."""
    return tuple(h.name for h in rule.hparams if h.derived is None)


def powered(rule: Rule) -> dict[str, str]:
    """The "power:" fields of `rule` and the field each is a power of, e.g. Adam's
    `{"beta1_power": "beta1", "beta2_power": "beta2"}`."""
    return {h.name: h.derived.partition(":")[2] for h in rule.hparams
            if h.derived is not None and h.derived.startswith("power:")}
