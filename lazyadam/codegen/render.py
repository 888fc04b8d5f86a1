"""Rendering: an optimized `ir.Kernel`, printed, poured into the Jinja loop scaffolding.

    [ir.Kernel] --print--> body text --render--> [Source]
"""

from __future__ import annotations

import itertools
import textwrap
from dataclasses import dataclass

import jinja2

from .. import __version__
from .ir import ROW_LANES, SUM_CHUNK, Elem, Kernel, RowSize, walk
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

    `T` is the arithmetic type (of locals, scratch and per-step scalars); `TV` and `TG` are the
    storage types of var and of the gradient, and `types` maps each array to its storage type.
    `load`, `widen` and `store` print the conversions between the two. `params`, `args` and
    `nulls` spell the kernel's arrays (`arrays`: var, then the state its spec keeps) in a
    signature, a call and a null check, so that no template names a rule's state.
    """
    spec = kernel.spec
    grad_reads_var = any(e == Elem("var") for s in kernel.grad for e in walk(s.expr))
    loads = [kernel.load(a) for a in kernel.arrays]
    every = kernel.arrays + kernel.row_arrays
    types = {a: printer.storage_type(spec.storage(a)) for a in (*every, "grad")}
    rule_arrays = ("var", *(s.name for s in kernel.rule.state if s.per == "element"),
                   *(s.name for s in kernel.rule.state if s.per == "row"))
    return dict(
        symbol=symbol,
        rule_name=kernel.rule.name,
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
        params=lambda pointer: ", ".join(f"{types[a]} {pointer}{a}" for a in every),
        args=lambda prefix="", suffix="": ", ".join(f"{prefix}{a}{suffix}" for a in every),
        nulls=lambda index="": " || ".join(f"!{a}{index}" for a in every),
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
        TG=types["grad"],
        types=types,
        I=C_INDEX_TYPES[spec.index_dtype],
        # The rule's hyperparameter struct: its C name, and its declaration (`rule.hparams_struct`).
        hparams_type=kernel.rule.hparams_type,
        hparams_struct=hparams_struct(kernel.rule),
        scalars="\n".join("    " + printer.let(s) for s in kernel.scalars),
        grad=printer.block(kernel.grad, indent),
        update=printer.block(kernel.update, indent),
        **row_context(kernel, printer),
    )


#: The row widths that a dense C kernel of rows compiles a copy of the row's step for, loops of a
#: constant count that keep a row in registers from its sum to its update: the common embedding
#: widths up to 2 * ROW_LANES. A row this short spends much of its step on loop control; one of 128
#: elements went 10% slower with its own copy (gcc 12; benchmarks/README.md).
ROW_WIDTHS = (ROW_LANES // 2, ROW_LANES, 2 * ROW_LANES)


def row_context(kernel: Kernel, printer: CPrinter) -> dict:
    """What the templates print of a kernel's rows (`Kernel.per_row`): the per-row arrays, the
    sums and their loads, the row statements, and the loads and stores of the per-row state.

    `row_locals(row)` declares every per-row local (`v_r = <v[row], widened>, sumsq_r, r_r`);
    `sums` are (lane array, target, printed element expression) of each `Reduce`;
    `sum_load("[j]", dense)` loads the arrays that the sums read of element j, and in a dense
    kernel those that its effective gradient reads (None when there are none); `row_store(row)`
    writes the per-row state back, rounded at position `row`.
    """
    if not kernel.per_row:
        return dict(per_row=False, row_arrays=(), row_length=False, sums=())
    loaded = {s.target: s for s in kernel.row_loads}
    targets = [s.target for s in kernel.reduce + kernel.row if s.target not in loaded]
    fresh = [printer.row(t) for t in dict.fromkeys(targets)]

    def sum_load(index: str, dense: bool) -> str | None:
        stmts = kernel.reduce + (kernel.grad if dense else ())
        read = {e.name for s in stmts for e in walk(s.expr) if isinstance(e, Elem)}
        return ", ".join(printer.load(kernel.load(a), f"{a}{index}")
                         for a in kernel.arrays if a in read) or None

    statements = kernel.reduce + kernel.row + kernel.update
    return dict(
        per_row=True,
        row_arrays=kernel.row_arrays,
        # ir.RowSize, where the rule reads it: the row's length in the arithmetic type.
        row_length=any(isinstance(e, RowSize) for s in statements for e in walk(s.expr)),
        row_lanes=ROW_LANES,
        row_widths=ROW_WIDTHS,
        # ROW_LANES/2, ..., 2, 1: the strides at which lanes_sum adds the lanes pairwise.
        lane_halves=[ROW_LANES >> k for k in range(1, ROW_LANES.bit_length())],
        row_locals=lambda row: ", ".join(
            [printer.row_load(loaded[a], f"{a}[{row}]") for a in kernel.row_arrays] + fresh),
        sums=[(f"lanes_{s.target}", printer.row(s.target), printer.expr(s.expr))
              for s in kernel.reduce],
        sum_load=sum_load,
        row=printer.row_block(kernel.row, 0),
        row_store=lambda row: " ".join(printer.store(s, f"{s.target}[{row}]", row)
                                       for s in kernel.row_stores),
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
    rounding = ("to nearest even" if spec.rounding == "nearest" else
                "stochastically, from random bits that hash hp->seed, hp->step and the "
                "element's index (the same on any thread count, in C and CUDA)")
    # The state's consecutive arrays of one dtype share it: "var bfloat16, m, v float32, ...".
    runs = [(dtype, [name for name, _ in group]) for dtype, group in itertools.groupby(
        ((a, spec.storage(a)) for a in kernel.arrays[1:] + kernel.row_arrays),
        key=lambda pair: pair[1])]
    stored = ", ".join([f"var {spec.storage('var')}",
                        *(f"{', '.join(names)} {dtype}" for dtype, names in runs),
                        f"gradient {spec.storage('grad')}"])
    return textwrap.wrap(
        f"storage: {stored}. Every step computes in {spec.compute_dtype} (loads widen "
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
    body = ("c_sparse.c.j2" if kernel.spec.sparse else
            "c_dense_rows.c.j2" if kernel.per_row else "c_dense.c.j2")
    return Source(
        symbol=symbol,
        lang="c",
        text=ENV.get_template(body).render(ctx),
        header=ENV.get_template("c_header.h.j2").render(ctx, cdef=False),
        cdef=ENV.get_template("c_header.h.j2").render(ctx, cdef=True),
    )
