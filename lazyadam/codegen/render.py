"""Rendering: an optimized `ir.Kernel`, printed, poured into the Jinja loop scaffolding.

    [ir.Kernel] --print--> body text --render--> [Source]
"""

from __future__ import annotations

from dataclasses import dataclass

import jinja2

from .. import __version__
from .ir import SUM_CHUNK, Elem, Kernel, walk
from .printer import C_INDEX_TYPES, CPrinter

ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("lazyadam", "templates"),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


@dataclass(frozen=True)
class Source:
    """Generated source code of one kernel.

    Attributes:
        symbol: the exported function name.
        lang: "c" or "cuda".
        text: the source file; it includes `<symbol>.h`.
        header: the header file `<symbol>.h`.
        cdef: the header's declarations without preprocessor lines, for cffi.
    """

    symbol: str
    lang: str
    text: str
    header: str
    cdef: str

    @property
    def filename(self) -> str:
        return f"{self.symbol}.{'cu' if self.lang == 'cuda' else 'c'}"


def template_context(kernel: Kernel, printer: CPrinter, symbol: str, indent: int = 12) -> dict:
    """The variables every template sees: types, flags and the printed rule."""
    spec = kernel.spec
    grad_reads_var = any(e == Elem("var") for s in kernel.grad for e in walk(s.expr))
    return dict(
        symbol=symbol,
        version=__version__,
        spec_json=spec.to_json(),
        statics=spec.static,
        sparse=spec.sparse,
        amsgrad=spec.amsgrad,
        locking=spec.use_locking,
        arrays=kernel.arrays,
        grad_reads_var=grad_reads_var,
        sum_chunk=SUM_CHUNK,
        # Sparse kernels sum the chunks of a long run in parallel, before the run's row is updated.
        # When the gradient reads var (L2 decay) and rows are locked, var must be read under the
        # row's lock: then one thread sums a row's chunks itself, in the same order.
        split=not (spec.use_locking and grad_reads_var),
        # load("[i]") -> "var_i = var[i], m_i = m[i], ..."; store("[i]") -> "var[i] = var_i; ..."
        load=lambda index: ", ".join(f"{a}_i = {a}{index}" for a in kernel.arrays),
        store=lambda index: " ".join(f"{a}{index} = {a}_i;" for a in kernel.arrays),
        T=printer.ctype,
        I=C_INDEX_TYPES[spec.index_dtype],
        scalars="\n".join("    " + printer.let(s) for s in kernel.scalars),
        grad=printer.block(kernel.grad, indent),
        update=printer.block(kernel.update, indent),
    )


# [ir.Kernel] -> [Source]
def render_c(kernel: Kernel, symbol: str | None = None) -> Source:
    """C99 source and header for an optimized kernel (all passes applied)."""
    symbol = symbol or kernel.spec.symbol()
    ctx = template_context(kernel, CPrinter(kernel.spec.dtype), symbol)
    body = "c_sparse.c.j2" if kernel.spec.sparse else "c_dense.c.j2"
    return Source(
        symbol=symbol,
        lang="c",
        text=ENV.get_template(body).render(ctx),
        header=ENV.get_template("c_header.h.j2").render(ctx, cdef=False),
        cdef=ENV.get_template("c_header.h.j2").render(ctx, cdef=True),
    )
