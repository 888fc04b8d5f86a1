"""The dense C kernels of rows compile a copy of a row's step for each width of
`lazyadam.codegen.render.ROW_WIDTHS`, loops of a constant count; other widths take loops of a
run-time count. Every width, on both sides of those and on both loss-scale paths (a power of two
is multiplied by its inverse, any other divides), keeps the bits of the contract:

- the per-row state after one step from zero is the row sum in docs/semantics.md's lane order
  (a float32 numpy model of it, on data where left to right gives other bits), divided by D;
- the whole step (var and every state array), in float32 and float64, equals the lazy sparse
  kernel's, which has no copy per width, on the same gradient with every row named once.
"""

from __future__ import annotations

import numpy as np
import pytest

import lazyadam
import product
from lazyadam.codegen import ir
from lazyadam.codegen.render import ROW_WIDTHS
from lazyadam.rules import PARTIAL_ROWWISE_ADAM, ROWWISE_ADAGRAD
from lazyadam.targets import c
from lazyadam.targets.base import hparams_of
from row_order import lanes_sum

WIDTHS = sorted({w + d for w in ROW_WIDTHS for d in (-1, 0, 1)} | {100})
ROWS = 6


def step(rule, sparse: bool, var, grad, loss_scale: float) -> list[np.ndarray]:
    """One step of the rule's kernel of var's dtype from zero state; [var, *state] after it."""
    if c.unavailable():
        pytest.skip(c.unavailable())
    kernel = lazyadam.compile(rule.spec(sparse=sparse, dtype=var.dtype.name).validate())
    arrays = [var.copy()] + [np.zeros(var.shape if s.per == "element" else var.shape[0],
                                      var.dtype)
                             for s in rule.state if s.name in kernel.arrays[1:]]
    rows = np.arange(var.shape[0], dtype=np.int64)
    values = {**product.FAMILY_HYPER[rule.name], "loss_scale": loss_scale}
    hp = hparams_of(rule).at_step(1, **values)
    kernel(*arrays, (rows, grad) if sparse else grad, hp)
    return arrays


def data(width: int) -> tuple[np.ndarray, np.ndarray]:
    """var, and a gradient over six decades whose rows' left-to-right sums of squares differ from
    the lanes' (checked for row 0)."""
    rng = np.random.default_rng(width)
    var = rng.standard_normal((ROWS, width)).astype(np.float32)
    while True:
        grad = (rng.standard_normal((ROWS, width))
                * 10.0 ** rng.uniform(-3, 3, (ROWS, width))).astype(np.float32)
        squares = grad[0] * grad[0]
        left_to_right = np.float32(0)
        for x in squares:
            left_to_right = np.float32(left_to_right + x)
        if width <= ir.ROW_LANES or left_to_right != lanes_sum(squares):
            return var, grad


@pytest.mark.parametrize("loss_scale", [4.0, 3.0], ids=["inverse", "divide"])
@pytest.mark.parametrize("width", WIDTHS)
def test_rowwise_adagrad_row_state_is_the_lanes_sum_at_every_width(width, loss_scale):
    """acc = 0 + (sum of g*g in lane order) / D, each operation rounded to float32."""
    var, grad = data(width)
    acc = step(ROWWISE_ADAGRAD, False, var, grad, loss_scale)[1]
    g = grad / np.float32(loss_scale)
    want = [np.float32(0) + np.float32(lanes_sum(row * row) / np.float32(width)) for row in g]
    assert np.array_equal(acc, np.array(want, np.float32))


@pytest.mark.parametrize("loss_scale", [4.0, 3.0], ids=["inverse", "divide"])
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rule", [ROWWISE_ADAGRAD, PARTIAL_ROWWISE_ADAM], ids=lambda r: r.name)
def test_dense_step_is_the_sparse_step_of_every_row_at_every_width(rule, dtype, width,
                                                                   loss_scale):
    var, grad = (a.astype(dtype) for a in data(width))
    dense = step(rule, False, var, grad, loss_scale)
    sparse = step(rule, True, var, grad, loss_scale)
    for d, s in zip(dense, sparse):
        assert d.tobytes() == s.tobytes()
