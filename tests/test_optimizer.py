"""`LazyAdam` against docs/semantics.md: known values, multi-step runs against the numpy reference,
learning-rate forms, weight decay, groups, state, kernel choice and caching."""

from __future__ import annotations

import numpy as np
import pytest

from lazyadam import LazyAdam, Parameter, RowTensor, targets
from lazyadam.runtime import optimizer as optimizer_module
from lazyadam.interop.arrays import full_beside
from lazyadam.schedules import LearningRateSchedule
from runtime_reference import centralized, simulate
from tolerance import assert_close


class Halving(LearningRateSchedule):
    """A closed form: start * 0.5**k."""

    def __init__(self, start):
        super().__init__()
        self.start = start

    def construct(self, global_step):
        return self.start * 0.5 ** global_step


def model(rng, dtype="float32", rows=13):
    """An embedding table (sparse gradients) and a dense matrix."""
    table = Parameter(rng.standard_normal((rows, 2, 3)).astype(dtype), name="embedding")
    dense = Parameter(rng.standard_normal((4, 5)).astype(dtype), name="dense")
    return [table, dense]


def gradients(rng, params, steps, index_dtype=np.int64):
    """Per step: a RowTensor with duplicate, unsorted indices for the table, a dense array else."""
    table, *dense = params
    out = []
    for k in range(steps):
        indices = np.array([7, 2, 7, 0, 12, 2, 7][: 7 - k], index_dtype)
        values = rng.standard_normal((len(indices),) + table.shape[1:]).astype(table.dtype)
        out.append([RowTensor(indices, values, table.shape)]
                   + [rng.standard_normal(p.shape).astype(p.dtype) for p in dense])
    return out


def as_reference(steps):
    return [[(g.indices, g.values) if isinstance(g, RowTensor) else g for g in grads]
            for grads in steps]


def assert_matches(opt, expected, dtype):
    params, m, v, vmax, beta1_power, beta2_power = expected
    for i, param in enumerate(opt.parameters):
        assert_close(param.data, params[i], dtype, f"{param.name}")
        assert_close(opt.moment1[i].data, m[i], dtype, f"moment1 of {param.name}")
        assert_close(opt.moment2[i].data, v[i], dtype, f"moment2 of {param.name}")
        if opt.amsgrad:
            assert_close(opt.vmax[i].data, vmax[i], dtype, f"vmax of {param.name}")
    assert opt.beta1_power == beta1_power and opt.beta2_power == beta2_power


# docs/semantics.md "Known values": m = v = ones on the first step, where beta^1 is 0.9 and 0.999.

@pytest.mark.parametrize("nesterov, expected", [(False, 0.9997121), (True, 0.99973774)])
def test_known_sparse_values(nesterov, expected):
    var = Parameter(np.ones((3, 1, 2), np.float32), name="var")
    opt = LazyAdam([var], learning_rate=0.001, beta1=0.9, beta2=0.999, eps=1e-8,
                   use_nesterov=nesterov)
    opt.moment1[0].set_data(np.ones((3, 1, 2)))
    opt.moment2[0].set_data(np.ones((3, 1, 2)))
    grad = RowTensor(np.array([0, 1], np.int32), np.full((2, 1, 2), 0.1, np.float32), var.shape)
    assert opt((grad,)) is True
    assert (opt.beta1_power, opt.beta2_power) == (0.9, 0.999)
    np.testing.assert_allclose(var.data[:2], expected, rtol=1e-6)
    np.testing.assert_allclose(opt.moment1[0].data[:2], 0.91, rtol=1e-6)
    np.testing.assert_allclose(opt.moment2[0].data[:2], 0.99901, rtol=1e-6)
    np.testing.assert_array_equal(var.data[2], 1.0)
    np.testing.assert_array_equal(opt.moment1[0].data[2], 1.0)


def test_known_dense_value():
    var = Parameter(np.ones((2, 2), np.float32), name="var")
    opt = LazyAdam([var])
    opt.moment1[0].set_data(np.ones((2, 2)))
    opt.moment2[0].set_data(np.ones((2, 2)))
    assert opt((np.ones((2, 2), np.float32),)) is True
    np.testing.assert_allclose(var.data, 0.9996838, rtol=1e-6)


FLAG_CASES = [
    dict(),
    dict(use_nesterov=True),
    dict(amsgrad=True),
    dict(maximize=True),
    dict(eps_mode="pytorch"),
    dict(use_locking=True, use_nesterov=True),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("flags", FLAG_CASES, ids=lambda f: "-".join(f) or "default")
def test_steps_match_reference(rng, dtype, flags):
    params = model(rng, dtype)
    initial = [p.asnumpy() for p in params]
    steps = gradients(rng, params, 4)
    opt = LazyAdam(params, learning_rate=0.01, loss_scale=2.0, **flags)
    for grads in steps:
        assert opt(grads) is True
    ref_flags = dict(nesterov=flags.get("use_nesterov", False), amsgrad=flags.get("amsgrad", False),
                     maximize=flags.get("maximize", False),
                     eps_mode=flags.get("eps_mode", "mindspore"))
    expected = simulate(initial, as_reference(steps), lr_at=lambda k, i: 0.01, loss_scale=2.0,
                        **ref_flags)
    assert_matches(opt, expected, dtype)
    assert opt.global_step == 4


@pytest.mark.parametrize("decoupled", [False, True])
def test_weight_decay_filter_by_name_without_groups(rng, decoupled):
    """beta/gamma parameters are not decayed; the others are, coupled (L2) or decoupled (AdamW)."""
    table, dense = model(rng)
    gamma = Parameter(rng.standard_normal(5).astype(np.float32), name="norm.gamma")
    beta = Parameter(rng.standard_normal(5).astype(np.float32), name="norm.beta")
    params = [table, dense, gamma, beta]
    initial = [p.asnumpy() for p in params]
    steps = [grads + [rng.standard_normal(5).astype(np.float32) for _ in range(2)]
             for grads in gradients(rng, [table, dense], 3)]
    opt = LazyAdam(params, learning_rate=0.01, weight_decay=0.1,
                   decoupled_weight_decay=decoupled)
    for grads in steps:
        opt(grads)
    expected = simulate(initial, as_reference(steps), lr_at=lambda k, i: 0.01,
                        wd_at=lambda k, i: 0.1 if i < 2 else 0.0,
                        decay="decoupled" if decoupled else "l2")
    assert_matches(opt, expected, "float32")


def test_groups_lr_weight_decay_centralization_and_order(rng):
    table, dense = model(rng)
    norm_gamma = Parameter(rng.standard_normal((3, 4)).astype(np.float32), name="gamma")
    groups = [{"params": [table], "lr": 0.02},
              {"params": [dense, norm_gamma], "weight_decay": 0.1, "grad_centralization": True},
              {"order_params": [dense, table, norm_gamma]}]
    opt = LazyAdam(groups, learning_rate=[0.01, 0.005, 0.0025], weight_decay=0.0)
    assert [p.name for p in opt.parameters] == ["dense", "embedding", "gamma"]
    assert opt.is_group and opt.is_group_lr
    initial = [p.asnumpy() for p in (dense, table, norm_gamma)]
    steps = []
    for grads in gradients(rng, [table, dense], 3):
        steps.append([grads[1], grads[0], rng.standard_normal((3, 4)).astype(np.float32)])
    user_grads = [[np.copy(g) if isinstance(g, np.ndarray) else g for g in grads]
                  for grads in steps]
    for grads in steps:
        opt(grads)
    for grads, untouched in zip(steps, user_grads):  # centralization works on a copy
        np.testing.assert_array_equal(grads[0], untouched[0])
    lrs = [0.01, 0.005, 0.0025]
    expected = simulate(initial, as_reference(steps),
                        lr_at=lambda k, i: 0.02 if i == 1 else lrs[k],
                        wd_at=lambda k, i: 0.0 if i == 1 else 0.1, centralize=(0, 2))
    assert_matches(opt, expected, "float32")


def test_group_weight_decay_applies_to_every_name():
    """With groups, beta/gamma names are decayed too: a zero gradient still moves them."""
    gamma = Parameter(np.ones(4, np.float64), name="gamma")
    opt = LazyAdam([{"params": [gamma], "weight_decay": 0.5}], learning_rate=0.1)
    opt((np.zeros(4),))
    assert (gamma.data < 1.0).all()
    plain = Parameter(np.ones(4, np.float64), name="gamma")
    LazyAdam([plain], learning_rate=0.1, weight_decay=0.5)((np.zeros(4),))
    np.testing.assert_array_equal(plain.data, 1.0)


def test_centralization_is_on_the_dense_gradient_only(rng):
    """Rank-1 dense gradients and sparse gradients are not centralized."""
    vector = Parameter(np.zeros(6, np.float64), name="bias")
    table = Parameter(np.zeros((5, 3), np.float64), name="table")
    opt = LazyAdam([{"params": [vector, table], "grad_centralization": True}], learning_rate=0.1)
    g_vector = rng.standard_normal(6)
    g_table = RowTensor(np.array([1, 3]), rng.standard_normal((2, 3)), table.shape)
    opt((g_vector, g_table))
    expected = simulate([np.zeros(6), np.zeros((5, 3))],
                        [[g_vector, (g_table.indices, g_table.values)]], lr_at=lambda k, i: 0.1)
    assert_matches(opt, expected, "float64")
    assert not np.allclose(centralized(g_table.values), g_table.values)


LEARNING_RATES = {
    "float": (0.01, lambda k: 0.01),
    "int": (0, lambda k: 0.0),
    "0-d array": (np.array(0.02), lambda k: 0.02),
    "1-d array": (np.array([0.03, 0.02, 0.01]), lambda k: [0.03, 0.02, 0.01][k]),
    "list": ([0.01, 0.0, 0.02], lambda k: [0.01, 0.0, 0.02][k]),
    "iterable": (iter(range(3)), lambda k: float(k)),
    "schedule": (Halving(0.04), lambda k: 0.04 * 0.5 ** k),
}


@pytest.mark.parametrize("name", LEARNING_RATES)
def test_learning_rate_forms(rng, name):
    learning_rate, lr_at = LEARNING_RATES[name]
    params = model(rng, "float64")
    initial = [p.asnumpy() for p in params]
    steps = gradients(rng, params, 3)
    opt = LazyAdam(params, learning_rate=learning_rate)
    for k, grads in enumerate(steps):
        assert opt.get_lr() == pytest.approx(lr_at(k), rel=1e-15)
        opt(grads)
    expected = simulate(initial, as_reference(steps), lr_at=lambda k, i: lr_at(k))
    assert_matches(opt, expected, "float64")
    assert opt.dynamic_lr == (name in ("1-d array", "list", "iterable", "schedule"))


def test_dynamic_weight_decay(rng):
    params = model(rng, "float64")
    initial = [p.asnumpy() for p in params]
    steps = gradients(rng, params, 3)
    opt = LazyAdam(params, learning_rate=0.01, weight_decay=Halving(0.2))
    for grads in steps:
        opt(grads)
    expected = simulate(initial, as_reference(steps), lr_at=lambda k, i: 0.01,
                        wd_at=lambda k, i: 0.2 * 0.5 ** k)
    assert_matches(opt, expected, "float64")


def test_state_names_and_bookkeeping(rng):
    params = model(rng)
    opt = LazyAdam(params, beta1=0.8, beta2=0.99, amsgrad=True)
    assert [p.name for p in opt.moment1] == ["moment1.embedding", "moment1.dense"]
    assert [p.name for p in opt.moment2] == ["moment2.embedding", "moment2.dense"]
    assert [p.name for p in opt.vmax] == ["vmax.embedding", "vmax.dense"]
    assert (opt.global_step, opt.beta1_power, opt.beta2_power) == (0, 1.0, 1.0)
    beta1_power = beta2_power = 1.0
    for grads in gradients(rng, params, 5):
        opt(grads)
        beta1_power *= 0.8
        beta2_power *= 0.99
    assert (opt.global_step, opt.beta1_power, opt.beta2_power) == (5, beta1_power, beta2_power)
    assert opt.get_lr_parameter(params[1]) == 1e-3


def test_parameters_are_updated_in_place(rng):
    array = rng.standard_normal((4, 3)).astype(np.float32)
    before = array.copy()
    param = Parameter(array, name="w")
    assert param.data is array
    LazyAdam([param])((np.ones((4, 3), np.float32),))
    assert not np.array_equal(array, before)
    assert np.shares_memory(np.asarray(param), array)


@pytest.mark.parametrize("index_dtype", [np.int8, np.uint16, np.int32, np.int64, np.uint64])
def test_any_integer_index_dtype(rng, index_dtype):
    params = model(rng, "float64")
    initial = [p.asnumpy() for p in params]
    steps = gradients(rng, params, 2, index_dtype)
    opt = LazyAdam(params)
    for grads in steps:
        opt(grads)
    expected = simulate(initial, as_reference(steps), lr_at=lambda k, i: 1e-3)
    assert_matches(opt, expected, "float64")


def test_empty_row_tensor_moves_only_the_step(rng):
    table = Parameter(rng.standard_normal((4, 2)), name="table")
    before = table.asnumpy()
    opt = LazyAdam([table])
    opt((RowTensor(np.array([], np.int64), np.zeros((0, 2)), table.shape),))
    np.testing.assert_array_equal(table.data, before)
    assert opt.global_step == 1 and opt.beta1_power == 0.9


def test_scalar_and_empty_parameters(rng):
    scalar = Parameter(np.array(0.5), name="temperature")
    empty = Parameter(np.zeros((0, 3)), name="no_rows")
    opt = LazyAdam([scalar, empty], learning_rate=0.1)
    grad = np.array(0.25)
    opt((grad, np.zeros((0, 3))))
    opt((grad, RowTensor(np.array([], np.int64), np.zeros((0, 3)), (0, 3))))
    expected = simulate([np.array(0.5), np.zeros((0, 3))],
                        [[grad, np.zeros((0, 3))], [grad, np.zeros((0, 3))]],
                        lr_at=lambda k, i: 0.1)
    assert_matches(opt, expected, "float64")
    with pytest.raises(ValueError, match="scalar"):
        opt((RowTensor(np.array([0]), np.ones((1,)), ()), np.zeros((0, 3))))


def test_kernels_compile_once_per_parameter_and_layout(rng, monkeypatch):
    """Changing the learning rate every step never recompiles; each (parameter, dense/sparse,
    index dtype) asks the target once."""
    compiled = []
    real = targets.compile

    def counting(spec, target="c"):
        compiled.append((spec, target))
        return real(spec, target)
    monkeypatch.setattr(targets, "compile", counting)
    params = model(rng)
    opt = LazyAdam(params, learning_rate=[0.1, 0.01, 0.001, 1e-4], weight_decay=0.01,
                   use_nesterov=True)
    for grads in gradients(rng, params, 3):
        opt(grads)
    assert len(compiled) == 2
    sparse, dense = (spec for spec, _ in compiled)
    assert (sparse.sparse, sparse.dtype, sparse.index_dtype, sparse.decay) == (
        True, "float32", "int64", "l2")
    assert (dense.sparse, dense.nesterov, dense.static) == (False, True, ())
    assert {target for _, target in compiled} == {"c"}
    opt([RowTensor(np.array([1], np.int32), np.ones((1, 2, 3), np.float32), params[0].shape),
         np.ones((4, 5), np.float32)])
    assert len(compiled) == 3 and compiled[-1][0].index_dtype == "int32"


class FakeDeviceArray:
    __cuda_array_interface__ = {}


def test_target_follows_the_data():
    assert optimizer_module.target_for(np.zeros(3)) == "c"
    assert optimizer_module.target_for(FakeDeviceArray()) == "cuda"
    rows = full_beside(np.ones((2, 3), np.float32), (2,), np.float32, 0.5)
    assert rows.shape == (2,) and rows.dtype == np.float32 and (rows == 0.5).all()


def test_unnamed_parameters_get_distinct_names():
    a, b = Parameter(np.zeros(2)), Parameter(np.zeros(2))
    assert a.name != b.name
    LazyAdam([a, b])


def test_schedules_module_reexports_the_runtime():
    from lazyadam import schedules
    from lazyadam.runtime import schedules as runtime_schedules
    for name in schedules.__all__:
        assert getattr(schedules, name) is getattr(runtime_schedules, name)



@pytest.mark.parametrize("eps_mode", ["mindspore", "pytorch"])
def test_matches_torch_optim(rng, eps_mode):
    """torch.optim.Adam puts eps after the bias correction of sqrt(v) (eps_mode="pytorch");
    torch.optim.SparseAdam, like MindSpore, adds eps to sqrt(v) (eps_mode="mindspore"). A large
    eps makes the placement visible."""
    torch = pytest.importorskip("torch", reason="torch is the independent check here")
    param = model(rng, "float64")[0]
    tensor = torch.tensor(param.asnumpy(), requires_grad=True)
    hyper = dict(lr=0.01, betas=(0.9, 0.999), eps=1e-3)
    torch_opt = (torch.optim.SparseAdam if eps_mode == "mindspore" else torch.optim.Adam)(
        [tensor], **hyper)
    opt = LazyAdam([param], learning_rate=0.01, eps=1e-3, eps_mode=eps_mode)
    for grads in gradients(rng, [param], 4):
        grad = grads[0]
        dense = np.zeros(param.shape)
        np.add.at(dense, grad.indices, grad.values)
        opt((grad if eps_mode == "mindspore" else dense,))
        tensor.grad = (torch.sparse_coo_tensor(torch.from_numpy(grad.indices)[None],
                                               torch.from_numpy(grad.values), param.shape,
                                               check_invariants=True)
                       if eps_mode == "mindspore" else torch.from_numpy(dense))
        torch_opt.step()
    assert_close(param.data, tensor.detach().numpy(), "float64")
