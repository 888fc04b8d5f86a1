"""benchmarks/bench_family.py's sparse floor moves the bytes it stands for (`moved_bytes`): every
touched row of every array read and written once, however often the batch names it, and every index
and gradient value read."""
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="the benchmarks need torch (the test extra has it)")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_family  # noqa: E402


@pytest.mark.parametrize("elements, rows", [(1, 0), (2, 0), (2, 1), (1, 1)])
def test_the_sparse_floor_writes_each_touched_row_of_every_array_once(tmp_path, elements, rows):
    shape = (50, 20)
    indices = np.array([7, 3, 7, 49, 0, 7, 3], np.int64)
    values = np.arange(indices.size * shape[1], dtype=np.float32).reshape(-1, shape[1]) / 64
    arrays = [np.zeros(shape, np.float32) for _ in range(elements)] + [
        np.zeros(shape[0], np.float32) for _ in range(rows)]
    run = bench_family.SparseFloor(tmp_path, elements, rows).bind(arrays, (indices, values))
    total = run()
    once = np.zeros(shape[0], np.float32)
    once[np.unique(indices)] = 1
    for a in arrays[:elements]:
        np.testing.assert_array_equal(a, np.repeat(once[:, None], shape[1], axis=1))
    for a in arrays[elements:]:
        np.testing.assert_array_equal(a, once)
    assert total == pytest.approx(float(values.sum(dtype=np.float64) + indices.sum()), rel=1e-6)
