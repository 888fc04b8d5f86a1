"""Bad input is refused with a clear error naming the problem, and leaves every parameter and
state as it was: every layer's cases in one place.

A test wraps the bad call in `with refused(x, Error, match=...)`, `x` being what the call may
write, or, where one snapshot serves several calls, takes `before = snapshot(x)` and ends with
`assert_unchanged(x, before)` (tests/unchanged.py: parameters, state, step counts and running
powers, bit for bit). The layers, each with its table of cases:

- raw kernels: C (`lazyadam.compile`: bad indices, wrong dtypes, shapes (per-row state too),
  layouts and byte orders, overlapping or misaligned arrays and workspaces, sizes a step cannot
  take); CUDA built for the CPU (tests/cuda_emulation: bad indices, host arrays, bad pointers
  and sizes, failed scratch allocations, deferred bad indices) and on a GPU (marked `cuda`);
- the generated C sources as another project builds them (their ABI's return codes);
- the MindSpore-style front end: `LazyAdam` on host arrays (docs/semantics.md's table of bad
  input, schedules, aliasing, memory), in bfloat16, every class of the family, and on
  (emulated) device arrays;
- the torch front end: `lazyadam.torch.LazyAdam` and every class of the family, on CPU and on
  emulated CUDA;
- capturable steps (CUDA graphs, emulated), both front ends.

The optimizers' constructor checks, which have no state yet to leave alone, stay beside their
front ends: tests/test_optimizer_errors.py, tests/test_torch.py.
"""

from __future__ import annotations

import copy
import math
import subprocess
import sys
import zipfile

import cffi
import ml_dtypes
import numpy as np
import pytest

import cuda_emulation as emulation
import lazyadam
from lazyadam import HParams, LazyAdam, Parameter, RowTensor, Spec
from lazyadam.rules import ROWWISE_ADAGRAD
from lazyadam.schedules import ExponentialDecayLR
from lazyadam.targets import c
from lazyadam.targets.base import hparams_of
from test_checkpoint import assert_same_state, build as checkpoint_build, small_checkpoint
from test_cuda_emulation import (check, dev, hparams, library,  # noqa: F401  (library: a fixture)
                                 new_state, reference_step)
from test_cuda_gpu import device  # noqa: F401  (a fixture)
from test_kernels import KNOWN_HP
from test_mindspore_family import CLASSES as MINDSPORE_CLASSES, DIM, ROWS, data, step_of
from test_optimizer_errors import good_gradients, params  # noqa: F401  (params: a fixture)
from test_rule_generic import HEAVY_BALL, _inputs as rule_inputs
from test_shipped_c import ENULL, EINDEX, ESIZE, SPECS as SHIPPED_SPECS, Shipped
from test_shipped_c import libraries  # noqa: F401  (a fixture)
from unchanged import assert_unchanged, refused, snapshot

try:
    import torch
except ImportError:  # the layers that need torch skip, saying so; the others run
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed: no torch tensors")
if torch is not None:
    import lazyadam.torch
    import test_runtime_device
    from test_capture import (StaticGradients, batches, capture, device_model,  # noqa: F401
                              mlp, on_device, set_gradients, torch_groups)
    from test_optimizer_mixed import HYPER as MIXED_HYPER, model as mixed_model
    from test_runtime_device import TorchOnDevice, lib  # noqa: F401  (lib: a fixture)
    from test_torch import Recommender, backward
    from test_torch_conventions import family, gradient, step_with_gradients  # noqa: F401
    from test_torch_device import emulated, groups  # noqa: F401  (emulated: a fixture)
    from test_torch_family import CLASS_IDS, CLASSES as TORCH_CLASSES, ROWS as TORCH_ROWS
    from test_torch_family import backward_both, model as family_model
else:
    TORCH_CLASSES, CLASS_IDS, TORCH_ROWS = [], [], 0


# == raw kernels: C ================================================================================

def kernel_state(shape=(4, 3), dtype=np.float32):
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
    var, m, v = kernel_state()
    values = np.ones((bad.shape[-1], 3), np.float32)
    with refused([var, m, v], error, match=match):
        kernel(var, m, v, (bad, values), KNOWN_HP)


def test_overlapping_or_misaligned_arrays_are_refused():
    """Every pointer of a kernel is restrict: aliasing would silently lose updates."""
    kernel = lazyadam.compile(Spec(sparse=False))
    big = np.zeros(24, np.float32)
    grad = np.ones(8, np.float32)
    before = snapshot(big)
    with pytest.raises(ValueError, match="var and m share memory"):
        kernel(big[:8], big[4:12], np.zeros(8, np.float32), grad, KNOWN_HP)
    with pytest.raises(ValueError, match="v and grad share memory"):
        kernel(big[:8], big[8:16], big[16:], big[16:], KNOWN_HP)
    misaligned = np.frombuffer(bytearray(40), np.float32, count=8, offset=1)
    with pytest.raises(ValueError, match="grad is not aligned"):
        kernel(big[:8], big[8:16], big[16:], misaligned, KNOWN_HP)
    assert_unchanged(big, before)


def test_a_step_whose_row_and_position_pairs_would_not_fit_64_bits_is_refused():
    """Occurrences are sorted as (row, position) packed in 64 bits: 2^62 rows and 5 indices need
    62 + 3 bits. The ABI says LAZYADAM_ESIZE, having written nothing (nothing of var is read)."""
    kernel = lazyadam.compile(Spec(sparse=True))
    ffi = kernel.ffi
    buf = ffi.new("float[5]")
    indices = ffi.new("int64_t[]", [0, 1, 2, 3, 2**62 - 1])
    hp = ffi.new("lazyadam_hparams *", KNOWN_HP.as_tuple())
    assert kernel.fn(buf, buf, buf, 2**62, 1, indices, buf, 5, hp) == kernel.lib.LAZYADAM_ESIZE
    assert list(buf) == [0.0] * 5
    # The runtime asks for the workspace in its check phase, before any kernel of a call runs.
    with pytest.raises(ValueError, match="5 indices into 4,611,686,018,427,387,904 rows: a sparse "
                                         "step packs .* into 64 bits, and these need 65"):
        kernel.workspace_size(2**62, 1, 5)
    assert kernel.workspace_size(2**61, 1, 5) > 0


def test_bound_steps_check_what_could_read_out_of_bounds():
    var, m, v = kernel_state()
    before = snapshot([var, m, v])
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
    assert_unchanged([var, m, v], before)


def test_wrong_arrays_raise_before_the_kernel_runs():
    kernel = lazyadam.compile(Spec(sparse=False))
    var, m, v = kernel_state()
    before = snapshot([var, m, v])
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
    assert_unchanged([var, m, v], before)


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
    var, m, v = kernel_state(dtype=dtype)
    grad = (np.array([0, 2]), np.ones((2, 3), dtype)) if sparse else np.ones((4, 3), dtype)
    arrays = {"var": var, "m": m, "grad": grad}
    if sparse:
        arrays["grad"] = (_swapped(grad[0]), grad[1]) if which == "indices" else (
            grad[0], _swapped(grad[1]))
    else:
        arrays[which] = _swapped(arrays[which])
    bad = arrays["grad"][0 if which == "indices" else 1] if sparse else arrays[which]
    code = {"float32": "f4", "float64": "f8", "int64": "i8"}[np.dtype(bad.dtype).name]
    with refused([arrays, v], TypeError,
                 match=rf"{which}: dtype '.{code}' is (big|little)-endian.*\.astype\('={code}'\)"):
        kernel(arrays["var"], arrays["m"], v, arrays["grad"], KNOWN_HP)


def test_bound_steps_refuse_gradients_in_the_other_byte_order():
    var, m, v = kernel_state()
    before = snapshot([var, m, v])
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
    assert_unchanged([var, m, v], before)


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

    before = snapshot(state)
    for k, name in enumerate(("var", "m", "v", "vmax")):
        inside = slab[k * rows * row_size + 6:].view(np.uint8)[:size]  # 8-byte aligned
        assert call(inside) == lib.LAZYADAM_EOVERLAP, name
    for buffer in room:
        assert call(buffer[8:8 + size]) == lib.LAZYADAM_EOVERLAP
    assert_unchanged(state, before)
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
    table = np.ones((4, 2), np.float16)
    state = [np.zeros((4, 2), ml_dtypes.bfloat16) for _ in range(2)]
    before = snapshot([var, m, v, table, state])
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
    with pytest.raises(TypeError, match="values has dtype bfloat16, this kernel takes float16"):
        sparse(table, *state, (np.array([1]), np.ones((1, 2), ml_dtypes.bfloat16)), hp)
    step = sparse.bind(table, *state)
    with pytest.raises(ValueError, match="values must hold 2 float16 elements, got 2 float32"):
        step((np.array([1]), np.ones(2, np.float32)), hp.as_tuple())
    assert_unchanged([var, m, v, table, state], before)


def test_per_row_state_must_have_one_value_per_row():
    spec = ROWWISE_ADAGRAD.spec(sparse=False, dtype="float64").validate()
    kernel = lazyadam.compile(spec)
    var, grad = np.ones((4, 3)), np.ones((4, 3))
    hp = hparams_of(ROWWISE_ADAGRAD).at_step(1)
    for acc, message in [(np.zeros((4, 3)), r"acc has shape \(4, 3\), expected \(4,\)"),
                         (np.zeros(5), r"acc has shape \(5,\), expected \(4,\)")]:
        with refused([var, acc], ValueError, match=message):
            kernel(var, acc, grad, hp)
    with pytest.raises(ValueError, match="keeps state per row: var needs rank >= 1"):
        kernel(np.ones(()), np.zeros(()), np.ones(()), hp)


def test_a_call_that_does_not_fit_the_rule_names_what_it_takes():
    if c.unavailable():
        pytest.skip(c.unavailable())
    kernel = lazyadam.compile(HEAVY_BALL.spec(sparse=False))
    var, buf, grad, _ = rule_inputs("float32", False)
    hp = hparams_of(HEAVY_BALL).at_step(1)
    before = snapshot([var, buf])
    with pytest.raises(TypeError, match="heavy_ball kernel takes var, buf, grad and hp"):
        kernel(var, grad, hp)
    with pytest.raises(TypeError, match="unexpected keyword argument 'm'"):
        kernel(var, buf, grad, hp, m=buf)
    with pytest.raises(TypeError, match="buf has dtype float64"):
        kernel(var, buf.astype(np.float64), grad, hp)
    assert_unchanged([var, buf], before)


# == raw kernels: CUDA, emulated on the CPU ========================================================

@pytest.mark.parametrize("bad, match", [
    ([0, 4, 9], r"indices\[1\] = 4 is outside \[0, 4\)"),
    ([2, -1, 9, -5], r"indices\[1\] = -1 is outside \[0, 4\)"),
    ([3] * 40 + [7], r"indices\[40\] = 7 is outside"),
])
def test_bad_indices_raise_on_the_device_and_write_nothing(library, bad, match):
    spec = Spec(sparse=True, amsgrad=True)
    arrays = [np.arange(12, dtype=np.float32).reshape(4, 3) + k for k in range(4)]
    values = np.ones((len(bad), 3), np.float32)
    with refused(arrays, IndexError, match=match):
        library[spec](*dev(*arrays[:3]), tuple(dev(np.array(bad), values)), hparams(spec, 1),
                      vmax=dev(arrays[3])[0])


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
    with refused([var, m, v], MemoryError, match="cudaErrorMemoryAllocation"):
        kernel(*dev(var, m, v), tuple(dev(np.array([1]), np.ones((1, 3), np.float32))),
               hparams(spec, 1))
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
    with refused(var, ValueError, match="one entry per tensor"):
        library[spec].multi([a, a], [a, a], [a], [a, a], hparams(spec, 1))


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
    before = snapshot(state)
    buffer = np.zeros(6 * 4 + 1, np.uint8)
    skewed = np.frombuffer(buffer, np.float32, count=6, offset=1)
    binding = kernel.bind(*dev(*state[:3]))
    with pytest.raises(ValueError, match="grad is not aligned to its 4-byte elements"):
        binding(dev(skewed)[0], HParams.at_step(1))
    with pytest.raises(ValueError, match=r"grads\[0\] is not aligned to its 4-byte elements"):
        kernel.multi(*([a] for a in dev(*state[:3])), [dev(skewed)[0]], HParams.at_step(1))
    with pytest.raises(TypeError, match="as hp or as device_hparams .one of them., got neither"):
        kernel.multi(*([a] for a in dev(*state[:3])), [dev(np.zeros(6, np.float32))[0]], None)
    assert_unchanged(state, before)


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
    before = snapshot(arrays)
    kernel(*state[:3], tuple(dev(*bad)), hparams(spec, 2), vmax=state[3], record=dev(record)[0])
    assert record.tolist() == [1, 1, 6, 6]  # found, position, value, rows
    kernel(*state[:3], tuple(dev(*good)), hparams(spec, 2), vmax=state[3], record=dev(record)[0])
    assert_unchanged(arrays, before)
    with pytest.raises(IndexError, match=r"indices\[1\] = 6 is outside \[0, 6\)"):
        kernel.check(dev(record)[0])
    assert not record.any()
    kernel.check(dev(record)[0])  # cleared: nothing more to report
    kernel(*state[:3], tuple(dev(*good)), hparams(spec, 2), vmax=state[3], record=dev(record)[0])
    check(arrays, reference_step(ref, good, hparams(spec, 2), spec), spec)


# == raw kernels: CUDA on a GPU ====================================================================

def test_gpu_bad_index_raises_and_writes_nothing(device):
    kernel = lazyadam.compile(Spec(sparse=True), "cuda")
    state = [device.put(np.full((5, 4), k, np.float32)) for k in range(3)]
    bad = (device.put(np.array([0, 3, 5, 1])), device.put(np.ones((4, 4), np.float32)))
    with pytest.raises(IndexError, match=r"indices\[2\] = 5 is outside \[0, 5\)"):
        kernel(*state, bad, HParams.at_step(1))
    for k, arr in enumerate(state):
        np.testing.assert_array_equal(device.get(arr), k)


# == the shipped C sources: a return code, and nothing written =====================================

def shipped_state(spec: Spec, shape=(4, 3)):
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(shape).astype(spec.dtype) for _ in range(4)]
    return arrays[:3] + [arrays[3] if spec.amsgrad else None]


SHIPPED_SPARSE_BAD = [
    ("null var", dict(null="var"), ENULL),
    ("null m", dict(null="m"), ENULL),
    ("null v", dict(null="v"), ENULL),
    ("null vmax", dict(null="vmax"), ENULL),
    ("null indices", dict(null="indices"), ENULL),
    ("null values", dict(null="values"), ENULL),
    ("null hp", dict(null="hp"), ENULL),
    ("negative rows", dict(rows=-1), ESIZE),
    ("negative row_size", dict(row_size=-3), ESIZE),
    ("negative nnz", dict(nnz=-2), ESIZE),
    ("index -1", dict(indices=[0, -1, 2]), EINDEX),
    ("index == rows", dict(indices=[0, 4]), EINDEX),
    ("index past rows", dict(indices=[3, 2, 1000]), EINDEX),
]


@pytest.mark.parametrize("what, bad, status", SHIPPED_SPARSE_BAD,
                         ids=[b[0] for b in SHIPPED_SPARSE_BAD])
def test_shipped_sparse_bad_input_returns_its_code_and_writes_nothing(  # noqa: F811
        libraries, what, bad, status):
    spec = SHIPPED_SPECS[2]  # amsgrad: vmax is an argument too
    kernel = Shipped(spec, libraries["serial"])
    state = shipped_state(spec)
    before = snapshot(state)
    indices = np.array(bad.pop("indices", [2, 0, 2]), spec.index_dtype)
    values = np.ones((len(indices), 3), spec.dtype)
    hp = HParams.at_step(1).as_tuple()
    assert kernel(*state, (indices, values), hp, **bad) == status
    assert_unchanged(state, before)


SHIPPED_DENSE_BAD = [
    ("null var", dict(null="var"), ENULL),
    ("null vmax", dict(null="vmax"), ENULL),
    ("null grad", dict(null="grad"), ENULL),
    ("null hp", dict(null="hp"), ENULL),
    ("negative n", dict(n=-1), ESIZE),
]


@pytest.mark.parametrize("what, bad, status", SHIPPED_DENSE_BAD,
                         ids=[b[0] for b in SHIPPED_DENSE_BAD])
def test_shipped_dense_bad_input_returns_its_code_and_writes_nothing(  # noqa: F811
        libraries, what, bad, status):
    spec = SHIPPED_SPECS[5]  # dense amsgrad
    kernel = Shipped(spec, libraries["serial"])
    state = shipped_state(spec)
    before = snapshot(state)
    hp = HParams.at_step(1).as_tuple()
    assert kernel(*state, np.ones((4, 3), spec.dtype), hp, **bad) == status
    assert_unchanged(state, before)


# == the MindSpore-style front end: LazyAdam on host arrays ========================================

#: docs/semantics.md's table of bad gradients: (the call's gradients made from good ones, error,
#: message).
BAD_CALLS = {
    "not a sequence": (lambda t, d: {"table": 1}, TypeError, "tuple or list"),
    "too few": (lambda t, d: [t], ValueError, "1 gradients for 2 parameters"),
    "too many": (lambda t, d: [t, d, d], ValueError, "3 gradients for 2 parameters"),
    "dense of another type": (lambda t, d: [t, d.tolist()], TypeError, "list"),
    "dense shape": (lambda t, d: [t, np.ones((2, 3), np.float32)], ValueError, r"\(2, 3\)"),
    "dense dtype": (lambda t, d: [t, d.astype(np.float64)], TypeError, "float64"),
    "float indices": (lambda t, d: [RowTensor(np.array([0.0, 1.0]), np.ones((2, 3), np.float32),
                                              (6, 3)), d], TypeError, "integers"),
    "bool indices": (lambda t, d: [RowTensor(np.array([True]), np.ones((1, 3), np.float32),
                                             (6, 3)), d], TypeError, "integers"),
    "2-d indices": (lambda t, d: [RowTensor(np.array([[0, 1]]), np.ones((2, 3), np.float32),
                                            (6, 3)), d], ValueError, "1-d"),
    "values shape": (lambda t, d: [RowTensor(np.array([0, 1]), np.ones((2, 4), np.float32),
                                             (6, 3)), d], ValueError, r"\(2, 4\)"),
    "values dtype": (lambda t, d: [RowTensor(np.array([0, 1]), np.ones((2, 3)), (6, 3)), d],
                     TypeError, "float64"),
    "dense_shape": (lambda t, d: [RowTensor(np.array([0]), np.ones((1, 3), np.float32), (7, 3)),
                                  d], ValueError, "dense_shape"),
    "index too large": (lambda t, d: [RowTensor(np.array([0, 6, 9]), np.ones((3, 3), np.float32),
                                                (6, 3)), d], IndexError,
                        r"indices\[1\] = 6 is outside \[0, 6\)"),
    "negative index": (lambda t, d: [RowTensor(np.array([2, -1], np.int32),
                                               np.ones((2, 3), np.float32), (6, 3)), d],
                       IndexError, r"indices\[1\] = -1"),
    "dense byte order": (lambda t, d: [t, d.astype(">f4")], TypeError,
                         r"gradient 1 \(parameter 'dense'\): dtype '>f4'.*astype\('=f4'\)"),
    "values byte order": (lambda t, d: [RowTensor(t.indices, t.values.astype(">f4"), (6, 3)), d],
                          TypeError, r"gradient 0 .*: values: dtype '>f4'.*astype\('=f4'\)"),
    "indices byte order": (lambda t, d: [RowTensor(t.indices.astype(">i8"), t.values, (6, 3)), d],
                           TypeError, r"gradient 0 .*: indices: dtype '>i8'.*astype\('=i8'\)"),
}


@pytest.mark.parametrize("case", BAD_CALLS)
def test_bad_call_changes_nothing(params, case):
    make_grads, error, message = BAD_CALLS[case]
    opt = LazyAdam(params, learning_rate=0.1, weight_decay=0.1)
    opt(good_gradients(params))
    with refused(opt, error, match=message):
        opt(make_grads(*good_gradients(params)))
    assert opt(good_gradients(params)) is True


def test_bad_second_gradient_leaves_the_first_parameter_alone(params):
    """All gradients are checked before any kernel runs."""
    opt = LazyAdam(params)
    table_grad = good_gradients(params)[0]
    with refused(opt, IndexError, match="dense"):
        opt([table_grad, RowTensor(np.array([2]), np.ones((1, 2), np.float32), (2, 2))])


ALIASES = {
    "dense gradient is the parameter": lambda t, d, opt: [good_gradients([t, d])[0], d.data],
    "dense gradient is a view of moment2": lambda t, d, opt: [
        good_gradients([t, d])[0], opt.moment2[1].data[:, :]],
    "values are rows of the parameter": lambda t, d, opt: [
        RowTensor(np.array([1, 0]), t.data[:2], t.shape), np.ones((2, 2), np.float32)],
    "values are rows of moment1": lambda t, d, opt: [
        RowTensor(np.array([1, 0]), opt.moment1[0].data[3:5], t.shape),
        np.ones((2, 2), np.float32)],
    "indices are the parameter's bytes": lambda t, d, opt: [
        RowTensor(t.data[2].view(np.int32), np.ones((3, 3), np.float32), t.shape),
        np.ones((2, 2), np.float32)],
}


@pytest.mark.parametrize("case", ALIASES)
def test_a_gradient_that_shares_memory_with_what_the_step_writes_is_refused(case):
    table = Parameter(np.zeros((6, 3), np.float32), name="table")  # zero bytes: valid indices
    dense = Parameter(np.ones((2, 2), np.float32), name="dense")
    opt = LazyAdam([table, dense], learning_rate=0.1)
    opt(good_gradients([table, dense]))
    with refused(opt, ValueError, match=r"gradient [01] \(parameter '(table|dense)'\).*shares "
                                        "memory with the .*parameter.*pass a copy"):
        opt(ALIASES[case](table, dense, opt))


def test_learning_rate_sequence_that_ran_out(params):
    opt = LazyAdam(params, learning_rate=[0.1, 0.01])
    opt(good_gradients(params))
    opt(good_gradients(params))
    with refused(opt, IndexError, match="learning_rate has 2 values.*step 2"):
        opt(good_gradients(params))
    with pytest.raises(IndexError, match="step 2"):
        opt.get_lr()


class Overflowing(ExponentialDecayLR):
    """1e-300 * (1e100 ** k): 1 at step 3; at step 4, 1e100 ** 4 overflows."""

    def __init__(self):
        super().__init__(1e-300, 1e100, 1)


@pytest.mark.parametrize("which", ["learning_rate", "weight_decay"])
def test_a_schedule_that_overflows_is_a_value_error_naming_it_and_the_step(params, which):
    opt = LazyAdam(params, **{which: Overflowing()}, **({"learning_rate": 0.0}
                                                        if which == "weight_decay" else {}))
    zero = [RowTensor(np.array([0]), np.zeros((1, 3), np.float32), (6, 3)),
            np.zeros((2, 2), np.float32)]
    for _ in range(4):
        opt(zero)
    with refused(opt, ValueError, match=f"{which} schedule Overflowing.* failed at step 4: "
                                        "OverflowError"):
        opt(zero)


@pytest.mark.parametrize("bad, error, message", [
    (-0.5, ValueError, r"learning_rate must be finite and >= 0, got -0.5 at position 2"),
    (math.nan, ValueError, "got nan at position 2"),
    ("fast", TypeError, r"learning_rate\[2\] must be a real number, got str"),
])
def test_a_bad_value_of_an_iterator_is_refused_at_its_step_and_after(params, bad, error,
                                                                     message):
    opt = LazyAdam(params, learning_rate=iter([0.1, 0.2, bad, 0.3]))
    opt(good_gradients(params))
    opt(good_gradients(params))
    before = snapshot(opt)
    for _ in range(2):  # the value after the bad one cannot stand in for it
        with pytest.raises(error, match=message):
            opt(good_gradients(params))
        assert_unchanged(opt, before)


@pytest.mark.parametrize("step", [2**64 - 1, 2**64, 2**70], ids=["2**64-1", "2**64", "2**70"])
def test_a_step_count_past_64_bits_is_refused_when_loaded(params, step):
    """The next step, global_step + 1, goes to the kernels as a 64-bit unsigned count: a state whose
    count leaves no next step is refused by load_state_dict, which changes nothing (a call after
    it raised OverflowError, with step and beta powers already moved on)."""
    opt = LazyAdam(params)
    opt(good_gradients(params))
    state = opt.state_dict()
    with refused(opt, ValueError, match=r"global_step.*2\*\*64"):
        opt.load_state_dict({**state, "global_step": step})


def test_scratch_that_cannot_be_had_is_a_memory_error_and_changes_nothing(rng, monkeypatch):
    """A dense parameter first, then a sparse one whose scratch cannot be allocated: before, the
    dense one had been updated and the step counted when the sparse kernel failed."""
    from lazyadam.runtime import checks
    dense = Parameter(rng.standard_normal((2, 2)).astype(np.float32), name="dense")
    table = Parameter(rng.standard_normal((6, 3)).astype(np.float32), name="table")
    opt = LazyAdam([dense, table])
    grads = [np.ones((2, 2), np.float32),
             RowTensor(np.array([0, 5, 0]), np.ones((3, 3), np.float32), table.shape)]
    opt(grads)

    def no_memory(like, nbytes):
        raise MemoryError(f"Unable to allocate {nbytes} bytes")
    monkeypatch.setattr(checks, "empty_bytes", no_memory)
    with refused(opt, MemoryError, match=r"gradient 1 \(parameter 'table'\): out of memory: its "
                                         r"sparse step needs [\d,]+ bytes of scratch for 3 indices"):
        opt(grads)


OUT_OF_MEMORY_SCRIPT = r"""
import resource, sys
import numpy as np
from lazyadam import LazyAdam, Parameter, RowTensor

nnz = 30_000_000
dense = Parameter(np.ones((64, 64), np.float32), name="dense")
table = Parameter(np.zeros((1000, 1), np.float32), name="table")
opt = LazyAdam([dense, table])
small = RowTensor(np.array([1, 2]), np.ones((2, 1), np.float32), table.shape)
opt([np.ones((64, 64), np.float32), small])  # compiles both kernels
big = RowTensor(np.arange(nnz) % 1000, np.ones((nnz, 1), np.float32), table.shape)
dense_before = dense.asnumpy()
with open("/proc/self/status") as f:
    size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (size + 400 * 2**20, resource.RLIM_INFINITY))
try:
    opt([np.ones((64, 64), np.float32), big])
except MemoryError as error:
    print("MemoryError:", error)
else:
    sys.exit("no MemoryError")
assert opt.global_step == 1 and opt.beta1_power == 0.9, (opt.global_step, opt.beta1_power)
np.testing.assert_array_equal(dense.asnumpy(), dense_before)
print("unchanged")
"""


def test_a_step_over_a_memory_limit_fails_before_writing_anything():
    """The issue's case for real: 30M indices under an address-space limit that leaves 400 MiB,
    less than their scratch (about 1 GiB)."""
    proc = subprocess.run([sys.executable, "-c", OUT_OF_MEMORY_SCRIPT], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "out of memory: its sparse step needs" in proc.stdout
    assert proc.stdout.rstrip().endswith("unchanged")



# == the MindSpore-style front end: saved state that cannot be loaded ==============================

def damage(path, how):
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "flipped byte":
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("moment2/0.npy")  # of the first parameter, "embedding"
        data[info.header_offset + len(info.FileHeader()) + 200] ^= 0x40
    elif how == "not a zip":
        data = b"definitely not a checkpoint" * 10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "flipped byte", "not a zip"])
def test_damaged_file_is_refused_and_nothing_changes(tmp_path, how):
    opt = checkpoint_build()
    path = tmp_path / "state.npz"
    opt.save(path)
    damage(path, how)
    target = checkpoint_build(seed=9)
    with refused(target, ValueError, match="damaged"):
        target.load(path)
    assert target.global_step == 0


@pytest.mark.parametrize("where, field, offset", [
    ("local", "compression method", 8), ("local", "flags", 6),
    ("central", "compression method", 10), ("central", "flags", 8)])
def test_a_flipped_method_or_flags_byte_is_a_damaged_checkpoint(tmp_path, where, field, offset):
    """Every value of the byte, in the member's local header or its central directory entry (the
    name ends a central entry's 46 fixed bytes): the load is refused as damaged with nothing
    loaded, or reads the checkpoint as saved. zipfile reads the method and flags from the central
    directory, so most values there are refused."""
    opt, path = small_checkpoint(tmp_path)
    good = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("moment1/0.npy")
    header = info.header_offset if where == "local" else good.rindex(b"moment1/0.npy") - 46
    assert good[header:header + 4] == (b"PK\x03\x04" if where == "local" else b"PK\x01\x02")
    refused = 0
    for value in range(256):
        data = bytearray(good)
        data[header + offset] = value
        damaged = tmp_path / "damaged.npz"
        damaged.write_bytes(bytes(data))
        target = LazyAdam([Parameter(np.zeros((3, 2), np.float32), name="table"),
                           Parameter(np.zeros(2), name="bias")], learning_rate=0.1)
        before = snapshot(target)
        try:
            target.load(damaged)
        except ValueError as error:
            assert "damaged" in str(error), error
            assert_unchanged(target, before)  # refused: nothing was loaded
            refused += 1
            continue
        assert_same_state(target, opt)  # read fine: it is the checkpoint as saved
    if where == "central":
        assert refused > 200


@pytest.mark.parametrize("maker, other", [
    (lambda p: lazyadam.Lion(p), lambda p: LazyAdam(p)),
    (lambda p: LazyAdam(p), lambda p: lazyadam.Lion(p)),
    (lambda p: lazyadam.Momentum(p, 0.1, 0.9), lambda p: lazyadam.Adagrad(p)),
], ids=["lion-into-adam", "adam-into-lion", "sgd-into-adagrad"])
def test_a_checkpoint_of_another_rule_is_refused_naming_both(tmp_path, maker, other):
    saver = maker([Parameter(np.ones((3, 2), np.float32), name="w")])
    saver([np.ones((3, 2), np.float32)])
    saver.save(tmp_path / "other.npz")
    target = other([Parameter(np.full((3, 2), 5.0, np.float32), name="w")])
    before = snapshot(target)
    mine, theirs = target.RULE.name, saver.RULE.name
    with pytest.raises(ValueError, match=rf"rule '{theirs}'.*rule '{mine}'"):
        target.load(tmp_path / "other.npz")
    with pytest.raises(ValueError, match=rf"rule '{theirs}'.*rule '{mine}'"):
        target.load_state_dict(saver.state_dict())
    assert_unchanged(target, before)


# == the MindSpore-style front end: bfloat16 parameters ============================================

def _float16_gradient_of_a_bfloat16_parameter(opt, table, good):
    opt((good, np.ones((4, 5), np.float16)))


def _float64_values(opt, table, good):
    opt((RowTensor(np.array([1]), np.ones((1, 2, 3)), table.shape),
         np.ones((4, 5), ml_dtypes.bfloat16)))


def _moment_of_another_dtype(opt, table, good):
    state = opt.state_dict()
    state["moment1"]["dense"] = state["moment1"]["dense"].astype(ml_dtypes.bfloat16)
    opt.load_state_dict(state)


def _negative_seed(opt, table, good):
    opt.load_state_dict({**opt.state_dict(), "seed": -1})


def _options(**bad):
    return lambda opt, table, good: LazyAdam(opt.parameters, **MIXED_HYPER, **bad)


MIXED_BAD = {
    "float16 gradient": (_float16_gradient_of_a_bfloat16_parameter, TypeError,
                         r"gradient 1 \(parameter 'dense'\) has dtype float16, the parameter has "
                         r"bfloat16 \(a bfloat16 parameter takes bfloat16 or float32 gradients\)"),
    "float64 values": (_float64_values, TypeError, "values have dtype float64"),
    "saved moment of another dtype": (
        _moment_of_another_dtype, ValueError,
        r"moment1\['dense'\] has shape \(4, 5\) and dtype bfloat16, the optimizer has \(4, 5\) "
        r"and float32"),
    "saved seed -1": (_negative_seed, ValueError, r"state seed must lie in \[0, 2\*\*64\)"),
    "state_dtype float16": (_options(state_dtype="float16"), ValueError, "state_dtype must be"),
    "rounding up": (_options(rounding="up"), ValueError, "rounding must be one of"),
    "seed 2**64": (_options(seed=2**64), ValueError, r"seed must lie in \[0, 2\*\*64\)"),
    "seed 1.5": (_options(seed=1.5), TypeError, "seed must be an int"),
    "int32 parameter": (lambda opt, table, good: LazyAdam([Parameter(np.zeros(3, np.int32),
                                                                     name="i")]),
                        TypeError, "float32, float64, bfloat16 or float16 parameters"),
}


@needs_torch
@pytest.mark.parametrize("case", MIXED_BAD)
def test_bfloat16_bad_gradients_state_and_options_change_nothing(rng, case):
    bad, error, match = MIXED_BAD[case]
    parameters = mixed_model(rng, "bfloat16")
    opt = LazyAdam(parameters, **MIXED_HYPER)
    table, _ = parameters
    good = RowTensor(np.array([1]), np.ones((1, 2, 3), ml_dtypes.bfloat16), table.shape)
    with refused(opt, error, match=match):
        bad(opt, table, good)
    assert opt.global_step == 0


# == the MindSpore-style front end: every class of the family ======================================

@pytest.mark.parametrize("bad, error, message", [
    (lambda b: [RowTensor(b[0], b[1].astype(np.float64), (ROWS, DIM)), b[2]], TypeError,
     "float64"),
    (lambda b: [RowTensor(b[0], b[1][:, :3], (ROWS, DIM)), b[2]], ValueError, "shape"),
    (lambda b: [b[1], b[2]], ValueError, "shape"),
    (lambda b: [RowTensor(np.r_[b[0][:-1], ROWS], b[1], (ROWS, DIM)), b[2]], IndexError,
     str(ROWS)),
    (lambda b: [RowTensor(np.r_[b[0][:-1], -1], b[1], (ROWS, DIM)), b[2]], IndexError, "-1"),
    (lambda b: [RowTensor(b[0].astype(np.float32), b[1], (ROWS, DIM)), b[2]], TypeError,
     "indices"),
    (lambda b: [step_of(b)[0]], ValueError, "got 1 gradients for 2 parameters"),
    (lambda b: [], ValueError, "got 0 gradients for 2 parameters"),
], ids=["dtype", "values shape", "dense shape", "index too large", "negative index",
        "float indices", "one gradient", "empty batch"])
@pytest.mark.parametrize("name", MINDSPORE_CLASSES)
def test_family_bad_input_leaves_parameters_and_state_unchanged(name, bad, error, message):
    table, dense, grads = data(np.float32, seed=6)
    opt = MINDSPORE_CLASSES[name]([Parameter(table.copy(), name="table"),
                                   Parameter(dense.copy(), name="dense")])
    opt(step_of(grads[0]))
    with refused(opt, error, match=message):
        opt(bad(grads[1]))
    assert opt.global_step == 1


# == the MindSpore-style front end: device arrays (emulated CUDA) ==================================

BAD_SECOND_DEVICE_GRADIENT = {
    "index past the end": (lambda put: RowTensor(put(np.array([1, 13, 2])),
                                                 put(np.ones((3, 2, 3), np.float32)), (13, 2, 3)),
                           IndexError, r"indices\[1\] = 13 is outside \[0, 13\)"),
    "negative index": (lambda put: RowTensor(put(np.array([0, 5, -2], np.int32)),
                                             put(np.ones((3, 2, 3), np.float32)), (13, 2, 3)),
                       IndexError, r"indices\[2\] = -2 is outside"),
    "float indices": (lambda put: RowTensor(put(np.array([0.0])),
                                            put(np.ones((1, 2, 3), np.float32)), (13, 2, 3)),
                      TypeError, "indices must be integers, got dtype float64"),
    "values of another dtype": (lambda put: RowTensor(put(np.array([0])),
                                                      put(np.ones((1, 2, 3))), (13, 2, 3)),
                                TypeError, "values have dtype float64, the parameter has float32"),
    "values of another shape": (lambda put: RowTensor(put(np.array([0, 1])),
                                                      put(np.ones((1, 2, 3), np.float32)),
                                                      (13, 2, 3)),
                                ValueError, r"expected \(2, 2, 3\)"),
    "host values": (lambda put: RowTensor(put(np.array([0])), np.ones((1, 2, 3), np.float32),
                                          (13, 2, 3)),
                    TypeError, "values is a numpy.ndarray in host memory, the parameter is on a "
                               "CUDA device"),
    "dense host gradient": (lambda put: np.ones((13, 2, 3), np.float32),
                            TypeError, "in host memory, the parameter is on a CUDA device"),
    "dense gradient of another dtype": (lambda put: put(np.ones((13, 2, 3))),
                                        TypeError, "has dtype float64, the parameter has float32"),
}


@needs_torch
@pytest.mark.parametrize("case", BAD_SECOND_DEVICE_GRADIENT)
def test_bad_device_gradient_changes_nothing(emulated_cuda, lib, rng, case):  # noqa: F811
    """The first gradient is good: had its kernel run before the second was checked, it would
    have moved the first parameter."""
    make_bad, error, match = BAD_SECOND_DEVICE_GRADIENT[case]
    dense = Parameter(lib.put(rng.standard_normal((4, 5)).astype(np.float32)), name="dense")
    table = Parameter(lib.put(rng.standard_normal((13, 2, 3)).astype(np.float32)), name="table")
    opt = LazyAdam([dense, table], learning_rate=0.1, amsgrad=True)
    good = lib.put(np.ones((4, 5), np.float32))
    opt((good, RowTensor(lib.put(np.array([3])), lib.put(np.ones((1, 2, 3), np.float32)),
                         table.shape)))
    with refused(opt, error, match=match):
        opt((good, make_bad(lib.put)))


class OutOfMemoryError(Exception):
    """As CuPy's and PyTorch's: an allocation failure that is not a MemoryError by type."""


@needs_torch
def test_device_scratch_that_cannot_be_had_changes_nothing(emulated_cuda, lib, rng,  # noqa: F811
                                                           monkeypatch):
    """The sparse step's device scratch is allocated in the check phase, by the array's library:
    running out of device memory stops the call before the dense parameter's kernel runs."""
    dense = Parameter(lib.put(rng.standard_normal((4, 5)).astype(np.float32)), name="dense")
    table = Parameter(lib.put(rng.standard_normal((13, 2, 3)).astype(np.float32)), name="table")
    opt = LazyAdam([dense, table], learning_rate=0.1)
    grads = (lib.put(np.ones((4, 5), np.float32)),
             RowTensor(lib.put(np.array([3, 3, 7])), lib.put(np.ones((3, 2, 3), np.float32)),
                       table.shape))
    opt(grads)

    def no_memory(*args, **kwargs):
        raise OutOfMemoryError("out of memory allocating 4,096 bytes")
    monkeypatch.setattr(TorchOnDevice, "new_empty", no_memory)
    monkeypatch.setattr(test_runtime_device, "empty", no_memory)
    with refused(opt, MemoryError, match=r"parameter 'table'\): out of memory: its sparse step "
                                         r"needs [\d,]+ bytes of scratch for 3 indices"):
        opt(grads)


@needs_torch
def test_centralization_without_mean_is_refused_before_any_kernel(emulated_cuda):
    put = test_runtime_device.FakeLibrary.put
    first = Parameter(put(np.zeros(3, np.float32)), name="bias")
    dense = Parameter(put(np.zeros((4, 5), np.float32)), name="dense")
    opt = LazyAdam([{"params": [first, dense], "grad_centralization": True}])
    bad = test_runtime_device.NoMean(np.ones((4, 5), np.float32))
    with refused(opt, TypeError, match="grad_centralization needs the mean of a .*NoMean"):
        opt((put(np.ones(3, np.float32)), bad))


# == the torch front end: lazyadam.torch.LazyAdam ==================================================

def _float64_grad(model):
    model.mlp[2].weight.grad_dtype = None
    model.mlp[2].weight.grad = model.mlp[2].weight.grad.double()


def _grad_of_another_shape(model):
    model.mlp[2].weight.grad.data = torch.ones(2, 6)


def _index_out_of_range(model):
    model.items.weight.grad = torch.sparse_coo_tensor(torch.tensor([[3, 20, 1]]),
                                                      torch.ones(3, 4), (20, 4),
                                                      check_invariants=False)


def _sparse_in_no_dimension(model):
    model.items.weight.grad = torch.sparse_coo_tensor(torch.zeros(0, 1, dtype=torch.long),
                                                      torch.ones(1, 20, 4), (20, 4),
                                                      check_invariants=True)


def _complex_parameter(model):
    model.mlp[2].weight.data = model.mlp[2].weight.data.to(torch.complex64)


def _half_parameter_with_bfloat16_gradient(model):
    weight = model.mlp[2].weight
    weight.data = weight.data.half()
    weight.grad_dtype = None  # torch refuses a gradient of another dtype unless told
    weight.grad = weight.grad.bfloat16()


def _negative_lr(opt):
    opt.param_groups[1]["lr"] = -0.1


def _beta_of_one(opt):
    opt.param_groups[1]["betas"] = (1.0, 0.999)


def _unknown_eps_mode(opt):
    opt.param_groups[1]["eps_mode"] = "tensorflow"


def _state_of_another_shape(opt):
    state = opt.state[opt.param_groups[1]["params"][-1]]
    state["exp_avg"] = torch.zeros(3)


#: (what spoils the model's gradients, or the optimizer's options or state; error; message).
TORCH_BAD = {
    "float64 gradient": (_float64_grad, None, TypeError,
                         "has dtype float64, the parameter has float32"),
    "gradient of another shape": (_grad_of_another_shape, None, ValueError,
                                  r"has shape \(2, 6\), the parameter has \(1, 6\)"),
    "index out of range": (_index_out_of_range, None, IndexError,
                           r"indices\[1\] = 20 is outside \[0, 20\)"),
    "sparse in no dimension": (_sparse_in_no_dimension, None, ValueError,
                               "sparse_dim 0; lazy updates take sparse COO gradients"),
    "complex parameter": (_complex_parameter, None, ValueError,
                          "has dtype torch.complex64; lazyadam.torch.LazyAdam updates float32, "
                          "float64, bfloat16 and float16"),
    "bfloat16 gradient of a float16 parameter": (
        _half_parameter_with_bfloat16_gradient, None, TypeError,
        r"has dtype bfloat16, the parameter has float16 \(a float16 parameter takes float16 or "
        r"float32 gradients\)"),
    "negative lr": (None, _negative_lr, ValueError, "param group 1: lr must be finite and >= 0"),
    "beta of one": (None, _beta_of_one, ValueError, r"beta1 must lie in \[0, 1\), got 1.0"),
    "unknown eps_mode": (None, _unknown_eps_mode, ValueError, "eps_mode must be one of"),
    "state of another shape": (None, _state_of_another_shape, ValueError,
                               r"state 'exp_avg' of parameter .* is \(3,\)"),
}


@needs_torch
@pytest.mark.parametrize("fresh", [True, False], ids=["first-step", "later-step"])
@pytest.mark.parametrize("case", TORCH_BAD)
def test_torch_bad_input_raises_and_changes_nothing(case, fresh):
    """Every other parameter has a good gradient, the tables' come first: had any kernel run
    before the bad input was seen, something would have moved."""
    spoil_model, spoil_opt, error, match = TORCH_BAD[case]
    if fresh and spoil_opt is _state_of_another_shape:
        pytest.skip("there is no state before the first step")
    model = Recommender()
    opt = lazyadam.torch.LazyAdam([{"params": model.tables(), "eps_mode": "mindspore"},
                                   {"params": model.dense(), "amsgrad": True}], lr=0.1)
    if not fresh:
        backward(model, 0)
        opt.step()
        opt.zero_grad()
    backward(model, 1)
    (spoil_model or spoil_opt)(model if spoil_model else opt)
    with refused(opt, error, match=match):
        opt.step()


@needs_torch
def test_torch_emulated_bad_input_changes_nothing(emulated):  # noqa: F811
    _, host = emulated
    model = Recommender()
    opt = lazyadam.torch.LazyAdam(groups(model), lr=0.1)
    backward(model, 0)
    opt.step()
    backward(model, 1)
    good = model.items.weight.grad
    model.items.weight.grad = torch.sparse_coo_tensor(torch.tensor([[0, 25]]), torch.ones(2, 4),
                                                      (20, 4), check_invariants=False)
    with refused(opt, IndexError, match=r"indices\[1\] = 25 is outside \[0, 20\)"):
        opt.step()
    model.items.weight.grad = good
    host.add(id(model.mlp[2].weight.grad))
    with refused(opt, TypeError, match="in host memory, the parameter is on a CUDA device"):
        opt.step()


# == the torch front end: every class of the family ================================================

def _spoil_dtype(net):
    weight = net["dense"].weight
    weight.grad_dtype = None  # torch refuses another dtype otherwise
    weight.grad = weight.grad.to(torch.float64)


def _spoil_shape(net):
    net["dense"].bias.grad.resize_(1)


def _spoil_index(net):
    grad = net["table"].weight.grad
    indices = grad._indices().clone()
    indices[0, -1] = TORCH_ROWS
    net["table"].weight.grad = torch.sparse_coo_tensor(indices, grad._values(), grad.shape)


def _nan_lr(opt):
    opt.param_groups[0]["lr"] = float("nan")


#: (what spoils the gradients, what spoils the options, error, message).
TORCH_FAMILY_BAD = {"dtype": (_spoil_dtype, None, TypeError, "dtype float64"),
                    "shape": (_spoil_shape, None, ValueError, r"shape \(1,\)"),
                    "index": (_spoil_index, None, IndexError, f"= {TORCH_ROWS} is outside"),
                    "nan lr": (None, _nan_lr, ValueError, "lr must be finite")}


@needs_torch
@pytest.mark.parametrize("case", TORCH_FAMILY_BAD)
@pytest.mark.parametrize("cls, options", TORCH_CLASSES, ids=CLASS_IDS)
def test_torch_family_bad_input_raises_and_changes_nothing(cls, options, case):
    spoil_grads, spoil_opt, error, match = TORCH_FAMILY_BAD[case]
    net = family_model()
    opt = cls(net.parameters(), **options)
    backward_both(net, 0)
    opt.step()
    backward_both(net, 1)
    (spoil_grads or spoil_opt)(net if spoil_grads else opt)
    with refused(opt, error, match=match):
        opt.step()


# == the torch front end: torch's conventions (sparse COO, a parameter listed twice, state) ========

def _fully_sparse(indices):
    return torch.sparse_coo_tensor(torch.tensor(indices), torch.ones(2, dtype=torch.float64),
                                   (4, 3), check_invariants=False)


#: Fully sparse COO gradients of a (4, 3) parameter with an index outside: (the gradient, error,
#: message). Checked before coalescing, which would fold an index outside into another element.
#: (A gradient with no sparse dimension: TORCH_BAD's "sparse in no dimension".)
SPARSE_COO_BAD = {
    "column": (lambda: _fully_sparse([[0, 1], [2, 5]]), IndexError,
               r"sparse dimension 1: indices\[1\] = 5 is outside \[0, 3\)"),
    "negative-column": (lambda: _fully_sparse([[0, 1], [-1, 0]]), IndexError,
                        r"sparse dimension 1: indices\[0\] = -1 is outside \[0, 3\)"),
    "row": (lambda: _fully_sparse([[0, 4], [0, 0]]), IndexError,
            r"indices\[1\] = 4 is outside \[0, 4\)"),
}


@needs_torch
@pytest.mark.parametrize("case", SPARSE_COO_BAD)
def test_a_fully_sparse_gradient_with_an_index_outside_is_refused(family, case):  # noqa: F811
    make_gradient, error, match = SPARSE_COO_BAD[case]
    cls = family[0]
    param = torch.nn.Parameter(torch.ones(4, 3, dtype=torch.float64))
    opt = cls([param])
    param.grad = make_gradient()
    with refused(opt, error, match=match):
        opt.step()
    assert not opt.state


@needs_torch
def test_a_parameter_listed_twice_is_refused_naming_it(family):  # noqa: F811
    """torch warns and steps it twice (and says this will become an error): refused up front."""
    cls = family[0]
    p, q = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="'param group 0 param 1' is param 0 of param group 0"):
        cls([p, p])
    with pytest.raises(ValueError, match="'v' is param 0 of param group 0"):
        cls([("w", p), ("v", p)])
    opt = cls([p])
    with refused(opt, ValueError, match="'param group 1 param 1' is param 0 of param group 0"):
        opt.add_param_group({"params": [q, p]})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": [q]})
    opt.param_groups[1]["params"].append(p)  # by hand
    p.grad, q.grad = torch.ones(2), torch.ones(2)
    with refused(opt, ValueError,
                      match="is listed twice: as group 0 param 0 and as group 1 param 1"):
        opt.step()
    assert not opt.state


#: A state entry of parameter 1 (of two): (its key, a maker of the corrupt value, the message).
CORRUPT = {
    "step None": ("step", lambda: None, "state 'step' of parameter 'group 0 param 1' is None"),
    "step 2**64": ("step", lambda: torch.tensor(2.0 ** 64),
                   r"'step' of parameter 'group 0 param 1' is 1.8446\d+e\+19, not a count"),
    "step 1e300": ("step", lambda: torch.tensor(1e300, dtype=torch.float64),
                   "is 1e\\+300, not a count"),
    "step -1": ("step", lambda: -1, "is -1.0, not a count"),
    "step of two elements": ("step", lambda: torch.tensor([1.0, 2.0]),
                             "state 'step' of parameter 'group 0 param 1' has 2 elements"),
    "step a string": ("step", lambda: "3", "state 'step' of parameter 'group 0 param 1' is a str"),
    "sparse exp_avg": ("exp_avg", lambda: torch.zeros(3, 2).to_sparse(),
                       "state 'exp_avg' of parameter 'group 0 param 1' has layout "
                       "torch.sparse_coo"),
    "complex exp_avg_sq": ("exp_avg_sq", lambda: torch.zeros(3, 2, dtype=torch.complex64),
                           "state 'exp_avg_sq' of parameter 'group 0 param 1' has dtype "
                           "torch.complex64"),
    "exp_avg a list": ("exp_avg", lambda: [0.0], "state 'exp_avg' of parameter 'group 0 param 1' "
                       "is a list"),
}


def trained(cls):
    params = [torch.nn.Parameter(gradient((3, 2), k)) for k in range(2)]
    opt = cls(params, lr=0.1)
    step_with_gradients(opt, params, 0)
    return params, opt


@needs_torch
@pytest.mark.parametrize("case", CORRUPT)
def test_a_corrupt_state_is_refused_at_load_naming_the_field(family, case):  # noqa: F811
    key, value, match = CORRUPT[case]
    params, opt = trained(family[0])
    corrupt = copy.deepcopy(opt.state_dict())
    corrupt["state"][1][key] = value()
    with refused(opt, ValueError, match=match):
        opt.load_state_dict(corrupt)


@needs_torch
@pytest.mark.parametrize("case", CORRUPT)
def test_a_corrupt_state_set_by_hand_is_refused_before_anything_is_written(family,  # noqa: F811
                                                                           case):
    """Parameter 0 comes first: had its kernel run, it would have moved."""
    key, value, match = CORRUPT[case]
    params, opt = trained(family[0])
    opt.state[params[1]][key] = value()
    for p in params:
        p.grad = torch.ones(3, 2, dtype=torch.float64)
    with refused(opt, ValueError, match=match):
        opt.step()


# == capturable steps (CUDA graphs, emulated) ======================================================

@needs_torch
def test_capture_refusals_change_nothing(capture, rng):  # noqa: F811
    _, opt = device_model(rng)
    static = StaticGradients()
    static.fill(batches(rng, 1)[0])
    with pytest.raises(RuntimeError, match="no step has been captured"):
        opt.prepare_replay()
    eager = copy.copy(opt)
    eager.capturable = False
    with refused(opt, RuntimeError, match="made with capturable=False"), capture:
        eager(static.grads)
    assert capture.recorded == 0
    with pytest.raises(TypeError, match="capturable=True: parameter 'host' is in host memory"):
        LazyAdam([Parameter(np.zeros(3, np.float32), name="host")], capturable=True)
    with refused(opt, RuntimeError, match="first sparse step of parameter 'table' is being "
                                          "captured; make one eager step first"), capture:
        opt(static.grads)
    assert capture.recorded == 0


@needs_torch
def test_a_capturable_step_that_cannot_have_its_table_changes_nothing(capture,  # noqa: F811
                                                                       on_device, monkeypatch):
    model = mlp()
    opt = lazyadam.torch.LazyAdam(torch_groups(model), lr=0.01, capturable=True)
    set_gradients(model, 0)
    opt.step()

    def no_memory(*args, **kwargs):
        raise MemoryError("out of memory allocating 160 bytes")

    monkeypatch.setattr(TorchOnDevice, "new_empty", no_memory)
    with refused(opt, MemoryError, match="a capturable step needs [0-9,]+ bytes for its "
                                         "hyperparameters; nothing was changed"):
        opt.step()


@needs_torch
@pytest.mark.parametrize("change", ["new storage", "options", "gradient"])
def test_torch_prepare_replay_refuses_what_the_graph_cannot_follow(capture, on_device,  # noqa: F811
                                                                   change):
    """Since the capture: a parameter got new storage, its group's options changed its kernel, or
    its gradient is another tensor. The graph would write the old memory, run the old math or
    read the old gradient: prepare_replay says so and counts nothing."""
    model = mlp()
    opt = lazyadam.torch.LazyAdam(torch_groups(model), lr=0.01, capturable=True)
    set_gradients(model, 0)
    opt.step()
    with capture:
        opt.step()
    weight = model[0].weight
    if change == "new storage":
        weight.data = weight.data.clone()
        match = "has new storage, or its group's options change its kernel"
    elif change == "options":
        opt.param_groups[1]["nesterov"] = True
        weight = model[2].weight
        match = "has new storage, or its group's options change its kernel"
    else:
        weight.grad = weight.grad.clone()
        match = "is not the tensor the captured step reads: keep it"
    with refused(opt, RuntimeError, match=match):
        opt.prepare_replay()


@needs_torch
def test_torch_capture_of_sparse_gradients_is_refused(capture, on_device):  # noqa: F811
    table = torch.nn.Embedding(10, 4, sparse=True)
    opt = lazyadam.torch.LazyAdam(table.parameters(), lr=0.01, capturable=True)
    table(torch.tensor([1, 2, 2])).sum().backward()
    opt.step()
    with refused(opt, RuntimeError, match="has a sparse gradient, whose tensors are new every "
                                          "step"), capture:
        opt.step()
    assert capture.recorded == 0


@needs_torch
def test_torch_capturable_refuses_a_parameter_that_needs_a_working_copy(capture,  # noqa: F811
                                                                        on_device):
    """A parameter that is not contiguous steps through a working copy, which capturable steps
    do not make: refused, named, with nothing changed."""
    model = mlp()
    model[2].weight.data = model[2].weight.data.t().contiguous().t()
    opt = lazyadam.torch.LazyAdam(torch_groups(model), lr=0.01, capturable=True)
    set_gradients(model, 0)
    with refused(opt, ValueError, match="parameter 'group 1 param 0' is not contiguous, or a "
                                        "negative view: capturable steps update parameters in "
                                        "place"):
        opt.step()
    assert not opt.state


@needs_torch
def test_torch_capturable_refuses_parameters_in_host_memory():
    """On CPU tensors, capturable=True is refused at the step, named, with nothing changed:
    whether the group was made so or switched to it after steps that bound the parameters."""
    model = mlp()
    fresh = lazyadam.torch.LazyAdam(model.parameters(), lr=0.01, capturable=True)
    set_gradients(model, 0)
    with refused(fresh, TypeError, match="is on cpu: capturable steps update CUDA tensors"):
        fresh.step()
    opt = lazyadam.torch.LazyAdam(model.parameters(), lr=0.01)
    opt.step()
    opt.param_groups[0]["capturable"] = True
    with refused(opt, TypeError, match="is on cpu: capturable steps update CUDA tensors"):
        opt.step()
    assert all(int(s["step"]) == 1 for s in opt.state.values())
    assert not fresh.state


@needs_torch
def test_torch_capture_of_a_group_that_is_not_capturable_is_refused(capture,  # noqa: F811
                                                                    on_device):
    model = mlp()
    opt = lazyadam.torch.LazyAdam(torch_groups(model), lr=0.01)
    set_gradients(model, 0)
    opt.step()
    with refused(opt, RuntimeError, match="param group 0 has capturable=False"), capture:
        opt.step()
