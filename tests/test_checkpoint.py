"""Checkpoints: state_dict round trips, bitwise resumption, atomic saves, refused files (those
that must also leave the optimizer as it was: tests/test_bad_input.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
import zlib

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


def test_bad_checksum_is_refused(tmp_path):
    """Arrays that are valid zip members but differ from what the header's sha256 covers."""
    opt = build()
    opt(batches(1)[0])
    state = opt.state_dict()
    path = tmp_path / "state.npz"
    checkpoint.write(state, path)
    with np.load(path) as archive:
        members = {k: archive[k] for k in archive.files}
    members["parameters/1"] = members["parameters/1"] + 1.0  # "dense", the second parameter
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


# -- after a hostile test run: flipped bits, odd names, killed saves, a long run -----------------

def small_checkpoint(tmp_path):
    opt = LazyAdam([Parameter(np.arange(6, dtype=np.float32).reshape(3, 2), name="table"),
                    Parameter(np.ones(2), name="bias")], learning_rate=0.1)
    opt([RowTensor(np.array([2, 0]), np.ones((2, 2), np.float32), (3, 2)), np.ones(2)])
    path = tmp_path / "small.npz"
    opt.save(path)
    return opt, path


def flips(path):
    """(offset, mask) of flips of the lowest and highest bit of every byte of the zip structures
    (each local file header and the central directory; member data is covered by the zip's CRC),
    and of every bit of the flags and compression method."""
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        start = archive.start_dir
    size = path.stat().st_size
    regions = [(i.header_offset, i.header_offset + 30 + len(i.filename)) for i in infos]
    regions.append((start, size))
    for begin, end in regions:
        for offset in range(begin, end):
            for mask in (0x01, 0x80):
                yield offset, mask
    for info in infos:  # every bit of the flags and compression method, local and central
        for offset in (info.header_offset + 6, info.header_offset + 8):
            for bit in range(8):
                yield offset, 1 << bit


def test_any_flip_of_the_zip_structure_is_refused_as_damaged_or_harmless(tmp_path):
    """A flipped compression method or flags byte raised NotImplementedError or RuntimeError."""
    opt, path = small_checkpoint(tmp_path)
    expected = opt.state_dict()
    good = path.read_bytes()
    refused = 0
    for offset, mask in flips(path):
        data = bytearray(good)
        data[offset] ^= mask
        path.write_bytes(bytes(data))
        try:
            state = checkpoint.read(path)
        except ValueError as error:
            assert "damaged" in str(error) or "version" in str(error), error
            refused += 1
            continue
        for key in expected:  # read fine: it must be the checkpoint as saved
            if isinstance(expected[key], dict):
                assert list(state[key]) == list(expected[key])
                for name in expected[key]:
                    np.testing.assert_array_equal(state[key][name], expected[key][name])
            else:
                assert state[key] == expected[key]
    assert refused > 100


NAMES = ["a", "a.npy", "with\0nul", "x/../y", "é ü 名", "", "\udc80", "header"]


def test_any_parameter_names_round_trip(tmp_path):
    """Names that collided once the zip member names were made of them (`a` and `a.npy`) or that
    zip cannot hold (a NUL) are kept only in the header."""
    def make():
        return LazyAdam([Parameter(np.full((2, 2), k, np.float32), name=name)
                         for k, name in enumerate(NAMES)], learning_rate=0.1)
    opt = make()
    opt([np.full((2, 2), k + 1.0, np.float32) for k in range(len(NAMES))])
    path = tmp_path / "names.npz"
    opt.save(path)
    resumed = make()
    resumed.load(path)
    assert_same_state(opt, resumed)
    assert [p.name for p in resumed.parameters] == NAMES


def test_version_1_files_are_still_read(tmp_path):
    """Version 1 named its members by parameter name."""
    opt = build()
    opt(batches(1)[0])
    state = opt.state_dict()
    arrays = {f"{s}/{n}": a for s in checkpoint.SECTIONS[:3] for n, a in state[s].items()}
    header = {"format": checkpoint.FORMAT, "version": 1,
              **{k: state[k] for k in ("global_step", "beta1_power", "beta2_power", "beta1",
                                       "beta2", "amsgrad")},
              "parameters": [{"name": n, "shape": list(a.shape), "dtype": str(a.dtype)}
                             for n, a in state["parameters"].items()],
              "payload_sha256": checkpoint._digest(arrays)}
    path = tmp_path / "v1.npz"
    np.savez(path, header=np.frombuffer(json.dumps(header).encode(), np.uint8), **arrays)
    resumed = build(seed=4)
    resumed.load(path)
    assert_same_state(opt, resumed)


KILLED_SAVE = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from test_checkpoint import batches, build
    from lazyadam.runtime import checkpoint
    opt = build()
    opt(batches(1)[0])
    checkpoint.os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
    opt.save({path!r})
""")


def test_the_next_save_removes_what_killed_saves_left(tmp_path):
    path = tmp_path / "state.npz"
    build().save(path)
    for _ in range(3):  # each save, killed too, removes what the last one left
        script = KILLED_SAVE.format(tests=os.path.dirname(__file__), path=str(path))
        result = subprocess.run([sys.executable, "-c", script], capture_output=True)
        assert result.returncode == -9, result.stderr
        left = [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
        assert len(left) == 1, left
    alive = tmp_path / f".state.npz.{socket.gethostname()}.{os.getpid()}.abcdefgh.tmp"
    elsewhere = tmp_path / ".state.npz.another-host.1.abcdefgh.tmp"
    other_file = tmp_path / f".other.npz.{socket.gethostname()}.{left[0].split('.')[-3]}.x.tmp"
    for kept in (alive, elsewhere, other_file):
        kept.write_bytes(b"")
    build().save(path)
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["state.npz", alive.name, elsewhere.name, other_file.name])


def test_a_long_run_with_a_small_beta1_resumes_from_its_checkpoint(tmp_path):
    """beta1_power = beta1^t underflows to 0.0 (at 0.4 after about 810 steps, at 0.01 after 162);
    the checkpoint stays valid."""
    def make():
        return LazyAdam([Parameter(np.ones(3, np.float32), name="w")], learning_rate=1e-3,
                        beta1=0.01)
    opt = make()
    grads = [np.full(3, 0.5, np.float32)]
    for _ in range(170):
        opt(grads)
    assert opt.beta1_power == 0.0
    path = tmp_path / "long.npz"
    opt.save(path)
    resumed = make()
    resumed.load(path)
    assert_same_state(opt, resumed)
    opt(grads)
    resumed(grads)
    assert_same_state(opt, resumed)


def _digests(state: dict) -> tuple:
    """The step of a state dict, its beta powers and a digest of each of its arrays."""
    return (state["global_step"], state["beta1_power"], state["beta2_power"],
            *(zlib.crc32(state[key]["w"]) for key in ("parameters", "moment1", "moment2")))


@pytest.mark.parametrize("use_locking", [False, True])
def test_a_checkpoint_taken_during_steps_is_a_consistent_snapshot(tmp_path, use_locking):
    """While one thread steps, another takes state_dict()s, and saves: each holds the parameters
    and moments of the step it records, bitwise those of a sequential twin after that many steps
    (with use_locking=False, a quarter recorded step k with the arrays of step k-1, or a mix)."""
    steps, size = 120, 500_000
    rng = np.random.default_rng(5)
    initial = rng.standard_normal(size).astype(np.float32)
    grads = [rng.standard_normal(size).astype(np.float32) for _ in range(3)]
    twin = LazyAdam([Parameter(initial.copy(), name="w")], learning_rate=0.01,
                    use_locking=use_locking)
    expected = [_digests(twin.state_dict())]
    for k in range(steps):
        twin((grads[k % 3],))
        expected.append(_digests(twin.state_dict()))
    opt = LazyAdam([Parameter(initial.copy(), name="w")], learning_rate=0.01,
                   use_locking=use_locking)
    done = threading.Event()
    failures: list[BaseException] = []

    def step() -> None:
        try:
            for k in range(steps):
                opt((grads[k % 3],))
                time.sleep(0.001)  # a lock is not fair: let the snapshots in between steps too
        except BaseException as error:  # noqa: BLE001 (reported by the main thread)
            failures.append(error)
        finally:
            done.set()

    stepper = threading.Thread(target=step)
    snapshots = []
    stepper.start()
    while not done.is_set():
        snapshots.append(_digests(opt.state_dict()))
        if len(snapshots) % 8 == 0:
            opt.save(tmp_path / "during.ckpt")
            restored = LazyAdam([Parameter(np.zeros(size, np.float32), name="w")])
            restored.load(tmp_path / "during.ckpt")
            snapshots.append(_digests(restored.state_dict()))
    stepper.join()
    assert not failures, failures
    assert len(snapshots) > 3
    inconsistent = [s[0] for s in snapshots if s != expected[s[0]]]
    assert not inconsistent, (f"{len(inconsistent)} of {len(snapshots)} snapshots hold other "
                              f"arrays than their steps': steps {inconsistent}")
