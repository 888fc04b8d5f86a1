"""Passes over `ir.Kernel`: each `(Kernel) -> Kernel`, pure, and printable between stages.

    lower -> fold_constants -> drop_dead_terms -> hoist_invariants
"""

from __future__ import annotations

import math
import operator
from dataclasses import replace

from .ir import (Assign, Binary, Call, Compare, Const, Elem, Expr, Kernel, Let, Load, Named, Param,
                 Scalar, Select, Switch, Unary, children, rebuild, transform, walk)


# [ir.Kernel] -> [ir.Kernel]
def fold_constants(kernel: Kernel) -> Kernel:
    """Replaces static hyperparameters by constants and folds what then becomes constant.

    Constant arithmetic is evaluated in double precision, the precision in which per-step scalars are
    computed at run time, so a static and a runtime hyperparameter give bitwise the same kernel output.
    Identities are only those exact in IEEE arithmetic (`x*1`, `1*x`, `x/1`, `-(-x)`); `x*0` is kept
    because it is NaN for an infinite `x`. `abs`, `sign`, `min`, `max`, comparisons and a `Select`
    on a constant condition fold with the semantics of `ir`'s docstring, which are those of the
    printed C: the same bits, ±0 and NaN included.
    """
    statics = kernel.spec.statics

    def fold(e: Expr) -> Expr:
        if isinstance(e, Param) and e.name in statics:
            return Const(float(statics[e.name]))
        if isinstance(e, Unary):
            if isinstance(e.x, Const):
                return Const(-e.x.value)
            if isinstance(e.x, Unary):
                return e.x.x
        if isinstance(e, Binary):
            a, b = e.a, e.b
            if isinstance(a, Const) and isinstance(b, Const):
                return Const(_ARITH[e.op](a.value, b.value))
            if e.op in "*/" and b == Const(1.0):
                return a
            if e.op == "*" and a == Const(1.0):
                return b
        if isinstance(e, Call) and all(isinstance(a, Const) for a in e.args):
            return Const(_FUNCTIONS[e.fn](*(a.value for a in e.args)))
        if isinstance(e, Compare) and isinstance(e.a, Const) and isinstance(e.b, Const):
            return Const(1.0 if _COMPARE[e.op](e.a.value, e.b.value) else 0.0)
        if isinstance(e, Select) and isinstance(e.c, Const):
            return e.a if e.c.value != 0 else e.b
        return e

    return kernel.with_statements(lambda s: replace(s, expr=transform(s.expr, fold)))


_ARITH = {"+": lambda a, b: a + b, "-": lambda a, b: a - b,
          "*": lambda a, b: a * b, "/": lambda a, b: a / b}
# Python's float comparisons and conditional expressions are C's on doubles, NaN and ±0 included;
# abs() is C's fabs.
_FUNCTIONS = {"sqrt": math.sqrt, "abs": abs,
              "sign": lambda x: 1.0 if x > 0 else (-1.0 if x < 0 else x),
              "max": lambda a, b: a if a > b else b, "min": lambda a, b: a if a < b else b}
_COMPARE = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
            "==": operator.eq, "!=": operator.ne}


# [ir.Kernel] -> [ir.Kernel]
def drop_dead_terms(kernel: Kernel) -> Kernel:
    """Resolves every `Switch` and gated statement by the spec's flags, dropping the dead branches."""
    spec = kernel.spec

    def choose(e: Expr) -> Expr:
        if isinstance(e, Switch):
            return e.on if spec.flag(e.flag) else e.off
        return e

    def keep(s: Assign) -> Assign | None:
        if s.when is not None and not spec.flag(s.when):
            return None
        return Assign(s.target, transform(s.expr, choose))

    return kernel.with_statements(keep)


# [ir.Kernel] -> [ir.Kernel]
def hoist_invariants(kernel: Kernel) -> Kernel:
    """Moves every maximal per-step subexpression out of the element loop into `scalars`.

    A subexpression is per-step when it reads no element (`Elem`, `Load`): `lr_t`, `1 - beta1`,
    `eps`, the keys of stochastic rounding, ... It is computed once per call in double precision,
    then stored in the arithmetic dtype (a key: as a uint64). Equal
    subexpressions share one scalar. A `Named` subexpression keeps its name; a bare hyperparameter keeps
    the hyperparameter's; others are numbered. Bare constants stay in the loop as literals.
    """
    lets: dict[Expr, str] = {}
    taken: set[str] = set()

    def name_for(e: Expr) -> str:
        if isinstance(e, Named):
            base = e.name
        elif isinstance(e, Param):
            base = e.name
        else:
            base = "c"
        name, n = base, 0
        while name in taken:
            n += 1
            name = f"{base}{n}"
        taken.add(name)
        return name

    def hoist(e: Expr) -> Expr:
        if _invariant(e) and not isinstance(e, Const):
            body = _strip_names(e)
            if body not in lets:
                lets[body] = name_for(e)
            return Scalar(lets[body])
        if isinstance(e, Named):
            return hoist(e.x)
        kids = children(e)
        if not kids:
            return e
        return rebuild(e, tuple(hoist(k) for k in kids))

    kernel = kernel.with_statements(lambda s: replace(s, expr=hoist(s.expr)))
    scalars = tuple(Let(name, body) for body, name in lets.items())
    return replace(kernel, scalars=kernel.scalars + scalars)


def _invariant(e: Expr) -> bool:
    return not any(isinstance(n, (Elem, Scalar, Load)) for n in walk(e))


def _strip_names(e: Expr) -> Expr:
    return transform(e, lambda n: n.x if isinstance(n, Named) else n)


# [ir.Kernel] -> [ir.Kernel]
def invert_loss_scale(kernel: Kernel) -> Kernel:
    """`x / loss_scale` as `x * inverse_loss_scale`, a hoisted scalar `1.0 / loss_scale`.

    Not a pass of the pipeline: the C dense kernel runs the rewritten loop only when loss_scale is
    a power of two whose inverse its arithmetic type holds exactly; then both are the exact
    quotient rounded once, the same bits, and a multiplication costs a fraction of a division,
    the dearest operation of a dense step (with sqrt). Runs after `hoist_invariants`; a kernel
    whose loss scale is static (a literal) is returned as it is.
    """
    if Let("loss_scale", Param("loss_scale")) not in kernel.scalars:
        return kernel
    inverse = Scalar("inverse_loss_scale")

    def rewrite(e: Expr) -> Expr:
        if isinstance(e, Binary) and e.op == "/" and e.b == Scalar("loss_scale"):
            return Binary("*", e.a, inverse)
        return e

    kernel = kernel.with_statements(lambda s: replace(s, expr=transform(s.expr, rewrite)))
    let = Let(inverse.name, Binary("/", Const(1.0), Param("loss_scale")))
    return replace(kernel, scalars=kernel.scalars + (let,))


#: The passes in order, by name: the stages `lazyadam ir` prints.
PIPELINE = (("fold_constants", fold_constants),
            ("drop_dead_terms", drop_dead_terms),
            ("hoist_invariants", hoist_invariants))
