"""What the first step over many parameters reads once instead of once a parameter, and that it
still behaves as documented (issue 19 item 4: the first step of lazyadam.torch over 100,000
parameters, measured in benchmarks/bench_many_params.py).

- The toolchain environment (`LAZYADAM_CC`, `CC`, `PATH`, `LAZYADAM_CFLAGS`) is read once a
  check phase (`targets.environment_read_once`): a variable changed between steps chooses the
  kernels that the next step binds.
- A kernel call's hyperparameter struct is made once for the calls that pass the same fields.
- The state arrays' addresses are read once a binding (`check_state` returns their spans).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lazyadam
import lazyadam.torch
from lazyadam import HParams, Spec, targets
from lazyadam.targets.base import check_state
from reference import lazyadam_step
from tolerance import assert_close

FLAGS = "-DLAZYADAM_FIRST_STEP"  # another binary of the same source


def adam_step(var, m, v, grad, lr, t):
    """The reference's step t of torch's conventions (float64), as (var, m, v)."""
    return lazyadam_step(var.astype(np.float64), m.astype(np.float64), v.astype(np.float64),
                         grad.astype(np.float64), lr=lr, beta1=0.9, beta2=0.999, eps=1e-8,
                         beta1_power=0.9**t, beta2_power=0.999**t, eps_mode="pytorch")[:3]


def test_compile_reads_the_environment_once_within_a_check_phase(monkeypatch):
    monkeypatch.delenv("LAZYADAM_CFLAGS", raising=False)
    spec = Spec(sparse=False, nesterov=True, decay="l2")
    first = lazyadam.compile(spec)
    with targets.environment_read_once():
        assert lazyadam.compile(spec) is first
        monkeypatch.setenv("LAZYADAM_CFLAGS", FLAGS)
        assert lazyadam.compile(spec) is first  # the values read at the block's first call
        with targets.environment_read_once():  # nested: the outer block's values
            assert lazyadam.compile(spec) is first
    other = lazyadam.compile(spec)
    assert other is not first and other.spec == spec
    with targets.environment_read_once():
        assert lazyadam.compile(spec) is other


def test_a_compiler_variable_changed_between_steps_chooses_the_next_steps_kernels(monkeypatch,
                                                                                 rng):
    """docs: a spec's kernel is keyed by the values of its target's variables. A parameter bound
    after the change (a new group) is stepped by the kernel of the new values, one bound before
    keeps its kernel; both step right."""
    monkeypatch.delenv("LAZYADAM_CFLAGS", raising=False)
    a = torch.nn.Parameter(torch.from_numpy(rng.standard_normal(3).astype(np.float32)))
    opt = lazyadam.torch.LazyAdam([a], lr=0.01)
    a.grad = torch.from_numpy(rng.standard_normal(3).astype(np.float32))
    opt.step()
    before = opt._bindings[a].slot.calls[False, "int64", "float32"][0]
    monkeypatch.setenv("LAZYADAM_CFLAGS", FLAGS)
    initial = rng.standard_normal(3).astype(np.float32)
    b = torch.nn.Parameter(torch.from_numpy(initial.copy()))
    opt.add_param_group({"params": [b]})
    grad = rng.standard_normal(3).astype(np.float32)
    b.grad = torch.from_numpy(grad)
    opt.step()
    after = opt._bindings[b].slot.calls[False, "int64", "float32"][0]
    assert after is not before and after is lazyadam.compile(after.spec)
    assert opt._bindings[a].slot.calls[False, "int64", "float32"][0] is before
    zeros = np.zeros(3)
    assert_close(b.detach().numpy(), adam_step(initial, zeros, zeros, grad, 0.01, 1)[0], "float32")


def test_calls_that_alternate_hyperparameters_each_take_their_own(rng):
    """The struct made for the last call's fields is taken again only for the same tuple."""
    kernel = lazyadam.compile(Spec(sparse=False, eps_mode="pytorch"))
    arrays = [[rng.standard_normal(4).astype(np.float32), np.zeros(4, np.float32),
               np.zeros(4, np.float32)] for _ in range(2)]
    steps = [kernel.bind(*state) for state in arrays]
    fields = [HParams.at_step(1, lr=lr).as_tuple() for lr in (0.1, 0.001)]
    expected = [[a.astype(np.float64) for a in state] for state in arrays]
    for t in range(3):
        for i in (0, 1, 0, 1):
            grad = rng.standard_normal(4).astype(np.float32)
            steps[i](grad, fields[i])
            expected[i] = adam_step(*expected[i], grad, (0.1, 0.001)[i], 1)
            fields[i] = tuple(list(fields[i]))  # the same values in another tuple
    for state, want in zip(arrays, expected):
        for got, value in zip(state, want):
            assert_close(got, value, "float32")


def test_check_state_gives_the_spans_a_binding_points_to():
    var, m, v = (np.zeros(5, np.float32) for _ in range(3))
    spans = check_state(Spec(sparse=False), var, {"m": m, "v": v, "vmax": None})
    assert list(spans) == ["var", "m", "v"]
    for name, array in zip(spans, (var, m, v)):
        first = array.__array_interface__["data"][0]
        assert spans[name] == (first, first + 20)


@pytest.mark.parametrize("which", ["m", "v"])
def test_state_that_overlaps_var_is_still_refused_at_binding(which):
    block = np.zeros(8, np.float32)
    var, m, v = block[:4], np.zeros(4, np.float32), np.zeros(4, np.float32)
    arrays = {"m": m, "v": v} | {which: block[2:6]}
    with pytest.raises(ValueError, match=f"var and {which} share memory"):
        lazyadam.compile(Spec(sparse=False)).bind(var, arrays["m"], arrays["v"])
