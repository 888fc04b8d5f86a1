"""MindSpore-style optimizer classes beyond LazyAdam: one for any rule (`optimizer`), MindSpore's
`nn.Momentum` (`Momentum`, the rule `sgd`) and `nn.Adagrad` (`Adagrad`, the rule `adagrad`), and
the family's rules under chosen names (`RowWiseAdagrad`, `PartialRowWiseAdam`, `Lion`).
"""

from __future__ import annotations

import inspect
import math
from typing import Any

from ..codegen.rule import Rule
from ..rules import ADAGRAD, LION, PARTIAL_ROWWISE_ADAM, ROWWISE_ADAGRAD, SGD
from .layout import settable
from .arguments import RATES
from .optimizer import Optimizer
from .rates import check_loss_scale, is_float

#: The arguments every class `optimizer` makes takes after the rule's own, keyword only.
COMMON = (("use_locking", False), ("state_dtype", None), ("rounding", "nearest"), ("seed", 0),
          ("capturable", False))

#: The classes made so far, by the rule's identity and the class's name (with the rule, kept
#: alive so that its id is not reused).
_MADE: dict[tuple[int, str], tuple[Rule, type]] = {}


def optimizer(rule: Rule, name: str | None = None) -> type[Optimizer]:
    """A MindSpore-style optimizer class (a subclass of `Optimizer`) for `rule`.

    Its arguments: `params`, then the rule's settable hyperparameters in the rule's order with
    their defaults (under MindSpore's names where the rule's `frontends["mindspore"]` gives
    them, and `learning_rate` for `lr`), then, keyword only, the rule's options with their
    defaults (a bool option under its MindSpore name too; `decay` takes the forms of weight decay
    but "none", the first by default: a parameter without weight decay takes "none" itself; an
    option named as a hyperparameter, `Rule.hparam_options`, is no argument: it is on where the
    hyperparameter is not its default) and `use_locking`, `state_dtype`, `rounding`, `seed`,
    `capturable`. Each state array is a property under its MindSpore name, each running power
    ("power:" hyperparameter) too.

    Args:
        rule: any rule, registered or not (a rule defined in a script gets its optimizer).
        name: the class's name; by default the rule's name in CamelCase.

    Returns:
        The class; the same one for the same rule and name on every call.

    Raises:
        TypeError: a rule without the hyperparameter "lr".
    """
    name = name or "".join(part.capitalize() for part in rule.name.split("_"))
    made = _MADE.get((id(rule), name))
    if made is not None:
        return made[1]
    names = {"lr": "learning_rate", **rule.frontends.get("mindspore", {})}
    options = {o.name: o for o in rule.options if o.name not in rule.hparam_options}
    shown = {o: names[o] if o in names and isinstance(options[o].default, bool) else o
             for o in options}
    hparams = {names.get(h, h): h for h in settable(rule)}
    parameters = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
                  inspect.Parameter("params", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    parameters += [inspect.Parameter(shown_name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                     default=rule.hparam(h).default)
                   for shown_name, h in hparams.items()]
    for option, option_name in shown.items():
        default = options[option].default
        if option == "decay":
            default = next(v for v in options[option].values if v != "none")
        parameters.append(inspect.Parameter(option_name, inspect.Parameter.KEYWORD_ONLY,
                                            default=default))
    parameters += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d)
                   for n, d in COMMON]
    signature = inspect.Signature(parameters)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        given = bound.arguments
        Optimizer.__init__(
            self, given["params"], given[names["lr"]],
            given.get(names.get("weight_decay", "weight_decay"), 0.0),
            hparams={h: given[n] for n, h in hparams.items() if h not in RATES},
            options={**{o: given[n] for o, n in shown.items()},
                     **{o: bool(given[names.get(o, o)] != rule.hparam(o).default)
                        for o in rule.hparam_options}},
            **{n: given[n] for n, _ in COMMON})

    __init__.__signature__ = signature  # type: ignore[attr-defined]
    __init__.__doc__ = ("Makes the optimizer; see `lazyadam.optimizer` for the arguments and "
                        "`lazyadam.runtime.optimizer.Optimizer` for their meaning.")
    cls = type(name, (Optimizer,), {
        "RULE": rule, "NAMES": {**names, **shown}, "__init__": __init__,
        "__module__": __name__,
        "__doc__": f"A MindSpore-style optimizer of the rule {rule.name!r}: {rule.doc}.\n\n"
                   f"Arguments: {signature}."})
    _MADE[id(rule), name] = (rule, cls)
    return cls


class Momentum(Optimizer):
    """MindSpore's `nn.Momentum` over the kernels of the rule `sgd` (heavy-ball momentum).

    With `lr` the step's learning rate, `u` the momentum and `v` the moments (`moments`):

        g = g/loss_scale + wd*w
        v = u*v + g
        w = w - lr*v                       (use_nesterov: w = w - lr*(g + u*v))

    as MindSpore's `ApplyMomentum`. A sparse gradient (`RowTensor`) updates only the rows it
    touches, their moments included (lazy). Differences from MindSpore: on a sparse gradient
    weight decay adds `wd*w` once to a row's summed gradient (MindSpore adds it to each
    occurrence); and `use_locking`, `state_dtype`, `rounding`, `seed` and `capturable` are
    `lazyadam.LazyAdam`'s keyword-only extras.

    Args:
        params: as `lazyadam.LazyAdam`'s (Parameters or groups with `lr`, `weight_decay`,
            `grad_centralization`, `order_params`).
        learning_rate: as `lazyadam.LazyAdam`'s (a number, sequence, iterator or schedule).
        momentum: a Python float >= 0.
        weight_decay: a number >= 0 or a schedule (L2: `g += wd*w`); without groups it skips
            parameters named with `beta` or `gamma`.
        loss_scale: gradients are divided by it (a float or int > 0).
        use_nesterov: Nesterov momentum.

    Raises:
        TypeError, ValueError: bad arguments, naming them.
    """

    RULE = SGD
    NAMES = {"lr": "learning_rate", "mu": "momentum", "nesterov": "use_nesterov"}

    def __init__(self, params: Any, learning_rate: Any, momentum: float,
                 weight_decay: Any = 0.0, loss_scale: float = 1.0, use_nesterov: bool = False,
                 *, use_locking: bool = False, state_dtype: str | None = None,
                 rounding: str = "nearest", seed: int = 0, capturable: bool = False):
        if not is_float(momentum):
            raise TypeError(f"momentum must be a Python float, got {type(momentum).__name__}: "
                            f"{momentum!r}")
        super().__init__(
            params, learning_rate, weight_decay,
            hparams=dict(mu=momentum, dampening=0.0, loss_scale=check_loss_scale(loss_scale)),
            options=dict(momentum=True, dampening=False, nesterov=use_nesterov, decay="l2",
                         maximize=False),
            use_locking=use_locking, state_dtype=state_dtype, rounding=rounding, seed=seed,
            capturable=capturable)


class Adagrad(Optimizer):
    """MindSpore's `nn.Adagrad` over the kernels of the rule `adagrad`.

    With `lr` the step's learning rate and `accum` the accumulators (`accum`, starting at the
    argument `accum`):

        g = g/loss_scale + wd*w
        accum = accum + g*g
        w = w - lr*g/(sqrt(accum) + eps)

    Differences from MindSpore:
    - MindSpore's `ApplyAdagrad` divides by `sqrt(accum)` alone; the kernels add `eps` (keyword
      only, default 1e-30, which must be > 0). Against an accumulator that starts at 0.1 (the
      default) the default eps is below the last bit of float32 and float64 arithmetic: the
      steps are MindSpore's numbers. It shows only where an accumulator is 0 (accum=0.0 and a
      zero gradient: MindSpore gives 0/0, NaN; this class leaves w as it is).
    - `update_slots=False` (accumulators that never grow) is refused: the kernels always add
      `g*g`.
    - A sparse gradient updates only the rows it touches; weight decay adds `wd*w` once to a
      row's summed gradient.

    Args:
        params: as `lazyadam.LazyAdam`'s.
        accum: the accumulators' first value, a Python float >= 0.
        learning_rate: as `lazyadam.LazyAdam`'s.
        update_slots: True (the only value supported).
        loss_scale: gradients are divided by it (a float or int > 0).
        weight_decay: a number >= 0 or a schedule (L2).
        eps: added to `sqrt(accum)`, > 0.
        use_locking, state_dtype, rounding, seed, capturable: as `lazyadam.LazyAdam`'s.

    Raises:
        TypeError, ValueError: bad arguments, naming them.
    """

    RULE = ADAGRAD
    NAMES = {"lr": "learning_rate", "sum": "accum"}

    def __init__(self, params: Any, accum: float = 0.1, learning_rate: Any = 0.001,
                 update_slots: bool = True, loss_scale: float = 1.0, weight_decay: Any = 0.0,
                 *, eps: float = 1e-30, use_locking: bool = False,
                 state_dtype: str | None = None, rounding: str = "nearest", seed: int = 0,
                 capturable: bool = False):
        if not is_float(accum):
            raise TypeError(f"accum must be a Python float, got {type(accum).__name__}: "
                            f"{accum!r}")
        if not (math.isfinite(accum) and accum >= 0.0):
            raise ValueError(f"accum must be finite and >= 0, got {accum!r}")
        if not isinstance(update_slots, bool):
            raise TypeError(f"update_slots must be a bool, got {type(update_slots).__name__}: "
                            f"{update_slots!r}")
        if not update_slots:
            raise ValueError("update_slots=False is not supported: the adagrad kernels always "
                             "add g*g to the accumulators")
        self.update_slots = update_slots
        super().__init__(
            params, learning_rate, weight_decay,
            hparams=dict(lr_decay=0.0, eps=eps, loss_scale=check_loss_scale(loss_scale)),
            options=dict(decay="l2", maximize=False),
            use_locking=use_locking, state_dtype=state_dtype, rounding=rounding, seed=seed,
            capturable=capturable, inits={"sum": accum})


#: The family's other rules, under the names their optimizers go by.
RowWiseAdagrad = optimizer(ROWWISE_ADAGRAD, "RowWiseAdagrad")
PartialRowWiseAdam = optimizer(PARTIAL_ROWWISE_ADAM, "PartialRowWiseAdam")
Lion = optimizer(LION, "Lion")
