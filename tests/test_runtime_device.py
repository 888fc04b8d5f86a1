"""`LazyAdam` on device arrays, without a GPU: the CUDA target's code path run on the CPU.

Two stand-ins present host memory as device memory through `__cuda_array_interface__`:

- `FakeDeviceArray`, a numpy array behind CuPy's protocol: numpy dtypes, `get()`/`set()`, a
  `device` that is made current in a `with` block, and a module-level `empty` that allocates on
  the current device (as `cupy.empty` does);
- `TorchOnDevice`, a `torch.Tensor` subclass: PyTorch's spelling (`torch.float32`, `copy_`, `.to`,
  `mean(dim=)`, `.contiguous()`), and PyTorch's refusal of the interface on tensors that require
  grad.

`targets.compile(spec, "cuda")` is patched to give the host-emulation build of the real CUDA kernel
source (tests/cuda_emulation), loaded as the CUDA target's `CudaKernel`: so the optimizer's device
path, the kernel wrapper's checks and the launchers all run here. Results are compared with the
numpy reference (runtime_reference.simulate) and with the same model on host numpy parameters.
tests/test_cuda_gpu.py runs the same optimizer on real CUDA tensors when a GPU is present.
"""

from __future__ import annotations

import numpy as np
import pytest

import cuda_emulation as emulation
from lazyadam import LazyAdam, Parameter, RowTensor
from lazyadam.interop import arrays as interop
from runtime_reference import simulate
from tolerance import assert_close
from unchanged import assert_same, refused

torch = pytest.importorskip("torch", reason="TorchOnDevice stands in for PyTorch CUDA tensors")

# -- stand-ins for device arrays ------------------------------------------------------------------

_current_device = [0]


class FakeDevice:
    """A GPU ordinal that, like CuPy's `Device`, makes itself current inside a `with` block."""

    def __init__(self, ordinal: int):
        self.id = ordinal

    def __enter__(self):
        self.previous = _current_device[0]
        _current_device[0] = self.id
        return self

    def __exit__(self, *exc):
        _current_device[0] = self.previous


class FakeDeviceArray(emulation.Emulated):
    """A numpy array presented as a device array on GPU `device` (CuPy's protocol)."""

    def __init__(self, array: np.ndarray, device: int = 0):
        super().__init__(array)
        self.device = FakeDevice(device)

    shape = property(lambda self: self.array.shape)
    dtype = property(lambda self: self.array.dtype)
    ndim = property(lambda self: self.array.ndim)

    def __len__(self):
        return len(self.array)

    def __getitem__(self, key):
        return self._new(self.array[key])

    def _new(self, array):
        return type(self)(np.asarray(array), self.device.id)

    def get(self) -> np.ndarray:
        return self.array.copy()

    def set(self, host: np.ndarray) -> None:
        assert host.shape == self.array.shape and host.dtype == self.array.dtype  # as CuPy's
        self.array[...] = host

    def min(self):
        return self._new(self.array.min())

    def max(self):
        return self._new(self.array.max())

    def astype(self, dtype):
        return self._new(self.array.astype(dtype))

    def mean(self, axis, keepdims):
        return self._new(self.array.mean(axis=axis, keepdims=keepdims))

    def __sub__(self, other):
        return self._new(self.array - other.array)


def empty(shape, dtype) -> FakeDeviceArray:
    """As `cupy.empty`: on the *current* device."""
    return FakeDeviceArray(np.empty(shape, dtype), _current_device[0])


def ascontiguousarray(array: FakeDeviceArray) -> FakeDeviceArray:
    return array._new(np.ascontiguousarray(array.array))


class Unselectable(FakeDeviceArray):
    """A library whose device cannot be made current: its empty lands on the current one."""

    def __init__(self, array: np.ndarray, device: int = 0):
        super().__init__(array, device)
        self.device = type("Ordinal", (), {"id": device})()


class NoMean(FakeDeviceArray):
    """A library without reductions over axes (as pycuda's GPUArray)."""

    mean = None


class TorchOnDevice(torch.Tensor):
    """A CPU tensor that exposes `__cuda_array_interface__` the way a CUDA tensor does."""

    @property
    def __cuda_array_interface__(self) -> dict:
        if self.requires_grad:
            raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires grad.")
        typestr = np.dtype(str(self.dtype).removeprefix("torch.")).str
        strides = None if self.is_contiguous() else tuple(s * self.element_size()
                                                          for s in self.stride())
        return {"shape": tuple(self.shape), "typestr": typestr, "version": 3,
                "data": (self.data_ptr(), False), "strides": strides}


class FakeLibrary:
    name = "fake"

    @staticmethod
    def put(a: np.ndarray, device: int = 0):
        """A copy, as a transfer to a device makes."""
        return FakeDeviceArray(np.array(a, order="C"), device)

    @staticmethod
    def get(d) -> np.ndarray:
        return d.get()

    @staticmethod
    def transpose(d):
        return d._new(d.array.T)


class TorchLibrary:
    name = "torch"

    @staticmethod
    def put(a: np.ndarray, device: int = 0):
        return torch.from_numpy(np.array(a)).as_subclass(TorchOnDevice)

    @staticmethod
    def get(d) -> np.ndarray:
        return d.detach().numpy().copy()

    @staticmethod
    def transpose(d):
        return d.t()


@pytest.fixture(params=[FakeLibrary, TorchLibrary], ids=lambda lib: lib.name)
def lib(request):
    return request.param


# -- a model and its gradients ------------------------------------------------------------------


def initial_values(rng, dtype):
    """An embedding table (sparse gradients) and a dense matrix."""
    return [rng.standard_normal(shape).astype(dtype) for shape in ((13, 2, 3), (4, 5))]


def host_steps(rng, dtype, steps=4, index_dtype=np.int64):
    """Per step: (indices, values) with duplicate, unsorted indices for the table; an array else."""
    out = []
    for k in range(steps):
        indices = np.array([7, 2, 7, 0, 12, 2, 7][: 7 - k], index_dtype)
        values = rng.standard_normal((len(indices), 2, 3)).astype(dtype)
        out.append([(indices, values), rng.standard_normal((4, 5)).astype(dtype)])
    return out


def gradients(steps, put, shapes):
    """The same gradients as RowTensors and dense arrays made by `put` (device or host)."""
    return [[RowTensor(put(g[0]), put(g[1]), shape) if isinstance(g, tuple) else put(g)
             for g, shape in zip(grads, shapes)] for grads in steps]


def assert_matches(opt, expected, dtype, get):
    params, m, v, vmax, beta1_power, beta2_power = expected
    for i, param in enumerate(opt.parameters):
        assert_close(get(param.data), params[i], dtype, param.name)
        assert_close(get(opt.moment1[i].data), m[i], dtype, f"moment1 of {param.name}")
        assert_close(get(opt.moment2[i].data), v[i], dtype, f"moment2 of {param.name}")
        if opt.amsgrad:
            assert_close(get(opt.vmax[i].data), vmax[i], dtype, f"vmax of {param.name}")
    assert (opt.beta1_power, opt.beta2_power) == (beta1_power, beta2_power)


FLAG_CASES = [
    dict(),
    dict(use_nesterov=True, amsgrad=True),
    dict(weight_decay=0.01, decoupled_weight_decay=True, maximize=True, eps_mode="pytorch"),
    dict(weight_decay=0.02, use_locking=True, loss_scale=4.0),
]


def reference_flags(flags):
    return dict(nesterov=flags.get("use_nesterov", False), amsgrad=flags.get("amsgrad", False),
                maximize=flags.get("maximize", False), eps_mode=flags.get("eps_mode", "mindspore"),
                loss_scale=flags.get("loss_scale", 1.0),
                decay="decoupled" if flags.get("decoupled_weight_decay") else "l2")


# -- end to end -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("flags", FLAG_CASES, ids=lambda f: "-".join(f) or "default")
def test_device_parameters_match_reference_and_host(emulated_cuda, lib, rng, dtype, flags):
    initial = initial_values(rng, dtype)
    steps = host_steps(rng, dtype)
    device = [Parameter(lib.put(a), name=n) for a, n in zip(initial, ("embedding", "dense"))]
    host = [Parameter(a.copy(), name=n) for a, n in zip(initial, ("embedding", "dense"))]
    on_device, on_host = LazyAdam(device, learning_rate=0.01, **flags), LazyAdam(
        host, learning_rate=0.01, **flags)
    shapes = [p.shape for p in device]
    for device_grads, host_grads in zip(gradients(steps, lib.put, shapes),
                                        gradients(steps, np.asarray, shapes)):
        assert on_device(device_grads) is True
        on_host(host_grads)
    wd = flags.get("weight_decay", 0.0)
    expected = simulate(initial, steps, lr_at=lambda k, i: 0.01, wd_at=lambda k, i: wd,
                        **reference_flags(flags))
    assert_matches(on_device, expected, dtype, lib.get)
    for ours, theirs in zip(on_device.parameters + on_device.moment1 + on_device.vmax,
                            on_host.parameters + on_host.moment1 + on_host.vmax):
        assert_close(lib.get(ours.data), theirs.data.astype(np.float64), dtype, ours.name)
    assert {(s.sparse, s.dtype) for s in emulated_cuda} == {(True, dtype), (False, dtype)}
    assert all(type(p.data) is type(device[0].data) for p in on_device.moment1 + on_device.vmax)


@pytest.mark.parametrize("state_dtype", [None, "bfloat16"])
def test_bfloat16_device_tensors_match_the_host_bitwise(emulated_cuda, rng, state_dtype):
    """bfloat16 torch tensors on the device path (the emulated CUDA kernels), float32 or bfloat16
    state, stochastic rounding, float32 gradients for the table: the same bits as host arrays
    through the C kernels."""
    import ml_dtypes
    initial = initial_values(rng, ml_dtypes.bfloat16)
    steps = host_steps(rng, np.float32)
    steps = [[(g[0][0], g[0][1]), g[1].astype(ml_dtypes.bfloat16)] for g in steps]

    def put(a):
        bits = torch.from_numpy(np.array(a).view(np.int16) if a.dtype == ml_dtypes.bfloat16
                                else np.array(a))
        tensor = bits.view(torch.bfloat16) if a.dtype == ml_dtypes.bfloat16 else bits
        return tensor.as_subclass(TorchOnDevice)

    options = dict(learning_rate=0.01, weight_decay=0.01, state_dtype=state_dtype,
                   rounding="stochastic", seed=5)
    device = LazyAdam([Parameter(put(a), name=n) for a, n in zip(initial, ("embedding", "dense"))],
                      **options)
    host = LazyAdam([Parameter(a.copy(), name=n) for a, n in zip(initial, ("embedding", "dense"))],
                    **options)
    shapes = [p.shape for p in device.parameters]
    for device_grads, host_grads in zip(gradients(steps, put, shapes),
                                        gradients(steps, np.asarray, shapes)):
        device(device_grads)
        host(host_grads)
    for ours, theirs in zip(device.parameters + device.moment1 + device.moment2,
                            host.parameters + host.moment1 + host.moment2):
        assert interop.dtype_of(ours.data) == theirs.dtype
        np.testing.assert_array_equal(ours.asnumpy().view(np.uint8), theirs.asnumpy().view(np.uint8))
    assert {(s.dtype, s.storage("m"), s.storage("grad")) for s in emulated_cuda} == {
        ("bfloat16", state_dtype or "float32", "float32"),
        ("bfloat16", state_dtype or "float32", "bfloat16")}


def test_groups_centralization_and_order_on_device(emulated_cuda, lib, rng):
    table, dense = (Parameter(lib.put(a), name=n)
                    for a, n in zip(initial_values(rng, "float32"), ("embedding", "dense")))
    cube = Parameter(lib.put(rng.standard_normal((3, 4, 2)).astype(np.float32)), name="cube")
    groups = [{"params": [table], "lr": 0.02, "weight_decay": 0.01},
              {"params": [dense, cube], "grad_centralization": True},
              {"order_params": [dense, table, cube]}]
    opt = LazyAdam(groups, learning_rate=[0.01, 0.005, 0.0025])
    initial = [p.asnumpy() for p in opt.parameters]
    steps = [[grads[1], grads[0], rng.standard_normal((3, 4, 2)).astype(np.float32)]
             for grads in host_steps(rng, "float32", 3)]
    device_steps = gradients(steps, lib.put, [p.shape for p in opt.parameters])
    before = [lib.get(grads[0]) for grads in device_steps]
    for grads in device_steps:
        opt(grads)
    for grads, untouched in zip(device_steps, before):  # centralized on a copy
        np.testing.assert_array_equal(lib.get(grads[0]), untouched)
    lrs = [0.01, 0.005, 0.0025]
    expected = simulate(initial, steps, lr_at=lambda k, i: 0.02 if i == 1 else lrs[k],
                        wd_at=lambda k, i: 0.01 if i == 1 else 0.0, centralize=(0, 2))
    assert_matches(opt, expected, "float32", lib.get)


@pytest.mark.parametrize("index_dtype, kernel_index", [(np.int32, "int32"), (np.int64, "int64"),
                                                       (np.uint8, "int64"), (np.int16, "int64")])
def test_device_index_dtypes(emulated_cuda, lib, rng, index_dtype, kernel_index):
    """int32 and int64 indices go to the kernel as they are; others are cast to int64 on the
    device."""
    initial = initial_values(rng, "float64")[:1]
    steps = [grads[:1] for grads in host_steps(rng, "float64", 2, index_dtype)]
    table = Parameter(lib.put(initial[0]), name="embedding")
    opt = LazyAdam([table], learning_rate=0.01)
    for grads in gradients(steps, lib.put, [table.shape]):
        opt(grads)
    assert {s.index_dtype for s in emulated_cuda} == {kernel_index}
    expected = simulate(initial, [[(i.astype(np.int64), v)] for (i, v), in steps],
                        lr_at=lambda k, i: 0.01)
    assert_matches(opt, expected, "float64", lib.get)


def test_strided_device_gradients_are_made_contiguous(emulated_cuda, lib, rng):
    dense = Parameter(lib.put(rng.standard_normal((4, 5))), name="dense")
    values = rng.standard_normal((3, 3))
    table = Parameter(lib.put(rng.standard_normal((6, 3))), name="table")
    initial = [dense.asnumpy(), table.asnumpy()]
    grad = rng.standard_normal((5, 4))
    indices = np.array([4, 0, 4])
    opt = LazyAdam([dense, table], learning_rate=0.1)
    opt((lib.transpose(lib.put(grad)),
         RowTensor(lib.put(indices), lib.transpose(lib.put(values)), table.shape)))
    expected = simulate(initial, [[grad.T, (indices, values.T)]], lr_at=lambda k, i: 0.1)
    assert_matches(opt, expected, "float64", lib.get)


# -- moments and state ----------------------------------------------------------------------------


def test_moments_are_allocated_on_the_parameters_device(emulated_cuda):
    """CuPy's empty allocates on the current device: the runtime makes the parameter's
    device current for it."""
    param = Parameter(FakeLibrary.put(np.ones((3, 2), np.float32), device=1), name="w")
    opt = LazyAdam([param], amsgrad=True)
    assert [interop.device_of(p.data) for p in opt.moment1 + opt.moment2 + opt.vmax] == [1, 1, 1]
    assert _current_device == [0]
    other = FakeLibrary.put(np.ones((3, 2), np.float32), device=0)
    with pytest.raises(ValueError, match="'w'.*CUDA device 0, the parameter on device 1"):
        opt((other,))


def test_moments_on_another_device_are_refused(emulated_cuda):
    param = Parameter(Unselectable(np.ones((3, 2), np.float32), device=1), name="w")
    with pytest.raises(TypeError, match="moment1.w: allocating beside a Unselectable on device 1 "
                                        "gave a FakeDeviceArray on device 0; state must live on"):
        LazyAdam([param])


def test_torch_moments_are_tensors_like_the_parameter(emulated_cuda):
    param = Parameter(TorchLibrary.put(np.ones((3, 2), np.float32)), name="w")
    opt = LazyAdam([param])
    m = opt.moment1[0].data
    assert type(m) is TorchOnDevice and m.dtype == torch.float32 and m.is_contiguous()
    assert m.data_ptr() != param.data.data_ptr() and not m.any()
    assert param.dtype == np.float32 and opt.moment2[0].dtype == np.float32


@pytest.mark.parametrize("flags", [{}, {"amsgrad": True}], ids=["default", "amsgrad"])
def test_state_dict_and_checkpoint_round_trip_through_host(emulated_cuda, lib, rng, tmp_path, flags):
    initial = initial_values(rng, "float32")
    steps = gradients(host_steps(rng, "float32", 4), lib.put, [a.shape for a in initial])

    def make(values):
        params = [Parameter(lib.put(a), name=n) for a, n in zip(values, ("embedding", "dense"))]
        return LazyAdam(params, learning_rate=0.01, weight_decay=0.01, **flags)

    straight, first = make(initial), make(initial)
    for grads in steps:
        straight(grads)
    for grads in steps[:2]:
        first(grads)
    state = first.state_dict()
    sections = ["parameters", "moment1", "moment2"] + (["vmax"] if flags else [])
    assert all(type(a) is np.ndarray for s in sections for a in state[s].values())
    first.save(tmp_path / "run.ckpt")

    zeros = [np.zeros_like(a) for a in initial]
    for resumed, restore in ((make(zeros), lambda o: o.load_state_dict(state)),
                             (make(zeros), lambda o: o.load(tmp_path / "run.ckpt"))):
        arrays = [p.data for p in resumed.parameters + resumed.moment1 + resumed.vmax]
        restore(resumed)
        assert all(p.data is a for p, a in zip(resumed.parameters + resumed.moment1
                                               + resumed.vmax, arrays))  # in place
        assert resumed.global_step == 2
        for grads in steps[2:]:
            resumed(grads)
        assert_same(resumed, straight)  # bitwise: the same kernels, resumed


def test_set_data_copies_into_the_device_array(lib):
    param = Parameter(lib.put(np.zeros((2, 3), np.float32)), name="w")
    array = param.data
    param.set_data(np.arange(6.0).reshape(2, 3))  # float64 host value, cast in
    assert param.data is array
    np.testing.assert_array_equal(lib.get(array), np.arange(6.0).reshape(2, 3))
    param.set_data(lib.put(np.ones((2, 3), np.float32)))
    np.testing.assert_array_equal(param.asnumpy(), 1.0)
    np.testing.assert_array_equal(np.asarray(param), 1.0)
    with pytest.raises(ValueError, match="set_data got shape \\(3, 2\\)"):
        param.set_data(np.ones((3, 2)))


def test_device_parameters_must_be_contiguous(emulated_cuda, lib):
    strided = Parameter(lib.transpose(lib.put(np.zeros((3, 4), np.float32))), name="w")
    with pytest.raises(ValueError, match="w is not C-contiguous on its device"):
        LazyAdam([strided])


def test_device_gradient_for_a_host_parameter_is_refused(emulated_cuda, lib):
    param = Parameter(np.zeros((2, 3), np.float32), name="w")
    opt = LazyAdam([param])
    with pytest.raises(TypeError, match="on a CUDA device, the parameter is in host memory"):
        opt((lib.put(np.ones((2, 3), np.float32)),))
    assert opt.global_step == 0 and not emulated_cuda


# -- the array helpers ---------------------------------------------------------------------------


def test_dtype_of_reads_every_library():
    assert interop.dtype_of(np.zeros(2, np.float32)) == np.float32
    assert interop.dtype_of(FakeLibrary.put(np.zeros(2, np.int32))) == np.int32
    assert interop.dtype_of(torch.zeros(2, dtype=torch.float64)) == np.float64
    assert interop.dtype_of(TorchLibrary.put(np.zeros(2, np.uint8))) == np.uint8
    with pytest.raises(TypeError, match="dtype torch.bits16 of a torch.Tensor has no numpy"):
        interop.dtype_of(torch.empty(2, dtype=torch.bits16))
    with pytest.raises(TypeError, match="builtins.list has no dtype"):
        interop.dtype_of([1.0])


def test_a_parameter_that_requires_grad_is_trained_in_place():
    """nn.Parameter is detached; the detached tensor shares memory, so the user's tensor moves.
    On a device, PyTorch refuses the interface of such a tensor: it is a device array all the
    same."""
    weight = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    param = Parameter(weight, name="w")
    LazyAdam([param], learning_rate=0.1)((np.ones(4),))
    assert (weight.detach().numpy() < 1.0).all()
    on_device = TorchLibrary.put(np.ones(2, np.float32)).requires_grad_()
    assert interop.is_device_array(on_device)
    assert not Parameter(on_device, name="v").data.requires_grad


def test_host_round_trip_helpers(lib):
    d = lib.put(np.arange(6, dtype=np.int64).reshape(2, 3))
    host = interop.to_host(d)
    assert type(host) is np.ndarray and host.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert interop.index_bounds(lib.put(np.array([4, -1, 9]))) == (-1, 9)
    zeros = interop.full_beside(d, (2, 3), np.int64, 0)
    assert type(zeros) is type(d) and interop.dtype_of(zeros) == np.int64
    assert not interop.to_host(zeros).any()
    interop.copy_into(zeros, np.full((2, 3), 7.0))
    np.testing.assert_array_equal(interop.to_host(zeros), 7)
    host = np.zeros((2, 3), np.int64)
    interop.copy_into(host, d)
    np.testing.assert_array_equal(host, interop.to_host(d))


def test_a_torch_parameter_given_new_storage_is_bound_again(emulated_cuda, rng):
    """After a few steps (later ones take the slot's quick check), the parameter's tensor gets new
    storage in place (`tensor.data = ...`, as `model.to()` does): the next step updates the new
    storage, as the reference does, and leaves the old one alone."""
    initial, fresh = (rng.standard_normal((4, 5)).astype(np.float32) for _ in range(2))
    tensor = TorchLibrary.put(initial)
    opt = LazyAdam([Parameter(tensor, name="w")], learning_rate=0.01)
    grads = [rng.standard_normal((4, 5)).astype(np.float32) for _ in range(3)]
    for g in grads[:2]:
        opt([TorchLibrary.put(g)])
    old = tensor.detach()
    before = old.numpy().copy()
    tensor.data = torch.from_numpy(fresh.copy())
    opt([TorchLibrary.put(grads[2])])
    np.testing.assert_array_equal(old.numpy(), before)
    expected = simulate([initial], [[g] for g in grads], lr_at=lambda k, i: 0.01)
    m, v = expected[1][0], expected[2][0]
    # The third step ran on the fresh values with the moments of the first two steps.
    after_two = simulate([initial], [[g] for g in grads[:2]], lr_at=lambda k, i: 0.01)
    assert_close(opt.moment1[0].data.detach().numpy(), m, "float32", "moment1")
    assert_close(opt.moment2[0].data.detach().numpy(), v, "float32", "moment2")
    step = fresh.astype(np.float64) - (after_two[0][0] - expected[0][0])
    assert_close(tensor.detach().numpy(), step, "float32", "w")


@pytest.mark.parametrize("change", ["not contiguous", "shares memory with moment1"])
def test_a_device_gradient_unlike_the_last_takes_the_full_check(emulated_cuda, rng,
                                                                quick_results, change):
    """Gradients like the last one (new PyTorch tensors each step) are confirmed by `quick`; a
    gradient it cannot confirm takes the full check: a transposed view is stepped through a
    contiguous copy, as the reference steps it, and the parameter's own moment1 is refused,
    naming the problem, with nothing changed."""
    initial = rng.standard_normal((4, 5)).astype(np.float32)
    opt = LazyAdam([Parameter(TorchLibrary.put(initial), name="w")], learning_rate=0.01)
    grads = [rng.standard_normal((4, 5)).astype(np.float32) for _ in range(4)]
    for g in grads[:3]:
        opt([TorchLibrary.put(g)])
    assert quick_results == [True, True]  # steps 2 and 3
    if change == "shares memory with moment1":
        with refused(opt, ValueError, match="shares memory with the moment1 of parameter 'w'"):
            opt([opt.moment1[0].data])
        steps = grads[:3]
    else:
        opt([TorchLibrary.put(grads[3].T.copy()).t()])
        steps = grads
    expected = simulate([initial], [[g] for g in steps], lr_at=lambda k, i: 0.01)
    assert_matches(opt, expected, "float32", TorchLibrary.get)
    assert quick_results == [True, True, False]


#: PyTorch gradients that numpy refuses and whose memory is not their values, each with the
#: values it stands for.
TORCH_FORMS = {
    "negative view": (torch._neg_view, np.negative),
    "ZeroTensor": (lambda t: torch._efficientzerotensor(t.shape, dtype=t.dtype).as_subclass(type(t)),
                   np.zeros_like),
    "requires grad": (lambda t: t.clone().requires_grad_(), lambda a: a),
}


@pytest.mark.parametrize("form", TORCH_FORMS)
@pytest.mark.parametrize("place", ["host", "device"])
def test_torch_gradients_are_read_by_their_values(emulated_cuda, rng, form, place):
    """A negative view, a ZeroTensor and a tensor that requires grad, as a dense gradient and as
    a RowTensor's values, of CPU tensors and of (emulated) CUDA tensors: stepped as the values
    they stand for, as torch.optim reads them (numpy refuses all three, and their memory holds
    the un-negated values, or is at address 0)."""
    make, values_of = TORCH_FORMS[form]
    kind = TorchOnDevice if place == "device" else torch.Tensor
    initial = initial_values(rng, np.float32)
    table, dense = (torch.from_numpy(a.copy()).as_subclass(kind) for a in initial)
    opt = LazyAdam([Parameter(table, name="embedding"), Parameter(dense, name="dense")],
                   learning_rate=0.01)
    steps = host_steps(rng, np.float32, steps=3)
    for (indices, values), grad in steps:
        opt([RowTensor(torch.from_numpy(indices).as_subclass(kind),
                       make(torch.from_numpy(values).as_subclass(kind)), table.shape),
             make(torch.from_numpy(grad).as_subclass(kind))])
    meant = [[(indices, values_of(values)), values_of(grad)] for (indices, values), grad in steps]
    expected = simulate(initial, meant, lr_at=lambda k, i: 0.01)
    assert_matches(opt, expected, "float32", lambda a: a.detach().numpy().copy()
                   if isinstance(a, torch.Tensor) else np.array(a))
