"""Partial-rowwise Adam (FBGEMM's PARTIAL_ROWWISE_ADAM) as a lazy rule: m per element, v (and
amsgrad's vmax) one per row, in the arithmetic dtype (float32 for float32 and half-precision
tables).

docs/semantics.md: `m = b1*m + (1-b1)*g`; per row `v = b2*v + (1-b2)*mean_r(g*g)`;
`w -= lr * (m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps)` (eps_mode "pytorch", FBGEMM's and the
default), or with eps_mode "mindspore" `w -= lr*sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps)`.
LazyAdam's other options carry over: Nesterov's numerator `b1*m + (1-b1)*g`, amsgrad on the row's
v, decay "l2" (`g += wd*w`) or "decoupled" (`w -= lr*wd*w` first), maximize.
"""

from __future__ import annotations

from ..codegen.ir import Assign, Elem, Named, Param, Reduce, Row, RowSize, Switch, maximum, sqrt
from ..codegen.rule import Lowering, Option, Rule, State, register
from .adam import HPARAMS
from .family import MAXIMIZE, decay_option, effective_gradient, l2

OPTIONS = (
    Option("nesterov", (False, True), False, doc="Nesterov momentum in the numerator."),
    decay_option(("none", "l2", "decoupled")),
    Option("amsgrad", (False, True), False,
           doc="keep `vmax = max(vmax, v)` per row and divide by `sqrt(vmax) + eps`."),
    MAXIMIZE,
    Option("eps_mode", ("pytorch", "mindspore"), "pytorch", symbol={"mindspore": "mseps"},
           doc='"pytorch" (eps added to `sqrt(v_hat)`, FBGEMM\'s) or "mindspore" (eps added to '
               '`sqrt(v)`, the bias correction folded into the step size).'),
)

STATE = (
    State("m", names={"mindspore": "moment1", "torch": "exp_avg", "plural": "ms"}),
    State("v", per="row", dtype="compute",
          names={"mindspore": "moment2", "torch": "exp_avg_sq", "plural": "vs"}),
    State("vmax", per="row", dtype="compute", when="amsgrad",
          names={"mindspore": "vmax", "torch": "max_exp_avg_sq", "plural": "vmaxes"}),
)


def lower(spec) -> Lowering:
    beta1, beta2, lr, eps = Param("beta1"), Param("beta2"), Param("lr"), Param("eps")
    w, m, g = Elem("var"), Elem("m"), l2(Elem("g"))
    bias1 = Named("bias_correction1", 1 - Param("beta1_power"))
    bias2 = Named("bias_correction2", 1 - Param("beta2_power"))
    v = Switch("amsgrad", Row("vmax"), Row("v"))
    numerator = Switch("nesterov", beta1 * m + (1 - beta1) * g, m)
    pytorch = lr * (numerator / bias1) / (sqrt(v / bias2) + eps)
    mindspore = Named("lr_t", lr * sqrt(bias2) / bias1) * numerator / (sqrt(v) + eps)
    decayed = Switch("decay=decoupled", w - lr * Param("weight_decay") * w, w)
    return Lowering(
        grad=effective_gradient(),
        reduce=(Reduce("sumsq", g * g),),
        row=(Assign("v", beta2 * Row("v") + (1 - beta2) * (Row("sumsq") / RowSize())),
             Assign("vmax", maximum(Row("vmax"), Row("v")), when="amsgrad")),
        update=(Assign("m", beta1 * m + (1 - beta1) * g),
                Assign("var", decayed - Switch("eps_mode=pytorch", pytorch, mindspore))))


PARTIAL_ROWWISE_ADAM = register(Rule(
    name="partial_rowwise_adam",
    prefix="lazyadam_prw_adam",
    options=OPTIONS,
    hparams=HPARAMS,
    state=STATE,
    symbol_order=("nesterov", "amsgrad", "maximize", "use_locking", "decay", "eps_mode"),
    lower=lower,
    derived_comment="beta^t of this step; t = 1 on the first step",
    doc="Adam with m per element and v per row, on the rows a gradient touches",
))
