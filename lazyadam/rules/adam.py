"""LazyAdam as a rule: Adam (MindSpore's and PyTorch's forms), with its options, hyperparameters,
state and their names in each front end, and its lowering to the IR (docs/semantics.md)."""

from __future__ import annotations

import math

from ..codegen.ir import Assign, Binary, Call, Const, Elem, Named, Param, Switch, Unary
from ..codegen.rule import HParam, Interval, Lowering, Option, Rule, State, register
from ..codegen.spec import SpecError

DECAYS = ("none", "l2", "decoupled")
EPS_MODES = ("mindspore", "pytorch")

BETA = Interval(0.0, 1.0)
NONNEGATIVE = Interval(0.0, math.inf)
POSITIVE = Interval(0.0, math.inf, "()")

HPARAMS = (
    HParam("lr", 1e-3, NONNEGATIVE, static=False),
    HParam("beta1", 0.9, BETA, static_domain=Interval(0.0, 1.0, "()")),
    HParam("beta2", 0.999, BETA, static_domain=Interval(0.0, 1.0, "()")),
    HParam("eps", 1e-8, POSITIVE),
    HParam("weight_decay", 0.0, NONNEGATIVE),
    HParam("loss_scale", 1.0, POSITIVE),
    HParam("beta1_power", 0.9, BETA, static=False, derived="power:beta1"),
    HParam("beta2_power", 0.999, BETA, static=False, derived="power:beta2"),
)

OPTIONS = (
    Option("nesterov", (False, True), False, doc="Nesterov momentum in the numerator."),
    Option("decay", DECAYS, "none", symbol={"l2": "l2", "decoupled": "adamw"},
           doc='"none", "l2" (coupled: `g += wd*w`) or "decoupled" (AdamW: `w -= lr*wd*w`).'),
    Option("amsgrad", (False, True), False,
           doc="keep `vmax = max(vmax, v)` and divide by `sqrt(vmax) + eps`."),
    Option("maximize", (False, True), False, doc="ascend instead of descend (`g = -g`)."),
    Option("eps_mode", EPS_MODES, "mindspore", symbol={"pytorch": "pteps"},
           doc='"mindspore" (eps added to `sqrt(v)`, bias correction folded into `lr_t`) or '
               '"pytorch" (eps added to `sqrt(v_hat)`).'),
)

STATE = (
    State("m", names={"mindspore": "moment1", "torch": "exp_avg", "plural": "ms"}),
    State("v", names={"mindspore": "moment2", "torch": "exp_avg_sq", "plural": "vs"}),
    State("vmax", when="amsgrad",
          names={"mindspore": "vmax", "torch": "max_exp_avg_sq", "plural": "vmaxes"}),
)


# Small constructors so that the rule below reads like the math.
def _p(name: str) -> Param:
    return Param(name)


def _e(name: str) -> Elem:
    return Elem(name)


def _add(a, b):
    return Binary("+", a, b)


def _sub(a, b):
    return Binary("-", a, b)


def _mul(a, b):
    return Binary("*", a, b)


def _div(a, b):
    return Binary("/", a, b)


def _sqrt(x):
    return Call("sqrt", (x,))


ONE = Const(1.0)


def check(spec: Spec) -> None:
    """A static weight decay needs a decay, and is not 0 (that decay would do nothing).

    Raises:
        SpecError: naming what to change.
    """
    if "weight_decay" in spec.statics and spec.decay == "none":
        raise SpecError("a static weight_decay needs decay='l2' or 'decoupled'; "
                        "drop it or choose a decay")
    if spec.statics.get("weight_decay") == 0.0:
        raise SpecError("static weight_decay=0 makes the decay a no-op; use decay='none'")


# [Spec] -> [Lowering]
def lower(spec: Spec) -> Lowering:
    """Writes the LazyAdam rule of docs/semantics.md, every option included behind a `Switch`."""
    beta1, beta2, eps, lr, wd = _p("beta1"), _p("beta2"), _p("eps"), _p("lr"), _p("weight_decay")
    w, m, v, vmax, g = _e("var"), _e("m"), _e("v"), _e("vmax"), _e("g")
    one_minus_beta1 = Named("one_minus_beta1", _sub(ONE, beta1))
    one_minus_beta2 = Named("one_minus_beta2", _sub(ONE, beta2))

    # Effective gradient of one occurrence: g = grad/loss_scale; maximize negates it (PyTorch's order:
    # before the decay); coupled L2 decay adds wd*w.
    grad = (
        Assign("g", _div(_e("grad"), _p("loss_scale"))),
        Assign("g", Unary("-", g), when="maximize"),
        Assign("g", _add(g, _mul(wd, w)), when="decay=l2"),
    )

    vhat = Switch("amsgrad", vmax, v)
    numerator = Switch("nesterov", _add(_mul(beta1, m), _mul(one_minus_beta1, g)), m)
    # MindSpore: lr_t = lr*sqrt(1 - beta2^t)/(1 - beta1^t);  w -= lr_t*num/(sqrt(v) + eps)
    lr_t = Named("lr_t", _div(_mul(lr, _sqrt(_sub(ONE, _p("beta2_power")))),
                              _sub(ONE, _p("beta1_power"))))
    mindspore = _sub(w, _div(_mul(lr_t, numerator), _add(_sqrt(vhat), eps)))
    # PyTorch: w -= lr/(1 - beta1^t) * num/(sqrt(v)/sqrt(1 - beta2^t) + eps)
    step_size = Named("step_size", _div(lr, _sub(ONE, _p("beta1_power"))))
    bias2_sqrt = Named("bias_correction2_sqrt", _sqrt(_sub(ONE, _p("beta2_power"))))
    pytorch = _sub(w, _div(_mul(step_size, numerator), _add(_div(_sqrt(vhat), bias2_sqrt), eps)))

    update = (
        Assign("m", _add(_mul(beta1, m), _mul(one_minus_beta1, g))),
        Assign("v", _add(_mul(beta2, v), _mul(_mul(one_minus_beta2, g), g))),
        Assign("vmax", Call("max", (vmax, v)), when="amsgrad"),
        # AdamW: w *= 1 - lr*wd before the Adam step, on the updated elements only.
        Assign("var", _mul(w, Named("decay_factor", _sub(ONE, _mul(lr, wd)))),
               when="decay=decoupled"),
        Assign("var", Switch("eps_mode=pytorch", pytorch, mindspore)),
    )
    return Lowering(grad=grad, update=update)


ADAM = register(Rule(
    name="adam",
    prefix="lazyadam",
    options=OPTIONS,
    hparams=HPARAMS,
    state=STATE,
    symbol_order=("nesterov", "amsgrad", "maximize", "use_locking", "decay", "eps_mode"),
    lower=lower,
    flag_order=("nesterov", "use_locking", "decay", "amsgrad", "maximize", "eps_mode"),
    check=check,
    derived_comment="beta^t of this step; t = 1 on the first step",
    frontends={
        "mindspore": {"lr": "learning_rate", "nesterov": "use_nesterov",
                      "decay": "decoupled_weight_decay"},
        "torch": {"beta1": "betas[0]", "beta2": "betas[1]", "decay": "decoupled_weight_decay"},
        "cli": {"decay": "weight_decay", "weight_decay": "wd"},
    },
    doc="Adam on the rows a gradient touches; AdamW, AMSGrad, Nesterov, maximize, two eps modes",
    readme="""\
- `var`, `m`, `v` (and `vmax` for amsgrad kernels) are the parameter and its moments, updated in
  place; `m`, `v` and `vmax` start at zero.
- The gradient is divided by `loss_scale`; L2 weight decay (`decay = "l2"`) adds `weight_decay * var`
  to each occurrence before duplicates are summed; decoupled decay subtracts `lr * weight_decay * var`.
""",
))

#: LazyAdam's spec class: `lazyadam.Spec`.
Spec = ADAM.spec
