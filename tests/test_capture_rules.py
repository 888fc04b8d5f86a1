"""Captured steps of MindSpore-style optimizers of other rules than Adam (tests/test_capture.py's
emulated capture): the device tables of a capturable step hold each rule's own hyperparameter
struct (`kernel.hparams_bytes`, `rule.hparams_type`), which the captured kernels read."""

from __future__ import annotations

import numpy as np
import pytest

import lazyadam
import test_capture
from lazyadam import Parameter
from lazyadam.codegen.rule import get
from test_capture import capture  # noqa: F401  (the fixture)
from test_mindspore_family import assert_same_state

@pytest.mark.parametrize("rule_name", ["adagrad", "partial_rowwise_adam"])
def test_replays_give_the_eager_steps_bits_for_other_rules(capture, rule_name):
    """A captured step replayed with hyperparameters stored before each replay, against the same
    optimizer stepping eagerly, bit for bit: Adagrad's "step" field (its learning-rate decay
    reads t) and partial-rowwise Adam's running powers move on with each replay."""
    rule = get(rule_name)
    options = dict(lr_decay=0.1) if rule_name == "adagrad" else dict(beta1=0.8, amsgrad=True)
    kept = 2                                         # a sparse table and a dense matrix
    rng = np.random.default_rng(12)
    initial = [rng.standard_normal((test_capture.ROWS, 2, 3)).astype(np.float32),
               rng.standard_normal((4, 5)).astype(np.float32)]

    def make():
        params = [Parameter(test_capture.on_the_device(a.copy()), name=n)
                  for a, n in zip(initial, ("table", "dense"))][:kept]
        return lazyadam.optimizer(rule)(params, learning_rate=test_capture.LRS, capturable=True,
                                        **options)
    replayed, eager = make(), make()
    eager.capturable = False
    steps = test_capture.batches(rng, 4)
    ours, theirs = test_capture.StaticGradients(), test_capture.StaticGradients()
    ours.fill(steps[0])
    replayed(ours.grads[:kept])
    with capture:
        replayed(ours.grads[:kept])
    assert capture.recorded > 0 and capture.launches == 0
    for batch in steps[1:]:
        ours.fill(batch)
        replayed.prepare_replay()
        capture.replay()
    for batch in steps:
        theirs.fill(batch)
        eager(theirs.grads[:kept])
    assert replayed.global_step == eager.global_step == 4
    assert_same_state(replayed.state_dict(), eager.state_dict())
