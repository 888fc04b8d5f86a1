"""Checkpoints that record their rule (format 4): the rule's name and state sections in the
header, state dict keys from the rule's MindSpore names, and LazyAdam's checkpoints of format 3
still read bitwise (tests/golden/adam_v3.npz, written by the code before format 4). A checkpoint
of one rule refused by an optimizer of another: tests/test_bad_input.py."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import lazyadam
import test_mindspore_family
from lazyadam import LazyAdam, Parameter, RowTensor
from lazyadam.runtime import checkpoint

GOLDEN_V3 = Path(__file__).parent / "golden" / "adam_v3.npz"


def golden_build():
    """The optimizer that wrote tests/golden/adam_v3.npz: a float32 table, a bfloat16 matrix
    (stochastic rounding) and a float64 bias, amsgrad."""
    rng = np.random.default_rng(31)
    table = Parameter(rng.standard_normal((6, 4)).astype(np.float32), name="table")
    half = Parameter(rng.standard_normal((5, 3)).astype(ml_dtypes.bfloat16), name="half")
    dense = Parameter(rng.standard_normal(3), name="bias")
    return LazyAdam([table, half, dense], learning_rate=0.05, weight_decay=0.01, amsgrad=True,
                    rounding="stochastic", seed=77)


def golden_batches():
    rng = np.random.default_rng(32)
    return [(RowTensor(np.array([4, 1, 4]), rng.standard_normal((3, 4)).astype(np.float32),
                       (6, 4)),
             rng.standard_normal((5, 3)).astype(np.float32), rng.standard_normal(3))
            for _ in range(3)]


def assert_same(a, b):
    left, right = a.state_dict(), b.state_dict()
    assert left.keys() == right.keys()
    for key, value in left.items():
        if isinstance(value, dict):
            for name in value:
                assert value[name].dtype == right[key][name].dtype
                np.testing.assert_array_equal(value[name].view(np.uint8),
                                              right[key][name].view(np.uint8), err_msg=key)
        else:
            assert value == right[key], key


def test_a_format_3_checkpoint_loads_bitwise_and_resumes():
    header = json.loads(np.load(GOLDEN_V3)["header"].tobytes())
    assert header["version"] == 3 and "rule" not in header
    straight = golden_build()
    for grads in golden_batches():
        straight(grads)
    resumed = golden_build()
    resumed(golden_batches()[0])  # moved away from what the file holds
    resumed.load(GOLDEN_V3)
    assert resumed.global_step == 3 and resumed.seed == 77
    assert_same(straight, resumed)
    assert resumed.state_dict()["rule"] == "adam"
    grads = golden_batches()[1]
    straight(grads)
    resumed(grads)
    assert_same(straight, resumed)


def test_a_checkpoint_records_the_rule_and_its_state_sections(tmp_path):
    opt = LazyAdam([Parameter(np.ones((3, 2), np.float32), name="w")], amsgrad=True)
    opt([np.ones((3, 2), np.float32)])
    opt.save(tmp_path / "adam.npz")
    header = json.loads(np.load(tmp_path / "adam.npz")["header"].tobytes())
    assert header["version"] == 4 and header["rule"] == "adam"
    assert header["state"] == [{"name": "moment1", "per": "element"},
                               {"name": "moment2", "per": "element"},
                               {"name": "vmax", "per": "element"}]
    assert header["scalars"] == {"global_step": 1, "beta1_power": 0.9, "beta2_power": 0.999,
                                 "beta1": 0.9, "beta2": 0.999, "amsgrad": True, "seed": 0}

    rowwise = lazyadam.RowWiseAdagrad([Parameter(np.ones((3, 2), np.float32), name="t")])
    rowwise([RowTensor(np.array([2]), np.ones((1, 2), np.float32), (3, 2))])
    rowwise.save(tmp_path / "rowwise.npz")
    archive = np.load(tmp_path / "rowwise.npz")
    header = json.loads(archive["header"].tobytes())
    assert header["rule"] == "rowwise_adagrad"
    assert header["state"] == [{"name": "accum", "per": "row"}]
    assert archive["accum/0"].shape == (3,)
    assert archive["accum/0"].tolist() == [0.0, 0.0, 1.0]


def test_state_dict_keys_are_the_rules_mindspore_names():
    table = Parameter(np.ones((4, 3), np.float32), name="table")
    opt = lazyadam.PartialRowWiseAdam([table], amsgrad=True)
    opt([RowTensor(np.array([1]), np.ones((1, 3), np.float32), (4, 3))])
    state = opt.state_dict()
    assert list(state) == ["rule", "global_step", "beta1_power", "beta2_power", "beta1", "beta2",
                           "amsgrad", "seed", "parameters", "moment1", "moment2", "vmax"]
    assert state["moment1"]["table"].shape == (4, 3)
    assert state["moment2"]["table"].shape == (4,) and state["vmax"]["table"].shape == (4,)
    assert [a.name for a in opt.moment2] == ["moment2.table"]


def test_a_state_dict_without_a_rule_is_lazyadams():
    """State dicts made before they named their rule load into LazyAdam."""
    def make():
        return LazyAdam([Parameter(np.ones(3, np.float32), name="w")], learning_rate=0.1)
    opt = make()
    opt([np.full(3, 0.5, np.float32)])
    state = {k: v for k, v in opt.state_dict().items() if k != "rule"}
    resumed = make()
    resumed.load_state_dict(state)
    assert_same(opt, resumed)
    lion = lazyadam.Lion([Parameter(np.ones(3, np.float32), name="w")])
    with pytest.raises(ValueError, match="rule 'adam'.*rule 'lion'"):
        lion.load_state_dict(state)


def test_a_damaged_format_4_header_is_refused(tmp_path):
    opt = lazyadam.RowWiseAdagrad([Parameter(np.ones((3, 2), np.float32), name="t")])
    state = opt.state_dict()
    path = tmp_path / "bad.npz"
    checkpoint.write(state, path)
    with np.load(path) as archive:
        members = {k: archive[k] for k in archive.files}
    header = json.loads(members["header"].tobytes())
    header["state"][0]["per"] = "column"
    members["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(path, **members)
    with pytest.raises(ValueError, match="damaged"):
        opt.load(path)


def test_a_checkpoint_keeps_each_state_arrays_own_dtype(tmp_path):
    """A bfloat16 table under partial-rowwise Adam with bfloat16 state: moment1 is bfloat16 (per
    element), moment2 float32 (per row, the arithmetic's dtype); both round-trip bitwise."""
    def make(seed):
        rng = np.random.default_rng(seed)
        table = Parameter(rng.standard_normal((5, 4)).astype(ml_dtypes.bfloat16), name="table")
        return lazyadam.PartialRowWiseAdam([table], learning_rate=0.01, state_dtype="bfloat16",
                                           rounding="stochastic", seed=11)
    opt = make(0)
    for k in range(2):
        opt([RowTensor(np.array([k, 3]), np.ones((2, 4), np.float32), (5, 4))])
    state = opt.state_dict()
    assert state["moment1"]["table"].dtype == ml_dtypes.bfloat16
    assert state["moment2"]["table"].dtype == np.float32 and state["moment2"]["table"].shape == (5,)
    opt.save(tmp_path / "half.npz")
    header = json.loads(np.load(tmp_path / "half.npz")["header"].tobytes())
    assert header["parameters"][0]["state_dtypes"] == {"moment1": "bfloat16",
                                                       "moment2": "float32"}
    resumed = make(1)
    resumed.load(tmp_path / "half.npz")
    assert_same(opt, resumed)


@pytest.mark.parametrize("name", test_mindspore_family.CLASSES)
def test_each_class_resumes_a_half_precision_table_with_stochastic_rounding_bitwise(tmp_path,
                                                                                    name):
    """A bfloat16 table and a float16 matrix, bfloat16 state, stochastic rounding: two steps, a
    save, and two more from the checkpoint in a new optimizer (made from other values and seed)
    give the bits of four straight steps, so the checkpoint carries every state array in its
    own dtype and what the rounding's random bits depend on (the seed and the step)."""
    table, dense, grads = test_mindspore_family.data(np.float32, seed=7)

    def make(seed):
        rng = np.random.default_rng(seed)
        shift = 0.0 if seed == 0 else 1.0
        params = [Parameter((table + shift * rng.standard_normal(table.shape)).astype(
                      ml_dtypes.bfloat16), name="table"),
                  Parameter((dense + shift).astype(np.float16), name="dense")]
        return test_mindspore_family.CLASSES[name](params, state_dtype="bfloat16",
                                                   rounding="stochastic", seed=31 + seed)

    def batch(k):
        indices, values, matrix = grads[k]
        return test_mindspore_family.step_of((indices, values, matrix.astype(np.float16)))
    straight = make(0)
    for k in range(4):
        straight(batch(k))
    first = make(0)
    for k in range(2):
        first(batch(k))
    first.save(tmp_path / f"{name}.npz")
    resumed = make(5)
    resumed.load(tmp_path / f"{name}.npz")
    for k in range(2, 4):
        resumed(batch(k))
    assert_same(straight, resumed)
    for key, value in straight.state_dict().items():  # state per element bfloat16, per row f32
        if isinstance(value, dict) and key != "parameters":
            per_element = value["table"].shape == table.shape
            assert value["table"].dtype == (ml_dtypes.bfloat16 if per_element else np.float32), key
