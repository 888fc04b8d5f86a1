"""Whole optimizer steps captured in a CUDA graph and replayed, for both optimizers
(`capturable=True`, `prepare_replay`, `check_indices`).

Emulated: the host emulation of the CUDA kernels (tests/cuda_emulation) records what a stream
capture records, and makes a host wait while capturing an error, as a GPU does. So on the CPU a
captured step is shown to run nothing and wait for nothing, and its replays, with hyperparameters
stored before each, are compared with the reference and with eager steps.

Marked `cuda`: the same under `torch.cuda.graph` on a GPU, skipped, with the reason, without one.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

import cuda_emulation as emulation
from lazyadam import LazyAdam, Parameter, RowTensor
from runtime_reference import simulate
from test_runtime_device import TorchOnDevice, assert_matches
from tolerance import assert_close
from unchanged import assert_same, assert_unchanged, snapshot

torch = pytest.importorskip("torch", reason="the PyTorch optimizer is captured too")
import lazyadam.torch  # noqa: E402  (after the skip: it imports torch)


def counters(control) -> tuple[int, int]:
    """Reads and resets the emulation's counters: (launches run, host waits)."""
    counts = (ctypes.c_longlong * 3)()
    control.emu_counters(counts)
    control.emu_reset_counters()
    return counts[0], counts[1]


class Capture:
    """The emulation's stream capture: `with capture:` records the work queued inside; then
    `recorded` is the number of operations recorded, `launches` and `waits` what ran and waited
    meanwhile, and `replay()` runs the recording."""

    def __init__(self, control):
        self.control = control

    def __enter__(self):
        counters(self.control)
        self.control.emu_begin_capture()
        return self

    def __exit__(self, *exc):
        self.recorded = self.control.emu_end_capture()
        self.launches, self.waits = counters(self.control)

    def replay(self):
        assert self.control.emu_replay() == 0, "a replay met a CUDA error"


@pytest.fixture
def capture(monkeypatch, emulated_cuda):
    """The emulated CUDA target, with PyTorch's question whether its current stream is being
    captured answered by the emulation (as the driver's `cuStreamIsCapturing`). Returns a
    `Capture`."""
    control = emulation.control()
    control.emu_end_capture.restype = ctypes.c_longlong

    def stream_capturing():
        status = ctypes.c_int(0)
        control.cuStreamIsCapturing(None, ctypes.byref(status))
        return bool(status.value)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", stream_capturing)
    return Capture(control)


# -- MindSpore's API: a table with sparse gradients and a dense matrix ---------------------------

ROWS, INDICES = 13, 6
LRS = [0.01, 0.02, 0.005, 0.03, 0.01, 0.02, 0.015]


def batches(rng, steps):
    """Per step: (indices, values) with duplicates and unsorted for the table, an array for the
    dense matrix; the same sizes every step, as a replayed graph needs."""
    out = []
    for _ in range(steps):
        indices = rng.integers(0, ROWS, INDICES).astype(np.int64)
        indices[1] = indices[4]
        out.append([(indices, rng.standard_normal((INDICES, 2, 3)).astype(np.float32)),
                    rng.standard_normal((4, 5)).astype(np.float32)])
    return out


def on_the_device(array: np.ndarray) -> TorchOnDevice:
    """A stand-in CUDA tensor over `array`'s memory (PyTorch tensors are the arrays whose steps
    can be captured: their kernels run on PyTorch's current stream)."""
    return torch.from_numpy(array).as_subclass(TorchOnDevice)


class StaticGradients:
    """Device gradients whose memory stays put (a graph replays with the same addresses); `fill`
    writes a batch into them."""

    def __init__(self):
        self.indices = np.zeros(INDICES, np.int64)
        self.values = np.zeros((INDICES, 2, 3), np.float32)
        self.dense = np.zeros((4, 5), np.float32)
        self.grads = [RowTensor(on_the_device(self.indices), on_the_device(self.values),
                                (ROWS, 2, 3)), on_the_device(self.dense)]

    def fill(self, batch):
        (indices, values), dense = batch
        self.indices[:], self.values[:], self.dense[:] = indices, values, dense


def device_model(rng, **flags):
    initial = [rng.standard_normal((ROWS, 2, 3)).astype(np.float32),
               rng.standard_normal((4, 5)).astype(np.float32)]
    params = [Parameter(on_the_device(a.copy()), name=n)
              for a, n in zip(initial, ("table", "dense"))]
    return initial, LazyAdam(params, learning_rate=LRS, capturable=True, **flags)


FLAGS = dict(weight_decay=0.01, amsgrad=True)


def test_a_captured_step_runs_nothing_waits_for_nothing_and_replays_as_the_reference(capture,
                                                                                    rng):
    initial, opt = device_model(rng, **FLAGS)
    steps = batches(rng, 5)
    static = StaticGradients()
    static.fill(steps[0])
    counters(capture.control)
    opt(static.grads)
    launches, waits = counters(capture.control)
    assert launches > 0 and waits == 0  # a capturable eager step never waits either

    before = snapshot(opt)
    with capture:
        opt(static.grads)
    assert capture.recorded > 0 and (capture.launches, capture.waits) == (0, 0)
    assert_unchanged(opt, before)  # recorded, not run, and not counted

    for batch in steps[1:]:
        static.fill(batch)
        opt.prepare_replay()
        capture.replay()
    expected = simulate(initial, steps, lr_at=lambda k, i: LRS[k], wd_at=lambda k, i: 0.01,
                        amsgrad=True)
    assert_matches(opt, expected, "float32", lambda d: d.detach().numpy())
    assert opt.global_step == 5


def test_replays_give_the_eager_steps_bits(capture, rng):
    """Hyperparameters stored in device memory before each replay, against the same optimizer
    stepping eagerly (which copies them into its launches): bit for bit."""
    seed = int(rng.integers(2**32))
    (_, replayed), (_, eager) = (device_model(np.random.default_rng(seed), **FLAGS)
                                 for _ in range(2))
    eager.capturable = False
    steps = batches(rng, 4)
    ours, theirs = StaticGradients(), StaticGradients()
    ours.fill(steps[0])
    replayed(ours.grads)
    with capture:
        replayed(ours.grads)
    for batch in steps[1:]:
        ours.fill(batch)
        replayed.prepare_replay()
        capture.replay()
    for batch in steps:
        theirs.fill(batch)
        eager(theirs.grads)
    assert_same(replayed, eager)


def test_a_bad_index_in_a_replay_skips_the_table_until_it_is_reported(capture, rng):
    _, opt = device_model(rng)
    steps = batches(rng, 4)
    static = StaticGradients()
    static.fill(steps[0])
    opt(static.grads)
    with capture:
        opt(static.grads)
    table, dense = (p.data.detach().numpy() for p in opt.parameters)
    for bad in (steps[1], steps[2]):  # the second replay is skipped too: the record is not clear
        bad[0][0][3] = ROWS + 4
        static.fill(bad)
        table_before, dense_before = table.copy(), dense.copy()
        opt.prepare_replay()
        capture.replay()
        np.testing.assert_array_equal(table, table_before)
        assert not np.array_equal(dense, dense_before)
    with pytest.raises(IndexError, match=r"parameter 'table'.*indices\[3\] = 17 is outside "
                                         r"\[0, 13\)"):
        opt.check_indices()
    opt.check_indices()  # reported once, then cleared
    static.fill(steps[3])
    table_before = table.copy()
    opt.prepare_replay()
    capture.replay()
    assert not np.array_equal(table, table_before)


# -- PyTorch's API: dense parameters in two groups, with a scheduler -------------------------------


def mlp():
    torch.manual_seed(5)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def torch_groups(model):
    return [{"params": list(model[0].parameters()), "weight_decay": 0.05, "amsgrad": True},
            {"params": list(model[2].parameters()), "weight_decay": 0.1,
             "decoupled_weight_decay": True}]


def set_gradients(model, step):
    """Gradients of batch `step`, written into the tensors that hold them (a graph replays the
    same memory)."""
    generator = torch.Generator().manual_seed(100 + step)
    for p in model.parameters():
        g = torch.randn(p.shape, generator=generator).to(p.device)
        if p.grad is None:
            p.grad = g
        else:
            p.grad.copy_(g)


@pytest.fixture
def on_device(monkeypatch):
    """`lazyadam.torch` sees every tensor as a device array (see tests/test_torch_device.py)."""
    monkeypatch.setattr(lazyadam.torch.tensors, "view",
                        lambda tensor, memory=None: tensor.detach().as_subclass(TorchOnDevice))


def test_torch_step_captured_and_replayed_follows_the_scheduler(capture, on_device):
    ours, theirs = mlp(), mlp()
    opt = lazyadam.torch.LazyAdam(torch_groups(ours), lr=0.01, capturable=True)
    reference = [torch.optim.Adam(ours_group["params"], lr=0.01, weight_decay=0.05, amsgrad=True)
                 if k == 0 else
                 torch.optim.AdamW(ours_group["params"], lr=0.01, weight_decay=0.1)
                 for k, ours_group in enumerate(torch_groups(theirs))]
    schedulers = [torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.5) for o in [opt] + reference]
    with pytest.raises(RuntimeError, match="has no state yet: run an eager step"), capture:
        set_gradients(ours, 0)
        opt.step()

    def eager_reference(step):
        set_gradients(theirs, step)
        for o in reference:
            o.step()

    set_gradients(ours, 0)
    opt.step()
    eager_reference(0)
    before = [p.detach().clone() for p in ours.parameters()]
    with capture:
        opt.step()
    assert capture.recorded > 0 and (capture.launches, capture.waits) == (0, 0)
    for a, b in zip(ours.parameters(), before):
        assert torch.equal(a.detach(), b)
    for step in range(1, 4):
        for s in schedulers:
            s.step()
        set_gradients(ours, step)
        opt.prepare_replay()
        capture.replay()
        eager_reference(step)
        for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
            assert_close(a.detach().numpy(), b.detach().double().numpy(), "float32",
                         f"step {step}: {name}")
    assert all(int(s["step"]) == 4 for s in opt.state.values())
    assert opt.param_groups[0]["lr"] == 0.01 * 0.5**3


def test_torch_groups_equal_at_capture_may_part_later(capture, on_device):
    """Captured, each group has its own hyperparameters in the table, even where they were equal:
    a scheduler may set them apart later, and the replays follow."""
    ours, theirs = mlp(), mlp()
    opt = lazyadam.torch.LazyAdam([{"params": list(ours[0].parameters())},
                                   {"params": list(ours[2].parameters())}], lr=0.01,
                                  capturable=True)
    reference = torch.optim.Adam([{"params": list(theirs[0].parameters())},
                                  {"params": list(theirs[2].parameters())}], lr=0.01)
    for step in range(4):
        set_gradients(ours, step)
        set_gradients(theirs, step)
        if step == 0:
            opt.step()
            with capture:
                opt.step()
        else:
            opt.param_groups[1]["lr"] = reference.param_groups[1]["lr"] = 0.01 * (step + 1)
            opt.prepare_replay()
            capture.replay()
        reference.step()
        for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
            assert_close(a.detach().numpy(), b.detach().double().numpy(), "float32",
                         f"step {step}: {name}")


# -- on a GPU ------------------------------------------------------------------------------------


@pytest.mark.cuda
def test_gpu_torch_graph_replays_match_eager_steps_bitwise(gpu):
    """A dense model's whole step under torch.cuda.graph, replayed with a scheduler's learning
    rates, against the same optimizer stepping eagerly (capturable=False): bit for bit."""
    ours, theirs = mlp().to(gpu), mlp().to(gpu)
    opt = lazyadam.torch.LazyAdam(torch_groups(ours), lr=0.01, capturable=True)
    eager = lazyadam.torch.LazyAdam(torch_groups(theirs), lr=0.01)
    schedulers = [torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.5) for o in (opt, eager)]
    for model in (ours, theirs):
        set_gradients(model, 0)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        opt.step()  # warm-up: state made outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    eager.step()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    for step in range(1, 5):
        for s in schedulers:
            s.step()
        for model in (ours, theirs):
            set_gradients(model, step)
        opt.prepare_replay()
        graph.replay()
        eager.step()
    torch.cuda.synchronize()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))
    for p, q in zip(ours.parameters(), theirs.parameters()):
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt.state[p][key], eager.state[q][key])


@pytest.mark.cuda
def test_gpu_sparse_graph_replays_and_reports_a_bad_index(gpu):
    """MindSpore's API on CUDA tensors: a table with a static batch of indices captured with a
    dense matrix; replays match the reference; a bad index skips the table's step and is raised
    by check_indices."""
    rng = np.random.default_rng(8)
    initial = [rng.standard_normal((ROWS, 2, 3)).astype(np.float32),
               rng.standard_normal((4, 5)).astype(np.float32)]
    params = [Parameter(torch.from_numpy(a.copy()).to(gpu), name=n)
              for a, n in zip(initial, ("table", "dense"))]
    opt = LazyAdam(params, learning_rate=LRS, capturable=True, **FLAGS)
    steps = batches(rng, 5)
    indices = torch.zeros(INDICES, dtype=torch.int64, device=gpu)
    values = torch.zeros((INDICES, 2, 3), device=gpu)
    dense = torch.zeros((4, 5), device=gpu)
    grads = [RowTensor(indices, values, (ROWS, 2, 3)), dense]

    def fill(batch):
        (i, v), d = batch
        indices.copy_(torch.from_numpy(i))
        values.copy_(torch.from_numpy(v))
        dense.copy_(torch.from_numpy(d))

    fill(steps[0])
    opt(grads)  # warm-up: the index record is made and zeroed outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt(grads)
    for batch in steps[1:]:
        fill(batch)
        opt.prepare_replay()
        graph.replay()
    torch.cuda.synchronize()
    opt.check_indices()
    expected = simulate(initial, steps, lr_at=lambda k, i: LRS[k], wd_at=lambda k, i: 0.01,
                        amsgrad=True)
    assert_matches(opt, expected, "float32", lambda d: d.cpu().numpy())
    bad = batches(rng, 1)[0]
    bad[0][0][3] = ROWS + 4
    fill(bad)
    table = params[0].data.clone()
    opt.prepare_replay()
    graph.replay()
    with pytest.raises(IndexError, match=r"parameter 'table'.*indices\[3\] = 17"):
        opt.check_indices()
    assert torch.equal(params[0].data, table)
