"""The CUDA dense kernels of rules that run rows (per-row state or row sums: rowwise Adagrad,
partial-rowwise Adam, SGD with dampening): one warp per (tensor, row), the row sum in the lanes
order of docs/semantics.md by shuffles.

- Emulated CUDA (tests/cuda_emulation) against the C dense kernel bit for bit, and against the
  numpy references of tests/reference_family.py, over three steps, for a sample of each rule's
  flags dealt over float32, float64, bfloat16 and float16 storage (nearest and stochastic
  rounding, float32 and bfloat16 state), on row sizes 1, 5, 32, 37 and 70 (below, at, between
  and past multiples of the warp).
- The same with the emulation's threads and blocks in reverse order.
- Multi-tensor launches of tensors of mixed shapes (empty ones, more than a launch's tensors,
  more hyperparameter entries than a launch carries); a tensor with no element.
- A step captured (the emulation's CUDA graph) and replayed with hyperparameters from device
  memory; the C kernel's exact inverse loss scale against CUDA's division.
- What the emulation shows of a broken kernel: a missing __syncwarp, lanes leaving a row before
  its shuffles, lanes reading past their row.
Every dense row kernel of the family's product also compiles with nvcc, with the rest of the
product, in tests/test_cuda_codegen.py.
"""

from __future__ import annotations

import ctypes
import random

import cffi
import ml_dtypes
import numpy as np
import pytest

import cuda_emulation as emulation
from lazyadam import targets
from lazyadam.codegen import generate
from lazyadam.codegen.pipeline import optimize
from lazyadam.codegen.render import Source
from lazyadam.codegen.render_cuda import HPARAMS_PER_LAUNCH, TENSORS_PER_LAUNCH
from lazyadam.codegen.variants import variants
from lazyadam.rules import PARTIAL_ROWWISE_ADAM, ROWWISE_ADAGRAD, SGD
from lazyadam.targets import batch
from lazyadam.targets.base import hparams_of
from product import FAMILY_HYPER as HYPER, family_step

#: Storage of parameter, state and gradient, and rounding, dealt to each rule's flag sample.
STORAGES = [dict(dtype="float32"), dict(dtype="float64"),
            dict(dtype="bfloat16", rounding="stochastic", state_dtype="bfloat16"),
            dict(dtype="bfloat16", grad_dtype="float32"),
            dict(dtype="float16", rounding="stochastic")]
ROW_SIZES = (1, 5, 32, 37, 70)
ROWS = 6
NUMPY = {"float32": np.float32, "float64": np.float64, "bfloat16": ml_dtypes.bfloat16,
         "float16": np.float16}
TOLERANCE = {"float32": dict(rtol=1e-5, atol=1e-6), "float64": dict(rtol=1e-12, atol=1e-14),
             "bfloat16": dict(rtol=2 ** -7, atol=1e-3), "float16": dict(rtol=2 ** -10, atol=1e-4)}


def flag_sample(rule):
    """Dense float32 specs of the rule that run rows, in a fixed shuffled order: first those that
    show a value of a flag not shown yet, then others up to one per storage."""
    specs = [s for s in variants(rule=rule, dtype="float32", sparse=False) if _runs_rows(s)]
    random.Random(rule.name).shuffle(specs)
    chosen, shown = [], set()
    for spec in specs:
        values = {(f, getattr(spec, f)) for f in rule.flags}
        if not values <= shown:
            chosen.append(spec)
            shown |= values
    return chosen + [s for s in specs if s not in chosen][:max(0, len(STORAGES) - len(chosen))]


def _runs_rows(spec) -> bool:
    return optimize(spec).per_row


def sample():
    specs = []
    for rule in (ROWWISE_ADAGRAD, PARTIAL_ROWWISE_ADAM, SGD):
        for k, spec in enumerate(flag_sample(rule)):
            specs.append(rule.spec(**{**_fields(spec), **STORAGES[k % len(STORAGES)]}).validate())
    return specs


def _fields(spec) -> dict:
    return {f: getattr(spec, f) for f in (*spec.RULE.flags, "use_locking")} | {"sparse": False}


SPECS = sample()


def test_the_sample_covers_every_option_and_storage():
    for rule in (ROWWISE_ADAGRAD, PARTIAL_ROWWISE_ADAM):
        specs = [s for s in SPECS if s.RULE is rule]
        for option in rule.options:
            assert {getattr(s, option.name) for s in specs} == set(option.values), option.name
        assert {s.use_locking for s in specs} == {False, True}
        assert {(s.dtype, s.rounding) for s in specs} == {(x["dtype"], x.get("rounding", "nearest"))
                                                          for x in STORAGES}
    assert all(s.dampening for s in SPECS if s.RULE is SGD)   # SGD runs rows only with dampening
    assert all(_runs_rows(s) and not s.sparse for s in SPECS)


@pytest.fixture(scope="module")
def kernels(pulse):
    """(spec, reverse=False) -> (C kernel, emulated CUDA kernel), built in batches, cached."""
    if targets.get("c").unavailable() or emulation.host_compiler() is None:
        pytest.skip("no C or host C++ compiler to build the C kernels and the CUDA emulation")
    batch.build(SPECS, targets.get("c"), report=pulse)
    cuda = emulation.build(SPECS, report=pulse)
    reversed_ = {}

    def get(spec, reverse=False):
        if not reverse:
            return targets.get("c").load(spec), cuda[spec]
        if not reversed_:
            reversed_.update(emulation.build(SPECS, {"LAZYADAM_EMULATION_REVERSE": 1},
                                             report=pulse))
        return targets.get("c").load(spec), reversed_[spec]
    return get


def arrays_of(spec, rng, rows, row_size):
    """var, then the state arrays the kernel keeps (per element, then per row), in storage dtypes."""
    names = spec.RULE.arrays(spec) + spec.RULE.row_arrays(spec)
    per_row = {s.name for s in spec.RULE.state if s.per == "row"}
    out = {}
    for name in names:
        shape = (rows,) if name in per_row else (rows, row_size)
        value = rng.standard_normal(shape) if name == "var" else np.zeros(shape)
        out[name] = value.astype(NUMPY[spec.storage(name)])
    return out


def values_of(spec):
    return {k: v for k, v in HYPER[spec.RULE.name].items() if k != "t"}


def call(kernel, state, grad, hp, wrap=lambda a: a):
    """`kernel(var, <state always kept>, grad, hp, <switched state by name>)` on `state`, each
    array (a sparse gradient's indices and values too) passed through `wrap`."""
    rule = kernel.spec.RULE
    required = [s.name for s in rule.state if s.when is None]
    grad = tuple(map(wrap, grad)) if kernel.spec.sparse else wrap(grad)
    kernel(wrap(state["var"]), *(wrap(state[n]) for n in required), grad, hp,
           **{n: wrap(a) for n, a in state.items() if n != "var" and n not in required})


def step_both(c_kernel, cuda_kernel, spec, c_state, cuda_state, grad, t):
    hp = hparams_of(spec.RULE).at_step(t, seed=77, **values_of(spec))
    call(c_kernel, c_state, grad, hp)
    call(cuda_kernel, cuda_state, grad, hp, emulation.Emulated)


def check_against_c_and_reference(c_kernel, cuda_kernel, spec, row_size, seed):
    rng = np.random.default_rng(seed)
    c_state = arrays_of(spec, rng, ROWS, row_size)
    cuda_state = {name: a.copy() for name, a in c_state.items()}
    expected = {name: a.astype(np.float64) for name, a in c_state.items()}
    for t in (1, 2, 3):
        grad = rng.standard_normal((ROWS, row_size)).astype(NUMPY[spec.storage("grad")])
        step_both(c_kernel, cuda_kernel, spec, c_state, cuda_state, grad, t)
        expected = family_step(spec, expected, grad.astype(np.float64), None, t)
        for name, got in cuda_state.items():
            assert got.tobytes() == c_state[name].tobytes(), \
                f"{spec.symbol()} row_size={row_size} step {t}: {name} differs from the C kernel's"
            np.testing.assert_allclose(got.astype(np.float64), expected[name],
                                       **TOLERANCE[spec.dtype],
                                       err_msg=f"{spec.symbol()} row_size={row_size} {name}")
        if spec.dtype in ("bfloat16", "float16"):
            # Each step from what the kernels stored: the reference does not round.
            expected.update({n: a.astype(np.float64) for n, a in cuda_state.items()})


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.symbol())
def test_emulated_cuda_matches_the_c_kernel_bit_for_bit_and_the_reference(kernels, spec):
    c_kernel, cuda_kernel = kernels(spec)
    for row_size in ROW_SIZES:
        check_against_c_and_reference(c_kernel, cuda_kernel, spec, row_size, seed=row_size)


@pytest.mark.parametrize("spec", [s for s in SPECS if s.dtype == "float32"],
                         ids=lambda s: s.symbol())
def test_the_same_bits_with_threads_and_blocks_in_reverse_order(kernels, spec):
    c_kernel, cuda_kernel = kernels(spec, reverse=True)
    for row_size in (5, 70):
        check_against_c_and_reference(c_kernel, cuda_kernel, spec, row_size, seed=1)


#: Shapes of one multi-tensor launch: empty ones, a single row, a single column, rows longer than
#: a warp, more tensors than one launch takes.
SHAPES = [(3, 1), (0, 4), (5, 37), (2, 70), (4, 0), (1, 33), (9, 2)] * 8


@pytest.mark.parametrize("spec", [ROWWISE_ADAGRAD.spec(sparse=False, decay="l2").validate(),
                                  PARTIAL_ROWWISE_ADAM.spec(sparse=False, dtype="bfloat16",
                                                            rounding="stochastic").validate()],
                         ids=lambda s: s.symbol())
def test_multi_tensor_launches_of_mixed_shapes_match_one_c_call_per_tensor(kernels, spec):
    """`plan(...).launch` over len(SHAPES) > TENSORS_PER_LAUNCH tensors, each with an entry of its
    own among more than HPARAMS_PER_LAUNCH (so the launcher starts new launches on both counts),
    against the C kernel called on each tensor with its entry."""
    assert len(SHAPES) > TENSORS_PER_LAUNCH and len(SHAPES) > HPARAMS_PER_LAUNCH
    c_kernel, cuda_kernel = kernels(spec) if spec in SPECS else (
        targets.get("c").load(spec), emulation.build([spec])[spec])
    rng = np.random.default_rng(8)
    tensors = [arrays_of(spec, rng, rows, row_size) for rows, row_size in SHAPES]
    grads = [rng.standard_normal(shape).astype(NUMPY[spec.storage("grad")]) for shape in SHAPES]
    entries = [hparams_of(spec.RULE).at_step(1 + k % 7, seed=k, **values_of(spec))
               for k in range(len(SHAPES))]
    which = [k % 7 for k in range(len(SHAPES))]
    on_device = [{n: a.copy() for n, a in state.items()} for state in tensors]
    bindings = [cuda_kernel.bind(emulation.Emulated(state["var"]),
                                 **{n: emulation.Emulated(a) for n, a in state.items() if n != "var"})
                for state in on_device]
    plan = cuda_kernel.plan(bindings)
    plan.launch([g.ctypes.data for g in grads], [entries[k].as_tuple() for k in range(7)], which,
                bindings[0].stream())
    for k, state in enumerate(tensors):
        call(c_kernel, state, grads[k], entries[which[k]])
        for name, got in on_device[k].items():
            assert got.tobytes() == state[name].tobytes(), (k, SHAPES[k], name)


def test_multi_takes_lists_of_each_state(kernels):
    spec = next(s for s in SPECS if s.RULE is ROWWISE_ADAGRAD and s.dtype == "float64")
    c_kernel, cuda_kernel = kernels(spec)
    rng = np.random.default_rng(2)
    shapes = [(3, 40), (1, 1), (7, 5)]
    variables = [rng.standard_normal(s) for s in shapes]
    accs = [np.zeros(s[0]) for s in shapes]
    grads = [rng.standard_normal(s) for s in shapes]
    got = [v.copy() for v in variables], [a.copy() for a in accs]
    hp = hparams_of(ROWWISE_ADAGRAD).at_step(1, **values_of(spec))
    cuda_kernel.multi([emulation.Emulated(v) for v in got[0]],
                      [emulation.Emulated(a) for a in got[1]],
                      [emulation.Emulated(g) for g in grads], hp)
    for var, acc, grad, cuda_var, cuda_acc in zip(variables, accs, grads, *got):
        c_kernel(var, acc, grad, hp)
        assert np.array_equal(var, cuda_var) and np.array_equal(acc, cuda_acc)


# --- what the emulation shows of a broken kernel ----------------------------------------------

#: What is broken: (the text of the correct source, its broken form); "nothing" is the control.
BREAKAGES = {
    "nothing": ("__syncwarp();", "__syncwarp();"),
    "no __syncwarp before lane 0 writes the row's state": (
        "        __syncwarp();  /* every lane has read the row's state before lane 0 writes it */\n",
        ""),
    "lanes past the row leave before its shuffles": (
        "        for (int64_t j = lane; j < row_size; j += LAZYADAM_WARP) {\n",
        "        if (lane >= row_size)\n            return;\n"
        "        for (int64_t j = lane; j < row_size; j += LAZYADAM_WARP) {\n"),
    "lanes read past their row": (
        "        for (int64_t j = lane; j < row_size; j += LAZYADAM_WARP) {\n",
        "        for (int64_t j = lane; j < LAZYADAM_WARP * ((row_size + LAZYADAM_WARP - 1) / "
        "LAZYADAM_WARP); j += LAZYADAM_WARP) {\n"),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_the_emulation_shows_a_broken_row_kernel(kernels, breakage, tmp_path):
    """The dense row kernel of SGD with dampening (whose `seen` is read by every lane and written
    by lane 0) and of rowwise Adagrad (a row sum), with one thing broken, on 5-column rows: the
    launch reports a fault, or the numbers differ from the C kernel's. The kernels step all rows
    but the last, which a lane reading past its row then reads (inside the arrays)."""
    good, bad = BREAKAGES[breakage]
    spec = (next(s for s in SPECS if s.RULE is SGD and s.dtype == "float32")
            if "syncwarp" in breakage else
            next(s for s in SPECS if s.RULE is ROWWISE_ADAGRAD and s.dtype == "float32"))
    source = generate(spec, "cuda")
    assert source.text.count(good) >= 1
    broken = Source(source.symbol, source.lang, source.text.replace(good, bad, 1),
                          source.header, source.cdef)
    library = emulation.compile_library([broken])  # cached, keyed by its text
    ffi = cffi.FFI()
    ffi.cdef(source.cdef)
    lib = ffi.dlopen(str(library))
    c_kernel, _ = kernels(spec)
    rng = np.random.default_rng(3)
    state = arrays_of(spec, rng, ROWS, 5)
    got = {n: a.copy() for n, a in state.items()}
    grad = rng.standard_normal((ROWS, 5)).astype(np.float32)
    hp = hparams_of(spec.RULE).at_step(1, **values_of(spec))
    call(c_kernel, {n: a[:ROWS - 1] for n, a in state.items()}, grad[:ROWS - 1], hp)
    status = getattr(lib, source.symbol)(
        *(ffi.cast("float *", a.ctypes.data) for a in got.values()),
        ffi.cast("float *", grad.ctypes.data), ROWS - 1, 5,
        ffi.new(f"{spec.RULE.hparams_type} *", hp.as_tuple()), ffi.NULL)
    if breakage == "nothing":
        assert status == 0
        assert all(got[n].tobytes() == state[n].tobytes() for n in state)
    elif "leave" in breakage:
        assert status == lib.LAZYADAM_ECUDA
        message = ffi.string(getattr(lib, f"{source.symbol}_error")()).decode()
        assert "cudaErrorLaunchFailure" in message and "warp collective" in message
    else:
        assert status == 0
        assert any(got[n].tobytes() != state[n].tobytes() for n in state), \
            f"{breakage}: the emulation gave the C kernel's numbers"


def test_the_emulation_reports_lanes_at_different_collectives(tmp_path):
    """A shuffle that some lanes meet at a __syncwarp is a fault, as a GPU would not pair them."""
    source = Source(
        "mixed", "cuda",
        '#include "mixed.h"\n'
        "#include <stdint.h>\n"
        "static __global__ void mixed_kernel(float *out)\n"
        "{\n"
        "    const int lane = threadIdx.x % 32;\n"
        "    if (lane < 16)\n"
        "        __syncwarp();\n"
        "    else\n"
        "        out[lane] = __shfl_down_sync(0xffffffffu, out[lane], 1);\n"
        "}\n"
        'extern "C" int mixed(float *out)\n'
        "{\n"
        "    LAZYADAM_LAUNCH(mixed_kernel, 1, 32, 0)(out);\n"
        "    return (int)cudaGetLastError();\n"
        "}\n"
        'extern "C" const char *mixed_error(void) { return cudaGetErrorString(cudaErrorLaunchFailure); }\n',
        "", "int mixed(float *out); const char *mixed_error(void);")
    if emulation.host_compiler() is None:
        pytest.skip("no host C++ compiler (c++ or g++) to build the CUDA emulation")
    library = emulation.compile_library([source])
    ffi = cffi.FFI()
    ffi.cdef(source.cdef)
    lib = ffi.dlopen(str(library))
    out = np.zeros(32, np.float32)
    assert lib.mixed(ffi.cast("float *", out.ctypes.data)) == 719   # cudaErrorLaunchFailure
    assert "different collectives" in ffi.string(lib.mixed_error()).decode()


@pytest.mark.parametrize("shape", [(3, 0), (0, 4)])
def test_a_tensor_with_no_element_keeps_its_row_state(kernels, shape):
    """C and CUDA leave per-row state alone where there is no element (the mean of an empty row
    would be 0/0)."""
    spec = next(s for s in SPECS if s.RULE is ROWWISE_ADAGRAD and s.dtype == "float32")
    for kernel in kernels(spec):
        acc = np.full(shape[0], 0.5, np.float32)
        state = {"var": np.zeros(shape, np.float32), "acc": acc}
        wrap = emulation.Emulated if kernel is kernels(spec)[1] else (lambda a: a)
        call(kernel, state, np.ones(shape, np.float32),
             hparams_of(ROWWISE_ADAGRAD).at_step(1, **values_of(spec)), wrap)
        assert (acc == 0.5).all()


@pytest.mark.parametrize("loss_scale", [3.0, 0.125, 2.0 ** 200])
def test_c_divides_or_multiplies_by_the_inverse_loss_scale_with_the_same_bits(kernels,
                                                                              loss_scale):
    """The C dense row kernel multiplies by 1/loss_scale where that is exact (0.125; 2^200 has
    no float32 inverse, 3 no exact one) and divides otherwise; the CUDA kernel always divides:
    the same bits either way."""
    for spec in [s for s in SPECS if s.dtype in ("float32", "float64") and s.RULE is not SGD][:4]:
        c_kernel, cuda_kernel = kernels(spec)
        rng = np.random.default_rng(5)
        c_state = arrays_of(spec, rng, ROWS, 37)
        cuda_state = {n: a.copy() for n, a in c_state.items()}
        grad = rng.standard_normal((ROWS, 37)).astype(NUMPY[spec.dtype])
        hp = hparams_of(spec.RULE).at_step(1, **(values_of(spec) | {"loss_scale": loss_scale}))
        call(c_kernel, c_state, grad, hp)
        call(cuda_kernel, cuda_state, grad, hp, emulation.Emulated)
        for name in c_state:
            assert c_state[name].tobytes() == cuda_state[name].tobytes(), (spec.symbol(), name)


def test_a_captured_step_replays_with_the_hyperparameters_stored_before_it(kernels):
    """A dense row step captured with its hyperparameters in device memory (the emulation's
    stream capture, as a CUDA graph records it), replayed over three steps with each step's
    entry stored before: the C kernel's bits at each."""
    spec = next(s for s in SPECS if s.RULE is PARTIAL_ROWWISE_ADAM and s.dtype == "float32")
    c_kernel, cuda_kernel = kernels(spec)
    control = emulation.control()
    control.emu_end_capture.restype = ctypes.c_longlong
    rng = np.random.default_rng(6)
    c_state = arrays_of(spec, rng, ROWS, 37)
    cuda_state = {n: a.copy() for n, a in c_state.items()}
    grad = rng.standard_normal((ROWS, 37)).astype(np.float32)
    table = np.zeros(cuda_kernel.hparams_bytes, np.uint8)
    wrapped = {n: emulation.Emulated(a) for n, a in cuda_state.items()}
    binding = cuda_kernel.bind(wrapped["var"], **{n: a for n, a in wrapped.items() if n != "var"})
    control.emu_begin_capture()
    binding(emulation.Emulated(grad), None, device_hparams=emulation.Emulated(table))
    assert control.emu_end_capture() == 1                # one launch recorded, none run
    assert cuda_state["var"].tobytes() == c_state["var"].tobytes()   # recorded, not run
    for t in (1, 2, 3):
        hp = hparams_of(spec.RULE).at_step(t, **values_of(spec))
        cuda_kernel.store_hparams(emulation.Emulated(table), [hp])
        assert control.emu_replay() == 0
        call(c_kernel, c_state, grad, hp)
        for name in c_state:
            assert cuda_state[name].tobytes() == c_state[name].tobytes(), (t, name)
