"""The C kernels: known values, long rows, workspaces, thread counts and torch cross-checks. Every
variant against the reference: tests/test_kernel_reference.py; bad input: tests/test_bad_input.py."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import lazyadam
import openmp
from lazyadam import HParams, Spec
from lazyadam.codegen import SUM_CHUNK
from reference import lazyadam_step

from tolerance import assert_close

HYPER = dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.05, loss_scale=4.0)


def run_kernel_and_reference(kernel, spec, rng, shape, grads):
    """Runs `grads` through the kernel and the reference."""
    var0 = rng.standard_normal(shape).astype(spec.dtype)
    var, m, v = var0.copy(), np.zeros_like(var0), np.zeros_like(var0)
    vmax = np.zeros_like(var0) if spec.amsgrad else None
    ref = (var0.astype(np.float64), np.zeros(shape), np.zeros(shape),
           np.zeros(shape) if spec.amsgrad else None)
    flags = dict(nesterov=spec.nesterov, decay=spec.decay, amsgrad=spec.amsgrad,
                 maximize=spec.maximize, eps_mode=spec.eps_mode)
    for t, grad in enumerate(grads, start=1):
        hp = HParams.at_step(t, **HYPER)
        kernel(var, m, v, grad, hp, vmax=vmax)
        indices, values = grad if spec.sparse else (None, grad)
        ref = lazyadam_step(*ref[:3], values, indices=indices, vmax=ref[3], lr=hp.lr,
                            beta1=hp.beta1, beta2=hp.beta2, eps=hp.eps,
                            beta1_power=hp.beta1_power, beta2_power=hp.beta2_power,
                            weight_decay=hp.weight_decay, loss_scale=hp.loss_scale, **flags)
    return (var, m, v, vmax), ref


# Known values of docs/semantics.md (kernel level: beta1_power = 0.9, beta2_power = 0.999 passed
# in).
KNOWN_HP = HParams(lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, loss_scale=1.0,
                   beta1_power=0.9, beta2_power=0.999)


@pytest.mark.parametrize("nesterov, expected", [(False, 0.9997121), (True, 0.99973774)])
def test_known_sparse_values(nesterov, expected):
    kernel = lazyadam.compile(Spec(sparse=True, nesterov=nesterov))
    var, m, v = (np.ones((3, 1, 2), np.float32) for _ in range(3))
    kernel(var, m, v, (np.array([0, 1]), np.full((2, 1, 2), 0.1, np.float32)), KNOWN_HP)
    np.testing.assert_allclose(var[:2], expected, rtol=1e-7)
    np.testing.assert_allclose(m[:2], 0.91, rtol=1e-7)
    np.testing.assert_allclose(v[:2], 0.99901, rtol=1e-7)
    for arr in (var, m, v):
        np.testing.assert_array_equal(arr[2], 1.0)


def test_known_dense_value():
    kernel = lazyadam.compile(Spec(sparse=False))
    var, m, v = (np.ones((2, 2), np.float32) for _ in range(3))
    kernel(var, m, v, np.ones((2, 2), np.float32), KNOWN_HP)
    np.testing.assert_allclose(var, 0.9996838, rtol=1e-7)


def test_duplicate_row_is_decayed_per_occurrence():
    """docs/semantics.md: wd*w is added per occurrence, before duplicates are summed."""
    kernel = lazyadam.compile(Spec(sparse=True, decay="l2", dtype="float64"))
    var = np.array([[2.0], [3.0]])
    m, v = np.zeros_like(var), np.zeros_like(var)
    hp = HParams.at_step(1, lr=0.1, weight_decay=0.5)
    kernel(var, m, v, (np.array([1, 1]), np.array([[1.0], [1.0]])), hp)
    g = 2 * (1.0 + 0.5 * 3.0)  # decayed twice
    assert m[1, 0] == pytest.approx(0.1 * g, rel=1e-15)
    assert var[0, 0] == 2.0


def test_static_and_runtime_hyperparameters_agree_bitwise(rng):
    """Folding a static value computes the same double the prologue would: identical output."""
    static = {"beta1": 0.85, "beta2": 0.995, "eps": 1e-7, "loss_scale": 8.0, "weight_decay": 0.01}
    hp = HParams.at_step(2, lr=0.003, beta1=0.85, beta2=0.995, eps=1e-7, weight_decay=0.01,
                         loss_scale=8.0)
    results = []
    for spec in (Spec(sparse=True, decay="l2", nesterov=True),
                 Spec(sparse=True, decay="l2", nesterov=True, static=static)):
        data = np.random.default_rng(1)
        var = data.standard_normal((20, 16)).astype(np.float32)
        m, v = np.zeros_like(var), np.zeros_like(var)
        idx = np.array([3, 7, 3, 19])
        lazyadam.compile(spec)(var, m, v, (idx, data.standard_normal((4, 16)).astype(np.float32)),
                               hp)
        results.append((var, m, v))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("loss_scale", [4.0, 2.0 ** -20, 3.0, 2.0 ** 127])
def test_dense_steps_divide_by_the_loss_scale_bitwise(loss_scale, rng):
    """A power-of-two loss scale whose inverse float32 holds takes a loop that multiplies by the
    inverse (2^127's does not, nor 3's): either way m holds the float32 quotient's bits. With
    beta1 = 0.75, m after one step from zero is 0.75 * 0 + 0.25 * (grad / loss_scale)."""
    kernel = lazyadam.compile(Spec(sparse=False))
    bits = rng.integers(0, 2**32, 100_000, dtype=np.uint64).astype(np.uint32)
    grad = bits.view(np.float32)
    grad = np.where(np.isfinite(grad), grad, np.float32(1.0)).astype(np.float32)
    var, m, v = (np.zeros_like(grad) for _ in range(3))
    hp = HParams(lr=0.0, beta1=0.75, beta2=0.5, eps=1.0, weight_decay=0.0, loss_scale=loss_scale,
                 beta1_power=0.75, beta2_power=0.5)
    kernel(var, m, v, grad, hp)
    with np.errstate(over="ignore"):  # large gradients over 2^-20 are inf, in the kernel too
        quotient = grad / np.float32(loss_scale)
    expected = np.float32(0.75) * np.float32(0) + np.float32(0.25) * quotient
    np.testing.assert_array_equal(m.view(np.uint32), expected.view(np.uint32))


THREADS_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import lazyadam
    from lazyadam import HParams, Spec

    rng = np.random.default_rng(7)
    out = []
    for spec in (Spec(sparse=True, decay="l2"), Spec(sparse=False)):
        var = rng.standard_normal((5000, 33)).astype(np.float32)
        m, v = np.zeros_like(var), np.zeros_like(var)
        kernel = lazyadam.compile(spec)
        for t in range(1, 4):
            if spec.sparse:
                idx = (rng.zipf(1.3, 20000) % 5000).astype(np.int64)
                grad = (idx, rng.standard_normal((idx.size, 33)).astype(np.float32))
            else:
                grad = rng.standard_normal(var.shape).astype(np.float32)
            kernel(var, m, v, grad, HParams.at_step(t, weight_decay=0.1))
        out += [var, m, v]
    sys.stdout.buffer.write(b"".join(a.tobytes() for a in out))
""")


def test_result_does_not_depend_on_thread_count():
    outputs = []
    for threads in ("1", "2"):
        env = {**__import__("os").environ, "OMP_NUM_THREADS": threads,
               "LAZYADAM_PARALLEL_MIN": "0"}  # these small steps in parallel too
        proc = subprocess.run([sys.executable, "-c", THREADS_SCRIPT], capture_output=True, env=env,
                              check=True)
        outputs.append(proc.stdout)
    assert len(outputs[0]) > 0 and outputs[0] == outputs[1]


@pytest.mark.parametrize("spec", [
    Spec(sparse=True),
    Spec(sparse=True, nesterov=True, decay="l2", amsgrad=True, index_dtype="int32"),
    Spec(sparse=True, decay="decoupled", maximize=True, eps_mode="pytorch", dtype="float64"),
    Spec(sparse=True, use_locking=True, decay="l2"),  # long rows summed by the updating thread
    Spec(sparse=True, use_locking=True, nesterov=True),
], ids=lambda s: s.symbol())
def test_rows_longer_than_a_chunk_match_reference(spec, rng):
    """Zipf rows: the hottest are seen over a thousand times, so they are cut into chunks (summed in
    parallel, or by one thread for locked rows with L2 decay)."""
    kernel = lazyadam.compile(spec)
    grads = []
    for _ in range(3):
        idx = ((rng.zipf(1.3, 6000) - 1) % 300).astype(spec.index_dtype)
        grads.append((idx, rng.standard_normal((idx.size, 5)).astype(spec.dtype)))
    assert np.bincount(grads[0][0]).max() > 4 * SUM_CHUNK
    out, ref = run_kernel_and_reference(kernel, spec, rng, (300, 5), grads)
    for name, actual, expected in zip(("var", "m", "v", "vmax"), out, ref):
        if expected is not None:
            assert_close(actual, expected, spec.dtype, name)


def test_a_sparse_step_runs_in_a_workspace_the_caller_allocates(rng):
    """The scratch of a step can be allocated before it runs; one sized for a single thread also
    serves (the step then runs on one thread, with the same result); too small is refused."""
    spec = Spec(sparse=True, decay="l2", parallel_min=0)  # this small step in parallel too
    kernel = lazyadam.compile(spec)
    idx = ((rng.zipf(1.2, 3000) - 1) % 400).astype(np.int64)
    grad = (idx, rng.standard_normal((idx.size, 16)).astype(np.float32))
    hp = HParams.at_step(1, weight_decay=0.1).as_tuple()
    var0 = rng.standard_normal((400, 16)).astype(np.float32)
    states = [[var0.copy(), np.zeros_like(var0), np.zeros_like(var0)] for _ in range(3)]
    with openmp.threads(2):
        size = kernel.workspace_size(400, 16, idx.size)
    with openmp.threads(1):
        one_thread = kernel.workspace_size(400, 16, idx.size)
    assert one_thread < size
    steps = [kernel.bind(*state) for state in states]
    with openmp.threads(2):
        steps[0](grad, hp)
        steps[1](grad, hp, workspace=np.empty(size, np.uint8))
        steps[2](grad, hp, workspace=np.empty(one_thread, np.uint8))
    for a, b, c in zip(*states):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    with pytest.raises(ValueError, match=f"a workspace of 100 bytes is too small for {idx.size:,} "
                                         f"indices: workspace_size"):
        steps[2](grad, hp, workspace=np.empty(100, np.uint8))
    np.testing.assert_array_equal(states[2][0], states[0][0])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_mindspore_eps_mode_matches_torch_sparse_adam(dtype, rng):
    """torch.optim.SparseAdam adds eps to sqrt(v) and folds the bias correction into the step size,
    i.e. MindSpore's placement (torch/optim/_functional.py), not Adam's."""
    torch = pytest.importorskip("torch", reason="torch is not installed: no cross-check")
    shape = (50, 8)
    var0 = rng.standard_normal(shape).astype(dtype)
    weight = torch.tensor(var0, requires_grad=True)
    opt = torch.optim.SparseAdam([weight], lr=0.01)
    kernel = lazyadam.compile(Spec(sparse=True, dtype=dtype))
    ours = [var0.copy(), np.zeros_like(var0), np.zeros_like(var0)]
    for t, idx in enumerate([np.array([3, 17, 3, 49, 0]), np.array([8, 8]), np.array([17, 2])], 1):
        vals = rng.standard_normal((len(idx), 8)).astype(dtype)
        weight.grad = torch.sparse_coo_tensor(torch.tensor(idx)[None], torch.tensor(vals), shape,
                                              check_invariants=True)
        opt.step()
        kernel(*ours, (idx, vals), HParams.at_step(t, lr=0.01))
    assert_close(ours[0], weight.detach().double().numpy(), dtype, "SparseAdam")


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse-all-rows"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_pytorch_eps_mode_matches_torch_adam(dtype, sparse, rng):
    """With eps_mode="pytorch" a kernel is torch.optim.Adam; a lazy step that touches every row (with
    duplicates) is the dense step on the summed gradient."""
    torch = pytest.importorskip("torch", reason="torch is not installed: no cross-check")
    shape = (6, 8)
    var0 = rng.standard_normal(shape).astype(dtype)
    weight = torch.tensor(var0, requires_grad=True)
    opt = torch.optim.Adam([weight], lr=0.01, amsgrad=True, maximize=True, weight_decay=0.1)
    kernel = lazyadam.compile(Spec(sparse=sparse, eps_mode="pytorch", dtype=dtype, amsgrad=True,
                                   maximize=True, decay="l2"))
    ours = [var0.copy(), np.zeros_like(var0), np.zeros_like(var0)]
    vmax = np.zeros_like(var0)
    for t in range(1, 4):
        idx = np.array([5, 0, 1, 2, 3, 4, 0])
        vals = rng.standard_normal((len(idx), 8)).astype(dtype)
        dense = np.zeros(shape, dtype)
        np.add.at(dense, idx, vals)
        # Lazy L2 decay is added per occurrence: torch is given the extra decay of repeated rows.
        repeats = np.bincount(idx, minlength=shape[0])[:, None] - 1 if sparse else 0
        weight.grad = torch.tensor((dense - 0.1 * repeats * weight.detach().numpy()).astype(dtype))
        opt.step()
        kernel(*ours, (idx, vals) if sparse else dense, HParams.at_step(t, lr=0.01, weight_decay=0.1),
               vmax=vmax)
    assert_close(ours[0], weight.detach().double().numpy(), dtype, "Adam")


@pytest.mark.parametrize("spec", [Spec(sparse=True), Spec(sparse=True, use_locking=True,
                                                          decay="l2", dtype="float64")],
                         ids=["split", "unsplit"])
def test_workspace_size_saturates_for_impossible_sizes(spec):
    """Sizes whose scratch does not fit 64 bits give SIZE_MAX, as the C comment promises (the
    partial sums' size overflowed int64 and gave 1.7e13), and the call then cannot allocate it."""
    kernel = lazyadam.compile(spec)
    assert kernel.workspace_size(300, 2**62, 2**40) == 2**64 - 1
    assert kernel.workspace_size(1, 2**61, 1) == 2**64 - 1
    assert kernel.workspace_size(2**40, 2**20, 2**20) < 2**64 - 1


