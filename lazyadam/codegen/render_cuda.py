"""Rendering for the CUDA target: the rule printed by `CudaPrinter` into the CUDA scaffolding.

    [ir.Kernel] --CudaPrinter--> device functions --render--> [Source] (lang "cuda")

The printed rule becomes two `__device__` functions, `<symbol>_grad` (the effective gradient of one
occurrence) and `<symbol>_update` (the Adam update of one element); the templates only decide which
thread calls them on which element. Per-step scalars travel in a struct `<symbol>_scalars` that the
kernels fill from the step's `lazyadam_hparams` (in double, then cast, as the C prologue does): from
their launch's own copy, or from device memory, which a captured CUDA graph reads when it runs.
"""

from __future__ import annotations

from .ir import Kernel, Let, Row, Scalar, walk
from .printer import CudaPrinter
from .render import ENV, Source, template_context
from .spec import ITEMSIZE

#: Threads per block of every kernel; a multiple of the warp size.
THREADS = 256
#: Bytes moved by one vector load or store of the dense kernel.
VECTOR_BYTES = 16
#: Tensors updated by one launch of the dense kernel (their pointers travel as a kernel argument,
#: which holds at most 4 KiB: 48 tensors take 3.4 KiB with amsgrad).
TENSORS_PER_LAUNCH = 48
#: Distinct hyperparameter entries that one dense launch carries with it (more start another launch).
HPARAMS_PER_LAUNCH = 4


def _scalars_read(kernel: Kernel, stmts) -> list[Let]:
    """The hoisted scalars that `stmts` read, in first-use order."""
    names: list[str] = []
    for s in stmts:
        for e in walk(s.expr):
            if isinstance(e, Scalar) and e.name not in names:
                names.append(e.name)
    lets = {let.name: let for let in kernel.scalars}
    return [lets[name] for name in names]


# [ir.Kernel] -> [Source]
def render_cuda(kernel: Kernel, symbol: str | None = None) -> Source:
    """CUDA C++ source and header for an optimized kernel (all passes applied)."""
    spec = kernel.spec
    symbol = symbol or spec.symbol()
    printer = CudaPrinter(spec.compute_dtype)
    ctx = template_context(kernel, printer, symbol, indent=4)
    types = ctx["types"]
    # A vector load moves VECTOR_BYTES of the widest array: 4 elements of float32 state, 8 of
    # bfloat16 state and gradient.
    vector = VECTOR_BYTES // max(ITEMSIZE[spec.storage(a)] for a in types)

    rows = list(dict.fromkeys(e.name for st in kernel.update for e in walk(st.expr)
                              if isinstance(e, Row)))

    def unpack(stmts) -> str:
        return "\n".join("    " + printer.unpack(let) for let in _scalars_read(kernel, stmts))

    ctx.update(
        threads=THREADS,
        # Sparse kernels sort the rows as unsigned keys of the index width (valid indices are >= 0).
        K={"int32": "unsigned int", "int64": "unsigned long long"}[spec.index_dtype],
        # "float &var_i, float &m_i, ..." (the arithmetic type), then the row values the update
        # reads ("const float r1_r"); update_args passes them: "var_i, m_i, ..., r1_r".
        state_refs=", ".join([f"{printer.ctype} &{a}_i" for a in kernel.arrays]
                             + [f"const {printer.ctype} {printer.row(r)}" for r in rows]),
        update_args=", ".join([f"{a}_i" for a in kernel.arrays] + [printer.row(r) for r in rows]),
        # The scalars that a sparse kernel's per-row code reads (sums, row statements, stores).
        row_scalars="\n".join(
            "    " + printer.unpack(let)
            for let in _scalars_read(kernel, kernel.reduce + kernel.row + kernel.row_stores)
            if let not in _scalars_read(kernel, kernel.stores)),
        vector=vector,
        # vec("var") -> "lazyadam_vec<lazyadam_bfloat16, LAZYADAM_DENSE_BF16_VECTOR>"
        vec=lambda array: f"lazyadam_vec<{types[array]}, {symbol.upper()}_VECTOR>",
        tensors_per_launch=TENSORS_PER_LAUNCH,
        hparams_per_launch=HPARAMS_PER_LAUNCH,
        scalar_fields="\n".join("    " + printer.field(s) for s in kernel.scalars),
        scalar_setters="\n".join("    " + printer.set_field(s) for s in kernel.scalars),
        grad_scalars=unpack(kernel.grad),
        update_scalars=unpack(kernel.update),
        store_scalars=unpack(kernel.stores),
    )
    body = ("cuda_sparse.cu.j2" if spec.sparse else
            "cuda_dense_rows.cu.j2" if kernel.per_row else "cuda_dense.cu.j2")
    header = ENV.get_template("cuda_header.h.j2")
    return Source(
        symbol=symbol,
        lang="cuda",
        text=ENV.get_template(body).render(ctx),
        header=header.render(ctx, cdef=False),
        cdef=header.render(ctx, cdef=True),
    )
