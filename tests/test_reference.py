"""Checks of tests/reference.py against things that are not the reference.

1. The known values of docs/semantics.md (MindSpore's own tests).
2. PyTorch in float64, several steps: torch.optim.Adam / AdamW (eps_mode="pytorch"), and
   torch.optim.SparseAdam for the lazy path.
3. Lazy semantics by hand: untouched rows stay bit-for-bit, a duplicated row is L2-decayed twice.
"""

import itertools
import math

import numpy as np
import pytest

from reference import lazyadam_step, run_steps

KNOWN_ATOL = 1e-7        # docs/semantics.md quotes the known values to 7-8 significant digits
TORCH_RTOL = 1e-12       # float64 on both sides; only the order of operations differs
TORCH_ATOL = 1e-14

KNOWN = dict(lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8, beta1_power=0.9, beta2_power=0.999)
HYPER = dict(lr=0.01, beta1=0.9, beta2=0.99)
EPS = 1e-4               # comparable to sqrt(v) below, so the eps placement shows in the result
WEIGHT_DECAY = 0.1
LOSS_SCALE = 4.0         # a power of two: dividing by it is exact
STEPS = 6
SHAPE = (7, 3)


# 1. Known values ----------------------------------------------------------------------------------

@pytest.mark.parametrize("nesterov, expected", [(False, 0.9997121), (True, 0.99973774)])
def test_known_sparse(nesterov, expected):
    ones = np.ones((3, 1, 2))
    var, m, v, vmax = lazyadam_step(ones, ones, ones, np.full((2, 1, 2), 0.1),
                                    indices=np.array([0, 1]), nesterov=nesterov, **KNOWN)
    np.testing.assert_allclose(var[:2], expected, rtol=0, atol=KNOWN_ATOL)
    np.testing.assert_allclose(m[:2], 0.91, rtol=0, atol=KNOWN_ATOL)
    np.testing.assert_allclose(v[:2], 0.99901, rtol=0, atol=KNOWN_ATOL)
    for a in (var, m, v):
        assert np.array_equal(a[2], ones[2])
    assert vmax is None


def test_known_dense():
    ones = np.ones((2, 2))
    var, m, v, _ = lazyadam_step(ones, ones, ones, ones, **KNOWN)
    np.testing.assert_allclose(var, 0.9996838, rtol=0, atol=KNOWN_ATOL)
    np.testing.assert_allclose(m, 1.0, rtol=0, atol=KNOWN_ATOL)
    np.testing.assert_allclose(v, 1.0, rtol=0, atol=KNOWN_ATOL)


# 2. PyTorch --------------------------------------------------------------------------------------

def _torch_run(optimizer_cls, var, grads, **options):
    """Run a torch optimizer on a float64 copy of var, one gradient (dense or sparse) per step."""
    torch = pytest.importorskip("torch", reason="torch is needed to compare with torch.optim")
    param = torch.nn.Parameter(torch.tensor(var, dtype=torch.float64))
    optimizer = optimizer_cls([param], lr=HYPER["lr"], betas=(HYPER["beta1"], HYPER["beta2"]),
                              eps=EPS, **options)
    for grad in grads:
        if isinstance(grad, tuple):
            indices, values = grad
            param.grad = torch.sparse_coo_tensor(torch.tensor(indices)[None],
                                                 torch.tensor(values), var.shape,
                                                 check_invariants=True)
        else:
            param.grad = torch.tensor(grad)
        optimizer.step()
    return param.detach().numpy(), optimizer.state[param]


def _sparse_grads(rng, *, cover_all_rows, duplicates):
    """(indices, values) per step: unsorted, with duplicates unless told otherwise."""
    grads = []
    for _ in range(STEPS):
        rows = rng.permutation(SHAPE[0]) if cover_all_rows else rng.choice(SHAPE[0], 4, False)
        if duplicates:
            rows = np.concatenate([rows, rng.choice(rows, 3)])
            rng.shuffle(rows)
        grads.append((rows, 1e-3 * rng.standard_normal((len(rows),) + SHAPE[1:])))
    return grads


def _dense_sum(grads):
    """The dense gradient a sparse (indices, values) stands for: duplicates summed."""
    dense = []
    for indices, values in grads:
        g = np.zeros(SHAPE)
        np.add.at(g, indices, values)
        dense.append(g)
    return dense


def _torch_adam(decay, amsgrad, maximize):
    torch = pytest.importorskip("torch", reason="torch is needed to compare with torch.optim")
    if decay == "decoupled":
        return torch.optim.AdamW, dict(weight_decay=WEIGHT_DECAY, amsgrad=amsgrad,
                                       maximize=maximize)
    return torch.optim.Adam, dict(weight_decay=WEIGHT_DECAY if decay == "l2" else 0.0,
                                  amsgrad=amsgrad, maximize=maximize)


def _assert_matches_torch(ours, theirs, state, amsgrad):
    var, m, v, vmax = ours
    np.testing.assert_allclose(var, theirs, rtol=TORCH_RTOL, atol=TORCH_ATOL)
    np.testing.assert_allclose(m, state["exp_avg"].numpy(), rtol=TORCH_RTOL, atol=TORCH_ATOL)
    np.testing.assert_allclose(v, state["exp_avg_sq"].numpy(), rtol=TORCH_RTOL, atol=TORCH_ATOL)
    if amsgrad:
        np.testing.assert_allclose(vmax, state["max_exp_avg_sq"].numpy(),
                                   rtol=TORCH_RTOL, atol=TORCH_ATOL)


FLAGS = list(itertools.product(["none", "l2", "decoupled"], [False, True], [False, True]))


@pytest.mark.parametrize("decay, amsgrad, maximize", FLAGS)
def test_dense_matches_torch_adam(decay, amsgrad, maximize):
    rng = np.random.default_rng(0)
    var = rng.standard_normal(SHAPE)
    grads = [1e-3 * rng.standard_normal(SHAPE) for _ in range(STEPS)]
    optimizer_cls, options = _torch_adam(decay, amsgrad, maximize)
    theirs, state = _torch_run(optimizer_cls, var, grads, **options)
    ours = run_steps(var, [LOSS_SCALE * g for g in grads], steps=STEPS, **HYPER, eps=EPS,
                     loss_scale=LOSS_SCALE, weight_decay=WEIGHT_DECAY, decay=decay,
                     amsgrad=amsgrad, maximize=maximize, eps_mode="pytorch")
    _assert_matches_torch(ours, theirs, state, amsgrad)


@pytest.mark.parametrize("decay, amsgrad, maximize", FLAGS)
def test_sparse_covering_all_rows_matches_torch_adam(decay, amsgrad, maximize):
    """When every row is touched, lazy equals dense Adam on the summed gradient.

    With L2 decay each row appears once (a duplicate would be decayed twice, see below).
    """
    rng = np.random.default_rng(1)
    var = rng.standard_normal(SHAPE)
    grads = _sparse_grads(rng, cover_all_rows=True, duplicates=decay != "l2")
    optimizer_cls, options = _torch_adam(decay, amsgrad, maximize)
    theirs, state = _torch_run(optimizer_cls, var, _dense_sum(grads), **options)
    ours = run_steps(var, grads, steps=STEPS, **HYPER, eps=EPS, weight_decay=WEIGHT_DECAY,
                     decay=decay, amsgrad=amsgrad, maximize=maximize, eps_mode="pytorch")
    _assert_matches_torch(ours, theirs, state, amsgrad)


@pytest.mark.parametrize("maximize", [False, True])
def test_sparse_matches_torch_sparse_adam(maximize):
    """torch.optim.SparseAdam is lazy, and places eps as MindSpore does (torch 2.13).

    Its step is `lr*sqrt(1-beta2^t)/(1-beta1^t) * m/(sqrt(v) + eps)`, which is eps_mode
    "mindspore", not the `sqrt(v_hat) + eps` of torch.optim.Adam; the second assertion shows
    the two placements differ here by far more than the tolerance.
    """
    torch = pytest.importorskip("torch", reason="torch is needed to compare with torch.optim")
    rng = np.random.default_rng(2)
    var = rng.standard_normal(SHAPE)
    grads = _sparse_grads(rng, cover_all_rows=False, duplicates=True)
    theirs, state = _torch_run(torch.optim.SparseAdam, var, grads, maximize=maximize)
    common = dict(steps=STEPS, **HYPER, eps=EPS, maximize=maximize)
    ours = run_steps(var, grads, **common, eps_mode="mindspore")
    _assert_matches_torch(ours, theirs, state, amsgrad=False)
    other = run_steps(var, grads, **common, eps_mode="pytorch")[0]
    assert not np.allclose(other, theirs, rtol=1e-6, atol=0)


# 3. Lazy semantics by hand -----------------------------------------------------------------------

ALL_FLAGS = dict(weight_decay=WEIGHT_DECAY, loss_scale=LOSS_SCALE, nesterov=True, amsgrad=True,
                 maximize=True)


@pytest.mark.parametrize("decay", ["l2", "decoupled"])
@pytest.mark.parametrize("eps_mode", ["mindspore", "pytorch"])
def test_untouched_rows_bit_for_bit(decay, eps_mode):
    rng = np.random.default_rng(3)
    var, m, v, vmax = (rng.random(SHAPE) for _ in range(4))
    inputs = [a.copy() for a in (var, m, v, vmax)]
    indices = np.array([5, 1, 5, 3])
    out = lazyadam_step(var, m, v, rng.standard_normal((4, 3)), indices=indices, vmax=vmax,
                        eps=EPS, beta1_power=0.9 ** 3, beta2_power=0.99 ** 3, decay=decay,
                        eps_mode=eps_mode, **HYPER, **ALL_FLAGS)
    untouched = [0, 2, 4, 6]
    for before, after in zip(inputs, out):
        assert np.array_equal(after[untouched], before[untouched])
    for before, after in zip(inputs[:3], out[:3]):         # vmax may keep its old, larger value
        assert not np.any(after[[1, 3, 5]] == before[[1, 3, 5]])
    for original, given in zip(inputs, (var, m, v, vmax)):
        assert np.array_equal(original, given)             # inputs are not modified


def test_duplicate_row_decayed_twice():
    w, m0, v0, a, b = 0.5, 0.2, 0.3, 0.7, -0.1
    beta1, beta2, lr, eps, wd, p1, p2 = 0.9, 0.99, 0.01, 1e-8, 0.1, 0.9 ** 2, 0.99 ** 2
    var, m, v, _ = lazyadam_step(
        np.array([[w], [1.0]]), np.array([[m0], [0.0]]), np.array([[v0], [0.0]]),
        np.array([[a], [b]]), indices=np.array([0, 0]), lr=lr, beta1=beta1, beta2=beta2,
        eps=eps, beta1_power=p1, beta2_power=p2, weight_decay=wd, decay="l2")
    g = (a + wd * w) + (b + wd * w)
    m1 = beta1 * m0 + (1 - beta1) * g
    v1 = beta2 * v0 + (1 - beta2) * g * g
    w1 = w - lr * math.sqrt(1 - p2) / (1 - p1) * m1 / (math.sqrt(v1) + eps)
    np.testing.assert_allclose([var[0, 0], m[0, 0], v[0, 0]], [w1, m1, v1], rtol=1e-15)
    assert (var[1, 0], m[1, 0], v[1, 0]) == (1.0, 0.0, 0.0)


# Errors ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [3, -1])
def test_out_of_range_index_is_named(bad):
    z = np.zeros((3, 2))
    with pytest.raises(ValueError, match=f"index {bad} at position 1"):
        lazyadam_step(z, z, z, np.ones((3, 2)), indices=np.array([0, bad, 7]), **KNOWN)


@pytest.mark.parametrize("option", [dict(decay="l1"), dict(eps_mode="tensorflow")])
def test_unknown_option(option):
    z = np.zeros((3, 2))
    with pytest.raises(ValueError, match=repr(next(iter(option.values())))):
        lazyadam_step(z, z, z, z, **KNOWN, **option)
