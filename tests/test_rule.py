"""The Rule API (`lazyadam.codegen.rule`) and LazyAdam's rule (`lazyadam.rules.adam`): what is
made from the rule agrees with what the generated code, the targets and the front ends have."""

from __future__ import annotations

import dataclasses
import pickle

import cffi
import numpy as np
import pytest

from lazyadam import HParams, LazyAdam, Parameter, Spec, generate
from lazyadam.codegen import pipeline, rule
from lazyadam.rules.adam import ADAM


@pytest.mark.parametrize("spec", [Spec(), Spec(sparse=False, amsgrad=True, dtype="bfloat16")],
                         ids=lambda s: s.symbol())
@pytest.mark.parametrize("target", ["c", "cuda"])
def test_the_struct_made_from_the_rule_is_the_one_every_header_declares(spec, target):
    assert rule.hparams_struct(ADAM) in generate(spec, target).header


def test_the_rule_fields_are_the_structs_fields_and_hparams_fields():
    ffi = cffi.FFI()
    ffi.cdef(generate(Spec()).cdef)
    struct = ffi.typeof(ADAM.hparams_type)
    assert tuple(name for name, _ in struct.fields) == ADAM.fields
    assert ffi.sizeof(struct) == 8 * len(ADAM.fields)
    assert tuple(f.name for f in dataclasses.fields(HParams)) == ADAM.fields


@pytest.mark.parametrize("amsgrad, arrays", [(False, ("var", "m", "v")),
                                             (True, ("var", "m", "v", "vmax"))])
def test_kernel_arrays_are_var_and_the_state_the_switches_keep(amsgrad, arrays):
    kernel = pipeline.lower(Spec(amsgrad=amsgrad))
    assert kernel.arrays == arrays
    assert [s.target for s in kernel.stores] == list(arrays)
    assert [s.target for s in kernel.loads] == [*arrays, "grad"]


def test_hyperparameters_out_of_the_rules_domains_are_refused_by_name():
    good = HParams.at_step(1).as_tuple()
    for field, value, message in [
            ("eps", 0.0, r"HParams.eps = 0.0 must be finite and > 0"),
            ("beta1", 1.0, r"HParams.beta1 = 1.0 must be finite and in \[0.0, 1.0\)"),
            ("lr", float("inf"), r"HParams.lr = inf must be finite and in \[0.0, inf\)"),
            ("loss_scale", -2.0, r"HParams.loss_scale = -2.0 must be finite and > 0")]:
        values = list(good)
        values[ADAM.fields.index(field)] = value
        with pytest.raises(ValueError, match=message):
            HParams(*values)


def test_hparams_is_made_from_the_rule():
    """Fields, defaults and derived fields of `HParams` are the rule's; names it lacks are refused."""
    hp = HParams.at_step(2, lr=0.5, seed=7)
    assert hp == HParams(0.5, 0.9, 0.999, 1e-8, 0.0, 1.0, 0.9 ** 2, 0.999 ** 2, 7, 2)
    assert hp.as_tuple() == (0.5, 0.9, 0.999, 1e-8, 0.0, 1.0, 0.9 ** 2, 0.999 ** 2, 7, 2)
    assert pickle.loads(pickle.dumps(hp)) == hp
    with pytest.raises(TypeError, match="unexpected keyword argument 'beta1_power'"):
        HParams.at_step(1, beta1_power=0.5)
    with pytest.raises(TypeError):
        HParams.at_step(1, 0.01)  # lr is a keyword


def test_derived_and_static_hyperparameters():
    assert {h.name: h.derived for h in ADAM.hparams if h.derived} == {
        "beta1_power": "power:beta1", "beta2_power": "power:beta2"}
    assert set(ADAM.static_hparams) == {"beta1", "beta2", "eps", "weight_decay", "loss_scale"}
    hp = HParams.at_step(3, beta1=0.5)
    assert hp.beta1_power == 0.5 ** 3


def test_the_state_names_are_the_front_ends_names():
    """MindSpore-style attributes and state_dict sections, and torch's state keys."""
    torch = pytest.importorskip("torch", reason="the torch front end needs torch")
    import lazyadam.torch

    names = {s.name: s.names for s in ADAM.state}
    param = Parameter(np.ones((2, 3), np.float32), name="w")
    opt = LazyAdam([param], amsgrad=True)
    opt((np.ones((2, 3), np.float32),))
    state = opt.state_dict()
    for n in names.values():
        assert getattr(opt, n["mindspore"])[0].shape == (2, 3) and "w" in state[n["mindspore"]]

    weight = torch.nn.Parameter(torch.ones(2, 3))
    opt = lazyadam.torch.LazyAdam([weight], amsgrad=True)
    weight.grad = torch.ones(2, 3)
    opt.step()
    assert set(opt.state[weight]) == {"step"} | {n["torch"] for n in names.values()}


def test_the_registry_finds_rules_by_name_or_path_and_refuses_a_second_of_one_name():
    assert rule.get("adam") is ADAM
    assert rule.get("lazyadam.rules.adam:ADAM") is ADAM
    assert "adam" in rule.names()
    assert rule.register(ADAM) is ADAM  # the same rule again is no conflict
    with pytest.raises(ValueError, match="a rule named 'adam' is already registered"):
        rule.register(dataclasses.replace(ADAM, doc="another"))
    with pytest.raises(KeyError, match="unknown rule 'nope'; registered: .*adam"):
        rule.get("nope")
    with pytest.raises(KeyError, match="'lazyadam.rules.adam:OPTIONS' is not a Rule"):
        rule.get("lazyadam.rules.adam:OPTIONS")


def test_intervals():
    assert 0.0 in rule.Interval(0.0, 1.0) and 1.0 not in rule.Interval(0.0, 1.0)
    assert 0.0 not in rule.Interval(0.0, 1.0, "()") and 1.0 in rule.Interval(0.0, 1.0, "(]")
    assert float("nan") not in rule.Interval(0.0) and float("inf") not in rule.Interval(0.0)
    assert str(rule.Interval(0.0, 1.0, "()")) == "(0.0, 1.0)"
