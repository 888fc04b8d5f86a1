"""The CUDA kernels on a real GPU, and LazyAdam on CUDA tensors: against the numpy reference and
against torch.optim.

Marked `cuda`; skipped, with the reason, without nvcc, a driver, a GPU, or a library to hold device
arrays (PyTorch with CUDA, CuPy, or pycuda). Between GPU runs, tests/test_cuda_emulation.py runs the
same kernel code on the CPU.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import lazyadam
from lazyadam import HParams, LazyAdam, Parameter, RowTensor, Spec
from lazyadam.targets import nvcc
import product
from lazyadam.targets.base import hparams_of
from reference import lazyadam_step
from runtime_reference import simulate
from test_cuda_dense_rows import arrays_of, call

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
    problem = nvcc.unavailable()
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


def test_gpu_lazyadam_on_torch_tensors(device, rng, tmp_path):
    """The optimizer end to end on CUDA tensors: a sparse table held by an `nn.Parameter`
    (trained in place), a centralized dense matrix, groups and amsgrad, against the numpy
    reference; moments on the parameters' device; state and checkpoints through host memory; a bad
    index on the device changes nothing."""
    if device.name != "torch":
        pytest.skip("LazyAdam's device path is checked here on torch CUDA tensors")
    torch = device.torch
    initial = [rng.standard_normal((300, 8)).astype(np.float32),
               rng.standard_normal((16, 9)).astype(np.float32)]
    weight = torch.nn.Parameter(torch.tensor(initial[0], device="cuda"))

    def make(table_data, dense_data):
        table = Parameter(table_data, name="embedding")
        dense = Parameter(dense_data, name="dense")
        return LazyAdam([{"params": [table], "weight_decay": 0.01},
                         {"params": [dense], "grad_centralization": True}],
                        learning_rate=0.01, amsgrad=True)

    opt = make(weight, device.put(initial[1]))
    for moment in opt.moment1 + opt.moment2 + opt.vmax:
        assert moment.data.is_cuda and moment.data.device == weight.device
    steps = []
    for _ in range(4):
        indices = (rng.zipf(1.2, 500) % 300).astype(np.int64)
        steps.append([(indices, rng.standard_normal((500, 8)).astype(np.float32)),
                      rng.standard_normal((16, 9)).astype(np.float32)])
    for (indices, values), dense_grad in steps:
        opt((RowTensor(device.put(indices), device.put(values), (300, 8)), device.put(dense_grad)))
    expected = simulate(initial, steps, lr_at=lambda k, i: 0.01,
                        wd_at=lambda k, i: 0.01 if i == 0 else 0.0, centralize=(1,), amsgrad=True)
    params, m, v, vmax = expected[:4]
    for i, param in enumerate(opt.parameters):
        assert_close(param.asnumpy(), params[i], "float32", param.name)
        assert_close(opt.moment1[i].asnumpy(), m[i], "float32", f"moment1 of {param.name}")
        assert_close(opt.moment2[i].asnumpy(), v[i], "float32", f"moment2 of {param.name}")
        assert_close(opt.vmax[i].asnumpy(), vmax[i], "float32", f"vmax of {param.name}")
    assert_close(device.get(weight.detach()), params[0], "float32", "the user's nn.Parameter")

    state = opt.state_dict()
    assert all(type(a) is np.ndarray for a in state["moment1"].values())
    opt.save(tmp_path / "run.ckpt")
    for restore in (lambda o: o.load_state_dict(state), lambda o: o.load(tmp_path / "run.ckpt")):
        resumed = make(device.put(np.zeros((300, 8), np.float32)),
                       device.put(np.zeros((16, 9), np.float32)))
        pointers = [p.data.data_ptr() for p in resumed.parameters + resumed.vmax]
        restore(resumed)
        assert [p.data.data_ptr() for p in resumed.parameters + resumed.vmax] == pointers
        for ours, theirs in zip(resumed.parameters + resumed.moment2 + resumed.vmax,
                                opt.parameters + opt.moment2 + opt.vmax):
            np.testing.assert_array_equal(ours.asnumpy(), theirs.asnumpy())

    before = [p.asnumpy() for p in opt.parameters + opt.moment1 + opt.moment2 + opt.vmax]
    bad = RowTensor(device.put(np.array([0, 299, 300])), device.put(np.ones((3, 8), np.float32)),
                    (300, 8))
    with pytest.raises(IndexError, match=r"indices\[2\] = 300 is outside \[0, 300\)"):
        opt((bad, device.put(np.ones((16, 9), np.float32))))
    after = [p.asnumpy() for p in opt.parameters + opt.moment1 + opt.moment2 + opt.vmax]
    for a, b in zip(after, before):
        np.testing.assert_array_equal(a, b)
    assert opt.global_step == 4


# --- the sparse pipeline on a GPU: its order, bitwise agreement with C, graphs ------------------
@pytest.mark.parametrize("spec", [Spec(sparse=True), Spec(sparse=True, use_locking=True, decay="l2")],
                         ids=lambda s: s.symbol())
def test_gpu_sums_in_the_documented_order(device, spec, rng):
    """As tests/test_summation_order.py: m after one step is one rounding of (1 - beta1) times the
    float32 chunked sum, for rows seen 1, C-1, C, C+1 and 10,000 times."""
    from test_summation_order import COUNTS, HYPER as ORDER_HYPER, expected_m, gradient
    kernel = lazyadam.compile(spec, "cuda")
    indices, values, rows = gradient(rng)
    state = [device.put(np.zeros((len(COUNTS), values.shape[1]), np.float32)) for _ in range(3)]
    kernel(*state, (device.put(indices), device.put(values)), HParams.at_step(1, **ORDER_HYPER))
    m = device.get(state[1])
    for r, occurrences in rows.items():
        np.testing.assert_array_equal(m[r], expected_m(occurrences), err_msg=f"{COUNTS[r]} times")


@pytest.mark.parametrize("spec", [
    Spec(sparse=True, decay="l2", nesterov=True),
    Spec(sparse=True, amsgrad=True, maximize=True, eps_mode="pytorch", index_dtype="int32"),
    Spec(sparse=True, decay="decoupled", dtype="float64"),
    Spec(sparse=True, use_locking=True, decay="l2"),
], ids=lambda s: s.symbol())
def test_gpu_sparse_steps_equal_the_c_kernels_bitwise(device, spec, rng):
    """Zipf rows (the hottest thousands of times, so chunks are summed in parallel) over three
    steps: the GPU gives the C kernels' bits (no fused multiply-add, the same summation order)."""
    c_kernel, gpu_kernel = lazyadam.compile(spec), lazyadam.compile(spec, "cuda")
    var0 = rng.standard_normal((2000, 70)).astype(spec.dtype)
    host = [var0.copy()] + [np.zeros_like(var0) for _ in range(3 if spec.amsgrad else 2)]
    gpu = [device.put(a) for a in host]
    for t in range(1, 4):
        idx = ((rng.zipf(1.1, 20_000) - 1) % 2000).astype(spec.index_dtype)
        grad = (idx, rng.standard_normal((idx.size, 70)).astype(spec.dtype))
        hp = HParams.at_step(t, **HYPER)
        c_kernel(*host[:3], grad, hp, vmax=host[3] if spec.amsgrad else None)
        gpu_kernel(*gpu[:3], (device.put(grad[0]), device.put(grad[1])), hp,
                   vmax=gpu[3] if spec.amsgrad else None)
    for name, a, b in zip(("var", "m", "v", "vmax"), host, gpu):
        np.testing.assert_array_equal(device.get(b), a, err_msg=name)


@pytest.mark.parametrize("spec", [
    Spec(sparse=True, dtype="bfloat16", state_dtype="bfloat16", rounding="stochastic",
         decay="l2", amsgrad=True),
    Spec(sparse=True, dtype="float16", grad_dtype="float32", rounding="stochastic",
         use_locking=True, decay="l2"),
    Spec(sparse=False, dtype="bfloat16", rounding="stochastic", nesterov=True),
    Spec(sparse=False, dtype="float16", state_dtype="bfloat16", decay="decoupled"),
], ids=lambda s: s.symbol())
def test_gpu_half_precision_steps_equal_the_c_kernels_bitwise(device, spec, rng):
    """bfloat16 and float16 storage, stochastic rounding, on torch CUDA tensors: the toolkit's
    conversions and the shared hash give the C kernels' bits."""
    if device.name != "torch":
        pytest.skip("bfloat16 device arrays are made with torch here")
    import ml_dtypes
    torch = device.torch
    numpy_of = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16, "float32": np.float32}

    def put(a):
        if a.dtype == ml_dtypes.bfloat16:
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16).cuda()
        return device.put(a)

    def bits(t):
        host = t.cpu()
        return (host.view(torch.int16) if host.dtype == torch.bfloat16 else host).numpy()

    c_kernel, gpu_kernel = lazyadam.compile(spec), lazyadam.compile(spec, "cuda")
    shape = (2000, 70) if spec.sparse else (7, 70001)
    var0 = rng.standard_normal(shape).astype(numpy_of[spec.dtype])
    state = numpy_of[spec.storage("m")]
    host = [var0.copy()] + [np.zeros(shape, state) for _ in range(3 if spec.amsgrad else 2)]
    gpu = [put(a) for a in host]
    for t in range(1, 4):
        values = numpy_of[spec.storage("grad")]
        if spec.sparse:
            idx = ((rng.zipf(1.1, 20_000) - 1) % 2000).astype(spec.index_dtype)
            grad = (idx, rng.standard_normal((idx.size, 70)).astype(values))
            device_grad = (device.put(grad[0]), put(grad[1]))
        else:
            grad = rng.standard_normal(shape).astype(values)
            device_grad = put(grad)
        hp = HParams.at_step(t, seed=41, **HYPER)
        c_kernel(*host[:3], grad, hp, vmax=host[3] if spec.amsgrad else None)
        gpu_kernel(*gpu[:3], device_grad, hp, vmax=gpu[3] if spec.amsgrad else None)
    for name, a, b in zip(("var", "m", "v", "vmax"), host, gpu):
        np.testing.assert_array_equal(bits(b), a.view(bits(b).dtype), err_msg=name)


#: Each rule of the family (lazyadam/rules) with options that keep its state busy.
FAMILY_OPTIONS = {"sgd": dict(momentum=True, dampening=True, decay="l2"),
                  "adagrad": dict(decay="l2", maximize=True),
                  "rowwise_adagrad": dict(decay="decoupled"),
                  "partial_rowwise_adam": dict(nesterov=True, amsgrad=True),
                  "lion": dict(decay="decoupled")}
FAMILY_SPECS = [rule.spec(sparse=sparse, dtype=dtype, **FAMILY_OPTIONS[name]).validate()
                for name, rule in product.RULES.items()
                for sparse, dtype in ((False, "float32"), (True, "float32"), (True, "float64"))]


@pytest.mark.parametrize("spec", FAMILY_SPECS, ids=lambda s: s.symbol())
def test_gpu_family_steps_equal_the_c_kernels_bitwise(device, spec, rng):
    """SGD, Adagrad, rowwise Adagrad, partial-rowwise Adam and Lion over three steps, dense (a
    warp a row where the rule has row sums or row state) and on Zipf rows (the hottest seen
    thousands of times: chunk sums in parallel): the GPU gives the C kernels' bits."""
    c_kernel, gpu_kernel = lazyadam.compile(spec), lazyadam.compile(spec, "cuda")
    rows, row_size = 2000, 70
    host = arrays_of(spec, rng, rows, row_size)
    gpu = {name: device.put(a) for name, a in host.items()}
    for t in range(1, 4):
        if spec.sparse:
            idx = ((rng.zipf(1.1, 20_000) - 1) % rows).astype(spec.index_dtype)
            grad = (idx, rng.standard_normal((idx.size, row_size)).astype(spec.dtype))
        else:
            grad = rng.standard_normal((rows, row_size)).astype(spec.dtype)
        hp = hparams_of(spec.RULE).at_step(t, **product.FAMILY_HYPER[spec.RULE.name])
        call(c_kernel, host, grad, hp)
        gpu_grad = tuple(map(device.put, grad)) if spec.sparse else device.put(grad)
        call(gpu_kernel, gpu, gpu_grad, hp)
    for name, a in host.items():
        np.testing.assert_array_equal(device.get(gpu[name]), a, err_msg=name)


@pytest.mark.parametrize("spec", [s for s in FAMILY_SPECS if not s.sparse],
                         ids=lambda s: s.symbol())
def test_gpu_family_multi_tensor_launches_equal_one_c_call_per_tensor(device, spec, rng):
    """`kernel.multi` over tensors of mixed shapes (an empty one, a single element, rows longer
    than a warp) against the C kernel on each tensor, bit for bit."""
    c_kernel, gpu_kernel = lazyadam.compile(spec), lazyadam.compile(spec, "cuda")
    shapes = [(3, 1), (0, 4), (5, 37), (2, 70), (1, 1), (300, 129)]
    tensors = [arrays_of(spec, rng, *shape) for shape in shapes]
    grads = [rng.standard_normal(shape).astype(spec.dtype) for shape in shapes]
    hp = hparams_of(spec.RULE).at_step(2, **product.FAMILY_HYPER[spec.RULE.name])
    on_gpu = [{name: device.put(a) for name, a in state.items()} for state in tensors]
    rule = spec.RULE
    each = {s.name: [state[s.name] for state in on_gpu] for s in rule.state if s.name in on_gpu[0]}
    gpu_kernel.multi([state["var"] for state in on_gpu],
                     *(each[s.name] for s in rule.state if s.when is None),
                     [device.put(g) for g in grads], hp,
                     **{s.names.get("plural", f"{s.name}s"): each[s.name] for s in rule.state
                        if s.when is not None and s.name in each})
    for state, gpu_state, grad in zip(tensors, on_gpu, grads):
        call(c_kernel, state, grad, hp)
        for name, a in state.items():
            np.testing.assert_array_equal(device.get(gpu_state[name]), a, err_msg=name)


def test_gpu_deferred_steps_capture_and_replay_in_a_cuda_graph(device, rng):
    """A deferred sparse step (caller's workspace and record) captured by torch.cuda.graph and
    replayed gives bitwise what eager steps give; a captured bad index writes nothing on replay and
    is reported by check()."""
    if device.name != "torch":
        pytest.skip("CUDA graphs are captured with torch.cuda.graph here")
    torch = device.torch
    kernel = lazyadam.compile(Spec(sparse=True, decay="l2"), "cuda")
    rows, dim, nnz = 5000, 64, 30_000
    idx = torch.tensor(((rng.zipf(1.1, nnz) - 1) % rows).astype(np.int64), device="cuda")
    vals = torch.tensor(rng.standard_normal((nnz, dim)).astype(np.float32), device="cuda")
    w0 = torch.tensor(rng.standard_normal((rows, dim)).astype(np.float32), device="cuda")
    hp = HParams.at_step(1, **HYPER)
    eager = [w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0)]
    graphed = [w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0)]
    workspace = torch.empty(kernel.workspace_size(rows, dim, nnz), dtype=torch.uint8, device="cuda")
    record = torch.zeros(kernel.RECORD_WORDS, dtype=torch.int64, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up outside the capture
        kernel(*[t.clone() for t in graphed], (idx, vals), hp, record=record, workspace=workspace)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        kernel(*graphed, (idx, vals), hp, record=record, workspace=workspace)
    for _ in range(5):
        graph.replay()
        kernel(*eager, (idx, vals), hp)
    torch.cuda.synchronize()
    for a, b in zip(eager, graphed):
        assert torch.equal(a, b)
    kernel.check(record)

    idx.copy_(torch.tensor(np.r_[np.zeros(nnz - 1), rows].astype(np.int64), device="cuda"))
    before = [t.clone() for t in graphed]
    graph.replay()
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(before, graphed):
        assert torch.equal(a, b)
    with pytest.raises(IndexError, match=rf"indices\[{nnz - 1}\] = {rows} is outside \[0, {rows}\)"):
        kernel.check(record)
    kernel.check(record)
