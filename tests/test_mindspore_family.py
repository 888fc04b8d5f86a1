"""The MindSpore-style classes of issue 17: `lazyadam.Momentum` and `lazyadam.Adagrad` (MindSpore's
arguments, checked against numpy models of MindSpore's ApplyMomentum and ApplyAdagrad written in
this file), and `RowWiseAdagrad`, `PartialRowWiseAdam`, `Lion` from `lazyadam.optimizer(rule)`,
each against tests/reference_family.py over 3 dense and sparse steps, with a checkpoint round
trip (bad input, which leaves parameters and state as they were: tests/test_bad_input.py)."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest

import lazyadam
import reference_family as ref
from lazyadam import Parameter, RowTensor
from lazyadam.rules import LION

ROWS, DIM, NNZ = 7, 5, 9
TOLERANCE = {np.float32: dict(rtol=2e-6, atol=1e-7), np.float64: dict(rtol=1e-12, atol=1e-14)}


def data(dtype, steps=4, seed=0):
    """A table and a dense matrix, and `steps` gradients for them: a RowTensor with duplicates
    that leaves the last two rows of the table untouched, and a dense array."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((ROWS, DIM)).astype(dtype)
    dense = rng.standard_normal((3, DIM)).astype(dtype)
    grads = []
    for _ in range(steps):
        indices = rng.integers(0, ROWS - 2, NNZ)
        grads.append((indices, rng.standard_normal((NNZ, DIM)).astype(dtype),
                      rng.standard_normal((3, DIM)).astype(dtype)))
    return table, dense, grads


def step_of(batch):
    indices, values, dense = batch
    return [RowTensor(indices, values, (ROWS, DIM)), dense]


# --- MindSpore's own optimizers: numpy models of its kernels -----------------------------------

def apply_momentum(w, accum, g, *, lr, momentum, nesterov, indices=None):
    """MindSpore's ApplyMomentum on the rows a gradient touches (all, dense): `accum = momentum *
    accum + g`; `w -= lr*accum`, or with Nesterov `w -= lr*(g + momentum*accum)`. A sparse
    gradient's duplicates are summed first."""
    w, accum = w.astype(np.float64), accum.astype(np.float64)
    rows, g = _rows(w, g, indices)
    accum[rows] = momentum * accum[rows] + g
    w[rows] -= lr * (g + momentum * accum[rows]) if nesterov else lr * accum[rows]
    return w, accum


def apply_adagrad(w, accum, g, *, lr, indices=None):
    """MindSpore's ApplyAdagrad (update_slots=True), no eps: `accum += g*g`;
    `w -= lr*g/sqrt(accum)`."""
    w, accum = w.astype(np.float64), accum.astype(np.float64)
    rows, g = _rows(w, g, indices)
    accum[rows] += g * g
    w[rows] -= lr * g / np.sqrt(accum[rows])
    return w, accum


def _rows(w, g, indices):
    g = g.astype(np.float64)
    if indices is None:
        return np.arange(len(w)), g
    rows = np.unique(indices)
    summed = np.zeros((len(rows),) + w.shape[1:])
    np.add.at(summed, np.searchsorted(rows, indices), g)
    return rows, summed


def mindspore_gradient(w, g, indices, *, weight_decay, loss_scale):
    """MindSpore's Optimizer before the kernel, as these classes do it: g/loss_scale, then
    `+ wd*w` (once per row of a sparse gradient, after its duplicates are summed)."""
    rows, g = _rows(w, g / loss_scale, indices)
    return rows, g + weight_decay * w.astype(np.float64)[rows]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nesterov", [False, True], ids=["heavy-ball", "nesterov"])
def test_momentum_computes_mindspores_apply_momentum(dtype, nesterov):
    table, dense, grads = data(dtype)
    params = [Parameter(table.copy(), name="table"), Parameter(dense.copy(), name="dense")]
    opt = lazyadam.Momentum(params, learning_rate=0.05, momentum=0.9, weight_decay=0.01,
                            loss_scale=2.0, use_nesterov=nesterov)
    assert [a.name for a in opt.moments] == ["moments.table", "moments.dense"]
    expected = [(table, np.zeros_like(table)), (dense, np.zeros_like(dense))]
    for batch in grads:
        opt(step_of(batch))
        new = []
        for (w, accum), g, indices in zip(expected, batch[1:], (batch[0], None)):
            rows, summed = mindspore_gradient(w, g, indices, weight_decay=0.01, loss_scale=2.0)
            full = np.zeros_like(w, dtype=np.float64)
            full[rows] = summed
            w2, accum2 = apply_momentum(w, accum, full[rows], lr=0.05, momentum=0.9,
                                        nesterov=nesterov,
                                        indices=None if indices is None else rows)
            new.append((w2, accum2))
        expected = new
        for param, moments, (w, accum) in zip(params, opt.moments, expected):
            np.testing.assert_allclose(param.data, w, **TOLERANCE[dtype])
            np.testing.assert_allclose(moments.data, accum, **TOLERANCE[dtype])
    assert (params[0].data[ROWS - 2:] == table[ROWS - 2:]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adagrad_computes_mindspores_apply_adagrad(dtype):
    """The default eps (1e-30) vanishes against accumulators from 0.1 up: MindSpore's numbers."""
    table, dense, grads = data(dtype)
    params = [Parameter(table.copy(), name="table"), Parameter(dense.copy(), name="dense")]
    opt = lazyadam.Adagrad(params, accum=0.1, learning_rate=0.05, weight_decay=0.01,
                           loss_scale=2.0)
    assert [a.data.tolist() for a in opt.accum] == [np.full((ROWS, DIM), 0.1, dtype).tolist(),
                                                    np.full((3, DIM), 0.1, dtype).tolist()]
    expected = [(table, np.full_like(table, 0.1)), (dense, np.full_like(dense, 0.1))]
    for batch in grads:
        opt(step_of(batch))
        new = []
        for (w, accum), g, indices in zip(expected, batch[1:], (batch[0], None)):
            rows, summed = mindspore_gradient(w, g, indices, weight_decay=0.01, loss_scale=2.0)
            new.append(apply_adagrad(w, accum, summed, lr=0.05,
                                     indices=None if indices is None else rows))
        expected = new
        for param, accum, (w, a) in zip(params, opt.accum, expected):
            np.testing.assert_allclose(param.data, w, **TOLERANCE[dtype])
            np.testing.assert_allclose(accum.data, a, **TOLERANCE[dtype])


def test_the_signatures_are_mindspores():
    assert list(inspect.signature(lazyadam.Momentum).parameters)[:6] == [
        "params", "learning_rate", "momentum", "weight_decay", "loss_scale", "use_nesterov"]
    adagrad = inspect.signature(lazyadam.Adagrad).parameters
    assert [(n, adagrad[n].default) for n in list(adagrad)[1:6]] == [
        ("accum", 0.1), ("learning_rate", 0.001), ("update_slots", True), ("loss_scale", 1.0),
        ("weight_decay", 0.0)]
    lion = inspect.signature(lazyadam.Lion).parameters
    assert [(n, lion[n].default) for n in list(lion)[1:6]] == [
        ("learning_rate", 1e-3), ("beta1", 0.9), ("beta2", 0.99), ("weight_decay", 0.0),
        ("loss_scale", 1.0)]
    assert lion["decay"].kind is inspect.Parameter.KEYWORD_ONLY
    assert lazyadam.optimizer(LION, "Lion") is lazyadam.Lion


@pytest.mark.parametrize("make, error, message", [
    (lambda p: lazyadam.Adagrad(p, update_slots=False), ValueError, "update_slots=False"),
    (lambda p: lazyadam.Adagrad(p, update_slots=1), TypeError, "update_slots"),
    (lambda p: lazyadam.Adagrad(p, accum=-0.1), ValueError, "accum"),
    (lambda p: lazyadam.Adagrad(p, accum=1), TypeError, "accum"),
    (lambda p: lazyadam.Adagrad(p, eps=0.0), ValueError, "eps must be finite and > 0"),
    (lambda p: lazyadam.Momentum(p, 0.1, -0.9), ValueError, "momentum must be finite and >= 0"),
    (lambda p: lazyadam.Momentum(p, 0.1, 1), TypeError, "momentum must be a Python float"),
    (lambda p: lazyadam.Momentum(p, math.nan, 0.9), ValueError, "learning_rate"),
    (lambda p: lazyadam.Momentum(p, 0.1, 0.9, loss_scale=0.0), ValueError, "loss_scale"),
    (lambda p: lazyadam.Lion(p, beta1=math.nan), ValueError, r"beta1 must lie in \[0, 1\)"),
    (lambda p: lazyadam.Lion(p, weight_decay=math.nan), ValueError, "weight_decay"),
    (lambda p: lazyadam.Lion(p, decay="l2"), ValueError, "decay must be one of decoupled, got 'l2'"),
    (lambda p: lazyadam.RowWiseAdagrad(p, maximize=1), TypeError, "maximize must be a bool"),
    (lambda p: lazyadam.PartialRowWiseAdam(p, eps_mode="torch"), ValueError, "eps_mode"),
    (lambda p: lazyadam.PartialRowWiseAdam(p, bogus=True), TypeError, "bogus"),
], ids=["update_slots", "update_slots type", "accum", "accum type", "eps", "momentum",
        "momentum type", "lr nan", "loss_scale", "beta1 nan", "wd nan", "decay", "maximize",
        "eps_mode", "unknown"])
def test_bad_arguments_are_refused_by_name(make, error, message):
    with pytest.raises(error, match=message):
        make([Parameter(np.ones((3, 2), np.float32), name="w")])


def test_the_class_of_adam_steps_as_lazyadam_bitwise():
    """`lazyadam.optimizer(ADAM)`, made from the rule alone, and the hand-written LazyAdam take
    the same steps: the generic front end is LazyAdam's."""
    from lazyadam.rules import ADAM
    Adam = lazyadam.optimizer(ADAM)
    assert list(inspect.signature(Adam).parameters)[:8] == [
        "params", "learning_rate", "beta1", "beta2", "eps", "weight_decay", "loss_scale",
        "use_nesterov"]
    table, dense, grads = data(np.float32, seed=10)
    opts = [make([Parameter(table.copy(), name="table"), Parameter(dense.copy(), name="gamma")],
                 learning_rate=0.01, weight_decay=0.1, use_nesterov=True, amsgrad=True, **decay)
            for make, decay in ((Adam, {"decay": "decoupled"}),
                                (lazyadam.LazyAdam, {"decoupled_weight_decay": True}))]
    for batch in grads:
        for opt in opts:
            opt(step_of(batch))
    assert_same_state(*(opt.state_dict() for opt in opts))


def test_the_base_class_has_no_rule_of_its_own():
    with pytest.raises(TypeError, match=r"lazyadam.optimizer\(rule\)"):
        lazyadam.Optimizer([Parameter(np.ones(2, np.float32), name="w")])


# --- the family's classes against tests/reference_family.py ------------------------------------

def _momentum(params, **options):
    return lazyadam.Momentum(params, 0.05, 0.9, weight_decay=0.01, loss_scale=2.0, **options)


def _adagrad(params, **options):
    return lazyadam.Adagrad(params, accum=0.1, learning_rate=0.05, weight_decay=0.01,
                            loss_scale=2.0, eps=1e-3, **options)


def _rowwise(params, **options):
    return lazyadam.RowWiseAdagrad(params, learning_rate=0.05, eps=1e-3, weight_decay=0.01,
                                   loss_scale=2.0, decay="decoupled", **options)


def _partial(params, **options):
    return lazyadam.PartialRowWiseAdam(params, learning_rate=0.01, beta1=0.8, beta2=0.9, eps=1e-3,
                                       weight_decay=0.01, loss_scale=2.0, amsgrad=True, **options)


def _lion(params, **options):
    return lazyadam.Lion(params, learning_rate=0.01, weight_decay=0.01, loss_scale=2.0, **options)


def _reference(name, state, g, indices, t):
    """One step of tests/reference_family.py on `state` (by MindSpore section name)."""
    w = state["parameters"]
    common = dict(loss_scale=2.0, indices=indices)
    if name == "momentum":
        w, b, seen = ref.sgd_step(w, state["moments"], state["seen"], g, lr=0.05, momentum=0.9,
                                  weight_decay=0.01, **common)
        return {"parameters": w, "moments": b, "seen": seen}
    if name == "adagrad":
        w, s = ref.adagrad_step(w, state["accum"], g, lr=0.05, step=t, eps=1e-3,
                                weight_decay=0.01, **common)
        return {"parameters": w, "accum": s}
    if name == "rowwise":
        w, a = ref.rowwise_adagrad_step(w, state["accum"], g, lr=0.05, eps=1e-3, weight_decay=0.01,
                                        decay="decoupled", **common)
        return {"parameters": w, "accum": a}
    if name == "partial":
        w, m, v, vmax = ref.partial_rowwise_adam_step(
            w, state["moment1"], state["moment2"], g, lr=0.01, beta1=0.8, beta2=0.9, eps=1e-3,
            beta1_power=0.8 ** t, beta2_power=0.9 ** t, weight_decay=0.01, decay="l2",
            amsgrad=True, vmax=state["vmax"], **common)
        return {"parameters": w, "moment1": m, "moment2": v, "vmax": vmax}
    w, m = ref.lion_step(w, state["moment"], g, lr=0.01, weight_decay=0.01, **common)
    return {"parameters": w, "moment": m}


CLASSES = {"momentum": _momentum, "adagrad": _adagrad, "rowwise": _rowwise, "partial": _partial,
           "lion": _lion}


def _first_state(name, w):
    rows = (len(w),)
    return {"momentum": {"moments": np.zeros_like(w), "seen": np.zeros(rows, bool)},
            "adagrad": {"accum": np.full_like(w, 0.1)},
            "rowwise": {"accum": np.zeros(rows)},
            "partial": {"moment1": np.zeros_like(w), "moment2": np.zeros(rows),
                        "vmax": np.zeros(rows)},
            "lion": {"moment": np.zeros_like(w)}}[name] | {"parameters": w.astype(np.float64)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", CLASSES)
def test_each_class_matches_the_reference_dense_and_sparse(name, dtype):
    table, dense, grads = data(dtype, seed=3)
    params = [Parameter(table.copy(), name="table"), Parameter(dense.copy(), name="dense")]
    opt = CLASSES[name](params)
    expected = [_first_state(name, table), _first_state(name, dense)]
    for t, batch in enumerate(grads[:3], start=1):
        assert opt(step_of(batch)) is True
        expected = [_reference(name, expected[0], batch[1], batch[0], t),
                    _reference(name, expected[1], batch[2], None, t)]
        state = opt.state_dict()
        for k, param in enumerate(("table", "dense")):
            for key, value in state.items():
                if isinstance(value, dict) and key != "seen":
                    np.testing.assert_allclose(value[param], expected[k][key],
                                               **TOLERANCE[dtype], err_msg=f"{key} step {t}")
    untouched = opt.state_dict()
    for key, value in untouched.items():
        if isinstance(value, dict):
            start = {"parameters": table}.get(key, _first_state(name, table).get(key))
            np.testing.assert_array_equal(value["table"][ROWS - 2:],
                                          np.asarray(start)[ROWS - 2:].astype(
                                              value["table"].dtype), err_msg=key)


@pytest.mark.parametrize("name", CLASSES)
def test_each_class_resumes_bitwise_from_its_checkpoint(tmp_path, name):
    table, dense, grads = data(np.float32, seed=5)

    def make(seed=0):
        rng = np.random.default_rng(seed)
        t = table if seed == 0 else rng.standard_normal(table.shape).astype(np.float32)
        return CLASSES[name]([Parameter(t.copy(), name="table"),
                              Parameter(dense.copy(), name="dense")])
    straight = make()
    for batch in grads:
        straight(step_of(batch))
    first = make()
    for batch in grads[:2]:
        first(step_of(batch))
    first.save(tmp_path / f"{name}.npz")
    resumed = make(seed=9)
    resumed.load(tmp_path / f"{name}.npz")
    assert resumed.global_step == 2
    for batch in grads[2:]:
        resumed(step_of(batch))
    assert_same_state(straight.state_dict(), resumed.state_dict())


def assert_same_state(a, b):
    """Equal state dicts: bitwise equal arrays, equal scalars."""
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, dict):
            for param in value:
                np.testing.assert_array_equal(value[param], b[key][param], err_msg=key)
        else:
            assert value == b[key], key


def test_an_empty_sparse_gradient_steps_nothing_but_the_count():
    table, dense, grads = data(np.float32, seed=7)
    opt = lazyadam.PartialRowWiseAdam([Parameter(table.copy(), name="table")])
    opt([RowTensor(np.zeros(0, np.int64), np.zeros((0, DIM), np.float32), (ROWS, DIM))])
    assert opt.global_step == 1 and opt.beta1_power == 0.9
    assert (opt.parameters[0].data == table).all() and not opt.moment1[0].data.any()


# --- on a CUDA device (the emulated CUDA kernels) ------------------------------------------------

@pytest.mark.parametrize("name", CLASSES)
def test_device_parameters_step_as_host_ones(emulated_cuda, name):
    """Each class on device arrays (the emulated CUDA kernels) gives the host's numbers over 3
    steps, sparse and dense (the rules with per-row state through the CUDA dense row kernels)."""
    from test_runtime_device import FakeLibrary as lib
    table, dense, grads = data(np.float32, seed=8)
    host = CLASSES[name]([Parameter(table.copy(), name="table"),
                          Parameter(dense.copy(), name="dense")])
    device = CLASSES[name]([Parameter(lib.put(table), name="table"),
                            Parameter(lib.put(dense), name="dense")])
    for batch in grads[:3]:
        host(step_of(batch))
        sparse = step_of(batch)[0]
        device([RowTensor(lib.put(sparse.indices), lib.put(sparse.values), (ROWS, DIM)),
                lib.put(batch[2])])
    for key, value in host.state_dict().items():
        if isinstance(value, dict):
            for param in value:
                np.testing.assert_allclose(device.state_dict()[key][param], value[param],
                                           rtol=1e-6, atol=1e-7, err_msg=key)
    assert {s.sparse for s in emulated_cuda} == {False, True}

