"""The family's rules (lazyadam/rules: SGD, Adagrad, rowwise Adagrad, partial-rowwise Adam, Lion)
as kernel objects: `lazyadam.compile` and its call against the numpy references of
tests/reference_family.py, and the same sums on C and emulated CUDA (bad per-row state:
tests/test_bad_input.py).

Every kernel of each rule's product (tests/product.py, `FAMILY`: the flag product in float32 and
float64, a half-precision sample) runs against the references on C and emulated CUDA in
tests/test_kernel_reference.py, and compiles with nvcc in tests/test_cuda_codegen.py. Multi-tensor
launches and stochastic rounding, C against emulated CUDA bit for bit: tests/test_family_cuda.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import cuda_emulation as emulation
import lazyadam
import product
from lazyadam.codegen import SUM_CHUNK
from lazyadam.codegen.variants import STORAGE_FIELDS, variants
from lazyadam.rules import ADAGRAD, LION, PARTIAL_ROWWISE_ADAM, ROWWISE_ADAGRAD, SGD
from lazyadam.targets.base import hparams_of

RULES = product.RULES
ROWS, ROW_SIZE, NNZ = 7, 37, 9
TOLERANCE = {"float64": dict(rtol=1e-12, atol=1e-14)}


@pytest.mark.parametrize("name", RULES)
def test_the_product_is_every_flag_in_float_and_meets_every_storage_way_in_half(name):
    rule = RULES[name]
    specs = [spec for spec in product.FAMILY if spec.RULE is rule]
    full = variants(rule, dtype="float32") + variants(rule, dtype="float64")
    assert specs[:len(full)] == full
    half = specs[len(full):]
    assert {spec.dtype for spec in half} == {"bfloat16", "float16"}
    ways = {product.storage_way(spec) for spec in half}
    assert len(ways) == 16 and len(STORAGE_FIELDS) == 4
    for flag in ("sparse", *rule.flags):
        for value in {getattr(spec, flag) for spec in full}:
            met = {product.storage_way(spec) for spec in half if getattr(spec, flag) == value}
            assert met == ways, (flag, value)


@pytest.mark.parametrize("name", RULES)
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_lazyadam_compile_gives_each_rule_a_kernel_object(name, sparse):
    """`lazyadam.compile(spec)` and its call `kernel(var, *state, grad, hp)`, hyperparameters from
    the rule's class (`at_step` fills t or the beta powers), against the reference over 2 steps."""
    rule = RULES[name]
    spec = rule.spec(sparse=sparse, dtype="float64").validate()
    kernel = lazyadam.compile(spec)
    hp_class = hparams_of(rule)
    rng = np.random.default_rng(4)
    state = {"var": rng.standard_normal((ROWS, ROW_SIZE))}
    for s in rule.state:
        if s.name in kernel.arrays:
            state[s.name] = np.zeros(ROWS if s.per == "row" else (ROWS, ROW_SIZE))
    expected = {name: value.copy() for name, value in state.items()}
    values = product.FAMILY_HYPER[name]
    for t in (1, 2):
        indices = rng.integers(0, ROWS, NNZ).astype(np.int64) if sparse else None
        grad = rng.standard_normal((NNZ if sparse else ROWS, ROW_SIZE))
        kernel(state["var"], *(state[a] for a in kernel.arrays[1:]),
               (indices, grad) if sparse else grad, hp_class.at_step(t, **values))
        expected = product.family_step(spec, expected, grad, indices, t)
        for a in kernel.arrays:
            np.testing.assert_allclose(state[a], expected[a], **TOLERANCE["float64"])


#: A sparse kernel of every rule, SGD's with and without its per-row `seen` (dampening).
SUMMING = [spec.validate() for spec in (
    ROWWISE_ADAGRAD.spec(), PARTIAL_ROWWISE_ADAM.spec(), SGD.spec(momentum=True, dampening=True),
    SGD.spec(momentum=True, nesterov=True, decay="l2"), ADAGRAD.spec(decay="l2"),
    LION.spec(decay="decoupled"))]


@pytest.mark.parametrize("spec", SUMMING, ids=lambda s: s.symbol())
def test_c_and_emulated_cuda_sum_rows_in_the_same_order(emulated_variants, spec):
    """Sparse float32 steps whose rows span several column blocks of a warp (300 columns), whose
    row 1 is seen 600 times (three chunks of SUM_CHUNK) and rows 0, 2, 3 and 4 once to three
    times, interleaved, data over six decades: the C kernel's lanes and the CUDA warp's shuffles
    give the same bits."""
    rule = spec.RULE
    rng = np.random.default_rng(9)
    rows, row_size = 5, 300
    var = rng.standard_normal((rows, row_size)).astype(np.float32)
    indices = np.array([1] * 300 + [3, 0, 4, 3, 2, 4] + [1] * 300 + [3, 2, 4], dtype=np.int64)
    assert np.count_nonzero(indices == 1) > 2 * SUM_CHUNK
    grad = (rng.standard_normal((len(indices), row_size))
            * 10.0 ** rng.uniform(-3, 3, (len(indices), row_size))).astype(np.float32)
    kernels = [lazyadam.compile(spec), emulated_variants([spec])[spec]]
    hp = hparams_of(rule).at_step(1, **product.FAMILY_HYPER[rule.name])
    required = [s.name for s in rule.state if s.when is None]  # the others go by name
    results = []
    for kernel, put in zip(kernels, (np.asarray, emulation.Emulated)):
        arrays = {"var": var.copy()} | {
            s.name: np.zeros((rows, row_size) if s.per == "element" else rows, np.float32)
            for s in rule.state if s.name in kernel.arrays}
        kernel(put(arrays["var"]), *(put(arrays[n]) for n in required),
               (put(indices), put(grad)), hp,
               **{n: put(a) for n, a in arrays.items() if n != "var" and n not in required})
        results.append(arrays)
    for name, c_array in results[0].items():
        assert np.array_equal(c_array, results[1][name]), name
