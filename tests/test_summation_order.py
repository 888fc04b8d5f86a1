"""The summation order of duplicate indices, bitwise, on every target (docs/semantics.md).

A row's occurrences, in input order, are cut into consecutive chunks of SUM_CHUNK; each chunk is
summed left to right, then the chunk sums are added left to right. A float32 numpy model of that order
predicts `m` exactly after one step from zero moments (`m = 0*beta1 + (1 - beta1)*g` is one rounding
of `(1 - beta1)*g`), for rows seen 1, C - 1, C, C + 1 and 10,000 times; the gradients span six decades,
so that another order gives other bits (checked, so that the test can fail).

The C kernels run on 1 and 2 threads; the CUDA kernels in the host-emulation build (and on a GPU
where there is one: tests/test_cuda_gpu.py). Both the parallel chunk sums and the single-thread path
that locked rows with L2 decay take are covered.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import cuda_emulation as emulation
import lazyadam
import openmp
from lazyadam import HParams, Spec
from lazyadam.codegen import SUM_CHUNK

C = SUM_CHUNK
COUNTS = (1, C - 1, C, C + 1, 10_000)
ROW_SIZE = 3
#: Beta1 such that `1 - beta1` is exact in float32, so that m is one rounding of a product.
HYPER = dict(lr=1e-3, beta1=0.75, beta2=0.999, eps=1e-8, weight_decay=0.0, loss_scale=1.0)
#: The plain spec (chunks of long rows summed in parallel), and locked rows with L2 decay, where one
#: thread sums a row's chunks under its lock; var = 0 makes the decay term 0.
SPECS = [Spec(sparse=True), Spec(sparse=True, use_locking=True, decay="l2")]


def chunked_sum(values: np.ndarray) -> np.ndarray:
    """The documented order in float32: chunks of C left to right, then the chunk sums in order."""
    chunk_sums = [np.cumsum(values[k:k + C], axis=0, dtype=np.float32)[-1]
                  for k in range(0, len(values), C)]
    return np.cumsum(np.array(chunk_sums, np.float32), axis=0, dtype=np.float32)[-1]


def left_to_right(values: np.ndarray) -> np.ndarray:
    return np.cumsum(values, axis=0, dtype=np.float32)[-1]


def gradient(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
    """Row r (r < len(COUNTS)) seen COUNTS[r] times, shuffled among the others; the occurrences of
    each row, in input order."""
    indices = np.concatenate([np.full(n, r) for r, n in enumerate(COUNTS)])
    rng.shuffle(indices)
    magnitudes = 10.0 ** rng.uniform(-3, 3, (indices.size, ROW_SIZE))
    values = (rng.standard_normal((indices.size, ROW_SIZE)) * magnitudes).astype(np.float32)
    return indices, values, {r: values[indices == r] for r in range(len(COUNTS))}


def expected_m(occurrences: np.ndarray) -> np.ndarray:
    return np.float32(1.0 - HYPER["beta1"]) * chunked_sum(occurrences)


def test_the_model_tells_the_orders_apart(rng):
    """Up to C + 1 occurrences the two orders are the same additions; with more they differ."""
    _, _, rows = gradient(rng)
    for n, occurrences in zip(COUNTS, rows.values()):
        if n > C + 1:
            assert not np.array_equal(chunked_sum(occurrences), left_to_right(occurrences)), n
        else:
            np.testing.assert_array_equal(chunked_sum(occurrences), left_to_right(occurrences))


def state(rows: int):
    return [np.zeros((rows, ROW_SIZE), np.float32) for _ in range(3)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.symbol())
def test_c_kernel_sums_in_the_documented_order(spec, threads, rng):
    kernel = lazyadam.compile(dataclasses.replace(spec, parallel_min=0))  # small, yet in parallel
    indices, values, rows = gradient(rng)
    var, m, v = state(len(COUNTS))
    with openmp.threads(threads):
        kernel(var, m, v, (indices, values), HParams.at_step(1, **HYPER))
    for r, occurrences in rows.items():
        np.testing.assert_array_equal(m[r], expected_m(occurrences), err_msg=f"{COUNTS[r]} times")


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.symbol())
def test_cuda_kernel_sums_in_the_documented_order(spec, rng, emulated_variants):
    kernel = emulated_variants(SPECS)[spec]
    indices, values, rows = gradient(rng)
    var, m, v = state(len(COUNTS))
    kernel(*map(emulation.Emulated, (var, m, v)),
           (emulation.Emulated(indices), emulation.Emulated(values)), HParams.at_step(1, **HYPER))
    for r, occurrences in rows.items():
        np.testing.assert_array_equal(m[r], expected_m(occurrences), err_msg=f"{COUNTS[r]} times")
