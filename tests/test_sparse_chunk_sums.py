"""The C sparse kernels' two ways of summing a row's occurrences (docs/kernels.md): on one thread,
chunk sums made while reading the gradient in input order, the rows then updated from them; on a
team, segments of the sorted pairs, each row summed by the thread that updates it, whose segment
edges fall inside a row seen 1,500 times on 2, 3 and 4 threads, and between the two occurrences
of a row seen twice. Either way the sums must follow the documented order
(tests/test_summation_order.py's float32 model), and every array must come out bitwise as on one
thread."""

from __future__ import annotations

import numpy as np
import pytest

import lazyadam
import openmp
from lazyadam import HParams, Spec
from test_summation_order import HYPER, ROW_SIZE, expected_m

#: Rows 0-999 seen once, row 1000 1,500 times, rows 1001-1299 twice, row 1300 256 and row 1301 257
#: times: sorted by row, the 3,611 occurrences have the long run at 1,000-2,499.
COUNTS = [1] * 1000 + [1500] + [2] * 299 + [256, 257]


def gradient(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    indices = np.repeat(np.arange(len(COUNTS)), COUNTS).astype(np.int64)
    rng.shuffle(indices)
    magnitudes = 10.0 ** rng.uniform(-3, 3, (indices.size, ROW_SIZE))
    return indices, (rng.standard_normal((indices.size, ROW_SIZE)) * magnitudes).astype(np.float32)


def step(threads: int, indices: np.ndarray, values: np.ndarray) -> list[np.ndarray]:
    kernel = lazyadam.compile(Spec(sparse=True, parallel_min=0))  # small, yet on every thread
    arrays = [np.zeros((len(COUNTS), ROW_SIZE), np.float32) for _ in range(3)]
    with openmp.threads(threads):
        kernel(*arrays, (indices, values), HParams.at_step(1, **HYPER))
    return arrays


def test_shares_cut_inside_a_run_change_no_bit(rng):
    indices, values = gradient(rng)
    one = step(1, indices, values)
    for row in range(len(COUNTS)):
        np.testing.assert_array_equal(one[1][row], expected_m(values[indices == row]),
                                      err_msg=f"row {row}, seen {COUNTS[row]} times")
    for threads in (2, 3, 4):
        for name, mine, reference in zip(("var", "m", "v"), step(threads, indices, values), one):
            np.testing.assert_array_equal(mine, reference, err_msg=f"{name} on {threads} threads")


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_a_row_seen_once_or_twice_in_a_batch_of_its_own(threads, rng):
    """The smallest batches: one occurrence (no chunk at all), and one row twice (one chunk)."""
    for indices in (np.array([4], np.int64), np.array([4, 4], np.int64)):
        values = rng.standard_normal((indices.size, ROW_SIZE)).astype(np.float32)
        kernel = lazyadam.compile(Spec(sparse=True, parallel_min=0))
        arrays = [np.zeros((6, ROW_SIZE), np.float32) for _ in range(3)]
        with openmp.threads(threads):
            kernel(*arrays, (indices, values), HParams.at_step(1, **HYPER))
        np.testing.assert_array_equal(arrays[1][4], expected_m(values))
        assert not arrays[1][[0, 1, 2, 3, 5]].any()
