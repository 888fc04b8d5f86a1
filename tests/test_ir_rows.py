"""Per-row state and row sums in the IR (`ir.Row`, `ir.RowSize`, `ir.Reduce`): a rule with one
per-element and one per-row state array, defined here, through assembly, the passes and the
printers. The rule is partial-rowwise Adam (m per element, v per row), written from
docs/semantics.md, with its L2 decay behind a switch so that dead-term removal has a gate to drop.
"""

import pytest

from lazyadam import Spec
from lazyadam.codegen import ir
from lazyadam.codegen.passes import PIPELINE, drop_dead_terms
from lazyadam.codegen.pipeline import format_kernel
from lazyadam.codegen.printer import CPrinter
from lazyadam.codegen.render_cuda import render_cuda
from lazyadam.codegen.rule import Lowering, Rule, State
from lazyadam.rules.adam import ADAM, HPARAMS, OPTIONS

P, E, R = ir.Param, ir.Elem, ir.Row
ONE = ir.Const(1.0)


def add(a, b):
    return ir.Binary("+", a, b)


def sub(a, b):
    return ir.Binary("-", a, b)


def mul(a, b):
    return ir.Binary("*", a, b)


def div(a, b):
    return ir.Binary("/", a, b)


def lower(spec):
    g = E("g")
    grad = (ir.Assign("g", div(E("grad"), P("loss_scale"))),)
    reduce = (ir.Reduce("sumsq", mul(g, g)),
              ir.Reduce("decay_sumsq", mul(P("weight_decay"), E("var")), when="decay=l2"))
    row = (ir.Assign("v", add(mul(P("beta2"), R("v")),
                              mul(sub(ONE, P("beta2")), div(R("sumsq"), ir.RowSize())))),)
    m_hat = div(E("m"), sub(ONE, P("beta1_power")))
    denominator = add(ir.Call("sqrt", (div(R("v"), sub(ONE, P("beta2_power"))),)), P("eps"))
    update = (ir.Assign("m", add(mul(P("beta1"), E("m")), mul(sub(ONE, P("beta1")), g))),
              ir.Assign("var", sub(E("var"), div(mul(P("lr"), m_hat), denominator))))
    return Lowering(grad=grad, update=update, reduce=reduce, row=row)


ROWWISE = Rule(name="test_partial_rowwise", prefix="test_prw", options=OPTIONS, hparams=HPARAMS,
               state=(State("m"), State("v", per="row")), symbol_order=ADAM.symbol_order,
               lower=lower)


def scalar(kernel, body):
    """The hoisted scalar that holds `body`."""
    (name,) = [s.name for s in kernel.scalars if s.expr == body]
    return ir.Scalar(name)


def optimized(spec):
    kernel = ir.assemble(spec, ROWWISE)
    for _, run in PIPELINE:
        kernel = run(kernel)
    return kernel


def test_per_row_state_is_its_own_array_list():
    kernel = ir.assemble(Spec(), ROWWISE)
    assert kernel.arrays == ("var", "m")
    assert kernel.row_arrays == ("v",)
    assert kernel.per_row
    assert [s.target for s in kernel.row_loads] == ["v"]
    assert kernel.row_stores == (ir.Assign("v", R("v")),)
    assert not ir.assemble(Spec(), ADAM).per_row


def test_a_half_precision_row_array_rounds_with_the_rows_position():
    kernel = ir.assemble(Spec(dtype="bfloat16", state_dtype="bfloat16", rounding="stochastic"),
                         ROWWISE)
    (store,) = kernel.row_stores
    # var and m are arrays 0 and 1 (stream 0); v, the third, takes stream 1's high half.
    assert store.expr == ir.Round(R("v"), "bfloat16", ir.Bits(
        ir.Named("rounding_key1", ir.StepKey(1)), R("position"), 0))
    assert kernel.converts


@pytest.mark.parametrize("decay, sums", [("none", ["sumsq"]), ("l2", ["sumsq", "decay_sumsq"])])
def test_a_gated_sum_is_dropped_with_its_switch(decay, sums):
    kernel = drop_dead_terms(ir.assemble(Spec(decay=decay), ROWWISE))
    assert [s.target for s in kernel.reduce] == sums
    assert all(s.when is None for s in kernel.reduce)


def test_hoisting_moves_per_step_terms_to_scalars_and_per_row_terms_to_the_row():
    kernel = optimized(Spec())
    scalars = {s.name for s in kernel.scalars}
    assert {"beta2", "lr", "eps"} <= scalars
    # The row statement reads scalars and the row's values only.
    (v, r) = kernel.row
    assert v.target == "v" and r.target == "r1"        # "r" is a template's local (rule.RESERVED)
    assert not any(isinstance(n, (ir.Elem, ir.Param)) for s in kernel.row for n in ir.walk(s.expr))
    # sqrt(v / (1 - beta2^t)) + eps is per row: computed once there, read by the element update.
    bias2 = scalar(kernel, sub(ONE, P("beta2_power")))
    assert r.expr == add(ir.Call("sqrt", (div(R("v"), bias2),)), ir.Scalar("eps"))
    (_, var) = kernel.update
    assert R("r1") in list(ir.walk(var.expr))
    assert not any(isinstance(n, ir.Call) for n in ir.walk(var.expr))
    # The sum is element code: it reads g.
    assert kernel.reduce == (ir.Reduce("sumsq", mul(E("g"), E("g"))),)


def test_static_hyperparameters_fold_in_per_row_code():
    kernel = optimized(Spec(static={"beta2": 0.5}))
    (v, _) = kernel.row
    assert v.expr == add(mul(ir.Const(0.5), R("v")),
                         mul(ir.Const(0.5), div(R("sumsq"), ir.RowSize())))


def test_c_printer_names_row_values_and_the_row_length():
    kernel = optimized(Spec())
    printer = CPrinter("float32")
    one_minus_beta2 = scalar(kernel, sub(ONE, P("beta2"))).name
    bias2 = scalar(kernel, sub(ONE, P("beta2_power"))).name
    bias1 = scalar(kernel, sub(ONE, P("beta1_power"))).name
    assert [printer.row_assign(s) for s in kernel.row] == [
        f"v_r = beta2 * v_r + {one_minus_beta2} * (sumsq_r / row_length);",
        f"r1_r = sqrtf(v_r / {bias2}) + eps;"]
    assert printer.block(kernel.update[1:], 0) == f"var_i = var_i - lr * (m_i / {bias1}) / r1_r;"
    assert printer.expr(kernel.reduce[0].expr) == "g_i * g_i"


def test_the_stage_listing_shows_the_row_sections():
    listing = format_kernel(optimized(Spec()))
    assert "per row (sums over the row, in the order of 32 lanes):\n    sumsq = sum_row(g * g)" \
        in listing
    assert "per row:\n    v = beta2 * v[row] + " in listing and "(sumsq[row] / row_size)" in listing
    adam = format_kernel(optimized_adam := ir.assemble(Spec(), ADAM))
    assert "per row" not in adam and not optimized_adam.per_row


def test_the_cuda_kernels_print_rows_dense_and_sparse():
    """Both CUDA kernels of a rule with rows sum them by warp shuffles (tests/test_cuda_dense_rows.py
    and tests/test_family_kernels.py run them); the dense one takes (rows, row_size)."""
    dense = render_cuda(optimized(Spec(sparse=False)))
    assert "__shfl_down_sync" in dense.text and "int64_t rows,\n" in dense.cdef
    assert "__shfl_down_sync" in render_cuda(optimized(Spec(sparse=True))).text
