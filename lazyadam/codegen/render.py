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
from .spec import HALF_DTYPES, SpecError

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

    `T` is the arithmetic type (of locals, scratch and per-step scalars); `TV` and `TG` are the
    storage types of var and of the gradient, and `types` maps each array to its storage type.
    `load`, `widen` and `store` print the conversions between the two. `params`, `args` and
    `nulls` spell the kernel's arrays (`arrays`: var, then the state its spec keeps) in a
    signature, a call and a null check, so that no template names a rule's state.

    Raises:
        SpecError: a kernel with per-row state or row sums (`Kernel.per_row`), which the
            templates do not print.
    """
    spec = kernel.spec
    if kernel.per_row:
        raise SpecError(f"rule {kernel.rule.name!r} keeps per-row state or sums over rows, which "
                        "the C and CUDA templates do not print: only rules whose state is per "
                        "element compile")
    grad_reads_var = any(e == Elem("var") for s in kernel.grad for e in walk(s.expr))
    loads = [kernel.load(a) for a in kernel.arrays]
    types = {a: printer.storage_type(spec.storage(a)) for a in (*kernel.arrays, "grad")}
    rule_arrays = ("var", *(s.name for s in kernel.rule.state))
    return dict(
        symbol=symbol,
        version=__version__,
        spec_json=spec.to_json(),
        statics=spec.static,
        sparse=spec.sparse,
        locking=spec.use_locking,
        arrays=kernel.arrays,
        # Every array of the rule, kept by this spec or not; how stochastic rounding pairs them.
        rule_arrays=rule_arrays,
        streams=rounding_streams(rule_arrays),
        # params("*restrict ") -> "float *restrict var, float *restrict m, ..." (storage types);
        # args("&") -> "&var, &m, ..."; args(suffix="_i") -> "var_i, m_i, ...";
        # nulls("[k]") -> "!var[k] || !m[k] || ...".
        params=lambda pointer: ", ".join(f"{types[a]} {pointer}{a}" for a in kernel.arrays),
        args=lambda prefix="", suffix="": ", ".join(f"{prefix}{a}{suffix}" for a in kernel.arrays),
        nulls=lambda index="": " || ".join(f"!{a}{index}" for a in kernel.arrays),
        grad_reads_var=grad_reads_var,
        sum_chunk=SUM_CHUNK,
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


def rounding_streams(arrays: tuple[str, ...]) -> str:
    """Which arrays share each stream of random bits in stochastic rounding (`ir.assemble`: the
    arrays in ABI order, two to a stream): "var and m: stream 0; v and vmax: stream 1"."""
    return "; ".join(f"{' and '.join(arrays[i:i + 2])}: stream {i // 2}"
                     for i in range(0, len(arrays), 2))


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
