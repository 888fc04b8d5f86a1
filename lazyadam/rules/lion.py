"""Lion (its paper's algorithm; optax's `lion`) as a lazy rule.

docs/semantics.md: `c = b1*m + (1-b1)*g`; `w -= lr*(sign(c) + wd*w)`; `m = b2*m + (1-b2)*g`, betas
(0.9, 0.99) by default. sign(0) is 0: a zero direction takes no step (only the decay moves w), and
sign(±0) keeps the zero's sign, sign(NaN) the NaN (`ir.FUNCTIONS`). Weight decay is decoupled, as
the paper's; "none" drops its multiply.
"""

from __future__ import annotations

from ..codegen.ir import Assign, Elem, Param, Switch, sign
from ..codegen.rule import HParam, Lowering, Rule, State, register
from .family import BETA, LOSS_SCALE, LR, MAXIMIZE, WEIGHT_DECAY, decay_option, effective_gradient

HPARAMS = (LR, HParam("beta1", 0.9, BETA), HParam("beta2", 0.99, BETA), WEIGHT_DECAY, LOSS_SCALE)

STATE = (State("m", names={"mindspore": "moment", "torch": "exp_avg", "plural": "ms"}),)


def lower(spec) -> Lowering:
    beta1, beta2, wd = Param("beta1"), Param("beta2"), Param("weight_decay")
    w, m, g = Elem("var"), Elem("m"), Elem("g")
    direction = sign(beta1 * m + (1 - beta1) * g)
    direction = Switch("decay=decoupled", direction + wd * w, direction)
    return Lowering(
        grad=effective_gradient(),
        update=(Assign("var", w - Param("lr") * direction),
                Assign("m", beta2 * m + (1 - beta2) * g)))


LION = register(Rule(
    name="lion",
    prefix="lazyadam_lion",
    options=(decay_option(("none", "decoupled")), MAXIMIZE),
    hparams=HPARAMS,
    state=STATE,
    symbol_order=("maximize", "use_locking", "decay"),
    lower=lower,
    doc="Lion (sign of an interpolated momentum), on the rows a gradient touches",
))
