"""The CUDA kernels and launchers, built for the CPU with tests/cuda_emulation, against the reference.

The generated .cu sources are compiled unchanged by the host C++ compiler with
`cuda_emulation.h` force-included: the same kernels, the same launch sequence (index check, sort,
one warp per row), run block by block with each thread a coroutine. Host numpy arrays stand in for
device arrays by exposing `__cuda_array_interface__`, so the calls also go through the CUDA target's
Python wrapper (`CudaKernel`). Only a GPU run (tests/test_cuda_gpu.py) checks real hardware. SPECS
run against the reference in tests/test_kernel_reference.py; here, the launchers' other paths.
"""

from __future__ import annotations

import threading

import cffi
import numpy as np
import pytest

import cuda_emulation as emulation
import lazyadam
import product
from lazyadam import HParams, Spec
from lazyadam.codegen import SUM_CHUNK
from lazyadam.targets import cuda
from reference import lazyadam_step

from tolerance import assert_close

LAYOUTS = [(False, "float32", "int64"), (False, "float64", "int64"), (True, "float32", "int32"),
           (True, "float32", "int64"), (True, "float64", "int32"), (True, "float64", "int64")]
ONE_FLAG = [dict(nesterov=True), dict(use_locking=True), dict(decay="l2"), dict(decay="decoupled"),
            dict(amsgrad=True), dict(maximize=True), dict(eps_mode="pytorch")]
ALL_ON = [dict(nesterov=True, use_locking=True, decay=decay, amsgrad=True, maximize=True,
               eps_mode="pytorch") for decay in ("l2", "decoupled")]
STATIC = {"beta1": 0.85, "beta2": 0.995, "eps": 1e-7, "loss_scale": 8.0, "weight_decay": 0.01}
#: Bitwise comparisons with the C kernels: stochastic rounding in every storage it can write.
BITWISE = [Spec(sparse=True, decay="l2", nesterov=True), Spec(sparse=True, use_locking=True, decay="l2"),
           Spec(sparse=True, amsgrad=True, maximize=True, eps_mode="pytorch", index_dtype="int32"),
           Spec(sparse=True, use_locking=True, decay="l2", dtype="float64"),
           Spec(sparse=False, decay="l2", amsgrad=True),
           Spec(sparse=True, dtype="bfloat16", state_dtype="bfloat16", rounding="stochastic",
                decay="l2", amsgrad=True),
           Spec(sparse=True, dtype="float16", grad_dtype="float32", rounding="stochastic",
                use_locking=True, decay="l2", index_dtype="int32"),
           Spec(sparse=False, dtype="bfloat16", rounding="stochastic", nesterov=True),
           Spec(sparse=False, dtype="float16", state_dtype="bfloat16", grad_dtype="float32",
                rounding="stochastic", amsgrad=True, decay="decoupled")]
#: Each layout bare and with every flag on; each flag alone on f32; baked hyperparameters; every
#: flag combination in half precision (tests/product.py: each with one of the 16 ways of storing
#: it); and the specs of the bitwise comparison with the C kernels.
SPECS = list(dict.fromkeys(
    [Spec(sparse=s, dtype=d, index_dtype=i, **flags) for s, d, i in LAYOUTS for flags in [{}] + ALL_ON]
    + [Spec(sparse=s, **flags) for s in (False, True) for flags in ONE_FLAG]
    + [Spec(sparse=s, decay="l2", static=STATIC) for s in (False, True)]
    + product.HALF + BITWISE))
SEED = 31

HYPER = dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.05, loss_scale=4.0)


@pytest.fixture(scope="module")
def library(emulated_variants) -> dict:
    """Every spec of SPECS, emulated (built in batches where the cache lacks them)."""
    return emulated_variants(SPECS)


def dev(*arrays):
    return [None if a is None else emulation.Emulated(a) for a in arrays]


GUARD = 7.0


def aligned(shape, dtype, offset=0) -> np.ndarray:
    """A zeroed array whose data starts `offset` elements after a 64-byte boundary.

    It lies inside a larger buffer filled with GUARD, so that `check` sees writes out of bounds.
    """
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    raw = np.full(n + offset + 2 * 64 // dtype.itemsize, GUARD, dtype)
    start = (-raw.ctypes.data % 64) // dtype.itemsize + offset
    raw[start:start + n] = 0
    return raw[start:start + n].reshape(shape)


def assert_in_bounds(arr: np.ndarray) -> None:
    raw = arr.base
    start = (arr.ctypes.data - raw.ctypes.data) // arr.itemsize
    outside = np.concatenate([raw[:start], raw[start + arr.size:]])
    np.testing.assert_array_equal(outside, GUARD, err_msg="a kernel wrote out of bounds")


def reference_step(state, grad, hp, spec):
    indices, values = grad if spec.sparse else (None, grad)
    return lazyadam_step(*state[:3], values, indices=indices, vmax=state[3], lr=hp.lr,
                         beta1=hp.beta1, beta2=hp.beta2, eps=hp.eps,
                         beta1_power=hp.beta1_power, beta2_power=hp.beta2_power,
                         weight_decay=hp.weight_decay, loss_scale=hp.loss_scale,
                         **product.reference_flags(spec, seed=hp.seed, step=hp.step))


def hparams(spec, t):
    hyper = {**HYPER, **spec.statics}  # a static value is what the kernel uses
    return HParams.at_step(t, seed=SEED, **hyper)


def new_state(var0, spec, offset=0):
    var = aligned(var0.shape, product.dtype(spec, "var"), offset)
    var[...] = var0
    state = [aligned(var0.shape, product.dtype(spec, "m"), offset)
             for _ in range(3 if spec.amsgrad else 2)]
    arrays = [var, *state] + ([] if spec.amsgrad else [None])
    ref = [var0.astype(np.float64), np.zeros(var0.shape), np.zeros(var0.shape),
           np.zeros(var0.shape) if spec.amsgrad else None]
    return arrays, ref


def check(arrays, ref, spec):
    for name, actual, expected in zip(("var", "m", "v", "vmax"), arrays, ref):
        if expected is not None:
            assert_close(actual, expected, spec.storage(name), name)
            assert_in_bounds(actual)


@pytest.mark.parametrize("spec", [Spec(sparse=False, amsgrad=True), BITWISE[-1]],
                         ids=lambda s: s.symbol())
@pytest.mark.parametrize("offset", [1, 3])
def test_unaligned_dense_arrays_take_the_scalar_path(library, spec, offset, rng):
    var0 = rng.standard_normal(203).astype(product.dtype(spec, "var"))
    arrays, ref = new_state(var0, spec, offset)
    grad = rng.standard_normal(203).astype(product.dtype(spec, "grad"))
    library[spec](*dev(*arrays[:3]), dev(grad)[0], hparams(spec, 1), vmax=dev(arrays[3])[0])
    check(arrays, reference_step(ref, grad, hparams(spec, 1), spec), spec)


def test_multi_updates_many_tensors_in_few_launches(library, rng):
    """20 tensors (two launches of 16), empty ones, tails and misaligned ones among them."""
    spec = Spec(sparse=False, decay="decoupled")
    sizes = [0, 1, 7, 64, 65, 200, 3, 0, 129, 5] * 2
    tensors = []
    for k, n in enumerate(sizes):
        var0 = rng.standard_normal(n).astype(np.float32)
        arrays, ref = new_state(var0, spec, offset=k % 2)
        tensors.append((arrays, ref, rng.standard_normal(n).astype(np.float32)))
    hp = hparams(spec, 2)
    library[spec].multi(*([dev(t[0][i])[0] for t in tensors] for i in range(3)),
                        [dev(t[2])[0] for t in tensors], hp)
    for arrays, ref, grad in tensors:
        check(arrays, reference_step(ref, grad, hp, spec), spec)


def test_duplicates_are_summed_in_input_order(library):
    """Sums that differ by order in float32: the kernel must give the in-order one exactly."""
    spec = Spec(sparse=True, dtype="float32")
    values = np.array([[1e8], [1.0], [1.0], [-1e8], [3.0]], np.float32)
    var, m, v = (np.zeros((2, 1), np.float32) for _ in range(3))
    hp = HParams(lr=0.0, beta1=0.5, beta2=0.5, eps=1.0, weight_decay=0.0, loss_scale=1.0,
                 beta1_power=0.5, beta2_power=0.5)
    library[spec](*dev(var, m, v), tuple(dev(np.array([1, 1, 1, 1, 1]), values)), hp)
    in_order = np.float32(0)
    for x in values[:, 0]:
        in_order = np.float32(in_order + x)
    assert in_order == 3.0  # ((((1e8 + 1) + 1) - 1e8) + 3; any other order gives 4 or 5
    assert m[1, 0] == np.float32(0.5) * in_order


def test_locked_rows_stay_consistent_under_concurrent_calls(library, rng):
    """Two OS threads apply the same step to the same rows at once: any serial order gives two steps."""
    spec = Spec(sparse=True, use_locking=True)
    var0 = rng.standard_normal((6, 40)).astype(np.float32)
    arrays, ref = new_state(var0, spec)
    idx = np.array([1, 4, 1, 2, 5, 4, 0] * 20)
    grad = (idx, rng.standard_normal((idx.size, 40)).astype(np.float32))
    hp = hparams(spec, 1)
    start = threading.Barrier(2)
    errors = []

    def call():
        start.wait()
        try:
            library[spec](*dev(*arrays[:3]), tuple(dev(*grad)), hp)
        except Exception as err:  # noqa: BLE001  (reported by the main thread below)
            errors.append(err)

    workers = [threading.Thread(target=call) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors
    for _ in range(2):
        ref = reference_step(ref, grad, hp, spec)
    check(arrays, ref, spec)


# --- what a GPU would show: long serial chains, launches and host waits ------------------------
def counters(kernel):
    """Reads and resets the emulation's counters: (launches, host waits, most additions by a thread)."""
    ffi = cffi.FFI()
    ffi.cdef("void emu_counters(long long *counts); void emu_reset_counters(void);")
    lib = ffi.dlopen(str(kernel.path))
    counts = ffi.new("long long[3]")
    lib.emu_counters(counts)
    lib.emu_reset_counters()
    return tuple(counts)


@pytest.mark.parametrize("row_size", [1, 32])
def test_a_hot_row_is_summed_in_bounded_chains(row_size, rng):
    """A row seen 100,000 times: no thread adds more than 2 * SUM_CHUNK terms (the chunks of 256 are
    summed by separate warps, then the 391 chunk sums by the row's warp); one warp summing the whole
    row, as the kernels did before, would chain 99,999 additions. Built with grids as large as a
    GPU's, so that no thread strides over a second chunk or row; rows of at most 32 elements, so that
    a lane adds up one column."""
    spec = Spec(sparse=True)
    kernel = emulation.build([spec], {"LAZYADAM_MAX_BLOCKS": 65535})[spec]
    idx = np.concatenate([np.full(100_000, 3), rng.integers(0, 50, 2_000)])
    rng.shuffle(idx)
    values = rng.standard_normal((idx.size, row_size)).astype(np.float32)
    arrays, ref = new_state(rng.standard_normal((50, row_size)).astype(np.float32), spec)
    counters(kernel)
    kernel(*dev(*arrays[:3]), tuple(dev(idx, values)), hparams(spec, 1))
    most = counters(kernel)[2]
    assert SUM_CHUNK <= most <= 2 * SUM_CHUNK
    check(arrays, reference_step(ref, (idx, values), hparams(spec, 1), spec), spec)


def test_a_step_makes_the_same_launches_for_any_number_of_indices(library, rng):
    """The bitonic sort took O(log^2 nnz) launches; now a step is a fixed sequence."""
    spec = Spec(sparse=True)
    kernel = library[spec]
    launches = []
    for nnz in (10, 100_000):
        idx = rng.integers(0, 1000, nnz)
        values = rng.standard_normal((nnz, 4)).astype(np.float32)
        arrays, _ = new_state(np.zeros((1000, 4), np.float32), spec)
        counters(kernel)
        kernel(*dev(*arrays[:3]), tuple(dev(idx, values)), hparams(spec, 1))
        launches.append(counters(kernel)[0])
    assert launches[0] == launches[1] <= 10, launches


def test_only_the_index_check_waits(library, rng):
    """A checking step waits once (for its index check); a deferred step and a CUDA graph never."""
    spec = Spec(sparse=True)
    kernel = library[spec]
    idx = rng.integers(0, 100, 500)
    grad = tuple(dev(idx, rng.standard_normal((500, 8)).astype(np.float32)))
    arrays, _ = new_state(np.zeros((100, 8), np.float32), spec)
    record = np.zeros(kernel.RECORD_WORDS, np.int64)
    counters(kernel)
    kernel(*dev(*arrays[:3]), grad, hparams(spec, 1))
    assert counters(kernel)[1] == 1
    kernel(*dev(*arrays[:3]), grad, hparams(spec, 2), record=dev(record)[0])
    assert counters(kernel)[1] == 0
    kernel.check(dev(record)[0])
    assert counters(kernel)[1] == 1


@pytest.mark.parametrize("deferred", [True, False], ids=["deferred", "checking"])
def test_a_step_takes_a_workspace_of_the_size_it_asks_for(library, deferred, rng):
    """Scratch the caller allocates (for the runtime: before any step writes), checked for size and
    alignment; a checking step in it still refuses a bad index, having written nothing."""
    spec = Spec(sparse=True, decay="decoupled")
    kernel = library[spec]
    idx = rng.integers(0, 40, 3000)
    grad = (idx, rng.standard_normal((3000, 7)).astype(np.float32))
    var0 = rng.standard_normal((40, 7)).astype(np.float32)
    arrays, ref = new_state(var0, spec)
    size = kernel.workspace_size(40, 7, 3000)
    record = np.zeros(kernel.RECORD_WORDS, np.int64)
    mode = dict(record=dev(record)[0]) if deferred else {}
    raw = np.zeros(size + 512, np.uint8)
    space = raw[(-raw.ctypes.data) % 256:][:size + 1]  # 256-byte aligned, size + 1 bytes
    with pytest.raises(ValueError, match=f"the workspace has {size - 1} bytes at an address "
                                         f"256-byte aligned, the step needs {size}, aligned"):
        kernel(*dev(*arrays[:3]), tuple(dev(*grad)), hparams(spec, 1),
               workspace=dev(space[:size - 1])[0], **mode)
    with pytest.raises(ValueError, match="not 256-byte aligned"):
        kernel(*dev(*arrays[:3]), tuple(dev(*grad)), hparams(spec, 1), workspace=dev(space[1:])[0],
               **mode)
    if not deferred:
        with pytest.raises(IndexError, match=r"indices\[1\] = 40 is outside \[0, 40\)"):
            kernel(*dev(*arrays[:3]), tuple(dev(np.array([3, 40]), np.ones((2, 7), np.float32))),
                   hparams(spec, 1), workspace=dev(space[:size])[0])
    np.testing.assert_array_equal(arrays[0], var0)
    kernel(*dev(*arrays[:3]), tuple(dev(*grad)), hparams(spec, 1), workspace=dev(space[:size])[0],
           **mode)
    check(arrays, reference_step(ref, grad, hparams(spec, 1), spec), spec)


@pytest.mark.parametrize("spec", BITWISE, ids=lambda s: s.symbol())
def test_cuda_and_c_kernels_agree_bitwise(library, spec, rng):
    """Three steps, Zipf rows (the hottest seen thousands of times) or dense tensors with a tail,
    stochastic rounding in every 16-bit array: the CUDA kernels (emulated) and the C kernels give
    the same bits."""
    c_kernel = lazyadam.compile(spec)
    shape = (500, 19) if spec.sparse else (5, 1001)
    var0 = rng.standard_normal(shape).astype(product.dtype(spec, "var"))
    ours, theirs = (new_state(var0, spec)[0] for _ in range(2))
    for t in range(1, 4):
        if spec.sparse:
            idx = ((rng.zipf(1.2, 8000) - 1) % 500).astype(spec.index_dtype)
            grad = (idx, rng.standard_normal((idx.size, 19)).astype(product.dtype(spec, "grad")))
            device_grad = tuple(dev(*grad))
        else:
            grad = rng.standard_normal(shape).astype(product.dtype(spec, "grad"))
            device_grad = dev(grad)[0]
        hp = hparams(spec, t)
        library[spec](*dev(*ours[:3]), device_grad, hp, vmax=dev(ours[3])[0])
        c_kernel(*theirs[:3], grad, hp, vmax=theirs[3])
    for a, b in zip(ours, theirs):
        if a is not None:
            np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


# --- hyperparameters in device memory: what a CUDA graph replays -------------------------------
def device_table(hparams) -> np.ndarray:
    """Zeroed "device memory" (an emulated device array) for `len(hparams)` entries."""
    return np.zeros(len(hparams) * cuda.HPARAMS_BYTES, np.uint8)


def test_store_hparams_copies_entries_in_launches_of_32(library):
    """The entries arrive as the C struct lays them out, 33 entries in two launches, with no wait."""
    kernel = library[Spec(sparse=False)]
    entries = [HParams.at_step(t, lr=t * 1e-3, seed=2**64 - t) for t in range(1, 34)]
    table = device_table(entries)
    counters(kernel)
    kernel.store_hparams(dev(table)[0], entries)
    assert counters(kernel)[:2] == (2, 0)
    # lazyadam_hparams as the generated header declares it, field by field, read by name.
    fields = ("lr", "beta1", "beta2", "eps", "weight_decay", "loss_scale", "beta1_power",
              "beta2_power")
    layout = [(n, "<f8") for n in fields] + [("seed", "<u8"), ("step", "<u8")]
    expected = np.array([tuple(getattr(hp, n) for n, _ in layout) for hp in entries], layout)
    np.testing.assert_array_equal(table.view(expected.dtype), expected)
    with pytest.raises(ValueError, match="holds 80 bytes; 2 entries take 160"):
        kernel.store_hparams(dev(np.zeros(80, np.uint8))[0], entries[:2])


@pytest.mark.parametrize("spec", BITWISE, ids=lambda s: s.symbol())
def test_device_hyperparameters_give_the_c_kernels_bits(library, spec, rng):
    """Steps whose kernels compute their scalars from hyperparameters in device memory (stored
    before each step, as before a graph's replay) store what the C kernels, whose prologue runs
    on the host, store: the same double arithmetic, bit for bit."""
    c_kernel, kernel = lazyadam.compile(spec), library[spec]
    shape = (300, 19) if spec.sparse else (5, 1001)
    var0 = rng.standard_normal(shape).astype(product.dtype(spec, "var"))
    ours, theirs = (new_state(var0, spec)[0] for _ in range(2))
    table = device_table([None])
    record = np.zeros(kernel.RECORD_WORDS, np.int64)
    for t in range(1, 4):
        if spec.sparse:
            idx = ((rng.zipf(1.2, 3000) - 1) % 300).astype(spec.index_dtype)
            grad = (idx, rng.standard_normal((idx.size, 19)).astype(product.dtype(spec, "grad")))
            device_grad, mode = tuple(dev(*grad)), dict(record=dev(record)[0])
        else:
            grad = rng.standard_normal(shape).astype(product.dtype(spec, "grad"))
            device_grad, mode = dev(grad)[0], {}
        hp = hparams(spec, t)
        kernel.store_hparams(dev(table)[0], [hp])
        kernel(*dev(*ours[:3]), device_grad, None, vmax=dev(ours[3])[0],
               device_hparams=dev(table)[0], **mode)
        c_kernel(*theirs[:3], grad, hp, vmax=theirs[3])
    for a, b in zip(ours, theirs):
        if a is not None:
            np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


@pytest.mark.parametrize("spec", [Spec(sparse=False, decay="l2"),
                                  Spec(sparse=False, dtype="bfloat16", rounding="stochastic",
                                       nesterov=True)], ids=lambda s: s.symbol())
@pytest.mark.parametrize("on_device", [False, True], ids=["host", "device"])
def test_a_multi_launch_steps_each_tensor_with_its_own_hyperparameters(library, spec, on_device,
                                                                       rng):
    """60 tensors over 6 hyperparameter entries (other step counts, learning rates and seeds):
    a launch carries 4 entries (48 tensors) at most, so the launcher starts others; every tensor
    gets bitwise what a launch of its own with its entry gives."""
    kernel = library[spec]
    entries = [HParams.at_step(1 + k % 3, lr=0.01 * (k + 1), seed=SEED + k) for k in range(6)]
    sizes = [int(n) for n in rng.integers(0, 150, 60)]
    which = [int(w) for w in rng.integers(0, 6, 60)]
    values = [rng.standard_normal(n).astype(product.dtype(spec, "var")) for n in sizes]
    grads = [rng.standard_normal(n).astype(product.dtype(spec, "grad")) for n in sizes]
    batched = [new_state(v, spec)[0] for v in values]
    alone = [new_state(v, spec)[0] for v in values]
    plan = kernel.plan([kernel.bind(*dev(*s[:3])) for s in batched])
    counters(kernel)
    if on_device:
        table = device_table(entries)
        kernel.store_hparams(dev(table)[0], entries)
        plan.launch([g.ctypes.data for g in grads],
                    kernel.device_hparams_pointer(dev(table)[0]), which, 0)
        assert counters(kernel)[:2] == (1 + 2, 0)  # one store, 60 tensors in two launches
    else:
        plan.launch([g.ctypes.data for g in grads], [e.as_tuple() for e in entries], which, 0)
        launches, waits, _ = counters(kernel)
        assert waits == 0 and launches >= 2
    for state, grad, w in zip(alone, grads, which):
        kernel(*dev(*state[:3]), dev(grad)[0], entries[w])
    for ours, theirs in zip(batched, alone):
        for a, b in zip(ours, theirs):
            if a is not None:
                np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))
