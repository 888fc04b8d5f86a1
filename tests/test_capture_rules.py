"""Captured steps of MindSpore-style optimizers of other rules than Adam (tests/test_capture.py's
emulated capture).

runtime/launcher.py lays out the device tables of capturable steps as LazyAdam's hyperparameter
struct (`HPARAMS_BYTES`, `lazyadam_hparams *`), so the other rules' optimizers refuse
capturable=True for now; the replay test is a strict xfail that fails once the launcher takes each
rule's struct (`kernel.hparams_bytes`, `rule.hparams_type`) and the refusal is lifted."""

from __future__ import annotations

import numpy as np
import pytest

import lazyadam
import test_capture
from lazyadam import Parameter
from lazyadam.codegen.rule import get
from test_capture import capture  # noqa: F401  (the fixture)
from test_mindspore_family import assert_same_state

@pytest.mark.parametrize("rule_name", ["lion", "adagrad"])
def test_capturable_steps_of_other_rules_are_refused_before_anything_is_made(rule_name):
    table = Parameter(test_capture.on_the_device(np.ones((3, 2), np.float32)), name="table")
    with pytest.raises(NotImplementedError, match=rf"laid out as LazyAdam's.*{rule_name}"):
        lazyadam.optimizer(get(rule_name))([table], capturable=True)


@pytest.mark.xfail(strict=True, raises=NotImplementedError,
                   reason="runtime/launcher.py's device tables hold LazyAdam's struct only")
@pytest.mark.parametrize("rule_name", ["adagrad", "partial_rowwise_adam"])
def test_replays_give_the_eager_steps_bits_for_other_rules(capture, rule_name):
    """A captured step replayed with hyperparameters stored before each replay, against the same
    optimizer stepping eagerly, bit for bit: Adagrad's "step" field (its learning-rate decay
    reads t) and partial-rowwise Adam's running powers move on with each replay."""
    rule = get(rule_name)
    options = dict(lr_decay=0.1) if rule_name == "adagrad" else dict(beta1=0.8, amsgrad=True)
    kept = 2 if rule_name == "adagrad" else 1        # a row rule's CUDA steps are sparse only
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
