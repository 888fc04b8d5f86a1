"""A float32 numpy model of the row sum's order (docs/semantics.md, "Summation order"), which the
C and CUDA kernels of rules with a row sum must give bit for bit."""

from __future__ import annotations

import numpy as np

from lazyadam.codegen import ir


def lanes_sum(x: np.ndarray) -> np.float32:
    """The row sum of docs/semantics.md in float32: 32 lanes from zero, then halves pairwise."""
    lanes = np.zeros(ir.ROW_LANES, np.float32)
    for j, value in enumerate(x.astype(np.float32)):
        lanes[j % ir.ROW_LANES] = np.float32(lanes[j % ir.ROW_LANES] + value)
    s = ir.ROW_LANES // 2
    while s:
        lanes[:s] = lanes[:s] + lanes[s:2 * s]
        s //= 2
    return lanes[0]
