"""Captured steps of the family's optimizers (every rule but Adam, whose capture is
tests/test_capture.py's), under tests/test_capture.py's emulated capture, against the same
optimizer stepping eagerly, bit for bit. The device tables of a capturable step hold each rule's
own hyperparameter struct (`kernel.hparams_bytes`, `rule.hparams_type`), which the captured
kernels read: a replay that stored a field in the wrong place, or kept a value of the captured
step, gives other numbers than the eager steps, which carry their hyperparameters in the launch.
"""

from __future__ import annotations

import numpy as np
import pytest

import lazyadam
import test_capture
from lazyadam import Parameter
from lazyadam.rules import ADAGRAD, SGD
from lazyadam.schedules import ExponentialDecayLR
from test_capture import capture, on_device  # noqa: F401  (the fixtures)
from test_capture import mlp, set_gradients
from test_mindspore_family import assert_same_state

torch = pytest.importorskip("torch", reason="the captured steps are PyTorch's stream's")
import lazyadam.torch  # noqa: E402  (after the skip: it imports torch)


def decay():
    """A weight decay that halves every step: a replay that kept the captured step's value
    would decay less than the eager steps."""
    return ExponentialDecayLR(0.05, 0.5, 1)


# MindSpore-style classes: each rule's options that give a replay most to store, with the
# learning rates of test_capture.LRS, one per step. SGD twice: MindSpore's Momentum (Nesterov),
# and the rule's own class with dampening (its per-row `seen`).
MINDSPORE = {
    "sgd": lambda params, **common: lazyadam.Momentum(
        params, momentum=0.8, use_nesterov=True, weight_decay=decay(), **common),
    "sgd-dampening": lambda params, **common: lazyadam.optimizer(SGD)(
        params, mu=0.8, dampening=0.3, momentum=True, weight_decay=decay(), **common),
    "adagrad": lambda params, **common: lazyadam.optimizer(ADAGRAD)(
        params, lr_decay=0.1, weight_decay=decay(), **common),
    "rowwise_adagrad": lambda params, **common: lazyadam.RowWiseAdagrad(
        params, weight_decay=decay(), decay="decoupled", **common),
    "partial_rowwise_adam": lambda params, **common: lazyadam.PartialRowWiseAdam(
        params, beta1=0.8, amsgrad=True, weight_decay=decay(), **common),
    "lion": lambda params, **common: lazyadam.Lion(
        params, beta1=0.8, beta2=0.95, weight_decay=decay(), **common),
}


@pytest.mark.parametrize("rule_name", list(MINDSPORE))
def test_replays_give_the_eager_steps_bits_for_every_rule(capture, rule_name):
    """A captured step replayed with hyperparameters stored before each replay, against the same
    optimizer stepping eagerly, bit for bit: the learning rate and weight decay change every
    step, Adagrad's "step" field (its learning-rate decay reads t) and partial-rowwise Adam's
    running powers move on with each replay, and the state (SGD's momentum, Lion's, the
    accumulators) is the captured kernels'."""
    rng = np.random.default_rng(12)
    initial = [rng.standard_normal((test_capture.ROWS, 2, 3)).astype(np.float32),
               rng.standard_normal((4, 5)).astype(np.float32)]

    def make():
        params = [Parameter(test_capture.on_the_device(a.copy()), name=n)
                  for a, n in zip(initial, ("table", "dense"))]
        return MINDSPORE[rule_name](params, learning_rate=test_capture.LRS, capturable=True)
    replayed, eager = make(), make()
    eager.capturable = False
    steps = test_capture.batches(rng, 4)
    ours, theirs = test_capture.StaticGradients(), test_capture.StaticGradients()
    ours.fill(steps[0])
    replayed(ours.grads)
    with capture:
        replayed(ours.grads)
    assert capture.recorded > 0 and capture.launches == 0
    for batch in steps[1:]:
        ours.fill(batch)
        replayed.prepare_replay()
        capture.replay()
    for batch in steps:
        theirs.fill(batch)
        eager(theirs.grads)
    assert replayed.global_step == eager.global_step == 4
    assert_same_state(replayed.state_dict(), eager.state_dict())


# PyTorch's classes: two groups of a dense model (sparse gradients are refused under capture),
# each with its own options, the first group's weight decay and both learning rates changed
# before every replay.
TORCH = {
    "SGD": (dict(momentum=0.9, dampening=0.3, weight_decay=0.01),
            dict(momentum=0.8, nesterov=True)),
    "Adagrad": (dict(lr_decay=0.1, weight_decay=0.01, initial_accumulator_value=0.1),
                dict(eps=1e-6)),
    "RowWiseAdagrad": (dict(weight_decay=0.01, decoupled_weight_decay=True),
                       dict(maximize=True)),
    "PartialRowWiseAdam": (dict(betas=(0.8, 0.99), amsgrad=True, weight_decay=0.01),
                           dict(nesterov=True, decoupled_weight_decay=True, weight_decay=0.1)),
    "Lion": (dict(betas=(0.8, 0.95), weight_decay=0.01), dict(maximize=True)),
}


@pytest.mark.parametrize("name", list(TORCH))
def test_torch_replays_give_the_eager_steps_bits_for_every_family_class(capture, on_device,
                                                                        name):
    """Each family class of `lazyadam.torch`, captured and replayed, against the same class
    stepping eagerly without capturable (its hyperparameters carried in the launches), over 5
    replays with learning rates and a weight decay set anew before each: parameters and state
    bit for bit. Adagrad's clr and partial-rowwise Adam's bias corrections read each
    parameter's step, which the replays count."""
    first, second = TORCH[name]
    cls = getattr(lazyadam.torch, name)
    models = mlp(), mlp()
    replayed, eager = (cls([{"params": list(m[0].parameters()), **first},
                            {"params": list(m[2].parameters()), **second}],
                           lr=0.01, capturable=capturable)
                       for m, capturable in zip(models, (True, False)))
    for step in range(6):
        for opt, model in zip((replayed, eager), models):
            set_gradients(model, step)
            for number, group in enumerate(opt.param_groups):
                group["lr"] = test_capture.LRS[step] * (number + 1)
            opt.param_groups[0]["weight_decay"] = 0.01 * (step + 1)
        if step == 0:
            replayed.step()
        elif step == 1:
            with capture:
                replayed.step()
            assert capture.recorded > 0 and capture.launches == 0
            replayed.prepare_replay()
            capture.replay()
        else:
            replayed.prepare_replay()
            capture.replay()
        eager.step()
        for (where, a), b in zip(models[0].named_parameters(), models[1].parameters()):
            assert torch.equal(a, b), f"step {step}: {where}"
    ours, theirs = replayed.state_dict(), eager.state_dict()
    assert ours["state"].keys() == theirs["state"].keys()
    for key, state in ours["state"].items():
        assert state.keys() == theirs["state"][key].keys()
        for field, value in state.items():
            assert torch.equal(value, theirs["state"][key][field]), f"{key}: {field}"
    if name != "SGD":  # torch's SGD keeps no step
        assert all(int(state["step"]) == 6 for state in ours["state"].values())
    assert ([{k: v for k, v in g.items() if k != "capturable"} for g in ours["param_groups"]]
            == [{k: v for k, v in g.items() if k != "capturable"} for g in theirs["param_groups"]])
