"""Half-precision kernels (bfloat16 and float16 parameters, float32 or bfloat16 state, stochastic
rounding) on the C target, against the reference that rounds what it stores as the kernels do.

- Every flag combination, each with one of the 16 ways of storing it (tests/product.py), is
  run against the reference by tests/test_kernel_reference.py.
- The conversions themselves, bit for bit: kernels arranged so that a stored value is a known
  float32 rounded once (to nearest even against ml_dtypes and numpy, stochastically against the
  hash reimplemented in tests/reference.py), over random float32 bit patterns.
- Stochastic rounding is unbiased where rounding to nearest stalls, and its bits do not depend on
  the thread count; a seed gives the same bits on every run, another seed other bits.
- float16 overflow stores inf, as documented. Bad input (another half type, a state of the wrong
  dtype): tests/test_bad_input.py.
The CUDA kernels run the same checks in tests/test_cuda_emulation.py.
"""

from __future__ import annotations

import dataclasses
import sys

import ml_dtypes
import numpy as np
import pytest

import lazyadam
import openmp
import product
from lazyadam import HParams, Spec
from reference import random_bits, round_nearest, round_stochastic, step_key

SEED = 20261124


def new_state(spec: Spec, var0: np.ndarray) -> list:
    zeros = np.zeros(var0.shape, product.dtype(spec, "m"))
    return [var0.copy(), zeros.copy(), zeros.copy(), zeros.copy() if spec.amsgrad else None]


# --- the conversions, bit for bit ----------------------------------------------------------------
def float32_patterns(rng, n: int) -> np.ndarray:
    """Random float32 bit patterns with exponents from 2^-126 to 2^17 (float16 overflows at 65520),
    both signs, and the values where rounding is delicate: zeros, ties and their neighbours in both
    16-bit formats, float16's largest values and subnormals."""
    sign = rng.integers(0, 2, n, dtype=np.uint32) << np.uint32(31)
    exponent = rng.integers(1, 127 + 18, n, dtype=np.uint32) << np.uint32(23)
    mantissa = rng.integers(0, 1 << 23, n, dtype=np.uint32)
    values = (sign | exponent | mantissa).view(np.float32)
    # Ties: a kept part, then exactly half a spacing (bfloat16: 0x8000 dropped; float16: 0x1000).
    kept = rng.integers(0x3F800000, 0x47000000, 2000, dtype=np.uint32)
    ties = np.concatenate([(kept & np.uint32(0xFFFF0000)) | np.uint32(0x8000),
                           (kept & np.uint32(0xFFFFE000)) | np.uint32(0x1000)])
    special = np.array([0.0, -0.0, 65504.0, 65519.0, 65520.0, 65535.9, 2.0 ** -24, 2.0 ** -25,
                        3 * 2.0 ** -26, 2.0 ** -14 - 2.0 ** -30, 1.0 + 2.0 ** -8], np.float32)
    return np.concatenate([values, ties.view(np.float32), ties.view(np.float32) + 0,
                           np.nextafter(ties.view(np.float32), np.float32(np.inf)), special,
                           -special])


#: One dense step that stores known float32 values. With beta1 = 0.5, beta2 = 0.75 and loss_scale 1,
#: a float32 gradient g gives m = 0.5 g and v = 0.25 g g exactly; with lr = eps = 2^100 (so that
#: sqrt(v) + eps = eps exactly) and var = 0, var = -(lr_t * m) / eps = -0.5 g exactly. So var, m
#: and v store three known float32 values, each rounded once.
EXACT = dict(lr=2.0 ** 100, beta1=0.5, beta2=0.75, eps=2.0 ** 100, weight_decay=0.0,
             loss_scale=1.0, beta1_power=0.5, beta2_power=0.75)


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_stored_values_are_rounded_exactly(dtype, rounding, rng):
    spec = Spec(sparse=False, dtype=dtype, state_dtype="bfloat16", grad_dtype="float32",
                rounding=rounding)
    grad = -2 * float32_patterns(rng, 200_000)  # exact: var = -0.5 g is the pattern itself
    state = new_state(spec, np.zeros(grad.shape, product.dtype(spec, "var")))
    hp = HParams(**EXACT, seed=SEED, step=7)
    lazyadam.compile(spec)(*state[:3], grad, hp)
    exact = {"var": -(np.float32(0.5) * grad), "m": np.float32(0.5) * grad,
             "v": np.float32(0.25) * grad * grad}
    positions = np.arange(grad.size)
    for number, (name, x) in enumerate(exact.items()):
        storage = spec.storage(name)
        if rounding == "nearest":
            expected = round_nearest(x, storage)
        else:  # var and m take the two halves of stream 0, v the high half of stream 1
            bits = random_bits(step_key(SEED, 7, number // 2), positions, number % 2)
            expected = round_stochastic(x, storage, bits)
        stored = state[number].astype(np.float64)
        np.testing.assert_array_equal(stored, expected, err_msg=f"{name} ({storage})")
    if dtype == "float16":  # overflow stores inf, with either rounding
        assert np.isinf(state[0][np.abs(exact["var"]) >= 65536]).all()


def test_rounding_to_nearest_agrees_with_ml_dtypes_on_every_bfloat16_neighbourhood():
    """Not the reference's own rounding: ml_dtypes' cast, on every float32 that lies halfway between
    two bfloat16 values, or one float32 step either side."""
    spec = Spec(sparse=False, dtype="bfloat16", state_dtype="bfloat16", grad_dtype="float32")
    # Every positive normal exponent and mantissa, below 2^127 (the kernel is given twice each).
    kept = np.arange(0x0080, 0x7F00, dtype=np.uint32) << np.uint32(16)
    halves = np.concatenate([kept | np.uint32(0x8000), kept | np.uint32(0x7FFF),
                             kept | np.uint32(0x8001)]).view(np.float32)
    grad = 2 * halves
    state = new_state(spec, np.zeros(grad.shape, ml_dtypes.bfloat16))
    lazyadam.compile(spec)(*state[:3], grad, HParams(**{**EXACT, "lr": 0.0}))
    np.testing.assert_array_equal(state[1].view(np.uint16), halves.astype(ml_dtypes.bfloat16)
                                  .view(np.uint16))


# --- stochastic rounding: unbiased, deterministic ------------------------------------------------
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_stochastic_rounding_is_unbiased_where_nearest_stalls(dtype):
    """Weights of 1.0 receiving updates of 1e-4 (Adam's steps are about lr): a bfloat16 weight below
    1.0 is 2^-8 from the next, so to nearest every update rounds back to 1.0; stochastically, the
    mean over the elements follows the float32 weights."""
    n, steps, lr = 1 << 16, 20, 1e-4
    finals = {}
    for name, spec in {"float32": Spec(sparse=False),
                       "nearest": Spec(sparse=False, dtype=dtype),
                       "stochastic": Spec(sparse=False, dtype=dtype, rounding="stochastic")}.items():
        state = new_state(spec, np.ones(n, product.dtype(spec, "var")))
        grad = np.ones(n, product.dtype(spec, "grad"))
        kernel = lazyadam.compile(spec)
        for t in range(1, steps + 1):
            kernel(*state[:3], grad, HParams.at_step(t, lr=lr, seed=SEED))
        finals[name] = state[0].astype(np.float64)
    target = finals["float32"][0]
    assert target == pytest.approx(1 - steps * lr, rel=1e-6)
    assert (finals["nearest"] == 1.0).all()  # stalled
    # The mean of n stochastic roundings: its standard deviation is below 1.5e-5 here.
    assert abs(finals["stochastic"].mean() - target) < 1e-4
    assert len(np.unique(finals["stochastic"])) > 1


STOCHASTIC = [Spec(sparse=False, dtype="bfloat16", state_dtype="bfloat16", rounding="stochastic"),
              Spec(sparse=True, dtype="float16", rounding="stochastic", decay="l2", amsgrad=True),
              Spec(sparse=True, dtype="bfloat16", state_dtype="bfloat16", grad_dtype="float32",
                   rounding="stochastic", use_locking=True, decay="l2")]


def stochastic_run(spec: Spec, seed: int, threads: int) -> list:
    """Three steps on 1 or 2 threads; Zipf rows, so that long rows are summed in chunks."""
    rng = np.random.default_rng(5)
    shape = (400, 33) if spec.sparse else (20_000,)
    state = new_state(spec, rng.standard_normal(shape).astype(product.dtype(spec, "var")))
    kernel = lazyadam.compile(dataclasses.replace(spec, parallel_min=0))  # small, yet in parallel
    with openmp.threads(threads):
        for t in range(1, 4):
            if spec.sparse:
                idx = ((rng.zipf(1.2, 5000) - 1) % shape[0]).astype(spec.index_dtype)
                grad = (idx, rng.standard_normal((idx.size, 33)).astype(product.dtype(spec, "grad")))
            else:
                grad = rng.standard_normal(shape).astype(product.dtype(spec, "grad"))
            kernel(*state[:3], grad, HParams.at_step(t, seed=seed, weight_decay=0.1),
                   vmax=state[3])
    return [a.view(np.uint16) if a.itemsize == 2 else a for a in state if a is not None]


@pytest.mark.parametrize("spec", STOCHASTIC, ids=lambda s: s.symbol())
def test_stochastic_bits_depend_on_the_seed_not_on_threads(spec):
    one, two, again = (stochastic_run(spec, SEED, n) for n in (1, 2, 2))
    for a, b, c in zip(one, two, again):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(b, c)
    other = stochastic_run(spec, SEED + 1, 2)
    assert not np.array_equal(other[0], one[0])


# --- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("seed, step", [(-1, 1), (2 ** 64, 1), (0, -3), (0, 1.5), (True, 1)])
def test_seed_and_step_are_unsigned_64_bit_ints(seed, step):
    with pytest.raises(ValueError, match="must be an int in \\[0, 2\\*\\*64\\)"):
        HParams(**EXACT, seed=seed, step=step)


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_float16_overflow_stores_inf(rounding):
    """Documented: a float16 parameter pushed past 65504 stores inf (IEEE rounding, as a cast does);
    the float32 moments stay finite. Nearest rounds from 65520 up, stochastic rounding may round a
    value between 65504 and 65536 either way."""
    spec = Spec(sparse=False, dtype="float16", maximize=True, rounding=rounding)
    var = np.array([65504, 65504, 1.0, -65504], np.float16)
    m, v = np.zeros(4, np.float32), np.zeros(4, np.float32)
    grad = np.array([1, 1, 1, -1], np.float16)
    lazyadam.compile(spec)(var, m, v, grad, HParams.at_step(1, lr=100.0))
    assert np.isposinf(var[:2]).all() and var[2] == np.float16(101.0) and np.isneginf(var[3])
    assert np.isfinite(m).all() and np.isfinite(v).all()


def test_bfloat16_numpy_arrays_need_ml_dtypes(monkeypatch):
    from lazyadam import dtypes
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)
    with pytest.raises(ImportError, match=r"pip install 'lazyadam\[bfloat16\]'"):
        dtypes.numpy_dtype("bfloat16")
    assert dtypes.numpy_dtype("float16") == np.float16
    assert dtypes.storage_name(np.dtype("V2")) == "bfloat16"  # the CUDA array interface's spelling
