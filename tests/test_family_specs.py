"""What the family's specs refuse, and Lion's sign of 0 through its kernels.

Issue 17: partial-rowwise Adam takes LazyAdam's options where they make sense; a rule refuses an
option it has not (another rule's) with a SpecError that names the option and what the rule's
specs take, and each rule's own illegal combinations with a SpecError that says what to change.
Lion's sign(0) is 0 (docs/semantics.md): a zero direction takes no step, and only the decoupled
decay moves the weight; the reference models it (tests/reference_family.py), and here the C
kernel and the emulated CUDA one must give it too, dense and sparse.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import cuda_emulation as emulation
import lazyadam
import reference_family as ref
from lazyadam import SpecError, UnknownOptionError
from lazyadam.rules import ADAGRAD, ADAM, LION, PARTIAL_ROWWISE_ADAM, ROWWISE_ADAGRAD, SGD
from lazyadam.targets.base import hparams_of

FAMILY = (SGD, ADAGRAD, ROWWISE_ADAGRAD, PARTIAL_ROWWISE_ADAM, LION)
ADAM_OPTIONS = {o.name: o.values for o in ADAM.options}


def test_partial_rowwise_adam_takes_every_lazyadam_option_and_value():
    """Each of LazyAdam's options, each value, builds a spec of partial-rowwise Adam."""
    assert {o.name for o in PARTIAL_ROWWISE_ADAM.options} >= set(ADAM_OPTIONS)
    for name, values in ADAM_OPTIONS.items():
        for value in values:
            spec = PARTIAL_ROWWISE_ADAM.spec(**{name: value}).validate()
            assert getattr(spec, name) == value


@pytest.mark.parametrize("rule", FAMILY, ids=lambda r: r.name)
def test_a_lazyadam_option_the_rule_has_not_is_a_spec_error_naming_it(rule):
    """`amsgrad` for SGD, `eps_mode` for Lion, ...: a SpecError (and, as any unexpected keyword,
    a TypeError) that names the option and lists what the rule's specs take."""
    missing = [name for name in ADAM_OPTIONS if name not in rule.flags]
    assert (missing == []) == (rule is PARTIAL_ROWWISE_ADAM)
    for name in missing:
        with pytest.raises(UnknownOptionError, match=rf"the {rule.name} rule's specs have no "
                                                     rf"option '{name}'; they take sparse, "):
            rule.spec(**{name: ADAM_OPTIONS[name][-1]})
    assert issubclass(UnknownOptionError, SpecError) and issubclass(UnknownOptionError, TypeError)


def test_a_spec_from_json_with_another_rules_option_is_a_spec_error():
    text = SGD.spec(momentum=True).to_json().replace('"momentum"', '"amsgrad"')
    with pytest.raises(SpecError, match="the sgd rule's specs have no option 'amsgrad'"):
        lazyadam.Spec.from_json(text)


def test_a_positional_argument_too_many_stays_pythons_type_error():
    with pytest.raises(TypeError, match="positional arguments") as raised:
        SGD.spec(*[False] * (len(dataclasses.fields(SGD.spec)) + 1))
    assert not isinstance(raised.value, SpecError)


@pytest.mark.parametrize("rule, options, match", [
    (SGD, dict(nesterov=True), "nesterov and dampening need momentum=True"),
    (SGD, dict(dampening=True), "nesterov and dampening need momentum=True"),
    (SGD, dict(momentum=True, nesterov=True, dampening=True),
     r"nesterov needs no dampening \(as torch.optim.SGD\)"),
    (SGD, dict(decay="decoupled"), "decay must be one of none, l2; got 'decoupled'"),
    (ADAGRAD, dict(decay="decoupled"), "decay must be one of none, l2; got 'decoupled'"),
    (LION, dict(decay="l2"), "decay must be one of none, decoupled; got 'l2'"),
    (PARTIAL_ROWWISE_ADAM, dict(eps_mode="torch"),
     "eps_mode must be one of pytorch, mindspore; got 'torch'"),
    (ROWWISE_ADAGRAD, dict(static={"beta1": 0.9}), "'beta1' cannot be static; choose from"),
], ids=lambda x: x.name if hasattr(x, "flags") else None)
def test_each_rules_illegal_combinations_are_spec_errors(rule, options, match):
    with pytest.raises(SpecError, match=match):
        rule.spec(**options).validate()


def zero_direction_case():
    """Lion's inputs where `c = b1*m + (1-b1)*g` is exactly +0, -0 or nonzero: zero m with zero
    g of either sign (row 1, and row 2's first two columns), and row 2's last columns with a
    nonzero g. Row 0 is never touched (sparse); the dense gradient has zeros there."""
    var = np.array([[1.5, -2.0, 3.0], [0.25, -4.0, 8.0], [2.0, -1.0, 0.5]], np.float32)
    m = np.zeros_like(var)
    g = np.array([[0.0, -0.0, 0.0], [0.0, -0.0, 0.5]], np.float32)
    return var, m, np.array([1, 2], np.int64), g


@pytest.mark.parametrize("decay", ["none", "decoupled"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_lion_takes_no_step_where_its_direction_is_zero_on_c_and_emulated_cuda(
        emulated_variants, sparse, decay):
    spec = LION.spec(sparse=sparse, decay=decay).validate()
    hyper = dict(lr=0.125, beta1=0.9, beta2=0.99, weight_decay=0.5 if decay != "none" else 0.0)
    var, m, indices, rows = zero_direction_case()
    if sparse:
        grad, expected_indices = (indices, rows), indices
    else:
        grad = np.zeros_like(var)
        grad[indices] = rows
        expected_indices = None
    expected_var, expected_m = ref.lion_step(var.astype(np.float64), m.astype(np.float64),
                                             rows if sparse else grad, indices=expected_indices,
                                             **hyper)
    moved = var[1:] - hyper["lr"] * hyper["weight_decay"] * var[1:]
    assert np.array_equal(expected_var[1, :2], moved[0, :2])  # the reference: no sign step
    assert np.array_equal(expected_var[2, :2], moved[1, :2])
    hp = hparams_of(LION).at_step(1, **hyper)
    for kernel, put in ((lazyadam.compile(spec), np.asarray),
                        (emulated_variants([spec])[spec], emulation.Emulated)):
        w, state = var.copy(), m.copy()
        args = (put(grad[0]), put(grad[1])) if sparse else put(grad)
        kernel(put(w), put(state), args, hp)
        np.testing.assert_allclose(w, expected_var, rtol=1e-6, atol=0)
        assert np.array_equal(w[1:, :2], moved[:, :2].astype(np.float32)), (kernel, w)
        assert np.array_equal(state, expected_m.astype(np.float32))
        assert np.array_equal(np.signbit(state), np.signbit(expected_m))
