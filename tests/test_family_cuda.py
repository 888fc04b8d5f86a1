"""The family's CUDA kernels (SGD, Adagrad, rowwise Adagrad, partial-rowwise Adam, Lion), built for
the CPU by tests/cuda_emulation, against its C kernels bit for bit where nothing else compares them:

- One `kernel.multi(...)` call of the rules that step element by element (SGD with momentum,
  Adagrad, Lion; the row rules' multi-tensor launches are in tests/test_cuda_dense_rows.py), in
  float32 and in half precision with stochastic rounding, over more tensors of mixed shapes than
  one launch takes, against one C call per tensor.
- Stochastic rounding of every rule, bfloat16 and float16 parameters (state in bfloat16 or
  float32), sparse with duplicate indices (a row seen in two chunks of SUM_CHUNK, rows seen a few
  times) and dense, over three steps: the emulated CUDA kernel's arrays against the C kernel's, and
  the C kernel's against tests/reference.py's model of the rounding (the documented hash and bit
  arithmetic, written without lazyadam) applied to what the rule's float32 kernel computes from
  the same start. A kernel that rounded to nearest, or drew other bits, fails the model.

The float32 sums of duplicate indices, C against CUDA: tests/test_family_kernels.py.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import cuda_emulation as emulation
import product
import reference
from lazyadam import targets
from lazyadam.codegen import SUM_CHUNK
from lazyadam.codegen.render_cuda import TENSORS_PER_LAUNCH
from lazyadam.rules import ADAGRAD, LION, PARTIAL_ROWWISE_ADAM, ROWWISE_ADAGRAD, SGD
from lazyadam.targets import batch
from lazyadam.targets.base import hparams_of
from test_cuda_dense_rows import call

#: A seed with its high bits set: the hash must take all 64 bits of it.
SEED = 0x9E3779B97F4A7C15
HALF = ("bfloat16", "float16")
#: Per-row and per-element state that a rule keeps nonnegative (sums of squares).
NONNEGATIVE = {"sum", "acc", "v", "vmax"}

#: Dense float32 and half-precision kernels of the rules that step element by element (SGD's
#: dampening makes it a row kernel with a per-row `seen`).
MULTI = [spec.validate() for spec in (
    SGD.spec(sparse=False, momentum=True, nesterov=True, decay="l2"),
    SGD.spec(sparse=False, momentum=True, dampening=True, dtype="bfloat16", rounding="stochastic"),
    ADAGRAD.spec(sparse=False, decay="l2", maximize=True),
    ADAGRAD.spec(sparse=False, dtype="float16", grad_dtype="float32", rounding="stochastic"),
    LION.spec(sparse=False, decay="decoupled"),
    LION.spec(sparse=False, dtype="bfloat16", state_dtype="bfloat16", rounding="stochastic",
              maximize=True),
)]

#: Each rule's flags in the rounding comparison: every state array it can keep.
FLAGS = [(SGD, dict(momentum=True, dampening=True)), (ADAGRAD, dict(decay="l2")),
         (ROWWISE_ADAGRAD, dict(decay="decoupled")),
         (PARTIAL_ROWWISE_ADAM, dict(amsgrad=True, nesterov=True, decay="l2")),
         (LION, dict(decay="decoupled", maximize=True))]
#: How each (dtype, sparse) stores state, gradient and indices: bfloat16 state (rounded with the
#: other half of var's random bits) or float32 state (not rounded), 16-bit or float32 gradients.
STORAGES = {("bfloat16", True): dict(state_dtype="bfloat16"),
            ("bfloat16", False): dict(state_dtype="bfloat16", grad_dtype="float32"),
            ("float16", True): dict(state_dtype="bfloat16", index_dtype="int32"),
            ("float16", False): dict(grad_dtype="float32")}
STOCHASTIC = [rule.spec(sparse=sparse, dtype=dtype, rounding="stochastic", **flags,
                        **STORAGES[dtype, sparse]).validate()
              for rule, flags in FLAGS for dtype in HALF for sparse in (True, False)]


def float32_twin(spec):
    """The float32 kernel of `spec`'s rule and flags: the same arithmetic, nothing rounded."""
    return dataclasses.replace(spec, dtype="float32", state_dtype=None, grad_dtype=None,
                               rounding="nearest", index_dtype="int64").validate()


@pytest.fixture(scope="module")
def kernels(pulse, emulated_variants):
    """spec -> (C kernel, emulated CUDA kernel), built in batches where the cache lacks them."""
    c = targets.get("c")
    if c.unavailable():
        pytest.skip(c.unavailable())
    twins = list(dict.fromkeys(map(float32_twin, STOCHASTIC)))
    batch.build(MULTI + STOCHASTIC + twins, c, report=pulse)
    cuda = emulated_variants(MULTI + STOCHASTIC)
    return lambda spec: (c.load(spec), cuda[spec])


def start(spec, shape, rng) -> dict:
    """var and the state arrays the kernel takes, random (SGD's `seen` 0 or 1), as stored."""
    rule, rows = spec.RULE, shape[0]
    values = {"var": rng.standard_normal(shape)}
    values.update({n: 0.1 * rng.standard_normal(shape) for n in rule.arrays(spec)[1:]})
    values.update({n: rng.integers(0, 2, rows) if n == "seen" else rng.standard_normal(rows)
                   for n in rule.row_arrays(spec)})
    return {n: (np.abs(a) if n in NONNEGATIVE else a).astype(product.dtype(spec, n))
            for n, a in values.items()}


def hparams(spec, t):
    return hparams_of(spec.RULE).at_step(t, seed=SEED, **product.FAMILY_HYPER[spec.RULE.name])


def required(spec) -> list:
    """The state arrays a call takes by position (the others, switched by a flag, by name)."""
    return [s.name for s in spec.RULE.state if s.when is None]


def assert_same_bits(ours: dict, theirs: dict, what: str) -> None:
    for name, a in ours.items():
        assert a.dtype == theirs[name].dtype and a.tobytes() == theirs[name].tobytes(), \
            f"{what}: {name} differs"


#: More tensors than one launch takes: empty ones, one row, one column, rows past a warp, a tail.
SHAPES = [(3, 1), (0, 4), (5, 37), (2, 70), (4, 0), (1, 33), (9, 2), (2, 1001)] * 7


@pytest.mark.parametrize("spec", MULTI, ids=lambda s: s.symbol())
def test_one_multi_call_over_tensors_of_mixed_shapes_matches_one_c_call_per_tensor(kernels, spec):
    """Two steps of `multi(variables, <a list per state array>, grads, hp, bufs=..., seens=...)`
    over len(SHAPES) > TENSORS_PER_LAUNCH tensors (so the launcher cuts several launches), from
    random state; each tensor, stepped alone by the C kernel with the same hyperparameters,
    gets the same bits (with stochastic rounding each tensor hashes its own positions from 0)."""
    assert len(SHAPES) > TENSORS_PER_LAUNCH
    c_kernel, cuda_kernel = kernels(spec)
    rng = np.random.default_rng(12)
    alone = [start(spec, shape, rng) for shape in SHAPES]
    batched = [{n: a.copy() for n, a in state.items()} for state in alone]
    plurals = {s.name: s.names.get("plural", f"{s.name}s") for s in spec.RULE.state}
    switched = [n for n in batched[0] if n != "var" and n not in required(spec)]
    device = [{n: emulation.Emulated(a) for n, a in state.items()} for state in batched]
    for t in (1, 2):
        grads = [rng.standard_normal(shape).astype(product.dtype(spec, "grad"))
                 for shape in SHAPES]
        hp = hparams(spec, t)
        cuda_kernel.multi([d["var"] for d in device], *([d[n] for d in device]
                                                        for n in required(spec)),
                          [emulation.Emulated(g) for g in grads], hp,
                          **{plurals[n]: [d[n] for d in device] for n in switched})
        for k, (state, grad) in enumerate(zip(alone, grads)):
            call(c_kernel, state, grad, hp)
            assert_same_bits(batched[k], state, f"step {t}, tensor {k} of shape {SHAPES[k]}")


ROWS, ROW_SIZE, DENSE = 40, 37, (9, 150)


def gradient(spec, rng):
    """Sparse: a row seen SUM_CHUNK + 60 times (two chunks), rows seen once to four times, in a
    random order; dense: a tensor whose size is no multiple of a block. Values over three
    decades."""
    if spec.sparse:
        indices = np.concatenate([np.full(SUM_CHUNK + 60, 11), np.repeat([0, 3, 17, 39],
                                                                         [2, 3, 1, 4])])
        rng.shuffle(indices)
        shape = (len(indices), ROW_SIZE)
    else:
        shape = DENSE
    values = (rng.standard_normal(shape) * 10.0 ** rng.uniform(-2, 1, shape))
    values = values.astype(product.dtype(spec, "grad"))
    return (indices.astype(spec.index_dtype), values) if spec.sparse else values


def modelled(spec, computed: dict, t: int) -> dict:
    """What `spec`'s kernel stores, by tests/reference.py's model of stochastic rounding, of the
    float32 values `computed`: the per-element arrays in ABI order (`Rule.arrays`) two to a
    stream, the first rounded with the high 16 bits of each hash, the second with the low
    (docs/semantics.md: w and m), each element hashing its flat position; float32 storage as
    computed. The family keeps no per-row state in 16 bits."""
    arrays = spec.RULE.arrays(spec)
    out = {}
    for name, value in computed.items():
        storage = spec.storage(name)
        if storage not in HALF:
            out[name] = value.astype(product.dtype(spec, name))
            continue
        number = arrays.index(name)
        key = reference.step_key(SEED, t, number // 2)
        bits = reference.random_bits(key, np.arange(value.size).reshape(value.shape), number % 2)
        out[name] = reference.round_stochastic(value, storage, bits).astype(
            product.dtype(spec, name))
    return out


@pytest.mark.parametrize("spec", STOCHASTIC, ids=lambda s: s.symbol())
def test_stochastic_rounding_gives_the_models_bits_in_c_and_emulated_cuda(kernels, spec):
    """Three steps from random state: the emulated CUDA kernel stores the C kernel's bits, and
    the C kernel stores the model's rounding of what the float32 kernel computes from the same
    16-bit start (loaded into float32 exactly, so the arithmetic is the same). The model's var
    differs from rounding to nearest in some elements of every step, so a kernel that rounded to
    nearest could not pass."""
    c_kernel, cuda_kernel = kernels(spec)
    twin = targets.get("c").load(float32_twin(spec))
    rng = np.random.default_rng(31)
    c_state = start(spec, (ROWS, ROW_SIZE) if spec.sparse else DENSE, rng)
    cuda_state = {n: a.copy() for n, a in c_state.items()}
    for t in (1, 2, 3):
        grad = gradient(spec, rng)
        computed = {n: a.astype(np.float32) for n, a in c_state.items()}
        call(twin, computed, (grad[0].astype(np.int64), grad[1].astype(np.float32))
             if spec.sparse else grad.astype(np.float32), hparams(spec, t))
        call(c_kernel, c_state, grad, hparams(spec, t))
        call(cuda_kernel, cuda_state, grad, hparams(spec, t), emulation.Emulated)
        assert_same_bits(cuda_state, c_state, f"step {t}, emulated CUDA against C")
        assert_same_bits(c_state, modelled(spec, computed, t), f"step {t}, C against the model")
        nearest = reference.round_nearest(computed["var"], spec.dtype)
        assert np.any(c_state["var"].astype(np.float64) != nearest), f"step {t}"
