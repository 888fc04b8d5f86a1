"""What the family of lazy rules (SGD, Adagrad, rowwise Adagrad, partial-rowwise Adam, Lion)
shares: domains, the common options and hyperparameters, and the effective gradient.

docs/semantics.md, "Other rules": every rule's effective gradient is `g = grad / loss_scale`,
negated when maximizing, per occurrence; a sparse step sums a row's occurrences in the one order
first. Unlike LazyAdam's (decayed per occurrence, as MindSpore does), the family's L2 weight decay
then adds `wd*w` once to the summed gradient, as torch.optim does on a dense gradient.
"""

from __future__ import annotations

import math

from ..codegen.ir import Assign, Elem, Expr, Param, Switch
from ..codegen.rule import HParam, Interval, Option

NONNEGATIVE = Interval(0.0, math.inf)
POSITIVE = Interval(0.0, math.inf, "()")
BETA = Interval(0.0, 1.0)
UNIT = Interval(0.0, 1.0, "[]")

LR = HParam("lr", 1e-3, NONNEGATIVE, static=False)
WEIGHT_DECAY = HParam("weight_decay", 0.0, NONNEGATIVE)
LOSS_SCALE = HParam("loss_scale", 1.0, POSITIVE)

MAXIMIZE = Option("maximize", (False, True), False, doc="ascend instead of descend (`g = -g`).")


def decay_option(values: tuple[str, ...]) -> Option:
    """The weight decay of a rule, among "none", "l2" (`g += wd*w`) and "decoupled"
    (`w -= lr*wd*w`)."""
    docs = {"none": '"none"', "l2": '"l2" (`g += wd*w`)', "decoupled": '"decoupled" (`w -= lr*wd*w`)'}
    return Option("decay", values, "none", symbol={"l2": "l2", "decoupled": "decoupled"},
                  doc=", ".join(docs[v] for v in values) + ".")


def effective_gradient() -> tuple[Assign, ...]:
    """`g = grad / loss_scale`, then `g = -g` when maximizing: one occurrence's effective
    gradient (a sparse step sums them per row)."""
    g = Elem("g")
    return (Assign("g", Elem("grad") / Param("loss_scale")),
            Assign("g", -g, when="maximize"))


def l2(g: Expr) -> Expr:
    """`g + wd*w` where the spec's decay is "l2", else `g`: the summed gradient, decayed once."""
    return Switch("decay=l2", g + Param("weight_decay") * Elem("var"), g)
