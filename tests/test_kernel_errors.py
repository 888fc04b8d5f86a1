"""Bad input to a kernel, on every target: a clear error naming the problem, and nothing written.

The kernel API's checks (the optimizers' are in tests/test_optimizer_errors.py, after the table of
docs/semantics.md): bad indices, wrong dtypes, shapes (per-row state too), layouts and byte
orders, overlapping or misaligned arrays and workspaces, sizes a step cannot take, on the C
kernels; bad indices, host
arrays, bad pointers and sizes, failed scratch allocations and deferred bad indices on the CUDA
kernels built for the CPU (tests/cuda_emulation) and on a GPU (marked cuda).
"""

from __future__ import annotations

import cffi
import ml_dtypes
import numpy as np
import pytest

import cuda_emulation as emulation
import lazyadam
from lazyadam import HParams, Spec
from lazyadam.rules import ROWWISE_ADAGRAD
from lazyadam.targets.base import hparams_of
from test_cuda_emulation import check, dev, hparams, library, new_state, reference_step  # noqa: F401
from test_cuda_gpu import device  # noqa: F401  (a fixture)
from test_kernels import KNOWN_HP


# -- C kernels ---------------------------------------------------------------------------------

def _state(shape=(4, 3), dtype=np.float32):
    var = np.arange(np.prod(shape), dtype=dtype).reshape(shape) / 10
    return var, np.ones(shape, dtype), np.full(shape, 2.0, dtype)


@pytest.mark.parametrize("bad, error, match", [
    (np.array([0, 4]), IndexError, r"indices\[1\] = 4 is outside \[0, 4\)"),
    (np.array([2, -1, 9]), IndexError, r"indices\[1\] = -1"),
    (np.array([0, 1], np.int32), TypeError, "indices has dtype int32"),
    (np.array([[0, 1]]), ValueError, "indices must be 1-d"),
])
def test_bad_indices_raise_and_write_nothing(bad, error, match):
    kernel = lazyadam.compile(Spec(sparse=True))
    var, m, v = _state()
    before = [a.copy() for a in (var, m, v)]
    values = np.ones((bad.shape[-1], 3), np.float32)
    with pytest.raises(error, match=match):
        kernel(var, m, v, (bad, values), KNOWN_HP)
    for a, b in zip((var, m, v), before):
        np.testing.assert_array_equal(a, b)


def test_overlapping_or_misaligned_arrays_are_refused():
    """Every pointer of a kernel is restrict: aliasing would silently lose updates."""
    kernel = lazyadam.compile(Spec(sparse=False))
    big = np.zeros(24, np.float32)
    grad = np.ones(8, np.float32)
    with pytest.raises(ValueError, match="var and m share memory"):
        kernel(big[:8], big[4:12], np.zeros(8, np.float32), grad, KNOWN_HP)
    with pytest.raises(ValueError, match="v and grad share memory"):
        kernel(big[:8], big[8:16], big[16:], big[16:], KNOWN_HP)
    misaligned = np.frombuffer(bytearray(40), np.float32, count=8, offset=1)
    with pytest.raises(ValueError, match="grad is not aligned"):
        kernel(big[:8], big[8:16], big[16:], misaligned, KNOWN_HP)
    assert not big.any()


def test_a_step_whose_row_and_position_pairs_would_not_fit_64_bits_is_refused():
    """Occurrences are sorted as (row, position) packed in 64 bits: 2^62 rows and 5 indices need
    62 + 3 bits. The ABI says LAZYADAM_ESIZE, having written nothing (nothing of var is read)."""
    kernel = lazyadam.compile(Spec(sparse=True))
    ffi, lib = kernel.ffi, kernel.lib
    buf = ffi.new("float[5]")
    indices = ffi.new("int64_t[]", [0, 1, 2, 3, 2**62 - 1])
    hp = ffi.new("lazyadam_hparams *", KNOWN_HP.as_tuple())
    assert kernel.fn(buf, buf, buf, 2**62, 1, indices, buf, 5, hp) == lib.LAZYADAM_ESIZE
    assert list(buf) == [0.0] * 5
    # The runtime asks for the workspace in its check phase, before any kernel of a call runs.
    with pytest.raises(ValueError, match="5 indices into 4,611,686,018,427,387,904 rows: a sparse "
                                         "step packs .* into 64 bits, and these need 65"):
        kernel.workspace_size(2**62, 1, 5)
    assert kernel.workspace_size(2**61, 1, 5) > 0


def test_bound_steps_check_what_could_read_out_of_bounds():
    var, m, v = _state()
    dense = lazyadam.compile(Spec(sparse=False)).bind(var, m, v)
    with pytest.raises(ValueError, match="grad must hold 12 float32 elements, got 3 float32"):
        dense(np.ones(3, np.float32), KNOWN_HP.as_tuple())
    with pytest.raises(ValueError, match="got 12 float64"):
        dense(np.ones(12), KNOWN_HP.as_tuple())
    sparse = lazyadam.compile(Spec(sparse=True)).bind(var, m, v)
    with pytest.raises(ValueError, match="values must hold 6 float32 elements, got 3"):
        sparse((np.array([0, 1]), np.ones(3, np.float32)), KNOWN_HP.as_tuple())
    with pytest.raises(ValueError, match="indices must be a 1-d int64 array"):
        sparse((np.array([0, 1], np.int32), np.ones(6, np.float32)), KNOWN_HP.as_tuple())
    np.testing.assert_array_equal(var, _state()[0])


def test_wrong_arrays_raise_before_the_kernel_runs():
    kernel = lazyadam.compile(Spec(sparse=False))
    var, m, v = _state()
    with pytest.raises(TypeError, match="grad has dtype float64"):
        kernel(var, m, v, np.ones((4, 3)), KNOWN_HP)
    with pytest.raises(ValueError, match=r"grad has shape \(3, 4\)"):
        kernel(var, m, v, np.ones((3, 4), np.float32), KNOWN_HP)
    with pytest.raises(ValueError, match="C-contiguous"):
        kernel(var, m, v, np.ones((3, 4), np.float32).T, KNOWN_HP)
    with pytest.raises(ValueError, match="m has shape"):
        kernel(var, m[:2], v, np.ones((4, 3), np.float32), KNOWN_HP)
    frozen = m.copy()
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="m is read-only"):
        kernel(var, frozen, v, np.ones((4, 3), np.float32), KNOWN_HP)
    with pytest.raises(TypeError, match="vmax is required by amsgrad kernels and only"):
        kernel(var, m, v, np.ones((4, 3), np.float32), KNOWN_HP, vmax=v.copy())
    sparse = lazyadam.compile(Spec(sparse=True))
    with pytest.raises(ValueError, match=r"values has shape \(2, 4\), expected \(2, 3\)"):
        sparse(var, m, v, (np.array([0, 1]), np.ones((2, 4), np.float32)), KNOWN_HP)
    with pytest.raises(TypeError, match=r"\(indices, values\) pair"):
        sparse(var, m, v, np.ones((4, 3), np.float32), KNOWN_HP)
    np.testing.assert_array_equal(var, _state()[0])


def _swapped(array: np.ndarray) -> np.ndarray:
    """`array`'s values in the other byte order (as `np.load` of a file written on a machine of the
    other endianness gives them)."""
    return array.astype(array.dtype.newbyteorder("S"))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("which", ["var", "m", "grad", "values", "indices"])
def test_arrays_in_the_other_byte_order_are_refused(dtype, which):
    """Their bytes were read as this machine's floats: one step of lr 0.1 moved a weight by
    -1.5e-35 instead of -0.1. The TypeError says how to convert."""
    sparse = which in ("values", "indices")
    kernel = lazyadam.compile(Spec(sparse=sparse, dtype=dtype))
    var, m, v = _state(dtype=dtype)
    grad = (np.array([0, 2]), np.ones((2, 3), dtype)) if sparse else np.ones((4, 3), dtype)
    arrays = {"var": var, "m": m, "grad": grad}
    if sparse:
        arrays["grad"] = (_swapped(grad[0]), grad[1]) if which == "indices" else (
            grad[0], _swapped(grad[1]))
    else:
        arrays[which] = _swapped(arrays[which])
    bad = arrays["grad"][0 if which == "indices" else 1] if sparse else arrays[which]
    code = {"float32": "f4", "float64": "f8", "int64": "i8"}[np.dtype(bad.dtype).name]
    with pytest.raises(TypeError, match=rf"{which}: dtype '.{code}' is (big|little)-endian.*"
                                        rf"\.astype\('={code}'\)"):
        kernel(arrays["var"], arrays["m"], v, arrays["grad"], KNOWN_HP)
    np.testing.assert_array_equal(np.asarray(arrays["var"], np.float64),
                                  _state(dtype=dtype)[0].astype(np.float64))


def test_bound_steps_refuse_gradients_in_the_other_byte_order():
    var, m, v = _state()
    step = lazyadam.compile(Spec(sparse=False)).bind(var, m, v)
    with pytest.raises(TypeError, match=r"astype\('=f4'\)"):
        step(_swapped(np.ones((4, 3), np.float32)), KNOWN_HP.as_tuple())
    with pytest.raises(TypeError, match=r"astype\('=f4'\)"):
        lazyadam.compile(Spec(sparse=False)).bind(_swapped(var), m, v)
    sparse = lazyadam.compile(Spec(sparse=True)).bind(var, m, v)
    with pytest.raises(TypeError, match=r"astype\('=f4'\)"):
        sparse((np.array([0]), _swapped(np.ones(3, np.float32))), KNOWN_HP.as_tuple())
    with pytest.raises(TypeError, match=r"astype\('=i8'\)"):
        sparse((_swapped(np.array([0])), np.ones(3, np.float32)), KNOWN_HP.as_tuple())
    np.testing.assert_array_equal(var, _state()[0])


@pytest.mark.parametrize("sizes", [dict(rows=-1, row_size=3, nnz=2), dict(rows=4, row_size=-3, nnz=2),
                                   dict(rows=4, row_size=3, nnz=-2)],
                         ids=["rows", "row_size", "nnz"])
def test_workspace_size_refuses_negative_sizes(sizes):
    """As the kernel call does (rows was ignored: workspace_size(rows=-1, ...) gave a size)."""
    kernel = lazyadam.compile(Spec(sparse=True))
    name = next(k for k, value in sizes.items() if value < 0)
    with pytest.raises(ValueError, match=f"{name} = -"):
        kernel.workspace_size(**sizes)


def test_a_workspace_that_overlaps_an_array_of_the_step_is_refused():
    """The C kernel checks the overlap and returns LAZYADAM_EOVERLAP having written nothing (it
    crashed: the sort wrote into var); the bound step raises ValueError. A workspace that only
    borders an array is taken."""
    spec = Spec(sparse=True, amsgrad=True)
    kernel = lazyadam.compile(spec)
    ffi, lib = kernel.ffi, kernel.lib
    rows, row_size = 64, 4
    size = kernel.workspace_size(rows, row_size, 4)
    # The gradient's arrays, each at the start of a buffer with room for a workspace after it.
    room = [np.zeros(size + 128, np.uint8) for _ in range(2)]
    indices = room[0][:32].view(np.int64)
    indices[...] = [3, 1, 3, 60]
    values = room[1][:64].view(np.float32).reshape(4, row_size)
    values[...] = 1.0
    # Each array the step touches lies inside one large buffer, followed by a workspace's room.
    slab = np.zeros(4 * rows * row_size + size // 4 + 64, np.float32)
    state = [slab[k * rows * row_size:(k + 1) * rows * row_size].reshape(rows, row_size)
             for k in range(4)]
    state[0][...] = 1.0
    hp = ffi.new("lazyadam_hparams *", KNOWN_HP.as_tuple())

    def call(workspace: np.ndarray) -> int:
        return getattr(lib, f"{kernel.source.symbol}_with_workspace")(
            *(ffi.cast("float *", a.ctypes.data) for a in state), rows, row_size,
            ffi.cast("int64_t *", indices.ctypes.data), ffi.cast("float *", values.ctypes.data),
            len(indices), hp, ffi.cast("void *", workspace.ctypes.data), workspace.nbytes)

    before = [a.copy() for a in state]
    for k, name in enumerate(("var", "m", "v", "vmax")):
        inside = slab[k * rows * row_size + 6:].view(np.uint8)[:size]  # 8-byte aligned
        assert call(inside) == lib.LAZYADAM_EOVERLAP, name
    for buffer in room:
        assert call(buffer[8:8 + size]) == lib.LAZYADAM_EOVERLAP
    for a, b in zip(state, before):
        np.testing.assert_array_equal(a, b)
    step = kernel.bind(*state[:3], vmax=state[3])
    with pytest.raises(ValueError, match="workspace .* shares memory with an array of the step"):
        step((indices, values.reshape(-1)), KNOWN_HP.as_tuple(),
             workspace=slab[rows * row_size + 6:].view(np.uint8)[:size])
    after_all = slab[4 * rows * row_size:].view(np.uint8)[:size]
    assert call(after_all) == lib.LAZYADAM_OK
    assert state[0][3, 0] < 1.0 and state[0][0, 0] == 1.0


def test_arrays_of_the_wrong_dtype_are_refused_before_anything_is_written():
    kernel = lazyadam.compile(Spec(sparse=False, dtype="bfloat16"))
    var = np.ones(8, ml_dtypes.bfloat16)
    m, v = np.zeros(8, np.float32), np.zeros(8, np.float32)
    hp = HParams.at_step(1)
    with pytest.raises(TypeError, match="grad has dtype float16, this kernel takes bfloat16"):
        kernel(var, m, v, np.ones(8, np.float16), hp)
    with pytest.raises(TypeError, match="grad has dtype float32, this kernel takes bfloat16"):
        kernel(var, m, v, np.ones(8, np.float32), hp)
    with pytest.raises(TypeError, match="m has dtype bfloat16, this kernel takes float32"):
        kernel(var, m.astype(ml_dtypes.bfloat16), v, np.ones(8, ml_dtypes.bfloat16), hp)
    with pytest.raises(TypeError, match="var has dtype float16, this kernel takes bfloat16"):
        kernel(var.astype(np.float16), m, v, np.ones(8, ml_dtypes.bfloat16), hp)
    sparse = lazyadam.compile(Spec(dtype="float16", state_dtype="bfloat16"))
    table = np.ones((4, 2), np.float16)
    state = [np.zeros((4, 2), ml_dtypes.bfloat16) for _ in range(2)]
    with pytest.raises(TypeError, match="values has dtype bfloat16, this kernel takes float16"):
        sparse(table, *state, (np.array([1]), np.ones((1, 2), ml_dtypes.bfloat16)), hp)
    step = sparse.bind(table, *state)
    with pytest.raises(ValueError, match="values must hold 2 float16 elements, got 2 float32"):
        step((np.array([1]), np.ones(2, np.float32)), hp.as_tuple())
    assert (var == 1).all() and not m.any() and (table == 1).all() and not state[0].any()


def test_per_row_state_must_have_one_value_per_row():
    spec = ROWWISE_ADAGRAD.spec(sparse=False, dtype="float64").validate()
    kernel = lazyadam.compile(spec)
    var, grad = np.ones((4, 3)), np.ones((4, 3))
    hp = hparams_of(ROWWISE_ADAGRAD).at_step(1)
    for acc, message in [(np.zeros((4, 3)), r"acc has shape \(4, 3\), expected \(4,\)"),
                         (np.zeros(5), r"acc has shape \(5,\), expected \(4,\)")]:
        with pytest.raises(ValueError, match=message):
            kernel(var, acc, grad, hp)
    assert (var == 1).all() and not acc.any()
    with pytest.raises(ValueError, match="keeps state per row: var needs rank >= 1"):
        kernel(np.ones(()), np.zeros(()), np.ones(()), hp)


# -- CUDA kernels, emulated on the CPU ------------------------------------------------------------

@pytest.mark.parametrize("bad, match", [
    ([0, 4, 9], r"indices\[1\] = 4 is outside \[0, 4\)"),
    ([2, -1, 9, -5], r"indices\[1\] = -1 is outside \[0, 4\)"),
    ([3] * 40 + [7], r"indices\[40\] = 7 is outside"),
])
def test_bad_indices_raise_on_the_device_and_write_nothing(library, bad, match):
    spec = Spec(sparse=True, amsgrad=True)
    arrays = [np.arange(12, dtype=np.float32).reshape(4, 3) + k for k in range(4)]
    before = [a.copy() for a in arrays]
    values = np.ones((len(bad), 3), np.float32)
    with pytest.raises(IndexError, match=match):
        library[spec](*dev(*arrays[:3]), tuple(dev(np.array(bad), values)), hparams(spec, 1),
                      vmax=dev(arrays[3])[0])
    for a, b in zip(arrays, before):
        np.testing.assert_array_equal(a, b)


def test_an_empty_table_rejects_every_index(library):
    spec = Spec(sparse=True)
    var, m, v = (np.zeros((0, 3), np.float32) for _ in range(3))
    with pytest.raises(IndexError, match=r"indices\[0\] = 0 is outside \[0, 0\)"):
        library[spec](*dev(var, m, v), tuple(dev(np.array([0]), np.ones((1, 3), np.float32))),
                      hparams(spec, 1))


def test_failed_scratch_allocation_writes_nothing(library):
    spec = Spec(sparse=True)
    kernel = library[spec]
    var, m, v = (np.ones((4, 3), np.float32) for _ in range(3))
    ffi = cffi.FFI()
    ffi.cdef("void emu_fail_next_malloc(void);")
    ffi.dlopen(str(kernel.path)).emu_fail_next_malloc()
    with pytest.raises(MemoryError, match="cudaErrorMemoryAllocation"):
        kernel(*dev(var, m, v), tuple(dev(np.array([1]), np.ones((1, 3), np.float32))),
               hparams(spec, 1))
    np.testing.assert_array_equal(var, 1.0)
    # The failure was reported once: the next call does not find it in cudaGetLastError.
    kernel(*dev(var, m, v), tuple(dev(np.array([1]), np.ones((1, 3), np.float32))),
           hparams(spec, 1))
    assert (var[1] != 1.0).all()


def test_launchers_check_pointers_and_sizes(library):
    sparse, dense = library[Spec(sparse=True)], library[Spec(sparse=False)]
    for kernel in (sparse, dense):
        ffi, null, lib = kernel.ffi, kernel.ffi.NULL, kernel.lib
        hp = ffi.new("lazyadam_hparams *", hparams(Spec(), 1).as_tuple())
        buf, idx = ffi.new("float[4]"), ffi.new("int64_t[1]")
        if kernel is sparse:
            assert kernel.fn(buf, buf, buf, 2, 2, idx, buf, 1, null, null) == lib.LAZYADAM_ENULL
            assert kernel.fn(null, buf, buf, 2, 2, idx, buf, 1, hp, null) == lib.LAZYADAM_ENULL
            assert kernel.fn(buf, buf, buf, -1, 2, idx, buf, 1, hp, null) == lib.LAZYADAM_ESIZE
            assert kernel.fn(buf, buf, buf, 2, 2, null, null, 0, hp, null) == lib.LAZYADAM_OK
        else:
            assert kernel.fn(buf, buf, buf, buf, -4, hp, null) == lib.LAZYADAM_ESIZE
            assert kernel.fn(null, null, null, null, 0, hp, null) == lib.LAZYADAM_OK
            assert kernel.fn(null, buf, buf, buf, 4, hp, null) == lib.LAZYADAM_ENULL


def test_multi_rejects_mismatched_lists(library):
    spec = Spec(sparse=False)
    var = np.ones(3, np.float32)
    a = emulation.Emulated(var)
    with pytest.raises(ValueError, match="one entry per tensor"):
        library[spec].multi([a, a], [a, a], [a], [a, a], hparams(spec, 1))
    assert (var == 1).all()


def test_host_arrays_are_refused_with_a_clear_error(library):
    kernel = library[Spec(sparse=False)]
    a = np.zeros(3, np.float32)
    with pytest.raises(TypeError, match="__cuda_array_interface__.*numpy.ndarray"):
        kernel(a, a, a, a, hparams(Spec(), 1))
    with pytest.raises(TypeError, match="grad has dtype float64"):
        kernel(*dev(a, a, a), emulation.Emulated(np.zeros(3)), hparams(Spec(), 1))
    with pytest.raises(ValueError, match="var must be C-contiguous"):
        strided = np.zeros(6, np.float32)[::2]
        kernel(*dev(strided, a, a, a), hparams(Spec(), 1))


def test_misaligned_gradients_and_missing_hyperparameters_are_refused(library, rng):
    """A gradient that does not start on an element boundary would fault on a GPU: the bound call
    and multi() refuse it, as the kernel call does; multi() also wants hp or device_hparams."""
    kernel = library[Spec(sparse=False)]
    state = new_state(rng.standard_normal(6).astype(np.float32), Spec(sparse=False))[0]
    buffer = np.zeros(6 * 4 + 1, np.uint8)
    skewed = np.frombuffer(buffer, np.float32, count=6, offset=1)
    binding = kernel.bind(*dev(*state[:3]))
    with pytest.raises(ValueError, match="grad is not aligned to its 4-byte elements"):
        binding(dev(skewed)[0], HParams.at_step(1))
    with pytest.raises(ValueError, match=r"grads\[0\] is not aligned to its 4-byte elements"):
        kernel.multi(*([a] for a in dev(*state[:3])), [dev(skewed)[0]], HParams.at_step(1))
    with pytest.raises(TypeError, match="as hp or as device_hparams .one of them., got neither"):
        kernel.multi(*([a] for a in dev(*state[:3])), [dev(np.zeros(6, np.float32))[0]], None)
    np.testing.assert_array_equal(state[1], 0)


@pytest.mark.parametrize("spec", [Spec(sparse=True, amsgrad=True),
                                  Spec(sparse=True, use_locking=True, decay="l2")],
                         ids=lambda s: s.symbol())
def test_a_deferred_bad_index_turns_steps_into_no_ops_until_checked(library, spec, rng):
    kernel = library[spec]
    var0 = rng.standard_normal((6, 5)).astype(np.float32)
    arrays, ref = new_state(var0, spec)
    record = np.zeros(kernel.RECORD_WORDS, np.int64)
    good = (np.array([1, 4, 1] * 200), rng.standard_normal((600, 5)).astype(np.float32))
    bad = (np.array([2, 6, 3, -1]), np.ones((4, 5), np.float32))
    state = dev(*arrays)
    kernel(*state[:3], tuple(dev(*good)), hparams(spec, 1), vmax=state[3], record=dev(record)[0])
    ref = reference_step(ref, good, hparams(spec, 1), spec)
    check(arrays, ref, spec)
    before = [a.copy() for a in arrays if a is not None]
    kernel(*state[:3], tuple(dev(*bad)), hparams(spec, 2), vmax=state[3], record=dev(record)[0])
    assert record.tolist() == [1, 1, 6, 6]  # found, position, value, rows
    kernel(*state[:3], tuple(dev(*good)), hparams(spec, 2), vmax=state[3], record=dev(record)[0])
    for a, b in zip([a for a in arrays if a is not None], before):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(IndexError, match=r"indices\[1\] = 6 is outside \[0, 6\)"):
        kernel.check(dev(record)[0])
    assert not record.any()
    kernel.check(dev(record)[0])  # cleared: nothing more to report
    kernel(*state[:3], tuple(dev(*good)), hparams(spec, 2), vmax=state[3], record=dev(record)[0])
    check(arrays, reference_step(ref, good, hparams(spec, 2), spec), spec)


# -- CUDA kernels on a GPU ------------------------------------------------------------------------

def test_gpu_bad_index_raises_and_writes_nothing(device):
    kernel = lazyadam.compile(Spec(sparse=True), "cuda")
    state = [device.put(np.full((5, 4), k, np.float32)) for k in range(3)]
    bad = (device.put(np.array([0, 3, 5, 1])), device.put(np.ones((4, 4), np.float32)))
    with pytest.raises(IndexError, match=r"indices\[2\] = 5 is outside \[0, 5\)"):
        kernel(*state, bad, HParams.at_step(1))
    for k, arr in enumerate(state):
        np.testing.assert_array_equal(device.get(arr), k)
