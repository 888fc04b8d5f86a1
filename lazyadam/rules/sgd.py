"""SGD (torch.optim.SGD) as a lazy rule: momentum, dampening, Nesterov, weight decay, maximize.

docs/semantics.md: `g += wd*w`; with momentum `b = mu*b + (1-dampening)*g`, and `b = g` on a row's
first step; Nesterov `g = g + mu*b`, else `g = b`; `w -= lr*g`. A row's first step is kept per row
(`seen`, one float per row, 0 until the row is stepped), so that a row first touched late by a
sparse gradient starts its momentum as torch's dense SGD starts it. Only kernels with dampening
need it: without, `mu*0 + g` is `g` already.
"""

from __future__ import annotations

from ..codegen.ir import Assign, Compare, Const, Elem, Param, Row, Select, Switch
from ..codegen.rule import HParam, Lowering, Option, Rule, State, register
from ..codegen.spec import SpecError
from .family import (LOSS_SCALE, LR, MAXIMIZE, NONNEGATIVE, UNIT, WEIGHT_DECAY, decay_option,
                     effective_gradient, l2)

OPTIONS = (
    Option("momentum", (False, True), False, doc="keep a momentum buffer (torch's momentum > 0)."),
    Option("dampening", (False, True), False,
           doc="scale the new gradient by `1 - dampening` in the buffer (torch's dampening > 0)."),
    Option("nesterov", (False, True), False, doc="Nesterov momentum: `g = g + mu*b`."),
    decay_option(("none", "l2")),
    MAXIMIZE,
)

HPARAMS = (
    LR,
    HParam("mu", 0.9, NONNEGATIVE),
    HParam("dampening", 0.0, UNIT),
    WEIGHT_DECAY,
    LOSS_SCALE,
)

STATE = (
    State("buf", when="momentum",
          names={"mindspore": "moments", "torch": "momentum_buffer", "plural": "bufs"}),
    State("seen", per="row", dtype="compute", when="dampening",
          names={"plural": "seens"}, init_beside=("buf", 1.0)),
)


def check(spec) -> None:
    """Nesterov and dampening need a momentum buffer; torch's Nesterov also refuses dampening.

    Raises:
        SpecError: naming what to change.
    """
    if (spec.nesterov or spec.dampening) and not spec.momentum:
        raise SpecError("nesterov and dampening need momentum=True")
    if spec.nesterov and spec.dampening:
        raise SpecError("nesterov needs no dampening (as torch.optim.SGD)")


def lower(spec) -> Lowering:
    mu, lr = Param("mu"), Param("lr")
    w, g, b = Elem("var"), Elem("g"), Elem("buf")
    decayed = l2(g)
    # b = mu*b + (1 - dampening)*g, or g on the row's first step (seen still 0).
    blended = Switch("dampening", mu * b + (1 - Param("dampening")) * decayed, mu * b + decayed)
    first = Compare("==", Row("seen"), Const(0.0))
    buffer = Switch("dampening", Select(Row("first"), decayed, blended), blended)
    step = Switch("momentum", Switch("nesterov", decayed + mu * b, b), decayed)
    return Lowering(
        grad=effective_gradient(),
        row=(Assign("first", first, when="dampening"),
             Assign("seen", Const(1.0), when="dampening")),
        update=(Assign("buf", buffer, when="momentum"),
                Assign("var", w - lr * step)))


SGD = register(Rule(
    name="sgd",
    prefix="lazyadam_sgd",
    options=OPTIONS,
    hparams=HPARAMS,
    state=STATE,
    symbol_order=("momentum", "dampening", "nesterov", "maximize", "use_locking", "decay"),
    lower=lower,
    check=check,
    doc="SGD with momentum, dampening, Nesterov and weight decay, on the rows a gradient touches",
))
