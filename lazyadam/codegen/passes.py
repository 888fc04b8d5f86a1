"""Passes over `ir.Kernel`: each `(Kernel) -> Kernel`, pure, and printable between stages.

    lower -> fold_constants -> drop_dead_terms -> hoist_invariants
"""

from __future__ import annotations

import math
import operator
from dataclasses import replace

from .ir import (Assign, Binary, Call, Compare, Const, Elem, Expr, Kernel, Let, Load, Named, Param,
                 Reduce, Row, RowSize, Scalar, Select, Switch, Unary, children, rebuild, transform,
                 walk)
from .rule import RESERVED


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

    def keep(s: Assign | Reduce) -> Assign | Reduce | None:
        if s.when is not None and not spec.flag(s.when):
            return None
        return replace(s, expr=transform(s.expr, choose), when=None)

    return kernel.with_statements(keep)


# [ir.Kernel] -> [ir.Kernel]
def hoist_invariants(kernel: Kernel) -> Kernel:
    """Moves every maximal per-step subexpression out of the loops into `scalars`, then every
    maximal per-row one of the element code into the `row` statements.

    A subexpression is per-step when it reads no element or row (`Elem`, `Load`, `Row`,
    `RowSize`): `lr_t`, `1 - beta1`, `eps`, the keys of stochastic rounding, ... It is computed
    once per call in double precision, then stored in the arithmetic dtype (a key: as a uint64).
    A subexpression of the element code (`update`) is per-row when it reads a row value but no
    element, e.g. a rowwise rule's `lr / (sqrt(acc) + eps)`: computed once per row, after the
    row's own statements, in the arithmetic dtype, which gives the same bits as once per element.
    Equal subexpressions share one name. A `Named` subexpression keeps its name; a bare
    hyperparameter keeps the hyperparameter's; others are numbered (`c1`, `r1`), and a name the
    templates declare (`rule.RESERVED`) is numbered too. Bare constants stay in the loop as
    literals.
    """
    taken: set[str] = set(RESERVED)
    lets = _Hoisted(taken, "c", lambda e: not _reads(e, (Elem, Scalar, Load, Row, RowSize)))
    kernel = kernel.with_statements(lambda s: replace(s, expr=lets.hoist(s.expr, Scalar)))
    scalars = tuple(Let(name, body) for body, name in lets.found.items())
    taken.update(a.target for a in kernel.row)
    per_row = _Hoisted(taken, "r", lambda e: bool(children(e)) and _reads(e, (Row, RowSize))
                       and not _reads(e, (Elem, Load)))
    update = tuple(replace(s, expr=per_row.hoist(s.expr, Row)) for s in kernel.update)
    row = tuple(Assign(name, body) for body, name in per_row.found.items())
    return replace(kernel, scalars=kernel.scalars + scalars, row=kernel.row + row, update=update)


class _Hoisted:
    """The maximal subexpressions that `invariant` accepts (bare constants and values already
    hoisted aside), by body, each under a name not in `taken`."""

    def __init__(self, taken: set[str], base: str, invariant):
        self.taken, self.base, self.invariant = taken, base, invariant
        self.found: dict[Expr, str] = {}

    def hoist(self, e: Expr, node) -> Expr:
        """`e` with each hoisted subexpression replaced by `node(name)`."""
        if self.invariant(e) and not isinstance(e, (Const, node)):
            body = _strip_names(e)
            if body not in self.found:
                self.found[body] = self._name(e)
            return node(self.found[body])
        if isinstance(e, Named):
            return self.hoist(e.x, node)
        kids = children(e)
        if not kids:
            return e
        return rebuild(e, tuple(self.hoist(k, node) for k in kids))

    def _name(self, e: Expr) -> str:
        base = e.name if isinstance(e, (Named, Param)) else self.base
        name, n = base, 0
        while name in self.taken:
            n += 1
            name = f"{base}{n}"
        self.taken.add(name)
        return name


def _reads(e: Expr, kinds: tuple[type, ...]) -> bool:
    return any(isinstance(n, kinds) for n in walk(e))


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
