"""The IR: an update rule as a small expression tree, and a kernel assembled from a rule's lowering.

A kernel has five parts:

- `scalars`: per-step values computed once per call, before the loop, in double precision and then
  stored in the arithmetic dtype (`lr_t`, `1 - beta1`, ...), and the keys of stochastic rounding.
  Filled by `passes.hoist_invariants`.
- `loads`: each stored element (the state arrays, and the gradient) widened to the arithmetic dtype.
- `grad`: the effective gradient of one occurrence (one element of a dense gradient, or one element of
  one row of a sparse gradient, before duplicates are summed).
- `reduce`: per-row sums (`Reduce`) of an expression of each element's effective gradient and
  state, in the `ROW_LANES` order; empty for a rule whose state is all per element.
- `row`: per-row statements, once per row after the sums: they read the sums and the per-row state
  (`Row`), the row's length (`RowSize`) and scalars, and write per-row state and locals.
- `update`: the update of one element, given the (summed) effective gradient `g` and the row's
  values.
- `stores`: each updated state element rounded to its storage dtype (`row_loads` and `row_stores`
  do the same for the per-row state, once per row).

The arithmetic dtype is the parameter's for float32 and float64 kernels and float32 for
half-precision ones (`Spec.compute_dtype`), whatever the storage: a rule (`rule.Rule`, e.g.
`lazyadam/rules/adam.py`) writes `grad` and `update` once, and `assemble` adds `loads` (`Load`:
widen, exact) and `stores` (`Round`: to nearest even, or stochastically with `Bits`), the only
parts that depend on how the arrays are stored.

Expressions refer to hyperparameters (`Param`, fields of the rule's hparams struct), to per-element
values (`Elem`: `var` and the rule's state arrays, the raw gradient `grad` and the effective
gradient `g`), to per-row values (`Row`: per-row state, sums and locals; `RowSize`), and to hoisted
scalars (`Scalar`). `Switch` nodes are feature gates resolved by
`passes.drop_dead_terms`; `Named` marks a subexpression that hoisting should keep under a readable
name.

Operations (`Unary`, `Binary`, `Call` of one of `FUNCTIONS`, `Compare`, `Select`) follow IEEE 754
in the dtype they run in (the arithmetic dtype in the loop, double for per-step scalars and for
`passes.fold_constants`), each result rounded once, as C computes them without contraction; every
expression is pure, so a printer may repeat an operand's text (`max` and `sign` print as ternaries).
Where IEEE leaves a choice, the IR makes it here, and the printed C and CUDA and
`passes.fold_constants` all follow it bit for bit:

- `sign(x)` is 1 where x > 0, -1 where x < 0, and x itself otherwise: sign(+0) = +0,
  sign(-0) = -0 and sign(NaN) is that NaN. (np.sign gives +0 for -0; torch.sign gives 0 for NaN,
  which would hide a NaN in Lion's update instead of propagating it.)
- `abs(x)` clears the sign bit (C's fabs), of a NaN too.
- `max(a, b)` is `a > b ? a : b` and `min(a, b)` is `a < b ? a : b`: the second operand on a tie
  (max(+0, -0) = -0) and whenever either operand is NaN. So a NaN in `b` propagates and one in `a`
  does not: x86's maxss/minss, not C's fmax/fmin (which drop a NaN in either operand) nor
  np.maximum (which keeps one from either). Adam's amsgrad writes `max(vmax, v)`, so that a NaN
  in `v` reaches `vmax`.
- A comparison (`Compare`) is false when either operand is NaN, except `!=`, which is true; -0 and
  +0 compare equal. Its value is 1 when true and 0 when false, as in C.
- `Select(c, a, b)` is `a` where `c` is nonzero (a NaN `c` counts as nonzero, as in C) and `b`
  where `c` is zero (either sign).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Union

from .rule import Rule
from .spec import HALF_DTYPES, SpecBase as Spec

#: The summation order of duplicate indices (docs/semantics.md): a row's occurrences, in input order,
#: are cut into consecutive chunks of SUM_CHUNK; each chunk is summed left to right, then the chunk
#: sums are added left to right. One constant for every target, dtype, thread count and device, so
#: that every kernel gives bitwise the same sums; chunks are what a GPU sums in parallel, and a row
#: seen n times is at most max(SUM_CHUNK, n / SUM_CHUNK) additions deep.
SUM_CHUNK = 256

#: The summation order of a row's elements (a `Reduce`; docs/semantics.md): lane l in [0, ROW_LANES)
#: sums, left to right from zero, the terms of the elements j with j % ROW_LANES == l in increasing
#: j; then for s = ROW_LANES/2, ..., 2, 1, lane i < s adds lane i + s to itself; the sum is lane 0.
#: A warp's lanes on a GPU, unrolled partial sums on a CPU: every target, dtype, thread count and
#: device adds the same numbers in the same order, so row sums agree bitwise everywhere.
ROW_LANES = 32

class Node:
    """What every expression node has: arithmetic operators that build the IR, so that a rule
    reads like its math (`beta1 * m + (1 - beta1) * g`). A Python number becomes a `Const`;
    `a + b` is `Binary("+", a, b)`, `-a` is `Unary("-", a)`. Equality stays structural (the
    dataclasses'); comparisons are `Compare` nodes, written out."""

    def __add__(self, other):
        return Binary("+", self, _node(other))

    def __radd__(self, other):
        return Binary("+", _node(other), self)

    def __sub__(self, other):
        return Binary("-", self, _node(other))

    def __rsub__(self, other):
        return Binary("-", _node(other), self)

    def __mul__(self, other):
        return Binary("*", self, _node(other))

    def __rmul__(self, other):
        return Binary("*", _node(other), self)

    def __truediv__(self, other):
        return Binary("/", self, _node(other))

    def __rtruediv__(self, other):
        return Binary("/", _node(other), self)

    def __neg__(self):
        return Unary("-", self)


def _node(x) -> Node:
    """`x` as an expression: a node as it is, a Python number as a `Const`."""
    if isinstance(x, Node):
        return x
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return Const(float(x))
    raise TypeError(f"cannot make an IR expression of {x!r}")


def sqrt(x) -> Call:
    return Call("sqrt", (_node(x),))


def sign(x) -> Call:
    return Call("sign", (_node(x),))


def maximum(a, b) -> Call:
    """`max(a, b)` (`a > b ? a : b`: see the module's docstring for NaN and signed zeros)."""
    return Call("max", (_node(a), _node(b)))


@dataclass(frozen=True)
class Const(Node):
    value: float


@dataclass(frozen=True)
class Param(Node):
    """A field of `lazyadam_hparams` (double)."""
    name: str


@dataclass(frozen=True)
class Elem(Node):
    """The current value of one element of a per-element quantity."""
    name: str


@dataclass(frozen=True)
class Scalar(Node):
    """A hoisted per-step scalar, stored in the parameter dtype."""
    name: str


@dataclass(frozen=True)
class Row(Node):
    """The current row's value of a per-row quantity: a per-row state array, a `Reduce` sum or a
    per-row local."""
    name: str


@dataclass(frozen=True)
class RowSize(Node):
    """The number of elements in a row (the product of the parameter's shape after the first
    axis), in the arithmetic dtype."""


@dataclass(frozen=True)
class Unary(Node):
    op: str  # "-"
    x: Expr


@dataclass(frozen=True)
class Binary(Node):
    op: str  # "+", "-", "*", "/"
    a: Expr
    b: Expr


#: The functions a `Call` may name, by their number of arguments (semantics: the module's docstring).
FUNCTIONS = {"sqrt": 1, "abs": 1, "sign": 1, "min": 2, "max": 2}
#: The operators of a `Compare`.
COMPARISONS = ("<", "<=", ">", ">=", "==", "!=")


@dataclass(frozen=True)
class Call(Node):
    """`fn(*args)`, `fn` one of `FUNCTIONS`.

    Raises:
        ValueError: an unknown function, or the wrong number of arguments.
    """
    fn: str
    args: tuple[Expr, ...]

    def __post_init__(self):
        if self.fn not in FUNCTIONS:
            raise ValueError(f"unknown function {self.fn!r}; choose from {', '.join(FUNCTIONS)}")
        if len(self.args) != FUNCTIONS[self.fn]:
            raise ValueError(f"{self.fn} takes {FUNCTIONS[self.fn]} argument(s), "
                             f"not {len(self.args)}")


@dataclass(frozen=True)
class Compare(Node):
    """`a op b`: 1 when true, 0 when false (NaN compares false, except with `!=`).

    Raises:
        ValueError: an `op` that is not one of `COMPARISONS`.
    """
    op: str
    a: Expr
    b: Expr

    def __post_init__(self):
        if self.op not in COMPARISONS:
            raise ValueError(f"unknown comparison {self.op!r}; choose from "
                             f"{', '.join(COMPARISONS)}")


@dataclass(frozen=True)
class Select(Node):
    """`c ? a : b`: `a` where the condition `c` is nonzero (NaN included), else `b`."""
    c: Expr
    a: Expr
    b: Expr


@dataclass(frozen=True)
class Switch(Node):
    """`on` where the spec switch `flag` is set (see `Spec.flag`), `off` otherwise."""
    flag: str
    on: Expr
    off: Expr


@dataclass(frozen=True)
class Named(Node):
    """A subexpression that keeps the name `name` when hoisted."""
    name: str
    x: Expr


@dataclass(frozen=True)
class Load(Node):
    """The stored element of array `name`, of storage dtype `dtype`, widened (exactly) to the
    arithmetic dtype."""
    name: str
    dtype: str


@dataclass(frozen=True)
class Round(Node):
    """`x` rounded to the storage dtype `dtype`: to nearest even when `bits` is None, else
    stochastically, away from zero with probability (|x| - |down|) / (|up| - |down|) as drawn by
    the 32 random bits `bits`."""
    x: Expr
    dtype: str
    bits: Expr | None = None


@dataclass(frozen=True)
class StepKey(Node):
    """The per-step key of stochastic rounding: a hash of the `seed` and `step` fields of
    `lazyadam_hparams` and of `stream`. Arrays var and m draw from stream 0, v and vmax from
    stream 1 (one hash of 32 bits serves two arrays of 16)."""
    stream: int


@dataclass(frozen=True)
class Bits(Node):
    """32 random bits for one element: a hash of a `StepKey` and of the element's `position` (its
    index in the array), the same whichever thread or target computes it. Rounding reads the high
    bits; `half` = 1 moves the low 16 bits up, for the second array of a stream."""
    key: Expr
    position: Expr
    half: int = 0


Expr = Union[Const, Param, Elem, Scalar, Row, RowSize, Unary, Binary, Call, Compare, Select, Switch,
             Named, Load, Round, StepKey, Bits]


@dataclass(frozen=True)
class Assign:
    """`target = expr` for one element; `when` gates the whole statement (a spec switch or None)."""
    target: str
    expr: Expr
    when: str | None = None


@dataclass(frozen=True)
class Reduce:
    """`target = ` the sum, over the current row's elements in the `ROW_LANES` order, of `expr`
    (element code: it reads the element's `g`, state and scalars); `when` gates it as
    `Assign.when` does."""
    target: str
    expr: Expr
    when: str | None = None


@dataclass(frozen=True)
class Let:
    """A hoisted scalar: `name = expr`, evaluated once per call."""
    name: str
    expr: Expr


@dataclass(frozen=True)
class Kernel:
    spec: Spec
    rule: Rule
    grad: tuple[Assign, ...]
    update: tuple[Assign, ...]
    scalars: tuple[Let, ...] = field(default=())
    loads: tuple[Assign, ...] = field(default=())
    stores: tuple[Assign, ...] = field(default=())
    reduce: tuple[Reduce, ...] = field(default=())
    row: tuple[Assign, ...] = field(default=())
    row_loads: tuple[Assign, ...] = field(default=())
    row_stores: tuple[Assign, ...] = field(default=())

    @property
    def arrays(self) -> tuple[str, ...]:
        """The per-element arrays the kernel reads and writes, in ABI order (`Rule.arrays`)."""
        return self.rule.arrays(self.spec)

    @property
    def row_arrays(self) -> tuple[str, ...]:
        """The per-row state arrays, in ABI order after `arrays` (`Rule.row_arrays`)."""
        return self.rule.row_arrays(self.spec)

    @property
    def per_row(self) -> bool:
        """True when the kernel keeps per-row state or sums rows: it runs a row at a time."""
        return bool(self.reduce or self.row or self.row_arrays)

    @property
    def converts(self) -> bool:
        """True when some array is stored in another dtype than the arithmetic's."""
        return any(not isinstance(s.expr, (Elem, Row)) for s in self.stores + self.row_stores) \
            or any(isinstance(s.expr, Load) and s.expr.dtype != self.spec.compute_dtype
                   for s in self.loads + self.row_loads)

    def load(self, name: str) -> Assign:
        """The load of array `name` ("var", "m", ..., "grad").

        Raises:
            KeyError: the kernel does not read `name`.
        """
        for stmt in self.loads:
            if stmt.target == name:
                return stmt
        raise KeyError(f"{self.spec.symbol()} does not load {name!r}")

    def with_statements(self, fn: Callable[[Assign | Reduce], Assign | Reduce | None]) -> Kernel:
        """A copy with `fn` applied to every statement (`Assign`, and the `Reduce`s) of every part
        but `scalars` (None drops one)."""
        def apply(stmts):
            return tuple(s for s in map(fn, stmts) if s is not None)
        return replace(self, loads=apply(self.loads), grad=apply(self.grad),
                       reduce=apply(self.reduce), row_loads=apply(self.row_loads),
                       row=apply(self.row), update=apply(self.update), stores=apply(self.stores),
                       row_stores=apply(self.row_stores))


def children(e: Expr) -> tuple[Expr, ...]:
    if isinstance(e, Round):
        return (e.x,) if e.bits is None else (e.x, e.bits)
    if isinstance(e, Bits):
        return (e.key, e.position)
    if isinstance(e, Unary):
        return (e.x,)
    if isinstance(e, (Binary, Compare)):
        return (e.a, e.b)
    if isinstance(e, Select):
        return (e.c, e.a, e.b)
    if isinstance(e, Call):
        return e.args
    if isinstance(e, Switch):
        return (e.on, e.off)
    if isinstance(e, Named):
        return (e.x,)
    return ()


def rebuild(e: Expr, kids: tuple[Expr, ...]) -> Expr:
    """`e` with its children replaced by `kids`."""
    if isinstance(e, Round):
        return Round(kids[0], e.dtype, kids[1] if len(kids) > 1 else None)
    if isinstance(e, Bits):
        return Bits(kids[0], kids[1], e.half)
    if isinstance(e, Unary):
        return Unary(e.op, kids[0])
    if isinstance(e, Binary):
        return Binary(e.op, kids[0], kids[1])
    if isinstance(e, Compare):
        return Compare(e.op, kids[0], kids[1])
    if isinstance(e, Select):
        return Select(kids[0], kids[1], kids[2])
    if isinstance(e, Call):
        return Call(e.fn, tuple(kids))
    if isinstance(e, Switch):
        return Switch(e.flag, kids[0], kids[1])
    if isinstance(e, Named):
        return Named(e.name, kids[0])
    return e


def transform(e: Expr, fn: Callable[[Expr], Expr]) -> Expr:
    """Rewrites bottom-up: children first, then `fn` on the rebuilt node."""
    kids = children(e)
    if kids:
        e = rebuild(e, tuple(transform(k, fn) for k in kids))
    return fn(e)


def walk(e: Expr):
    """Yields every node of `e`, parents before children."""
    yield e
    for k in children(e):
        yield from walk(k)


# [Spec], [rule.Rule] -> [ir.Kernel]
def assemble(spec: Spec, rule: Rule) -> Kernel:
    """`rule` lowered for `spec`, with the loads and stores of the arrays it reads and writes."""
    spec.validate()
    lowering = rule.lower(spec)
    arrays, rows = rule.arrays(spec), rule.row_arrays(spec)
    loads = tuple(Assign(a, Load(a, spec.storage(a))) for a in arrays + ("grad",))
    stores = tuple(Assign(a, _store(spec, Elem(a), number)) for number, a in enumerate(arrays))
    row_loads = tuple(Assign(a, Load(a, spec.storage(a))) for a in rows)
    row_stores = tuple(Assign(a, _store(spec, Row(a), number))
                       for number, a in enumerate(rows, start=len(arrays)))
    return Kernel(spec=spec, rule=rule, grad=lowering.grad, update=lowering.update, loads=loads,
                  stores=stores, reduce=lowering.reduce, row=lowering.row, row_loads=row_loads,
                  row_stores=row_stores)


def _store(spec: Spec, value: Elem | Row, number: int) -> Expr:
    """What array `value.name` (the `number`-th array, counting var and the per-element arrays
    before the per-row ones) stores: its value, rounded when its storage is narrower;
    stochastically from the high or the low half of stream number // 2, at the element's
    position (a per-row array's: the row's)."""
    dtype = spec.storage(value.name)
    if dtype == spec.compute_dtype:
        return value
    if dtype not in HALF_DTYPES:
        return Round(value, dtype)           # float32 state of a float64 kernel: to nearest
    bits = None
    if spec.rounding == "stochastic":
        stream = number // 2
        position = Elem("position") if isinstance(value, Elem) else Row("position")
        bits = Bits(Named(f"rounding_key{stream}", StepKey(stream)), position, number % 2)
    return Round(value, dtype, bits)
