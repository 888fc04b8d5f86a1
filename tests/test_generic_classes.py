"""The classes that `lazyadam.optimizer(rule)` and `lazyadam.torch.optimizer(rule)` make for any
rule, made for every registered one, and SGD's `dampening`, which is both an option and a
hyperparameter (`Rule.hparam_options`): the generic classes take the number alone and switch the
option on where it is not 0, as torch.optim.SGD does (`dampening > 0`).

The classes of a rule defined in a test file: tests/test_rule_generic.py, test_torch_rule.py.
"""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest
import torch

import lazyadam
import lazyadam.torch
import reference_family as ref
from lazyadam import Parameter, RowTensor
from lazyadam.codegen.rule import get, names
from lazyadam.rules import SGD


@pytest.mark.parametrize("name", names())
def test_every_registered_rule_gets_both_generic_classes_with_one_argument_a_name(name):
    rule = get(name)
    for cls in (lazyadam.optimizer(rule), lazyadam.torch.optimizer(rule)):
        keywords = [p.name for p in inspect.signature(cls.__init__).parameters.values()]
        assert len(keywords) == len(set(keywords)), keywords
    assert lazyadam.torch.optimizer(rule)([torch.nn.Parameter(torch.ones(2))]).RULE is rule


def test_sgds_dampening_is_one_argument_of_both_generic_classes_the_number():
    assert SGD.hparam_options == ("dampening",)
    mindspore = inspect.signature(lazyadam.optimizer(SGD).__init__).parameters
    assert mindspore["dampening"].default == 0.0
    assert mindspore["dampening"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert "dampening=0.0" in lazyadam.torch.optimizer(SGD).__doc__


def test_a_numpy_dampening_is_taken_as_a_python_one():
    """The option derived from a numpy scalar is a bool, as the spec takes it."""
    table = Parameter(np.ones((3, 2), np.float32), name="table")
    opt = lazyadam.optimizer(SGD)([table], 0.1, np.float32(0.9), np.float64(0.25),
                                  momentum=True)
    opt([RowTensor(np.array([1]), np.ones((1, 2), np.float32), (3, 2))])
    step = np.float32(1) - np.float32(0.1)  # a row's first step: its buffer is its gradient
    np.testing.assert_array_equal(table.data, [[1, 1], [step, step], [1, 1]])


def test_the_rules_checks_refuse_a_generic_torch_group_at_construction():
    """Dampening needs momentum (the rule's `check`): refused when the optimizer is made, as
    torch's SGD refuses its illegal arguments, not at the first step."""
    with pytest.raises(lazyadam.SpecError, match="Sgd: nesterov and dampening need momentum"):
        lazyadam.torch.optimizer(SGD)([torch.nn.Parameter(torch.ones(2))], dampening=0.25)


def test_a_rule_whose_option_and_hyperparameter_share_a_name_needs_a_flag():
    with pytest.raises(ValueError, match="option 'dampening' is named as a hyperparameter"):
        dataclasses.replace(SGD, name="sgd_copy", options=tuple(
            dataclasses.replace(o, values=("no", "yes"), default="no")
            if o.name == "dampening" else o for o in SGD.options))


@pytest.mark.parametrize("dampening", [0.0, 0.25])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_the_generic_torch_sgd_steps_as_lazyadam_torch_sgd(dampening, sparse):
    """The generic class (the rule's names: `mu` for torch's momentum) and `lazyadam.torch.SGD`
    on the same gradients, bit for bit: with dampening the option is on (state `seen`)."""
    rng = np.random.default_rng(3)
    start = torch.from_numpy(rng.standard_normal((6, 4)).astype(np.float32))
    ours, theirs = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    generic = lazyadam.torch.optimizer(SGD)([ours], lr=0.1, mu=0.9, momentum=True,
                                            dampening=dampening)
    named = lazyadam.torch.SGD([theirs], lr=0.1, momentum=0.9, dampening=dampening)
    for _ in range(3):
        rows = torch.from_numpy(rng.integers(0, 6, 5))
        values = torch.from_numpy(rng.standard_normal((5, 4)).astype(np.float32))
        grad = torch.sparse_coo_tensor(rows[None], values, (6, 4))
        for p, opt in ((ours, generic), (theirs, named)):
            p.grad = grad if sparse else grad.to_dense()
            opt.step()
        assert torch.equal(ours, theirs)
    assert ("seen" in generic.state[ours]) == (dampening > 0)
    assert torch.equal(generic.state[ours]["momentum_buffer"],
                       named.state[theirs]["momentum_buffer"])


def test_the_generic_mindspore_sgd_with_dampening_matches_the_reference():
    """Two sparse steps (row 4 first touched at the second: its buffer starts as its gradient)
    against tests/reference_family.py's SGD."""
    rng = np.random.default_rng(5)
    start = rng.standard_normal((6, 3)).astype(np.float32)
    table = Parameter(start.copy(), name="table")
    opt = lazyadam.optimizer(SGD)([table], learning_rate=0.1, mu=0.9, dampening=0.25,
                                  momentum=True)
    var, buf, seen = start.astype(np.float64), np.zeros((6, 3)), np.zeros(6, bool)
    for rows in (np.array([0, 2, 2]), np.array([2, 4])):
        values = rng.standard_normal((len(rows), 3)).astype(np.float32)
        opt([RowTensor(rows, values, table.shape)])
        var, buf, seen = ref.sgd_step(var, buf, seen, values.astype(np.float64), indices=rows,
                                      lr=0.1, momentum=0.9, dampening=0.25)
    np.testing.assert_allclose(table.data, var, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("how", ["switched on", "loaded"])
def test_the_generic_torch_sgd_goes_on_from_a_buffer_kept_without_seen(how):
    """A step without dampening, then dampening turned on in the group, or the state saved then
    (a buffer, no `seen`) loaded into an optimizer made with dampening: a row with a buffer has
    been stepped (`seen` starts at 1 beside it, the rule's `init_beside`), so its buffer goes on,
    as in torch's SGD and in `lazyadam.torch.SGD`."""
    start = torch.linspace(-1.0, 1.0, 12, dtype=torch.float64).reshape(4, 3)
    ours, named, theirs = (torch.nn.Parameter(start.clone()) for _ in range(3))

    def make(dampening):
        return (lazyadam.torch.optimizer(SGD)([ours], lr=0.1, mu=0.9, momentum=True,
                                              dampening=dampening),
                lazyadam.torch.SGD([named], lr=0.1, momentum=0.9, dampening=dampening),
                torch.optim.SGD([theirs], lr=0.1, momentum=0.9, dampening=dampening))
    optimizers = make(0.0)
    first = torch.arange(12.0, dtype=torch.float64).reshape(4, 3)
    for p, opt in zip((ours, named, theirs), optimizers):
        p.grad = first
        opt.step()
    if how == "switched on":
        for opt in optimizers:
            opt.param_groups[0]["dampening"] = 0.5
    else:
        saved = [opt.state_dict() for opt in optimizers]
        optimizers = make(0.5)
        for opt, state in zip(optimizers, saved):
            state["param_groups"][0]["dampening"] = 0.5
            opt.load_state_dict(state)
    for step in range(2):
        for p, opt in zip((ours, named, theirs), optimizers):
            p.grad = first.flip(0) + step
            opt.step()
    assert torch.equal(ours, named)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    assert torch.equal(optimizers[0].state[ours]["seen"], torch.ones(4, dtype=torch.float64))
