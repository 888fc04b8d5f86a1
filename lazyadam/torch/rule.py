"""`optimizer(rule)`: a `torch.optim.Optimizer` class for any `Rule`, a rule defined in a test file
or a user's module included, with no other change.

    SignSGD = lazyadam.torch.optimizer(SIGN_SGD)
    opt = SignSGD(model.parameters(), lr=0.01, mu=0.9)
"""

from __future__ import annotations

from typing import Any

from ..codegen.rule import Rule
from .groups import COMMON, hparam_names
from .optimizer import RuleOptimizer

#: The classes made so far, by rule (the rule is kept: its id names it).
_MADE: dict[int, tuple[Rule, type]] = {}


def optimizer(rule: Rule) -> type[RuleOptimizer]:
    """The `RuleOptimizer` class of `rule` (one per rule): its keywords are the rule's settable
    hyperparameters but loss_scale (named as the rule names them, with its defaults; a derived
    one such as beta1^t or the step t is computed each step, per parameter), the rule's options
    (their values, the first the default; one named as a hyperparameter, `Rule.hparam_options`,
    is on where the hyperparameter is not its default) and the common ones (`use_locking`, `state_dtype`,
    `rounding`, `seed`, `capturable`, `foreach`, `fused`, `differentiable`). State is kept under
    the rule's torch names (`State.names["torch"]`, else the state's own name) and `step`.

    A class made here is named after the rule ("sign_sgd" -> `SignSgd`) and lives in no module:
    pickle its `state_dict()`, not the optimizer.

    Raises:
        TypeError: `rule` is not a `Rule`.
    """
    if not isinstance(rule, Rule):
        raise TypeError(f"optimizer() takes a Rule, got {type(rule).__name__}: {rule!r}")
    found = _MADE.get(id(rule))
    if found is not None:
        return found[1]
    defaults = {name: rule.hparam(name).default for name in hparam_names(rule)}
    defaults.update({option.name: option.default for option in rule.options
                     if option.name not in rule.hparam_options})
    name = "".join(part.capitalize() for part in rule.name.split("_"))

    def __init__(self: RuleOptimizer, params: Any, **given: Any) -> None:
        unknown = sorted(set(given) - set(defaults) - set(COMMON))
        if unknown:
            raise TypeError(f"{name}() got unexpected keyword arguments {unknown}; it takes "
                            f"{', '.join([*defaults, *COMMON])}")
        RuleOptimizer.__init__(self, params, {**defaults, **COMMON, **given})

    made = type(name, (RuleOptimizer,), {
        "RULE": rule, "__init__": __init__, "__module__": __name__,
        "__doc__": f"{rule.doc or rule.name} (a `lazyadam.torch.optimizer` of rule "
                   f"{rule.name!r}).\n\nKeywords: "
                   + ", ".join(f"{key}={value!r}" for key, value in {**defaults,
                                                                     **COMMON}.items()) + "."})
    _MADE[id(rule)] = (rule, made)
    return made
