"""The family's rules (lazyadam/rules: SGD, Adagrad, rowwise Adagrad, partial-rowwise Adam, Lion)
as C kernels and as emulated CUDA kernels, against the numpy references of tests/reference_family.py over three steps.

Dense and lazy sparse (duplicates, untouched rows), float32 and float64, and bfloat16 with
stochastic rounding. Each rule's kernels are a sample of its flag product (every value of every
option appears, `test_the_sample_covers_every_option`), built together, one library per rule and
target, kept in the kernel cache.
"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import cffi
import ml_dtypes
import numpy as np
import pytest

import cuda_emulation as emulation
import lazyadam
import reference_family as ref
from lazyadam.codegen import generate
from lazyadam.codegen.pipeline import optimize
from lazyadam.codegen.variants import variants
from lazyadam.rules import ADAGRAD, LION, PARTIAL_ROWWISE_ADAM, ROWWISE_ADAGRAD, SGD
from lazyadam.targets import c, cache
from lazyadam.targets.base import hparams_of

RULES = {r.name: r for r in (SGD, ADAGRAD, ROWWISE_ADAGRAD, PARTIAL_ROWWISE_ADAM, LION)}
SAMPLE = 10           # kernels per rule and dtype
ROWS, ROW_SIZE, NNZ = 7, 37, 9

HYPER = {
    "sgd": dict(lr=0.05, mu=0.9, dampening=0.3, weight_decay=0.1, loss_scale=4.0),
    "adagrad": dict(lr=0.1, lr_decay=0.05, weight_decay=0.1, eps=1e-3, loss_scale=4.0),
    "rowwise_adagrad": dict(lr=0.1, eps=1e-3, weight_decay=0.1, loss_scale=4.0),
    "partial_rowwise_adam": dict(lr=0.01, beta1=0.9, beta2=0.99, eps=1e-3, weight_decay=0.1,
                                 loss_scale=4.0),
    "lion": dict(lr=0.01, beta1=0.9, beta2=0.99, weight_decay=0.1, loss_scale=4.0),
}


def sample(rule, dtype):
    """SAMPLE specs of the rule's product at `dtype` (int64 indices), in a fixed shuffled order,
    first those that show a value of a flag not shown yet, then the next ones."""
    specs = [s for s in variants(rule=rule, dtype=dtype) if s.index_dtype == "int64"]
    random.Random(rule.name + dtype).shuffle(specs)
    flags = ("sparse", *rule.flags)
    chosen, shown = [], set()
    for spec in specs:
        values = {(f, getattr(spec, f)) for f in flags}
        if not values <= shown:
            chosen.append(spec)
            shown |= values
    chosen += [s for s in specs if s not in chosen][:max(0, SAMPLE - len(chosen))]
    return chosen


def specs_of(rule):
    half = rule.spec(sparse=True, dtype="bfloat16", rounding="stochastic").validate()
    return sample(rule, "float32") + sample(rule, "float64") + [half]


@pytest.mark.parametrize("name", RULES)
def test_the_sample_covers_every_option(name):
    rule = RULES[name]
    specs = specs_of(rule)
    for option in rule.options:
        seen = {getattr(s, option.name) for s in specs}
        assert seen == set(option.values), (option.name, seen)
    assert {s.sparse for s in specs} == {False, True}
    assert {s.use_locking for s in specs} == {False, True}


# --- the kernels ---------------------------------------------------------------------------------

class Kernels:
    """The kernels of one rule on one target, in one library: `call(spec, arrays, grad,
    indices, hparams)` runs one step."""

    def __init__(self, rule, specs, target, folder: Path):
        self.rule, self.target = rule, target
        self.sources = {spec: generate(spec, target) for spec in specs}
        key = cache.make_key({"test": "family", "target": target, "flags": c.flags(),
                              "emulation": emulation.HEADER.read_text() if target == "cuda" else "",
                              "sources": [s.text + s.header for s in self.sources.values()]})
        self.path = cache.fetch(key, "family.so", self._build)
        self.ffis = {}
        for spec, source in self.sources.items():
            ffi = cffi.FFI()
            ffi.cdef(source.cdef)
            self.ffis[spec] = ffi, ffi.dlopen(str(self.path))

    def _build(self, folder: Path) -> Path:
        if self.target == "cuda":
            return emulation.compile_library(self.sources.values(), folder)
        files = []
        for source in self.sources.values():
            (folder / f"{source.symbol}.h").write_text(source.header)
            (folder / source.filename).write_text(source.text)
            files.append(str(folder / source.filename))
        out = folder / "family.so"
        built = subprocess.run([*c.compiler(), *c.flags(), "-Wall", "-Wshadow", "-Werror", *files,
                                "-o", str(out), "-lm"], capture_output=True, text=True)
        if built.returncode:
            pytest.fail(f"the C compiler failed:\n{built.stderr[-4000:]}")
        return out

    def call(self, spec, arrays, grad, indices, hparams):
        ffi, lib = self.ffis[spec]
        fn = getattr(lib, self.sources[spec].symbol)
        hp = ffi.new(f"{self.rule.hparams_type} *", hparams)
        ptrs = [ffi.cast("void *", a.ctypes.data) for a in arrays]
        g = ffi.cast("void *", grad.ctypes.data)
        rows, row_size = arrays[0].shape
        cuda = (ffi.NULL,) if self.target == "cuda" else ()
        if spec.sparse:
            i = ffi.cast("void *", indices.ctypes.data)
            return fn(*ptrs, rows, row_size, i, g, len(indices), hp, *cuda)
        if _has_rows(self.rule, spec):
            return fn(*ptrs, g, rows, row_size, hp, *cuda)
        return fn(*ptrs, g, rows * row_size, hp, *cuda)

    def arrays(self, spec):
        return self.rule.arrays(spec) + self.rule.row_arrays(spec)


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    if c.unavailable():
        pytest.skip(c.unavailable())
    built = {}

    def get(rule, target):
        if (rule.name, target) not in built:
            specs = specs_of(rule)
            if target == "cuda" and emulation.host_compiler() is None:
                pytest.skip("no host C++ compiler (c++ or g++) to build the CUDA emulation")
            built[rule.name, target] = Kernels(rule, specs, target,
                                               tmp_path_factory.mktemp(rule.name))
        return built[rule.name, target]
    return get


def _has_rows(rule, spec) -> bool:
    """Whether the rule's kernel of `spec` keeps per-row state or sums rows: its dense form
    takes (rows, row_size)."""
    return optimize(spec).per_row


# --- the references, one step of each rule -------------------------------------------------------

def reference(rule, spec, state, grad, indices, t):
    """One step of tests/reference_family.py for `spec`: the new state, by array name (with what
    the reference keeps that the kernel need not, e.g. SGD's `seen` without dampening)."""
    h = dict(HYPER[rule.name])
    flags = dict(maximize=spec.maximize, loss_scale=h.pop("loss_scale"), indices=indices)
    var = state["var"]
    if rule is SGD:
        mu = h["mu"] if spec.momentum else 0.0
        buffer = state.get("buf", np.zeros_like(var))
        seen = state.get("seen", np.zeros(len(var))) != 0
        var, b, seen = ref.sgd_step(var, buffer, seen, grad, lr=h["lr"], momentum=mu,
                                    dampening=h["dampening"] if spec.dampening else 0.0,
                                    weight_decay=h["weight_decay"] if spec.decay == "l2" else 0.0,
                                    nesterov=spec.nesterov, **flags)
        out = {"var": var, "buf": b, "seen": seen.astype(np.float64)}
    elif rule is ADAGRAD:
        var, s = ref.adagrad_step(var, state["sum"], grad, lr=h["lr"], step=t,
                                  lr_decay=h["lr_decay"], eps=h["eps"],
                                  weight_decay=h["weight_decay"] if spec.decay == "l2" else 0.0,
                                  **flags)
        out = {"var": var, "sum": s}
    elif rule is ROWWISE_ADAGRAD:
        var, a = ref.rowwise_adagrad_step(var, state["acc"], grad, lr=h["lr"], eps=h["eps"],
                                          weight_decay=h["weight_decay"], decay=spec.decay,
                                          **flags)
        out = {"var": var, "acc": a}
    elif rule is PARTIAL_ROWWISE_ADAM:
        var, m, v, vmax = ref.partial_rowwise_adam_step(
            var, state["m"], state["v"], grad, lr=h["lr"], beta1=h["beta1"], beta2=h["beta2"],
            eps=h["eps"], beta1_power=h["beta1"] ** t, beta2_power=h["beta2"] ** t,
            weight_decay=h["weight_decay"], decay=spec.decay, amsgrad=spec.amsgrad,
            vmax=state.get("vmax"), nesterov=spec.nesterov, eps_mode=spec.eps_mode, **flags)
        out = {"var": var, "m": m, "v": v, "vmax": vmax}
    else:
        var, m = ref.lion_step(var, state["m"], grad, lr=h["lr"], beta1=h["beta1"],
                               beta2=h["beta2"],
                               weight_decay=h["weight_decay"] if spec.decay == "decoupled" else 0,
                               **flags)
        out = {"var": var, "m": m}
    return out


def hparams(rule, t):
    h = dict(HYPER[rule.name], step=t, seed=12345)
    if rule is ADAGRAD:
        h["t"] = float(t)
    if rule is PARTIAL_ROWWISE_ADAM:
        h.update(beta1_power=h["beta1"] ** t, beta2_power=h["beta2"] ** t)
    return h


NUMPY = {"float32": np.float32, "float64": np.float64, "bfloat16": ml_dtypes.bfloat16}
TOLERANCE = {"float32": dict(rtol=1e-5, atol=1e-6), "float64": dict(rtol=1e-12, atol=1e-14),
             "bfloat16": dict(rtol=2 ** -7, atol=1e-3)}


def run_and_compare(kernels, rule, spec, target):
    rng = np.random.default_rng(sum(map(ord, spec.symbol())))
    k = kernels(rule, target)
    names = k.arrays(spec)
    state = {"var": rng.standard_normal((ROWS, ROW_SIZE))}
    for s in rule.state:
        if s.name in names:
            state[s.name] = np.zeros(ROWS if s.per == "row" else (ROWS, ROW_SIZE))
    stored = {name: value.astype(NUMPY[spec.storage(name)]) for name, value in state.items()}
    expected = {name: value.astype(np.float64) for name, value in stored.items()}
    for t in (1, 2, 3):
        if spec.sparse:
            indices = rng.integers(0, ROWS - 2, NNZ).astype(np.int64)   # the last two untouched
            grad = rng.standard_normal((NNZ, ROW_SIZE))
        else:
            indices, grad = None, rng.standard_normal((ROWS, ROW_SIZE))
        grad = grad.astype(NUMPY[spec.storage("grad")])
        status = k.call(spec, [stored[n] for n in names], grad, indices, hparams(rule, t))
        assert status == 0, (spec.symbol(), status)
        expected = reference(rule, spec, expected, grad.astype(np.float64), indices, t)
        for name in names:
            np.testing.assert_allclose(stored[name].astype(np.float64), expected[name],
                                       **TOLERANCE[spec.dtype], err_msg=f"{spec.symbol()} {name}")
        if spec.dtype == "bfloat16":
            # Each step from what the kernel stored: the reference does not round.
            expected.update({name: stored[name].astype(np.float64) for name in names})
    if spec.sparse:
        for name in names:
            assert np.array_equal(stored[name][ROWS - 2:],
                                  state[name][ROWS - 2:].astype(stored[name].dtype)), name


def _cases(target):
    for name, rule in RULES.items():
        for spec in specs_of(rule):
            yield pytest.param(rule, spec, id=spec.symbol())


@pytest.mark.parametrize("rule, spec", list(_cases("c")))
def test_c_kernels_match_the_reference(kernels, rule, spec):
    run_and_compare(kernels, rule, spec, "c")


@pytest.mark.parametrize("rule, spec", list(_cases("cuda")))
def test_emulated_cuda_kernels_match_the_reference(kernels, rule, spec):
    run_and_compare(kernels, rule, spec, "cuda")


@pytest.mark.parametrize("name", RULES)
def test_cuda_sources_compile_with_nvcc(name, pulse):
    """Every sampled kernel of the rule, compiled to PTX for sm_90 as test_cuda_codegen compiles
    LazyAdam's; a passing build is remembered in the kernel cache."""
    from test_cuda_codegen import compile_units, nvcc_or_skip
    nvcc = nvcc_or_skip()
    rule = RULES[name]
    sources = [generate(s, "cuda") for s in specs_of(rule)]
    key = cache.make_key({"test": "family-ptx", "sources": [s.text + s.header for s in sources],
                          "nvcc": subprocess.run([nvcc, "--version"], capture_output=True,
                                                 text=True).stdout})
    assert cache.fetch(key, "ptx.ok", lambda folder: compile_units(nvcc, "90", sources, folder,
                                                                       pulse))


@pytest.mark.parametrize("name", RULES)
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_lazyadam_compile_gives_each_rule_a_kernel_object(name, sparse):
    """`lazyadam.compile(spec)` and its call `kernel(var, *state, grad, hp)`, hyperparameters from
    the rule's class (`at_step` fills t or the beta powers), against the reference over 2 steps."""
    rule = RULES[name]
    spec = rule.spec(sparse=sparse, dtype="float64").validate()
    kernel = lazyadam.compile(spec)
    hp_class = hparams_of(rule)
    rng = np.random.default_rng(4)
    state = {"var": rng.standard_normal((ROWS, ROW_SIZE))}
    for s in rule.state:
        if s.name in kernel.arrays:
            state[s.name] = np.zeros(ROWS if s.per == "row" else (ROWS, ROW_SIZE))
    expected = {name: value.copy() for name, value in state.items()}
    values = {k: v for k, v in HYPER[name].items() if k not in ("t",)}
    for t in (1, 2):
        indices = rng.integers(0, ROWS, NNZ).astype(np.int64) if sparse else None
        grad = rng.standard_normal((NNZ if sparse else ROWS, ROW_SIZE))
        kernel(state["var"], *(state[a] for a in kernel.arrays[1:]),
               (indices, grad) if sparse else grad, hp_class.at_step(t, **values))
        expected = reference(rule, spec, expected, grad, indices, t)
        for a in kernel.arrays:
            np.testing.assert_allclose(state[a], expected[a], **TOLERANCE["float64"])


def test_per_row_state_must_have_one_value_per_row():
    spec = ROWWISE_ADAGRAD.spec(sparse=False, dtype="float64").validate()
    kernel = lazyadam.compile(spec)
    var, grad = np.ones((4, 3)), np.ones((4, 3))
    hp = hparams_of(ROWWISE_ADAGRAD).at_step(1)
    for acc, message in [(np.zeros((4, 3)), r"acc has shape \(4, 3\), expected \(4,\)"),
                         (np.zeros(5), r"acc has shape \(5,\), expected \(4,\)")]:
        with pytest.raises(ValueError, match=message):
            kernel(var, acc, grad, hp)
    assert (var == 1).all()
    with pytest.raises(ValueError, match="keeps state per row: var needs rank >= 1"):
        kernel(np.ones(()), np.zeros(()), np.ones(()), hp)


@pytest.mark.parametrize("rule", [ROWWISE_ADAGRAD, PARTIAL_ROWWISE_ADAM], ids=lambda r: r.name)
def test_c_and_emulated_cuda_sum_rows_in_the_same_order(kernels, rule):
    """Sparse float32 steps whose rows span several column blocks of a warp (300 columns) and
    whose row 1 is seen 600 times (chunk sums), data over six decades: the C kernel's lanes and
    the CUDA warp's shuffles give the same bits."""
    spec = rule.spec(sparse=True).validate()
    rng = np.random.default_rng(9)
    rows, row_size = 5, 300
    var = rng.standard_normal((rows, row_size)).astype(np.float32)
    indices = np.array([1] * 300 + [3, 0] + [1] * 300, dtype=np.int64)
    grad = (rng.standard_normal((len(indices), row_size))
            * 10.0 ** rng.uniform(-3, 3, (len(indices), row_size))).astype(np.float32)
    results = []
    for target in ("c", "cuda"):
        k = Kernels(rule, [spec], target, None)
        arrays = [var.copy()] + [np.zeros((rows, row_size) if s.per == "element" else rows,
                                          np.float32)
                                 for s in rule.state if s.name in k.arrays(spec)[1:]]
        assert k.call(spec, arrays, grad, indices, hparams(rule, 1)) == 0
        results.append(arrays)
    for c_array, cuda_array in zip(*results):
        assert np.array_equal(c_array, cuda_array)
