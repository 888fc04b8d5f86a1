"""The pipeline, stage by stage:

    Spec --lower--> ir.Kernel --fold_constants, drop_dead_terms, hoist_invariants--> ir.Kernel
         --print+render--> Source

Set `LAZYADAM_DUMP=DIR` to write every stage of every kernel generated into `DIR/<symbol>/`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from . import ir
from .passes import PIPELINE
from .printer import CPrinter
from .render import Source, render_c
from .spec import Spec, check_symbol

#: Renderers by target name, filled by the targets that print their own source (CUDA registers itself).
RENDERERS: dict[str, Callable[[ir.Kernel, str | None], Source]] = {"c": render_c}


def optimize(spec: Spec) -> ir.Kernel:
    """[Spec] -> [ir.Kernel]: lowered and with every pass applied."""
    kernel = ir.lower(spec)
    for _, run in PIPELINE:
        kernel = run(kernel)
    return kernel


def renderer(target: str) -> Callable[[ir.Kernel, str | None], Source]:
    """The renderer of `target`; the CUDA one is imported on first use.

    Raises:
        ValueError: an unknown target.
    """
    if target == "cuda" and target not in RENDERERS:
        from ..targets import cuda  # noqa: F401  (registers the CUDA renderer)
    if target not in RENDERERS:
        raise ValueError(f"unknown target {target!r}; choose from c, cuda")
    return RENDERERS[target]


def generate(spec: Spec, target: str = "c", symbol: str | None = None) -> Source:
    """[Spec] -> [Source]: the generated source of `spec` for `target` ("c" or "cuda").

    Raises:
        SpecError: an illegal spec.
        ValueError: an unknown target, or a `symbol` that cannot name a C function.
    """
    source = renderer(target)(optimize(spec), symbol and check_symbol(symbol))
    if os.environ.get("LAZYADAM_DUMP"):
        dump(spec, Path(os.environ["LAZYADAM_DUMP"]), target, symbol)
    return source


def stages(spec: Spec, target: str = "c", symbol: str | None = None) -> dict[str, str]:
    """Every stage of the pipeline as text, in order: spec, lower, each pass, header and source."""
    render = renderer(target)
    symbol = symbol and check_symbol(symbol)
    kernel = ir.lower(spec)
    out = {"spec": spec.to_json(), "lower": format_kernel(kernel)}
    for name, run in PIPELINE:
        kernel = run(kernel)
        out[name] = format_kernel(kernel)
    source = render(kernel, symbol)
    out["header"] = source.header
    out["source"] = source.text
    return out


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
    """
    printer = _IRPrinter(kernel.spec.dtype)
    lines = [f"kernel {kernel.spec.symbol()}  ({'sparse' if kernel.spec.sparse else 'dense'}, "
             f"{kernel.spec.dtype})"]
    if kernel.scalars:
        lines.append("  per step (double, then stored as the element type):")
        lines += [f"    {s.name} = {printer.expr(s.expr, scalar=True)}" for s in kernel.scalars]
    for title, stmts in (("per occurrence (effective gradient)", kernel.grad),
                         ("per element (update)", kernel.update)):
        lines.append(f"  {title}:")
        for s in stmts:
            gate = f"  if {s.when}" if s.when else ""
            lines.append(f"    {s.target} = {printer.expr(s.expr, scalar=True)}{gate}")
    return "\n".join(lines)


class _IRPrinter(CPrinter):
    """Prints IR in the middle of the pipeline: element names bare, switches visible."""

    def __init__(self, dtype: str):
        super().__init__(dtype, hparams="{}")

    def elem(self, name: str) -> str:
        return name

    def _print(self, e, scalar):
        if isinstance(e, ir.Switch):
            on = self.expr(e.on, scalar)
            off = self.expr(e.off, scalar)
            return f"[{e.flag} ? {on} : {off}]", 4
        if isinstance(e, ir.Named):
            return f"{e.name}{{{self.expr(e.x, scalar)}}}", 4
        return super()._print(e, scalar)
