"""C kernels of a rule with per-row state and a row sum, rendered from the shared templates:
partial-rowwise Adam (m per element, v per row, the mean of g*g over each row), defined here.

- Against tests/reference_family.py (float64, written from docs/semantics.md), dense and lazy
  sparse with duplicates, float32 and float64, with and without row locks; a row seen more than
  SUM_CHUNK times goes through the sparse kernel's parallel chunk sums.
- The row sum's order (ROW_LANES lanes, then halves added pairwise) bit for bit, against a float32
  numpy model of that order, on data where the left-to-right order gives other bits.
- The same bits on 1 and 2 threads.
"""

from __future__ import annotations

import subprocess

import cffi
import numpy as np
import pytest

import openmp
from lazyadam import Spec
from lazyadam.codegen import ir
from lazyadam.codegen.passes import PIPELINE
from lazyadam.codegen.render import render_c
from lazyadam.codegen.rule import HParam, Interval, Lowering, Rule, State
from lazyadam.targets import c
from reference_family import partial_rowwise_adam_step
from row_order import lanes_sum

P, E, R = ir.Param, ir.Elem, ir.Row
ONE = ir.Const(1.0)
HYPER = dict(lr=0.01, beta1=0.9, beta2=0.99, eps=1e-3)


def _b(op, a, b):
    return ir.Binary(op, a, b)


def lower(spec) -> Lowering:
    """docs/semantics.md's partial-rowwise Adam, eps in the bias-corrected denominator."""
    g = E("g")
    m_hat = _b("/", E("m"), _b("-", ONE, P("beta1_power")))
    v_hat = _b("/", R("v"), _b("-", ONE, P("beta2_power")))
    return Lowering(
        grad=(ir.Assign("g", E("grad")),),
        reduce=(ir.Reduce("sumsq", _b("*", g, g)),),
        row=(ir.Assign("v", _b("+", _b("*", P("beta2"), R("v")),
                               _b("*", _b("-", ONE, P("beta2")),
                                  _b("/", R("sumsq"), ir.RowSize())))),),
        update=(ir.Assign("m", _b("+", _b("*", P("beta1"), E("m")),
                                  _b("*", _b("-", ONE, P("beta1")), g))),
                ir.Assign("var", _b("-", E("var"), _b("/", _b("*", P("lr"), m_hat),
                                                     _b("+", ir.Call("sqrt", (v_hat,)),
                                                        P("eps")))))))


BETA = Interval(0.0, 1.0)
PARTIAL_ROWWISE = Rule(
    name="test_partial_rowwise_adam", prefix="test_prw", options=(),
    hparams=(HParam("lr", 0.01, Interval(0.0)), HParam("beta1", 0.9, BETA),
             HParam("beta2", 0.99, BETA), HParam("eps", 1e-8, Interval(0.0)),
             HParam("beta1_power", 0.9, BETA, derived="power:beta1"),
             HParam("beta2_power", 0.99, BETA, derived="power:beta2")),
    state=(State("m"), State("v", per="row")),
    symbol_order=("use_locking",), lower=lower)


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """(spec) -> (ffi, library, symbol): the spec's kernel of PARTIAL_ROWWISE, built once, at -O0
    (after the C target's flags: the last -O wins). Built on every run, outside the kernel cache;
    the numbers do not depend on the level (no reassociation: see tests/quick_c.py)."""
    if c.unavailable():
        pytest.skip(c.unavailable())
    folder, built = tmp_path_factory.mktemp("rows"), {}

    def get(spec):
        if spec not in built:
            kernel = ir.assemble(spec, PARTIAL_ROWWISE)
            for _, run in PIPELINE:
                kernel = run(kernel)
            symbol = f"prw_{len(built)}"
            source = render_c(kernel, symbol)
            (folder / f"{symbol}.h").write_text(source.header)
            (folder / source.filename).write_text(source.text)
            library = folder / f"{symbol}.so"
            subprocess.run([*c.compiler(), *c.flags(), "-O0", "-Wall", "-Wshadow", "-Werror",
                            str(folder / source.filename), "-o", str(library), "-lm"],
                           check=True, capture_output=True)
            ffi = cffi.FFI()
            ffi.cdef(source.cdef)
            built[spec] = ffi, ffi.dlopen(str(library)), symbol
        return built[spec]
    return get


def run(build, spec, var, m, v, grad, t, indices=None):
    """One step of the kernel on copies; returns (status, var, m, v)."""
    ffi, lib, symbol = build(spec)
    var, m, v = var.copy(), m.copy(), v.copy()
    ctype = "float[]" if spec.dtype == "float32" else "double[]"
    hp = ffi.new("test_prw_hparams *", dict(HYPER, beta1_power=HYPER["beta1"] ** t,
                                            beta2_power=HYPER["beta2"] ** t))
    arrays = [ffi.from_buffer(ctype, a) for a in (var, m, v)]
    rows, row_size = var.shape
    grad = np.ascontiguousarray(grad, dtype=var.dtype)
    if indices is None:
        status = getattr(lib, symbol)(*arrays, ffi.from_buffer(ctype, grad), rows, row_size, hp)
    else:
        status = getattr(lib, symbol)(*arrays, rows, row_size,
                                      ffi.from_buffer("int64_t[]", indices),
                                      ffi.from_buffer(ctype, grad), len(indices), hp)
    return status, var, m, v


def reference(var, m, v, grad, t, indices=None):
    return partial_rowwise_adam_step(var, m, v, grad, beta1_power=HYPER["beta1"] ** t,
                                     beta2_power=HYPER["beta2"] ** t, indices=indices, **HYPER)[:3]


TOLERANCE = {"float32": dict(rtol=2e-5, atol=1e-6), "float64": dict(rtol=1e-12, atol=1e-14)}


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("locking", [False, True], ids=["", "locking"])
def test_kernels_match_the_reference_over_steps(build, sparse, dtype, locking):
    spec = Spec(sparse=sparse, dtype=dtype, use_locking=locking)
    rng = np.random.default_rng(3)
    rows, row_size = 9, 70                  # 70: two full lanes rounds and a part
    var = rng.standard_normal((rows, row_size)).astype(dtype)
    m, v = np.zeros_like(var), np.zeros(rows, dtype)
    want = var, m, v
    for t in (1, 2, 3):
        indices = None
        if sparse:
            indices = rng.integers(0, rows - 2, size=12).astype(np.int64)   # rows 7, 8 untouched
            grad = rng.standard_normal((12, row_size))
        else:
            grad = rng.standard_normal((rows, row_size))
        status, var, m, v = run(build, spec, var, m, v, grad.astype(dtype), t, indices)
        assert status == 0
        want = reference(*want, grad.astype(dtype), t, indices)
        for got, expected in zip((var, m, v), want):
            np.testing.assert_allclose(got, expected, **TOLERANCE[dtype])
    if sparse:
        assert not v[7:].any() and not m[7:].any()


def test_a_row_seen_more_than_a_chunk_matches_the_reference(build):
    """600 occurrences of row 2 (three chunks of SUM_CHUNK, summed in parallel) and one of row 0."""
    rng = np.random.default_rng(5)
    var = rng.standard_normal((4, 40))
    indices = np.array([2] * 300 + [0] + [2] * 300, dtype=np.int64)
    grad = rng.standard_normal((len(indices), 40)) / 30
    status, *got = run(build, Spec(sparse=True, dtype="float64"), var, np.zeros_like(var),
                       np.zeros(4), grad, 1, indices)
    assert status == 0
    for a, b in zip(got, reference(var, np.zeros_like(var), np.zeros(4), grad, 1, indices)):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_the_row_sum_takes_the_lanes_order_bit_for_bit(build, sparse):
    """v after one step from v = 0 is (1 - beta2) * (sum / D), each operation rounded to float32
    ((1 - beta2) computed in double first, as every per-step scalar); the gradients span six
    decades, so that the left-to-right sum gives other bits."""
    row_size = 100
    rng = np.random.default_rng(0)
    grad = (rng.standard_normal((2, row_size)) * 10.0 ** rng.uniform(-3, 3, (2, row_size)))
    grad = grad.astype(np.float32)
    var = np.ones((2, row_size), np.float32)
    indices = np.array([0, 1], np.int64) if sparse else None
    status, _, _, v = run(build, Spec(sparse=sparse), var, np.zeros_like(var),
                          np.zeros(2, np.float32), grad, 1, indices)
    assert status == 0
    one_minus_beta2 = np.float32(1.0 - HYPER["beta2"])
    differs = []
    for row in (0, 1):
        squares = grad[row] * grad[row]
        want = np.float32(one_minus_beta2 * np.float32(lanes_sum(squares) / np.float32(row_size)))
        assert v[row] == want
        left_to_right = np.float32(0)
        for x in squares:
            left_to_right = np.float32(left_to_right + x)
        differs.append(left_to_right != lanes_sum(squares))
    assert differs[0]                                   # the order shows in row 0's data


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_one_and_two_threads_give_the_same_bits(build, sparse):
    rng = np.random.default_rng(11)
    var = rng.standard_normal((300, 33)).astype(np.float32)
    indices = rng.integers(0, 300, size=2000).astype(np.int64) if sparse else None
    grad = rng.standard_normal((2000 if sparse else 300, 33)).astype(np.float32)
    results = []
    for threads in (1, 2):
        with openmp.threads(threads):
            # parallel_min=0: every step may use both threads (this one is below the default).
            results.append(run(build, Spec(sparse=sparse, parallel_min=0), var, np.zeros_like(var),
                               np.zeros(300, np.float32), grad, 1, indices))
    for a, b in zip(*results):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_half_precision_rows_compile_and_round(build, sparse):
    """bfloat16 parameter and state, stochastic rounding: v is stored per row in bfloat16, so
    every value the kernel writes is a bfloat16 and the update follows the float64 reference to
    bfloat16 precision."""
    import ml_dtypes
    spec = Spec(sparse=sparse, dtype="bfloat16", state_dtype="bfloat16", rounding="stochastic")
    ffi, lib, symbol = build(spec)
    rng = np.random.default_rng(2)
    var = rng.standard_normal((5, 24)).astype(ml_dtypes.bfloat16)
    m, v = np.zeros_like(var), np.zeros(5, ml_dtypes.bfloat16)
    grad = rng.standard_normal((5, 24)).astype(ml_dtypes.bfloat16)
    hp = ffi.new("test_prw_hparams *", dict(HYPER, beta1_power=0.9, beta2_power=0.99, seed=1,
                                            step=1))
    got = [a.copy() for a in (var, m, v)]
    arrays = [ffi.from_buffer("uint16_t[]", a.view(np.uint16)) for a in got]
    grad_buffer = ffi.from_buffer("uint16_t[]", grad.view(np.uint16))
    if sparse:
        status = getattr(lib, symbol)(*arrays, 5, 24, ffi.from_buffer("int64_t[]", np.arange(5)),
                                      grad_buffer, 5, hp)
    else:
        status = getattr(lib, symbol)(*arrays, grad_buffer, 5, 24, hp)
    assert status == 0
    want = reference(*(a.astype(np.float64) for a in (var, m, v)), grad.astype(np.float64), 1)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a.astype(np.float64), b, rtol=2 ** -7, atol=1e-6)
