"""Rendering: an optimized `ir.Kernel`, printed, poured into the Jinja loop scaffolding.

    [ir.Kernel] --print--> body text --render--> [Source]
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import jinja2

from .. import __version__
from .ir import SUM_CHUNK, Elem, Kernel, walk
from .passes import invert_loss_scale
from .printer import C_INDEX_TYPES, CPrinter
from .rule import hparams_struct
from .spec import HALF_DTYPES, PARALLEL_MIN

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
    """The variables every template sees: types, flags and the printed rule.

    `T` is the arithmetic type (of locals, scratch and per-step scalars); `TV`, `TS` and `TG` are
    the storage types of var, of the rule's state arrays and of the gradient, and `types` maps each
    array to its storage type. `load`, `widen` and `store` print the conversions between the two.
    """
    spec = kernel.spec
    grad_reads_var = any(e == Elem("var") for s in kernel.grad for e in walk(s.expr))
    loads = [kernel.load(a) for a in kernel.arrays]
    types = {a: printer.storage_type(spec.storage(a)) for a in (*kernel.arrays, "grad")}
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
        # C: steps below this many elements run on one thread (None: LAZYADAM_PARALLEL_MIN at
        # build time, else the kind's default).
        parallel_min=spec.parallel_min,
        parallel_min_default=PARALLEL_MIN["sparse" if spec.sparse else "dense"],
        # Sparse kernels sum the chunks of a long run in parallel, before the run's row is updated.
        # When the gradient reads var (L2 decay) and rows are locked, var must be read under the
        # row's lock: then one thread sums a row's chunks itself, in the same order.
        split=not (spec.use_locking and grad_reads_var),
        # Half-precision storage: the 16-bit types and their conversions; stochastic rounding.
        half=any(spec.storage(a) in HALF_DTYPES for a in types),
        stochastic=spec.rounding == "stochastic",
        storage_notes=storage_notes(kernel),
        # load("[i]") -> "var_i = var[i], m_i = m[i], ...", store("[i]", "i") -> "var[i] = var_i;
        # ...", with their conversions and the position (i) that stochastic rounding hashes.
        load=lambda index: ", ".join(printer.load(s, f"{s.target}{index}") for s in loads),
        store=lambda index, position="position": " ".join(
            printer.store(s, f"{s.target}{index}", position) for s in kernel.stores),
        # widen("grad", "grad[i]") -> the arithmetic value of one stored element.
        widen=lambda array, access: printer.widen(spec.storage(array), access),
        T=printer.ctype,
        TV=types["var"],
        TS=types[kernel.arrays[1]],
        TG=types["grad"],
        types=types,
        I=C_INDEX_TYPES[spec.index_dtype],
        # The rule's hyperparameter struct: its C name, and its declaration (`rule.hparams_struct`).
        hparams_type=kernel.rule.hparams_type,
        hparams_struct=hparams_struct(kernel.rule),
        scalars="\n".join("    " + printer.let(s) for s in kernel.scalars),
        grad=printer.block(kernel.grad, indent),
        update=printer.block(kernel.update, indent),
    )


def storage_notes(kernel: Kernel) -> list[str]:
    """Lines for a header: how a half-precision kernel stores its arrays, computes and rounds."""
    spec = kernel.spec
    if not kernel.converts:
        return []
    state = ", ".join(kernel.arrays[1:])
    rounding = ("to nearest even" if spec.rounding == "nearest" else
                "stochastically, from random bits that hash hp->seed, hp->step and the "
                "element's index (the same on any thread count, in C and CUDA)")
    return textwrap.wrap(
        f"storage: var {spec.storage('var')}, {state} {spec.storage(kernel.arrays[1])}, gradient "
        f"{spec.storage('grad')}. Every step computes in {spec.compute_dtype} (loads widen "
        f"exactly); each write to 16-bit storage rounds {rounding}.", 96)


# [ir.Kernel] -> [Source]
def render_c(kernel: Kernel, symbol: str | None = None) -> Source:
    """C99 source and header for an optimized kernel (all passes applied)."""
    symbol = symbol or kernel.spec.symbol()
    printer = CPrinter(kernel.spec.compute_dtype)
    inverted = kernel if kernel.spec.sparse else invert_loss_scale(kernel)
    ctx = template_context(inverted, printer, symbol)
    # Dense: a second loop that multiplies by the inverse of a power-of-two loss scale.
    ctx["grad_inverted"] = None if inverted is kernel else ctx["grad"]
    ctx["grad"] = printer.block(kernel.grad, 12)
    body = "c_sparse.c.j2" if kernel.spec.sparse else "c_dense.c.j2"
    return Source(
        symbol=symbol,
        lang="c",
        text=ENV.get_template(body).render(ctx),
        header=ENV.get_template("c_header.h.j2").render(ctx, cdef=False),
        cdef=ENV.get_template("c_header.h.j2").render(ctx, cdef=True),
    )
