"""Checks of tests/reference_family.py against things that are not the reference.

1. PyTorch in float64, several steps: torch.optim.SGD and Adagrad, dense and sparse (Adagrad's
   sparse path is lazy, so it is compared step by step on uncoalesced gradients; SGD's sparse
   momentum buffer is not, so it is compared where the two agree: the same rows every step).
2. Reductions to rules torch has: rowwise Adagrad on rows of one element is Adagrad; partial-rowwise
   Adam on rows of one element is Adam, AdamW and Adam(amsgrad).
3. Values worked by hand, and lazy semantics: untouched rows keep weights and state bit for bit.
"""

import itertools

import numpy as np
import pytest

from reference_family import (adagrad_step, lion_step, partial_rowwise_adam_step,
                              rowwise_adagrad_step, sgd_step)

torch = pytest.importorskip("torch", reason="torch is needed to compare with torch.optim")

RTOL, ATOL = 1e-12, 1e-14   # float64 on both sides; only the order of operations differs
SHAPE = (6, 3)
STEPS = 5


def _dense_grads(rng, shape=SHAPE, steps=STEPS):
    return [rng.standard_normal(shape) for _ in range(steps)]


def _sparse_grads(rng, rows, shape=SHAPE, steps=STEPS):
    """Uncoalesced sparse gradients over `rows` (each row twice, shuffled) for every step."""
    grads = []
    for _ in range(steps):
        indices = rng.permutation(np.repeat(rows, 2))
        grads.append((indices, rng.standard_normal((len(indices),) + shape[1:])))
    return grads


def _torch_run(optimizer, var, grads, **options):
    """A torch optimizer on a float64 copy of var, one gradient per step (dense, or an
    `(indices, values)` tuple made an uncoalesced sparse COO tensor)."""
    param = torch.nn.Parameter(torch.tensor(var, dtype=torch.float64))
    opt = optimizer([param], **options)
    for grad in grads:
        if isinstance(grad, tuple):
            indices, values = grad
            param.grad = torch.sparse_coo_tensor(torch.tensor(indices)[None], torch.tensor(values),
                                                 var.shape)
        else:
            param.grad = torch.tensor(grad)
        opt.step()
    return param.detach().numpy(), opt.state[param]


def _split(grad):
    return grad if isinstance(grad, tuple) else (None, grad)


# 1. PyTorch ------------------------------------------------------------------------------------

SGD_CASES = [dict(momentum=mu, dampening=d, nesterov=n, weight_decay=wd, maximize=mx)
             for mu, d, n, wd, mx in itertools.product((0.0, 0.9), (0.0, 0.3), (False, True),
                                                      (0.0, 0.1), (False, True))
             if not (n and (mu == 0 or d != 0))]   # torch refuses nesterov without these


@pytest.mark.parametrize("options", SGD_CASES, ids=str)
def test_sgd_matches_torch_dense(options, rng):
    var, grads = rng.standard_normal(SHAPE), _dense_grads(rng)
    expected, torch_state = _torch_run(torch.optim.SGD, var, grads, lr=0.05, **options)
    w, b, seen = var, np.zeros(SHAPE), np.zeros(SHAPE[0], dtype=bool)
    for grad in grads:
        w, b, seen = sgd_step(w, b, seen, grad, lr=0.05, **options)
    np.testing.assert_allclose(w, expected, rtol=RTOL, atol=ATOL)
    if options["momentum"]:
        np.testing.assert_allclose(b, torch_state["momentum_buffer"].numpy(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("dampening", [0.0, 0.3])
def test_sgd_matches_torch_sparse_on_the_same_rows(dampening, rng):
    """torch's sparse momentum buffer holds every row it saw: with the same rows every step, lazy
    and torch agree (duplicates and a loss scale of 1)."""
    var, grads = rng.standard_normal(SHAPE), _sparse_grads(rng, rows=[1, 4])
    expected, _ = _torch_run(torch.optim.SGD, var, grads, lr=0.05, momentum=0.9,
                             dampening=dampening)
    w, b, seen = var, np.zeros(SHAPE), np.zeros(SHAPE[0], dtype=bool)
    for indices, values in grads:
        w, b, seen = sgd_step(w, b, seen, values, lr=0.05, momentum=0.9, dampening=dampening,
                              indices=indices)
    np.testing.assert_allclose(w, expected, rtol=RTOL, atol=ATOL)
    assert seen.tolist() == [False, True, False, False, True, False]


ADAGRAD_CASES = [dict(lr_decay=ld, weight_decay=wd, initial_accumulator_value=s0, maximize=mx)
                 for ld, wd, s0, mx in itertools.product((0.0, 0.05), (0.0, 0.1), (0.0, 0.5),
                                                         (False, True))]


@pytest.mark.parametrize("options", ADAGRAD_CASES, ids=str)
def test_adagrad_matches_torch_dense(options, rng):
    var, grads = rng.standard_normal(SHAPE), _dense_grads(rng)
    expected, torch_state = _torch_run(torch.optim.Adagrad, var, grads, lr=0.1, eps=1e-3,
                                       **options)
    s0 = options.pop("initial_accumulator_value")
    w, s = var, np.full(SHAPE, s0)
    for t, grad in enumerate(grads, start=1):
        w, s = adagrad_step(w, s, grad, lr=0.1, eps=1e-3, step=t, **options)
    np.testing.assert_allclose(w, expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(s, torch_state["sum"].numpy(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("lr_decay, maximize", [(0.0, False), (0.05, True)])
def test_adagrad_matches_torch_sparse_step_by_step(lr_decay, maximize, rng):
    """torch's sparse Adagrad is lazy: varying rows with duplicates agree at every step (torch
    refuses weight decay on sparse gradients)."""
    var = rng.standard_normal(SHAPE)
    w, s = var, np.zeros(SHAPE)
    grads = []
    for t in range(1, STEPS + 1):
        indices = rng.integers(0, SHAPE[0], size=5)
        grads.append((indices, rng.standard_normal((5,) + SHAPE[1:])))
        expected, torch_state = _torch_run(torch.optim.Adagrad, var, grads, lr=0.1, eps=1e-3,
                                           lr_decay=lr_decay, maximize=maximize)
        w, s = adagrad_step(w, s, grads[-1][1], lr=0.1, eps=1e-3, step=t, lr_decay=lr_decay,
                            maximize=maximize, indices=indices)
        np.testing.assert_allclose(w, expected, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(s, torch_state["sum"].to_dense().numpy(), rtol=RTOL,
                                   atol=ATOL)


# 2. Reductions to rules torch has ------------------------------------------------------------

@pytest.mark.parametrize("sparse", [False, True])
def test_rowwise_adagrad_on_one_element_rows_is_adagrad(sparse, rng):
    shape = (SHAPE[0],)
    var = rng.standard_normal(shape)
    grads = _sparse_grads(rng, [0, 2, 5], shape) if sparse else _dense_grads(rng, shape)
    expected, torch_state = _torch_run(torch.optim.Adagrad, var, grads, lr=0.1, eps=1e-3)
    w, a = var, np.zeros(shape[0])
    for grad in grads:
        indices, values = _split(grad)
        w, a = rowwise_adagrad_step(w, a, values, lr=0.1, eps=1e-3, indices=indices)
    np.testing.assert_allclose(w, expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(a, torch_state["sum"].to_dense().numpy(), rtol=RTOL, atol=ATOL)


ADAM_CASES = [(torch.optim.Adam, dict(decay="none"), {}),
              (torch.optim.Adam, dict(decay="l2", weight_decay=0.1), dict(weight_decay=0.1)),
              (torch.optim.AdamW, dict(decay="decoupled", weight_decay=0.1),
               dict(weight_decay=0.1)),
              (torch.optim.Adam, dict(amsgrad=True), dict(amsgrad=True)),
              (torch.optim.Adam, dict(maximize=True), dict(maximize=True))]


@pytest.mark.parametrize("optimizer, ours, theirs", ADAM_CASES, ids=str)
def test_partial_rowwise_adam_on_one_element_rows_is_adam(optimizer, ours, theirs, rng):
    shape = (SHAPE[0],)
    var, grads = rng.standard_normal(shape), _dense_grads(rng, shape)
    expected, torch_state = _torch_run(optimizer, var, grads, lr=0.01, betas=(0.9, 0.99),
                                       eps=1e-4, **theirs)
    w, m, v, vmax = var, np.zeros(shape), np.zeros(shape[0]), None
    for t, grad in enumerate(grads, start=1):
        w, m, v, vmax = partial_rowwise_adam_step(
            w, m, v, grad, lr=0.01, beta1=0.9, beta2=0.99, eps=1e-4, beta1_power=0.9 ** t,
            beta2_power=0.99 ** t, vmax=vmax, **ours)
    np.testing.assert_allclose(w, expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(m, torch_state["exp_avg"].numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(v, torch_state["exp_avg_sq"].numpy(), rtol=RTOL, atol=ATOL)


# 3. By hand, and lazy semantics --------------------------------------------------------------

def test_rowwise_adagrad_by_hand():
    """Row 0 of g = [3, 4]/2 (loss scale 2): mean(g*g) = (2.25 + 4)/2 = 3.125 = a;
    w = 1 - 0.5 * g / (sqrt(3.125) + 0)."""
    var = np.ones((2, 2))
    w, a = rowwise_adagrad_step(var, np.zeros(2), np.array([[3.0, 4.0]]), lr=0.5, eps=0.0,
                                loss_scale=2.0, indices=np.array([0]))
    assert a.tolist() == [3.125, 0.0]
    np.testing.assert_allclose(w[0], 1 - 0.5 * np.array([1.5, 2.0]) / np.sqrt(3.125), rtol=1e-15)
    assert w[1].tolist() == [1.0, 1.0]


def test_partial_rowwise_adam_by_hand():
    """One row g = [1, 3]: m = 0.1*g, v = 0.001*mean(g*g) = 0.005; step 1, eps 0:
    w = w - lr * g / sqrt(5) (the bias corrections cancel the (1-beta) factors)."""
    var = np.zeros((1, 2))
    w, m, v, _ = partial_rowwise_adam_step(var, np.zeros((1, 2)), np.zeros(1),
                                           np.array([[1.0, 3.0]]), lr=0.1, beta1=0.9,
                                           beta2=0.999, eps=0.0, beta1_power=0.9,
                                           beta2_power=0.999)
    np.testing.assert_allclose(m, [[0.1, 0.3]], rtol=1e-15)
    np.testing.assert_allclose(v, [0.005], rtol=1e-13)
    np.testing.assert_allclose(w, -0.1 * np.array([[1.0, 3.0]]) / np.sqrt(5.0), rtol=1e-12)


def test_lion_by_hand():
    """m = [1, -1, 0, 0.5], g = [1, 1, 0, -2], b1 0.9: c = [1, -0.8, 0, 0.25] -> sign [1, -1, 0, 1];
    w = 2 - 0.1*(sign + 0.5*2); m = 0.99*m + 0.01*g."""
    w, m = lion_step(np.full(4, 2.0), np.array([1.0, -1.0, 0.0, 0.5]),
                     np.array([1.0, 1.0, 0.0, -2.0]), lr=0.1, weight_decay=0.5)
    np.testing.assert_allclose(w, 2 - 0.1 * (np.array([1.0, -1.0, 0.0, 1.0]) + 1.0), rtol=1e-15)
    np.testing.assert_allclose(m, [1.0, -0.98, 0.0, 0.475], rtol=1e-15)


def test_lion_gives_a_zero_direction_no_step_and_passes_nan_on():
    """sign(0) is 0, not 1 (c exactly 0: only the weight decay moves w); a NaN gradient gives a
    NaN weight rather than a step of either sign."""
    w, _ = lion_step(np.array([3.0, 3.0]), np.zeros(2), np.array([0.0, np.nan]), lr=0.1,
                     weight_decay=0.5)
    assert w[0] == 3.0 - 0.1 * 0.5 * 3.0
    assert np.isnan(w[1])


def test_sgd_first_touch_of_a_row_takes_its_gradient_as_momentum():
    """Row 1 first seen at the second step gets b = g (no dampening); row 0, seen twice,
    b = 0.9*b + 0.5*g; row 2 never seen keeps w, b and seen."""
    var, b, seen = np.zeros((3, 1)), np.zeros((3, 1)), np.zeros(3, dtype=bool)
    options = dict(lr=1.0, momentum=0.9, dampening=0.5)
    var, b, seen = sgd_step(var, b, seen, np.array([[2.0]]), indices=np.array([0]), **options)
    var, b, seen = sgd_step(var, b, seen, np.array([[2.0], [4.0]]), indices=np.array([0, 1]),
                            **options)
    assert b[:, 0].tolist() == [0.9 * 2 + 0.5 * 2, 4.0, 0.0]
    assert var[:, 0].tolist() == [-2.0 - 2.8, -4.0, 0.0]
    assert seen.tolist() == [True, True, False]


RULES = {
    "sgd": lambda w, g, i: sgd_step(w, np.ones_like(w), np.ones(len(w), bool), g, lr=0.1,
                                    momentum=0.9, weight_decay=0.1, indices=i),
    "adagrad": lambda w, g, i: adagrad_step(w, np.ones_like(w), g, lr=0.1, step=3,
                                            weight_decay=0.1, indices=i),
    "rowwise_adagrad": lambda w, g, i: rowwise_adagrad_step(w, np.ones(len(w)), g, lr=0.1,
                                                            weight_decay=0.1, decay="decoupled",
                                                            indices=i),
    "partial_rowwise_adam": lambda w, g, i: partial_rowwise_adam_step(
        w, np.ones_like(w), np.ones(len(w)), g, lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8,
        beta1_power=0.81, beta2_power=0.98, amsgrad=True, vmax=np.ones(len(w)), indices=i,
        loss_scale=0.1),                         # so that v, and vmax, grow past 1
    "lion": lambda w, g, i: lion_step(w, np.ones_like(w), g, lr=0.1, weight_decay=0.1, indices=i),
}


@pytest.mark.parametrize("rule", RULES)
def test_untouched_rows_keep_weights_and_state(rule, rng):
    var = rng.standard_normal(SHAPE)
    before = var.copy()
    result = RULES[rule](var, rng.standard_normal((3,) + SHAPE[1:]), np.array([4, 1, 4]))
    assert np.array_equal(var, before)                     # the input is not modified
    untouched = [0, 2, 3, 5]
    for i, array in enumerate(result):
        if array is None or array.dtype == bool:           # sgd's `seen` was all True already
            continue
        start = before if i == 0 else np.ones_like(array)  # every state started at ones
        assert np.array_equal(array[untouched], start[untouched])
        assert not np.array_equal(array[[1, 4]], start[[1, 4]])


@pytest.mark.parametrize("rule", RULES)
def test_indices_outside_the_table_raise(rule, rng):
    with pytest.raises(ValueError, match="index 6 at position 1"):
        RULES[rule](rng.standard_normal(SHAPE), np.ones((2, 3)), np.array([0, 6]))
