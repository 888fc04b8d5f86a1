"""Checkpoints: state_dict round trips, bitwise resumption, atomic saves, refused files."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

from lazyadam import LazyAdam, Parameter, RowTensor
from lazyadam.runtime import checkpoint


def build(seed=0, **kwargs):
    """A fresh model and optimizer; the same seed gives the same initial values."""
    rng = np.random.default_rng(seed)
    table = Parameter(rng.standard_normal((50, 4)).astype(np.float32), name="embedding")
    dense = Parameter(rng.standard_normal((4, 3)), name="dense")
    kwargs.setdefault("learning_rate", [0.05 / (k + 1) for k in range(10)])
    return LazyAdam([table, dense], weight_decay=0.01, **kwargs)


def batches(steps, seed=1):
    rng = np.random.default_rng(seed)
    return [(RowTensor(rng.integers(0, 50, 8), rng.standard_normal((8, 4)).astype(np.float32),
                       (50, 4)), rng.standard_normal((4, 3))) for _ in range(steps)]


def arrays(opt):
    state = opt.state_dict()
    return {f"{section}/{name}": array for section in checkpoint.SECTIONS if section in state
            for name, array in state[section].items()}


def assert_same_state(a, b):
    """Bitwise equal arrays and identical step and powers."""
    left, right = arrays(a), arrays(b)
    assert left.keys() == right.keys()
    for key in left:
        np.testing.assert_array_equal(left[key], right[key], err_msg=key)
        assert left[key].dtype == right[key].dtype
    assert (a.global_step, a.beta1_power, a.beta2_power) == (
        b.global_step, b.beta1_power, b.beta2_power)


@pytest.mark.parametrize("flags", [{}, {"amsgrad": True, "use_nesterov": True}],
                         ids=["default", "amsgrad-nesterov"])
def test_resumed_training_continues_bitwise(tmp_path, flags):
    data = batches(6)
    straight = build(**flags)
    for grads in data:
        straight(grads)

    first = build(**flags)
    for grads in data[:3]:
        first(grads)
    path = tmp_path / "run.ckpt"
    first.save(path)
    resumed = build(seed=7, **flags)  # other initial values: all of them come from the file
    resumed.load(path)
    assert resumed.global_step == 3 and resumed.get_lr() == 0.05 / 4
    for grads in data[3:]:
        resumed(grads)
    assert_same_state(straight, resumed)


def test_state_dict_round_trip_and_copies():
    opt = build()
    for grads in batches(2):
        opt(grads)
    state = opt.state_dict()
    state["moment1"]["embedding"][:] = 123.0  # a copy: the optimizer does not see this
    assert not (opt.moment1[0].data == 123.0).any()
    other = build(seed=3)
    other.load_state_dict(opt.state_dict())
    assert_same_state(opt, other)


def test_save_replaces_an_existing_file_and_leaves_no_temporaries(tmp_path):
    opt = build()
    path = tmp_path / "state.npz"
    opt.save(path)
    opt(batches(1)[0])
    opt.save(path)
    assert sorted(os.listdir(tmp_path)) == ["state.npz"]
    restored = build(seed=5)
    checkpoint.load(restored, path)
    assert_same_state(opt, restored)


def test_crash_mid_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    opt = build()
    path = tmp_path / "state.npz"
    opt.save(path)
    saved = path.read_bytes()
    opt(batches(1)[0])

    def crash(fd):
        raise KeyboardInterrupt("power cut")
    monkeypatch.setattr(checkpoint.os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        opt.save(path)
    assert path.read_bytes() == saved
    assert os.listdir(tmp_path) == ["state.npz"]


def test_killed_process_mid_save_keeps_the_old_checkpoint(tmp_path):
    """A process that dies while writing (no cleanup at all) leaves the old file intact."""
    path = tmp_path / "state.npz"
    build().save(path)
    saved = path.read_bytes()
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_checkpoint import batches, build
        from lazyadam.runtime import checkpoint
        opt = build()
        opt(batches(1)[0])
        checkpoint.os.fsync = lambda fd: os._exit(3)
        opt.save({str(path)!r})
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 3, result.stderr
    assert path.read_bytes() == saved
    build(seed=2).load(path)


def damage(path, how):
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "flipped byte":
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("moment2/embedding.npy")
        data[info.header_offset + len(info.FileHeader()) + 200] ^= 0x40
    elif how == "not a zip":
        data = b"definitely not a checkpoint" * 10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "flipped byte", "not a zip"])
def test_damaged_file_is_refused_and_nothing_changes(tmp_path, how):
    opt = build()
    path = tmp_path / "state.npz"
    opt.save(path)
    damage(path, how)
    target = build(seed=9)
    before = arrays(target)
    with pytest.raises(ValueError, match="damaged"):
        target.load(path)
    for key, array in arrays(target).items():
        np.testing.assert_array_equal(array, before[key])
    assert target.global_step == 0


def test_bad_checksum_is_refused(tmp_path):
    """Arrays that are valid zip members but differ from what the header's sha256 covers."""
    opt = build()
    opt(batches(1)[0])
    state = opt.state_dict()
    path = tmp_path / "state.npz"
    checkpoint.write(state, path)
    with np.load(path) as archive:
        members = {k: archive[k] for k in archive.files}
    members["parameters/dense"] = members["parameters/dense"] + 1.0
    np.savez(path, **members)
    with pytest.raises(ValueError, match="checksum"):
        build().load(path)


@pytest.mark.parametrize("change, message", [
    (lambda: LazyAdam([Parameter(np.zeros((50, 4), np.float32), name="table"),
                       Parameter(np.zeros((4, 3)), name="dense")]), "not in this optimizer"),
    (lambda: LazyAdam([Parameter(np.zeros((51, 4), np.float32), name="embedding"),
                       Parameter(np.zeros((4, 3)), name="dense")]), r"\(51, 4\)"),
    (lambda: LazyAdam([Parameter(np.zeros((50, 4)), name="embedding"),
                       Parameter(np.zeros((4, 3)), name="dense")]), "float64"),
    (lambda: build(amsgrad=True), "vmax"),
    (lambda: build(beta1=0.8), "beta1=0.9"),
], ids=["names", "shape", "dtype", "amsgrad", "beta1"])
def test_mismatched_checkpoint_is_refused(tmp_path, change, message):
    path = tmp_path / "state.npz"
    build().save(path)
    target = change()
    with pytest.raises(ValueError, match=message):
        target.load(path)
    assert target.global_step == 0


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        build().load(tmp_path / "absent.npz")
