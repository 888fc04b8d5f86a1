"""Adagrad (torch.optim.Adagrad) as a lazy rule: learning-rate decay, weight decay, eps, maximize.

docs/semantics.md: `clr = lr / (1 + (t-1)*lr_decay)`; `g += wd*w`; `s += g*g`;
`w -= clr * g / (sqrt(s) + eps)`; s starts at initial_accumulator_value (the front ends' option:
the kernels only carry it). t is the step count, a derived field of the hyperparameters.
torch's sparse Adagrad is lazy too: untouched rows keep w and s.
"""

from __future__ import annotations

from ..codegen.ir import Assign, Elem, Named, Param, sqrt
from ..codegen.rule import HParam, Interval, Lowering, Rule, State, register
from .family import (LOSS_SCALE, LR, MAXIMIZE, NONNEGATIVE, POSITIVE, WEIGHT_DECAY, decay_option,
                     effective_gradient, l2)

HPARAMS = (
    LR,
    HParam("lr_decay", 0.0, NONNEGATIVE),
    WEIGHT_DECAY,
    HParam("eps", 1e-10, POSITIVE),
    LOSS_SCALE,
    HParam("t", 1.0, Interval(1.0), static=False, derived="step"),
)

STATE = (State("sum", names={"mindspore": "accum", "torch": "sum", "plural": "sums"}),)


def lower(spec) -> Lowering:
    w, s = Elem("var"), Elem("sum")
    g = l2(Elem("g"))
    clr = Named("clr", Param("lr") / (1 + (Param("t") - 1) * Param("lr_decay")))
    return Lowering(
        grad=effective_gradient(),
        update=(Assign("sum", s + g * g),
                Assign("var", w - clr * g / (sqrt(s) + Param("eps")))))


ADAGRAD = register(Rule(
    name="adagrad",
    prefix="lazyadam_adagrad",
    options=(decay_option(("none", "l2")), MAXIMIZE),
    hparams=HPARAMS,
    state=STATE,
    symbol_order=("maximize", "use_locking", "decay"),
    lower=lower,
    derived_comment="the step count t, 1 on the first step",
    doc="Adagrad with learning-rate decay and weight decay, on the rows a gradient touches",
))
