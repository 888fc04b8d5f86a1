"""The pipeline, stage by stage:

    Spec --rule.lower, ir.assemble--> ir.Kernel --fold_constants, drop_dead_terms, hoist_invariants--> ir.Kernel
         --print+render--> Source

Set `LAZYADAM_DUMP=DIR` to write every stage of every kernel generated into `DIR/<symbol>/`.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable

from . import ir
from .names import check_symbol
from .passes import PIPELINE
from .printer import CPrinter
from .render import Source, render_c
from .render_cuda import render_cuda
from .rule import Rule
from .spec import SpecBase as Spec

#: Renderers by target name: [ir.Kernel], symbol -> [Source].
RENDERERS: dict[str, Callable[[ir.Kernel, str | None], Source]] = {"c": render_c,
                                                                    "cuda": render_cuda}


def lower(spec: Spec, rule: Rule | None = None) -> ir.Kernel:
    """[Spec] -> [ir.Kernel]: `rule` (by default the spec's own, `spec.RULE`) lowered for
    `spec` and assembled (`ir.assemble`), before any pass."""
    return ir.assemble(spec, rule or spec.RULE)


def optimize(spec: Spec) -> ir.Kernel:
    """[Spec] -> [ir.Kernel]: lowered and with every pass applied."""
    return _optimized(spec, repr(spec.static))


#: How many specs' kernels and sources the pipeline remembers (`_optimized`, `_generated`): a
#: source is 30-45 KB, so a full memo holds about 150 MB.
MEMO_SIZE = 4096


@functools.lru_cache(maxsize=MEMO_SIZE)
def _optimized(spec: Spec, static: str) -> ir.Kernel:
    """`optimize`, made once per spec (an `ir.Kernel` is immutable) for the last `MEMO_SIZE`
    asked for: loading a kernel again skips lowering and the passes (about 1 ms). `static` (its
    repr) tells apart static values that compare equal but print differently (0.0 and -0.0, 1
    and 1.0)."""
    kernel = lower(spec)
    for _, run in PIPELINE:
        kernel = run(kernel)
    return kernel


def renderer(target: str) -> Callable[[ir.Kernel, str | None], Source]:
    """The renderer of `target`.

    Raises:
        ValueError: an unknown target.
    """
    if target not in RENDERERS:
        raise ValueError(f"unknown target {target!r}; choose from {', '.join(RENDERERS)}")
    return RENDERERS[target]


def generate(spec: Spec, target: str = "c", symbol: str | None = None) -> Source:
    """[Spec] -> [Source]: the generated source of `spec` for `target` ("c" or "cuda").

    Raises:
        SpecError: an illegal spec.
        ValueError: an unknown target, or a `symbol` the kernel cannot take (`names.check_symbol`).
    """
    source = _generated(spec, repr(spec.static), target, symbol)
    if os.environ.get("LAZYADAM_DUMP"):
        dump(spec, Path(os.environ["LAZYADAM_DUMP"]), target, symbol)
    return source


@functools.lru_cache(maxsize=MEMO_SIZE)
def _generated(spec: Spec, static: str, target: str, symbol: str | None) -> Source:
    """`generate`'s source, made once per (spec, target, symbol) for the last `MEMO_SIZE` asked
    for (a `Source` is immutable; `static` as in `_optimized`)."""
    render, kernel = renderer(target), optimize(spec)
    if symbol is not None:
        _check_symbol(symbol, render, kernel)
    return render(kernel, symbol)


def stages(spec: Spec, target: str = "c", symbol: str | None = None) -> dict[str, str]:
    """Every stage of the pipeline as text, in order: spec, lower, each pass, header and source."""
    render = renderer(target)
    kernel = lower(spec)
    out = {"spec": spec.to_json(), "lower": format_kernel(kernel)}
    for name, run in PIPELINE:
        kernel = run(kernel)
        out[name] = format_kernel(kernel)
    if symbol is not None:
        _check_symbol(symbol, render, kernel)
    source = render(kernel, symbol)
    out["header"] = source.header
    out["source"] = source.text
    return out


def _check_symbol(symbol: str, render: Callable[[ir.Kernel, str | None], Source],
                  kernel: ir.Kernel) -> None:
    """Raises ValueError if `symbol` cannot name `kernel` (`names.check_symbol`, against the files
    rendered under the spec's own symbol)."""
    own = render(kernel, None)
    check_symbol(symbol, (own.symbol, own.text + own.header))


def dump(spec: Spec, root: Path, target: str = "c", symbol: str | None = None) -> Path:
    """Writes `stages()` to `root/<symbol>/NN-<stage>.txt` and returns that folder."""
    folder = root / f"{symbol or spec.symbol()}.{target}"
    folder.mkdir(parents=True, exist_ok=True)
    for n, (name, text) in enumerate(stages(spec, target, symbol).items()):
        (folder / f"{n:02d}-{name}.txt").write_text(text.rstrip("\n") + "\n")
    return folder


def format_kernel(kernel: ir.Kernel) -> str:
    """A readable listing of an IR kernel: scalars, then the gradient and update statements.

    Before hoisting, hyperparameters print as `hp->name`; unresolved switches as `flag ? on : off`.
    A kernel that stores an array in another dtype than its arithmetic's (half precision) also
    lists its loads (widened, exactly) and stores (rounded), and says in which dtype it computes.
    """
    spec = kernel.spec
    printer = _IRPrinter(spec.compute_dtype)
    kind = "sparse" if spec.sparse else "dense"
    if kernel.converts:
        state = [a for a in kernel.arrays[1:] + kernel.row_arrays]
        stored = f"state {spec.storage(state[0])}, " if state else ""
        lines = [f"kernel {spec.symbol()}  ({kind}, {spec.dtype}; {stored}"
                 f"gradient {spec.storage('grad')}; arithmetic in {spec.compute_dtype}, "
                 f"{spec.rounding} rounding)"]
    else:
        lines = [f"kernel {spec.symbol()}  ({kind}, {spec.dtype})"]
    if kernel.scalars:
        stored = (f"{spec.compute_dtype}, the arithmetic's; rounding keys as uint64"
                  if kernel.converts else "the element type")
        lines.append(f"  per step (double, then stored as {stored}):")
        lines += [f"    {s.name} = {printer.expr(s.expr, scalar=True)}" for s in kernel.scalars]
    sections = [("per occurrence (effective gradient)", kernel.grad),
                (f"per row (sums over the row, in the order of {ir.ROW_LANES} lanes)",
                 kernel.reduce),
                ("per row", kernel.row),
                ("per element (update)", kernel.update)]
    if kernel.converts:
        sections.insert(0, (f"load (widened to {spec.compute_dtype}, exactly)",
                            kernel.loads + kernel.row_loads))
        how = "to nearest even" if spec.rounding == "nearest" else "stochastically"
        sections.append((f"store (rounded {how} where narrower)",
                         kernel.stores + kernel.row_stores))
    for title, stmts in sections:
        if not stmts and title.startswith("per row"):
            continue
        lines.append(f"  {title}:")
        for s in stmts:
            gate = f"  if {s.when}" if s.when else ""
            value = printer.expr(s.expr, scalar=True)
            if isinstance(s, ir.Reduce):
                value = f"sum_row({value})"
            lines.append(f"    {s.target} = {value}{gate}")
    return "\n".join(lines)


class _IRPrinter(CPrinter):
    """Prints IR in the middle of the pipeline: element names bare, switches visible, conversions
    and functions by name (`max(vmax, v)`, `select(c, a, b)`; comparisons as C writes them)."""

    def __init__(self, dtype: str):
        super().__init__(dtype, hparams="{}")

    ROW_SIZE = "row_size"

    def elem(self, name: str) -> str:
        return name

    def row(self, name: str) -> str:
        return f"{name}[row]"

    def _print(self, e, scalar):
        if isinstance(e, ir.Switch):
            on = self.expr(e.on, scalar)
            off = self.expr(e.off, scalar)
            return f"[{e.flag} ? {on} : {off}]", 4
        if isinstance(e, ir.Named):
            return f"{e.name}{{{self.expr(e.x, scalar)}}}", 4
        if isinstance(e, ir.Load):
            return f"{e.name}[position] as {e.dtype}", 4
        if isinstance(e, ir.Round):
            value = self.expr(e.x, scalar)
            if e.bits is None:
                return f"round_nearest_{e.dtype}({value})", 4
            return f"round_stochastic_{e.dtype}({value}, {self.expr(e.bits, scalar)})", 4
        if isinstance(e, ir.Bits):
            half = ", low half" if e.half else ""
            return f"bits({self.expr(e.key, scalar)}, {self.expr(e.position, scalar)}{half})", 4
        if isinstance(e, ir.StepKey):
            return f"key(seed, step, {e.stream})", 4
        if isinstance(e, ir.Select):
            c, a, b = (self.expr(k, scalar) for k in (e.c, e.a, e.b))
            return f"select({c}, {a}, {b})", 4
        return super()._print(e, scalar)

    def call(self, fn: str, args: list[str], scalar: bool) -> str:
        return f"{fn}({', '.join(args)})"
