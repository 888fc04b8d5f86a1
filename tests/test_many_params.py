"""Many parameters of one kind: their kernel is generated, built and loaded once per process
(issue 19 item 4: it was generated again for every parameter, minutes for 100,000). The time and
memory of a first step over 100,000 parameters are measured in benchmarks/bench_many_params.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lazyadam
import lazyadam.torch
from lazyadam import LazyAdam, Parameter, Spec
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
