"""The CUDA kernels on a real GPU: against the numpy reference and against torch.optim.

Marked `cuda`; skipped, with the reason, without nvcc, a driver, a GPU, or a library to hold device
arrays (PyTorch with CUDA, CuPy, or pycuda). Between GPU runs, tests/test_cuda_emulation.py runs the
same kernel code on the CPU.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import lazyadam
from lazyadam import HParams, Spec
from lazyadam.targets import cuda
from reference import lazyadam_step

from tolerance import assert_close

pytestmark = pytest.mark.cuda

FLAGS = dict(nesterov=(False, True), decay=("none", "l2", "decoupled"), amsgrad=(False, True),
             maximize=(False, True), eps_mode=("mindspore", "pytorch"))
LAYOUTS = [(False, "float32", "int64"), (False, "float64", "int64"), (True, "float32", "int32"),
           (True, "float32", "int64"), (True, "float64", "int64")]
SPECS = [Spec(sparse=s, dtype=d, index_dtype=i, **dict(zip(FLAGS, values)))
         for s, d, i in LAYOUTS for values in itertools.product(*FLAGS.values())]
SPECS += [Spec(sparse=s, use_locking=True) for s in (False, True)]
HYPER = dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.05, loss_scale=4.0)


class Torch:
    name = "torch"

    def __init__(self):
        import torch
        if not torch.cuda.is_available():
            raise ImportError("torch has no CUDA")
        self.torch = torch

    def put(self, a: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(a)).cuda()

    def get(self, d) -> np.ndarray:
        return d.cpu().numpy()


class CuPy:
    name = "cupy"

    def __init__(self):
        import cupy
        self.cupy = cupy

    def put(self, a: np.ndarray):
        return self.cupy.asarray(a)

    def get(self, d) -> np.ndarray:
        return self.cupy.asnumpy(d)


class PyCuda:
    name = "pycuda"

    def __init__(self):
        import pycuda.autoprimaryctx  # noqa: F401  (the primary context, shared with the kernels)
        import pycuda.gpuarray
        self.gpuarray = pycuda.gpuarray

    def put(self, a: np.ndarray):
        return self.gpuarray.to_gpu(np.ascontiguousarray(a))

    def get(self, d) -> np.ndarray:
        return d.get()


@pytest.fixture(scope="module")
def device():
    problem = cuda.unavailable()
    if problem:
        pytest.skip(f"CUDA target unavailable: {problem}")
    tried = []
    for library in (Torch, CuPy, PyCuda):
        try:
            return library()
        except ImportError as err:
            tried.append(f"{library.name}: {err}")
    pytest.skip("no library to hold device arrays (" + "; ".join(tried) + ")")


def reference_step(ref, grad, hp, spec):
    indices, values = grad if spec.sparse else (None, grad)
    return lazyadam_step(*ref[:3], values, indices=indices, vmax=ref[3], lr=hp.lr,
                         beta1=hp.beta1, beta2=hp.beta2, eps=hp.eps, beta1_power=hp.beta1_power,
                         beta2_power=hp.beta2_power, weight_decay=hp.weight_decay,
                         loss_scale=hp.loss_scale, nesterov=spec.nesterov, decay=spec.decay,
                         amsgrad=spec.amsgrad, maximize=spec.maximize, eps_mode=spec.eps_mode)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.symbol())
def test_gpu_kernel_matches_reference(device, spec, rng):
    kernel = lazyadam.compile(spec, "cuda")
    shape = (300, 3, 45) if spec.sparse else (7, 70001)  # sparse rows of 135; dense tails
    var0 = rng.standard_normal(shape).astype(spec.dtype)
    state = [device.put(var0)] + [device.put(np.zeros(shape, spec.dtype)) for _ in range(2)]
    state.append(device.put(np.zeros(shape, spec.dtype)) if spec.amsgrad else None)
    ref = [var0.astype(np.float64), np.zeros(shape), np.zeros(shape),
           np.zeros(shape) if spec.amsgrad else None]
    for t in range(1, 4):
        hp = HParams.at_step(t, **HYPER)
        if spec.sparse:
            idx = (rng.zipf(1.2, 5000) % shape[0]).astype(spec.index_dtype)
            grad = (idx, rng.standard_normal((idx.size,) + shape[1:]).astype(spec.dtype))
            device_grad = (device.put(grad[0]), device.put(grad[1]))
        else:
            grad = rng.standard_normal(shape).astype(spec.dtype)
            device_grad = device.put(grad)
        kernel(*state[:3], device_grad, hp, vmax=state[3])
        ref = reference_step(ref, grad, hp, spec)
    for name, actual, expected in zip(("var", "m", "v", "vmax"), state, ref):
        if expected is not None:
            assert_close(device.get(actual), expected, spec.dtype, name)


def test_gpu_bad_index_raises_and_writes_nothing(device):
    kernel = lazyadam.compile(Spec(sparse=True), "cuda")
    state = [device.put(np.full((5, 4), k, np.float32)) for k in range(3)]
    bad = (device.put(np.array([0, 3, 5, 1])), device.put(np.ones((4, 4), np.float32)))
    with pytest.raises(IndexError, match=r"indices\[2\] = 5 is outside \[0, 5\)"):
        kernel(*state, bad, HParams.at_step(1))
    for k, arr in enumerate(state):
        np.testing.assert_array_equal(device.get(arr), k)


def test_gpu_multi_tensor_launch(device, rng):
    spec = Spec(sparse=False, nesterov=True)
    kernel = lazyadam.compile(spec, "cuda")
    sizes = [1, 4097, 16384, 16385, 0, 3, 65537] * 3
    hp = HParams.at_step(1, **HYPER)
    hosts = [(rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32))
             for n in sizes]
    tensors = [[device.put(w), device.put(np.zeros_like(w)), device.put(np.zeros_like(w))]
               for w, _ in hosts]
    kernel.multi(*zip(*tensors), [device.put(g) for _, g in hosts], hp)
    for (w, g), (var, m, v) in zip(hosts, tensors):
        ref = reference_step([w.astype(np.float64), np.zeros(w.size), np.zeros(w.size), None],
                             g, hp, spec)
        assert_close(device.get(var), ref[0], "float32", "var")


def test_gpu_matches_torch_optimizers(device, rng):
    """Adam (dense, eps_mode="pytorch") and SparseAdam (lazy; torch places its eps as MindSpore
    does, so eps_mode="mindspore") on the same GPU, several steps."""
    if device.name != "torch":
        pytest.skip("comparing with torch.optim needs torch tensors on the GPU")
    torch = device.torch
    lr, steps = 0.01, 4
    dense = lazyadam.compile(Spec(sparse=False, eps_mode="pytorch"), "cuda")
    sparse = lazyadam.compile(Spec(sparse=True, eps_mode="mindspore"), "cuda")
    w0 = torch.tensor(rng.standard_normal((64, 33)).astype(np.float32), device="cuda")
    for kernel, torch_opt in ((dense, torch.optim.Adam), (sparse, torch.optim.SparseAdam)):
        theirs = torch.nn.Parameter(w0.clone())
        opt = torch_opt([theirs], lr=lr)
        ours, m, v = w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0)
        for t in range(1, steps + 1):
            idx = torch.tensor(rng.integers(0, 64, 40), device="cuda")
            vals = torch.tensor(rng.standard_normal((40, 33)).astype(np.float32), device="cuda")
            if kernel.spec.sparse:
                theirs.grad = torch.sparse_coo_tensor(idx[None], vals, w0.shape)
                kernel(ours, m, v, (idx, vals), HParams.at_step(t, lr=lr))
            else:
                grad = torch.zeros_like(w0).index_add_(0, idx, vals)
                theirs.grad = grad
                kernel(ours, m, v, grad, HParams.at_step(t, lr=lr))
            opt.step()
        torch.testing.assert_close(ours, theirs.detach(), rtol=1e-5, atol=1e-6)


def test_gpu_runs_on_the_given_stream(device, rng):
    if device.name != "torch":
        pytest.skip("stream objects are taken from torch here")
    torch = device.torch
    kernel = lazyadam.compile(Spec(sparse=False), "cuda")
    w = rng.standard_normal(1 << 20).astype(np.float32)
    g = rng.standard_normal(1 << 20).astype(np.float32)
    stream = torch.cuda.Stream()
    state = [device.put(w), device.put(np.zeros_like(w)), device.put(np.zeros_like(w))]
    grad = device.put(g)
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        kernel(*state, grad, HParams.at_step(1))  # None: torch's current stream, i.e. `stream`
    stream.synchronize()
    hp = HParams.at_step(1)
    ref = reference_step([w.astype(np.float64), np.zeros(w.size), np.zeros(w.size), None], g, hp,
                         Spec(sparse=False))
    assert_close(device.get(state[0]), ref[0], "float32", "var")
