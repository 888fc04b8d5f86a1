"""Rowwise Adagrad (FBGEMM's EXACT_ROWWISE_ADAGRAD, TorchRec's RowWiseAdagrad) as a lazy rule: one
accumulator per row, in the arithmetic dtype (float32 for float32 and half-precision tables).

docs/semantics.md: per row `a += mean_r(g*g)`; `w -= lr * g / (sqrt(a) + eps)`. Weight decay as
LazyAdam offers it: "l2" adds `wd*w` to g before the mean, "decoupled" also takes `lr*wd*w` (the
old w) from the row. The row mean sums in the order of `ir.ROW_LANES`.
"""

from __future__ import annotations

from ..codegen.ir import Assign, Elem, Param, Reduce, Row, RowSize, Switch, sqrt
from ..codegen.rule import HParam, Lowering, Rule, State, register
from .family import (LOSS_SCALE, LR, MAXIMIZE, POSITIVE, WEIGHT_DECAY, decay_option,
                     effective_gradient, l2)

HPARAMS = (LR, HParam("eps", 1e-8, POSITIVE), WEIGHT_DECAY, LOSS_SCALE)

STATE = (State("acc", per="row", dtype="compute",
               names={"mindspore": "accum", "torch": "sum", "plural": "accs"}),)


def lower(spec) -> Lowering:
    w, acc = Elem("var"), Row("acc")
    g = l2(Elem("g"))
    update = g / (sqrt(acc) + Param("eps"))
    update = Switch("decay=decoupled", update + Param("weight_decay") * w, update)
    return Lowering(
        grad=effective_gradient(),
        reduce=(Reduce("sumsq", g * g),),
        row=(Assign("acc", acc + Row("sumsq") / RowSize()),),
        update=(Assign("var", w - Param("lr") * update),))


ROWWISE_ADAGRAD = register(Rule(
    name="rowwise_adagrad",
    prefix="lazyadam_rowwise_adagrad",
    options=(decay_option(("none", "l2", "decoupled")), MAXIMIZE),
    hparams=HPARAMS,
    state=STATE,
    symbol_order=("maximize", "use_locking", "decay"),
    lower=lower,
    doc="rowwise Adagrad: one accumulator per row, on the rows a gradient touches",
))
