"""Many parameters of one kind: their kernel is generated, built and loaded once per process
(issue 19 item 4: it was generated again for every parameter, minutes for 100,000). The time and
memory of a first step over 100,000 parameters are measured in benchmarks/bench_many_params.py."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

import lazyadam
import lazyadam.torch
from lazyadam import LazyAdam, Parameter, Spec
from lazyadam.runtime.launcher import Launcher
from lazyadam.targets import target
from reference import lazyadam_step
from tolerance import assert_close

COUNT = 60


@pytest.fixture
def generated(monkeypatch):
    """The specs the C target generates source for, in order."""
    specs = []
    real = target.generate

    def counting(spec, language="c", symbol=None):
        if language == "c":
            specs.append(spec)
        return real(spec, language, symbol)
    monkeypatch.setattr(target, "generate", counting)
    return specs


def expected_after_one_step(initial: np.ndarray, grad: np.ndarray, lr: float) -> np.ndarray:
    var = lazyadam_step(initial.astype(np.float64), np.zeros(initial.shape),
                              np.zeros(initial.shape), grad.astype(np.float64), lr=lr, beta1=0.9,
                              beta2=0.999, eps=1e-8, beta1_power=0.9, beta2_power=0.999,
                              eps_mode="pytorch")[0]
    return var


def test_the_torch_optimizer_generates_one_kernel_for_many_parameters(generated, rng):
    initial = [rng.standard_normal(3).astype(np.float32) for _ in range(COUNT)]
    params = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in initial]
    grads = [rng.standard_normal(3).astype(np.float32) for _ in range(COUNT)]
    for p, g in zip(params, grads):
        p.grad = torch.from_numpy(g)
    lazyadam.torch.LazyAdam(params, lr=0.01).step()
    assert len(generated) <= 1, f"{len(generated)} generations for one spec"
    for p, a, g in zip(params, initial, grads):
        assert_close(p.detach().numpy(), expected_after_one_step(a, g, 0.01), "float32")


def test_the_mindspore_optimizer_generates_one_kernel_for_many_parameters(generated, rng):
    initial = [rng.standard_normal(3) for _ in range(COUNT)]
    params = [Parameter(a.copy(), name=f"p{i}") for i, a in enumerate(initial)]
    grads = tuple(rng.standard_normal(3) for _ in range(COUNT))
    LazyAdam(params, learning_rate=0.01, eps_mode="pytorch")(grads)
    assert len(generated) <= 1, f"{len(generated)} generations for one spec"
    for p, a, g in zip(params, initial, grads):
        assert_close(p.data, expected_after_one_step(a, g, 0.01), "float64")


def test_compile_keeps_a_kernel_per_spec_and_compiler_flags(monkeypatch, generated):
    spec = Spec(sparse=False, maximize=True, decay="decoupled")
    first = lazyadam.compile(spec)
    assert lazyadam.compile(spec) is first and len(generated) <= 1
    monkeypatch.setenv("LAZYADAM_CFLAGS", "-DLAZYADAM_ISSUE_19")  # another binary
    other = lazyadam.compile(spec)
    assert other is not first and lazyadam.compile(spec) is other
    assert generated[-1] == spec
    monkeypatch.delenv("LAZYADAM_CFLAGS")
    assert lazyadam.compile(spec) is first


def test_many_parameters_of_one_kind_share_their_spec():
    params = [Parameter(np.zeros(2, np.float32), name=f"p{i}") for i in range(3)]
    opt = LazyAdam(params)
    opt(tuple(np.ones(2, np.float32) for _ in params))
    specs = {id(slot.spec) for slot in opt._slots}
    kernels = {id(slot.calls[False, "int64", "float32"][0]) for slot in opt._slots}
    assert len(specs) == 1 and len(kernels) == 1


def test_a_parameter_twice_among_many_is_refused_at_once():
    """The duplicate check counts each parameter once (it used list.count for each: quadratic,
    minutes for 100,000 parameters), and still names the parameter."""
    params = [Parameter(np.zeros(1), name=f"p{i}") for i in range(20_000)]
    with pytest.raises(ValueError, match="'p7' appears more than once"):
        LazyAdam(params + [params[7]])


def stepped_torch_optimizer(rng, count=COUNT):
    """`lazyadam.torch.LazyAdam` after one step over `count` parameters of one shape, checked
    against the reference; with its parameters."""
    initial = [rng.standard_normal(3).astype(np.float32) for _ in range(count)]
    params = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in initial]
    grads = [rng.standard_normal(3).astype(np.float32) for _ in range(count)]
    for p, g in zip(params, grads):
        p.grad = torch.from_numpy(g)
    opt = lazyadam.torch.LazyAdam(params, lr=0.01)
    opt.step()
    for p, a, g in zip(params, initial, grads):
        assert_close(p.detach().numpy(), expected_after_one_step(a, g, 0.01), "float32")
    return opt, params


def test_the_torch_optimizer_makes_no_tensor_besides_the_state(rng):
    """The numpy arrays the kernels take over a parameter need no detached alias of it (a tensor
    of about 280 bytes for each parameter): the tensors a first step leaves are the state's."""
    gc.collect()
    before = {id(o) for o in gc.get_objects() if isinstance(o, torch.Tensor)}
    opt, params = stepped_torch_optimizer(rng)
    made = [o for o in gc.get_objects() if isinstance(o, torch.Tensor) and id(o) not in before
            and not any(o is p or o is p.grad for p in params)]
    state = {id(tensor) for entry in opt.state.values() for tensor in entry.values()}
    assert len(made) == 3 * COUNT and {id(o) for o in made} == state


def test_a_parameter_given_new_memory_is_stepped_there_and_its_old_memory_kept(rng):
    """The arrays bound over a parameter keep its memory alive, as the detached alias they were
    made from did, after `param.data = ...` until the next step binds the parameter again; that
    step updates the new memory with the state of the first."""
    opt, params = stepped_torch_optimizer(rng, 2)
    view = opt._bindings[params[0]].slot.param.data
    address = params[0].data_ptr()
    params[0].data = params[0].data.clone()
    gc.collect()
    assert view.__array_interface__["data"][0] == address
    assert view.base.kept[0].data_ptr() == address  # the first storage, still held
    var = params[0].detach().numpy().astype(np.float64)
    state = opt.state[params[0]]
    m, v = state["exp_avg"].numpy().astype(np.float64), state["exp_avg_sq"].numpy().astype(np.float64)
    grad = rng.standard_normal(3).astype(np.float32)
    params[0].grad = torch.from_numpy(grad)
    params[1].grad = None
    opt.step()
    expected = lazyadam_step(var, m, v, grad.astype(np.float64), lr=0.01, beta1=0.9, beta2=0.999,
                             eps=1e-8, beta1_power=0.9**2, beta2_power=0.999**2,
                             eps_mode="pytorch")[0]
    assert_close(params[0].detach().numpy(), expected, "float32")
    assert opt._bindings[params[0]].slot.param.data is not view


def test_parameters_of_one_shape_share_what_their_bindings_hold(rng, monkeypatch):
    """One object for all 60 parameters' shapes, strides, gradient dtypes, kernel keys and, in a
    step, hyperparameter entries (one each made about 300 bytes a parameter)."""
    entries = []
    real = Launcher.run

    def run(self, work, hparams, *args, **kwargs):
        entries.append(hparams)
        return real(self, work, hparams, *args, **kwargs)
    monkeypatch.setattr(Launcher, "run", run)
    opt, params = stepped_torch_optimizer(rng)
    bindings = [opt._bindings[p] for p in params]
    for shared in ([b.key[2] for b in bindings], [b.key[3] for b in bindings],
                   [b.slot.shape for b in bindings], [b.slot.grad_dtypes for b in bindings],
                   [next(iter(b.slot.calls)) for b in bindings], list(entries[0].values())):
        assert len(shared) == COUNT and len({id(x) for x in shared}) == 1
    assert bindings[0].slot.shape == (3,) and type(bindings[0].slot.shape) is tuple


def test_a_moment_is_named_after_its_parameter_when_asked(rng):
    """Moments name themselves `<state key>.<parameter name>` when an error asks (made for each
    binding, such names took about 90 bytes each), as before."""
    param = torch.nn.Parameter(torch.randn(3))
    opt = lazyadam.torch.LazyAdam([("w", param)])
    param.grad = torch.ones(3)
    opt.step()
    slot = opt._bindings[param].slot
    assert [state.name for state in slot.states] == ["exp_avg.w", "exp_avg_sq.w"]
    before = param.detach().clone()
    param.grad = opt.state[param]["exp_avg_sq"]
    with pytest.raises(ValueError, match=r"shares memory with the exp_avg_sq of parameter 'w'"):
        opt.step()
    assert torch.equal(param.detach(), before)
