"""A rule other than Adam, defined in this file alone, through the code generator: heavy-ball
momentum (`m = momentum*m + g; var -= lr*m`, or with Nesterov `var -= lr*(g + momentum*m)`), one
state array, two hyperparameters and one option.

Its spec class is made from the rule; its C kernels, dense and lazy sparse, are generated from the
shared templates, compiled by the C compiler and run against a numpy model of the rule written
here, as bare C functions and through the targets (`lazyadam.compile`, and the CUDA target's
kernels built by the host emulation), with the hyperparameter class made from the rule; its
sources name none of Adam's state or hyperparameters.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
import subprocess

import cffi
import numpy as np
import pytest

import cuda_emulation as emulation
import lazyadam
from lazyadam import Spec, SpecError, generate
from lazyadam.codegen.ir import Assign, Binary, Elem, Param, Switch
from lazyadam.codegen.rule import HParam, Interval, Lowering, Option, Rule, State, hparams_struct
from lazyadam.codegen.spec import SpecBase
from lazyadam.codegen.variants import specs_from_json, variants
from lazyadam.sources import write_sources
from lazyadam.targets import batch, c
from lazyadam.targets.base import hparams_of


def _add(a, b):
    return Binary("+", a, b)


def _mul(a, b):
    return Binary("*", a, b)


def lower(spec) -> Lowering:
    buf, g, lr, mu = Elem("buf"), Elem("g"), Param("lr"), Param("momentum")
    return Lowering(
        grad=(Assign("g", Elem("grad")),),
        update=(Assign("buf", _add(_mul(mu, buf), g)),
                Assign("var", Binary("-", Elem("var"),
                                     _mul(lr, Switch("nesterov", _add(g, _mul(mu, buf)), buf))))))


HEAVY_BALL = Rule(
    name="heavy_ball",
    prefix="lazyadam_heavy_ball",
    options=(Option("nesterov", (False, True), False, doc="Nesterov's form of the step."),),
    hparams=(HParam("lr", 0.1, Interval(0.0), static=False),
             HParam("momentum", 0.9, Interval(0.0, 1.0))),
    state=(State("buf", names={"mindspore": "moment", "torch": "momentum_buffer",
                               "plural": "bufs"}),),
    symbol_order=("nesterov", "use_locking"),
    lower=lower,
    doc="heavy-ball momentum",
    readme="- `var` and `buf` (the velocity, zero at first) are updated in place.\n",
)
LR, MU = 0.25, 0.5
#: Adam's names, which no source of this rule may contain.
ADAM_NAMES = re.compile(r"\b(m|v|vmax|beta[12](_power)?|eps|weight_decay|amsgrad|decay)\b")


def model(var, buf, rows, grads, nesterov):
    """The rule in numpy, in the kernel's dtype: each row's gradient summed, then one update."""
    var, buf = var.copy(), buf.copy()
    lr, mu = var.dtype.type(LR), var.dtype.type(MU)
    for row in rows:
        g = grads[row]
        buf[row] = mu * buf[row] + g
        var[row] = var[row] - lr * (g + mu * buf[row] if nesterov else buf[row])
    return var, buf


def assert_names_no_adam(source):
    for text in (source.text, source.header):
        assert not ADAM_NAMES.search(text), ADAM_NAMES.search(text)


#: The C kernels of `test_a_rule_defined_here_gets_c_kernels_from_the_templates`.
C_SPECS = [HEAVY_BALL.spec(sparse=sparse, dtype=dtype, use_locking=locking, nesterov=nesterov)
           for sparse in (False, True) for dtype in ("float32", "float64")
           for locking in (False, True) for nesterov in (False, True)]


@pytest.fixture(scope="module")
def c_kernels(pulse):
    """C_SPECS built by the C target in one batch, kept in the kernel cache."""
    if c.unavailable():
        pytest.skip(c.unavailable())
    batch.build(C_SPECS, c.TARGET, report=pulse)


def build(spec):
    """The kernel's source, and its library (the C target's, from the cache) opened by cffi on
    the declarations of the source alone."""
    source = generate(spec)
    ffi = cffi.FFI()
    ffi.cdef(source.cdef)
    return source, ffi, ffi.dlopen(str(c.TARGET.load(spec).path))


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("locking", [False, True], ids=["", "locking"])
@pytest.mark.parametrize("nesterov", [False, True], ids=["", "nesterov"])
def test_a_rule_defined_here_gets_c_kernels_from_the_templates(c_kernels, sparse, dtype, locking,
                                                               nesterov):
    spec = HEAVY_BALL.spec(sparse=sparse, dtype=dtype, use_locking=locking, nesterov=nesterov)
    source, ffi, lib = build(spec)
    assert hparams_struct(HEAVY_BALL) in source.header
    assert_names_no_adam(source)
    rng = np.random.default_rng(7)
    var = rng.standard_normal((6, 5)).astype(dtype)
    buf = rng.standard_normal((6, 5)).astype(dtype)
    hp = ffi.new("lazyadam_heavy_ball_hparams *", {"lr": LR, "momentum": MU})
    ctype = "float[]" if dtype == "float32" else "double[]"
    got_var, got_buf = var.copy(), buf.copy()
    fn = getattr(lib, source.symbol)
    if sparse:
        indices = np.array([4, 1, 4, 0, 4], dtype=np.int64)
        # Multiples of 1/8: every sum of a row's occurrences is exact, in any order.
        values = (rng.integers(-16, 16, (5, 5)) / 8).astype(dtype)
        status = fn(ffi.from_buffer(ctype, got_var), ffi.from_buffer(ctype, got_buf), 6, 5,
                    ffi.from_buffer("int64_t[]", indices), ffi.from_buffer(ctype, values), 5, hp)
        grads = np.zeros_like(var)
        np.add.at(grads, indices, values)
        want = model(var, buf, sorted(set(indices.tolist())), grads, nesterov)
    else:
        grad = rng.standard_normal((6, 5)).astype(dtype)
        status = fn(ffi.from_buffer(ctype, got_var), ffi.from_buffer(ctype, got_buf),
                    ffi.from_buffer(ctype, grad), var.size, hp)
        want = model(var, buf, range(6), grad, nesterov)
    assert status == 0
    np.testing.assert_array_equal(got_buf, want[1])
    np.testing.assert_array_equal(got_var, want[0])


def test_its_cuda_sources_build_in_the_host_emulation():
    """Dense and sparse, one translation unit (the CUDA sources as the emulation build compiles
    them for the host, tests/cuda_emulation)."""
    if emulation.host_compiler() is None:
        pytest.skip("no host C++ compiler (c++ or g++) to build the CUDA emulation")
    sources = [generate(HEAVY_BALL.spec(sparse=sparse, use_locking=True, dtype="bfloat16",
                                        rounding="stochastic"), "cuda") for sparse in (False, True)]
    for source in sources:
        assert hparams_struct(HEAVY_BALL) in source.header
        assert_names_no_adam(source)
    assert emulation.compile_library(sources).exists()


def test_its_spec_class_is_made_from_its_options():
    spec = HEAVY_BALL.spec
    assert issubclass(spec, SpecBase) and spec.RULE is HEAVY_BALL
    assert [f.name for f in dataclasses.fields(spec)] == [
        "sparse", "use_locking", "nesterov", "dtype", "index_dtype", "state_dtype", "grad_dtype",
        "rounding", "static", "parallel_min"]
    assert spec(nesterov=True, use_locking=True).symbol() == \
        "lazyadam_heavy_ball_sparse_nesterov_locking_f32_i64"
    assert spec(sparse=False, dtype="bfloat16", state_dtype="bfloat16").storage("buf") == "bfloat16"
    assert "nesterov: Nesterov's form of the step." in spec.__doc__


def test_its_json_names_the_rule_and_reads_back_as_its_spec():
    spec = HEAVY_BALL.spec(nesterov=True, static={"momentum": 0.5})
    data = json.loads(spec.to_json())
    assert data["rule"] == "heavy_ball" and data["nesterov"] is True
    assert Spec.from_json(spec.to_json()) == spec
    assert SpecBase.from_json(spec.to_json()) == spec
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert spec.key() != HEAVY_BALL.spec(nesterov=True, static={"momentum": 0.25}).key()
    # LazyAdam's JSON names no rule, so its keys and static symbols are those from before rules.
    assert "rule" not in json.loads(Spec().to_json())
    assert Spec.from_json(Spec(amsgrad=True).to_json()) == Spec(amsgrad=True)


def test_its_specs_from_json_and_its_variants():
    text = json.dumps([{"rule": "test_rule_generic:HEAVY_BALL", "sparse": False},
                       {"amsgrad": True}])
    assert specs_from_json(text) == [HEAVY_BALL.spec(sparse=False), Spec(amsgrad=True)]
    with pytest.raises(SpecError, match="unknown field.*amsgrad"):
        specs_from_json(json.dumps({"rule": "test_rule_generic:HEAVY_BALL",
                                    "amsgrad": True}))
    specs = variants(HEAVY_BALL, dtype="float32")
    # sparse: 2 index dtypes x locking x nesterov; dense: locking x nesterov.
    assert len(specs) == 12 and all(type(s) is HEAVY_BALL.spec for s in specs)
    assert {s.nesterov for s in specs} == {False, True}


@pytest.mark.parametrize("fields, message", [
    (dict(nesterov=1), "nesterov must be a bool, got 1"),
    (dict(static={"momentum": 1.0}), r"static momentum must lie in \[0, 1\), got 1.0"),
    (dict(static={"lr": 0.1}), "'lr' cannot be static; choose from momentum"),
])
def test_its_specs_are_checked_against_its_options_and_domains(fields, message):
    with pytest.raises(SpecError, match=message):
        HEAVY_BALL.spec(**fields).validate()


def _inputs(dtype, sparse):
    rng = np.random.default_rng(11)
    var = rng.standard_normal((6, 5)).astype(dtype)
    buf = rng.standard_normal((6, 5)).astype(dtype)
    if not sparse:
        grad = rng.standard_normal((6, 5)).astype(dtype)
        return var, buf, grad, model(var, buf, range(6), grad, nesterov=False)
    indices = np.array([2, 5, 2, 2], dtype=np.int64)
    values = (rng.integers(-16, 16, (4, 5)) / 8).astype(dtype)
    grads = np.zeros_like(var)
    np.add.at(grads, indices, values)
    return var, buf, (indices, values), model(var, buf, [2, 5], grads, nesterov=False)


def test_its_hyperparameter_class_is_made_from_the_rule():
    HParams = hparams_of(HEAVY_BALL)
    assert hparams_of(HEAVY_BALL) is HParams and hparams_of(lazyadam.Spec.RULE) is lazyadam.HParams
    hp = HParams.at_step(3, lr=LR, seed=5)
    assert hp.as_tuple() == (LR, 0.9, 5, 3)
    with pytest.raises(ValueError, match=r"momentum = 1.5 must be finite and in \[0.0, 1.0\)"):
        HParams(LR, 1.5)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_its_c_kernels_through_the_c_target(sparse):
    if c.unavailable():
        pytest.skip(c.unavailable())
    kernel = lazyadam.compile(HEAVY_BALL.spec(sparse=sparse, dtype="float64"))
    assert kernel.arrays == ("var", "buf") and kernel.hparams_bytes == 32
    hp = hparams_of(HEAVY_BALL).at_step(1, lr=LR, momentum=MU)
    var, buf, grad, (want_var, want_buf) = _inputs("float64", sparse)
    kernel(var, buf, grad, hp)
    np.testing.assert_array_equal(buf, want_buf)
    np.testing.assert_array_equal(var, want_var)
    var, buf, grad, (want_var, want_buf) = _inputs("float64", sparse)
    kernel.bind(var, buf=buf)(grad, hp.as_tuple())
    np.testing.assert_array_equal(var, want_var)


def test_its_cuda_kernels_in_the_host_emulation():
    """The CUDA target's `CudaKernel` over the emulation build: a sparse step, and a dense
    multi-tensor step (`multi(variables, bufs, grads, hp)`), against the model."""
    if emulation.host_compiler() is None:
        pytest.skip("no host C++ compiler (c++ or g++) to build the CUDA emulation")
    dense, sparse = HEAVY_BALL.spec(sparse=False), HEAVY_BALL.spec(sparse=True)
    kernels = emulation.build([dense, sparse])
    hp = hparams_of(HEAVY_BALL).at_step(1, lr=LR, momentum=MU)
    var, buf, (indices, values), (want_var, want_buf) = _inputs("float32", True)
    kernels[sparse](emulation.Emulated(var), emulation.Emulated(buf),
                    (emulation.Emulated(indices), emulation.Emulated(values)), hp)
    np.testing.assert_array_equal(buf, want_buf)
    np.testing.assert_array_equal(var, want_var)
    steps = [_inputs("float32", False) for _ in range(3)]
    wrap = emulation.Emulated
    kernels[dense].multi([wrap(s[0]) for s in steps], [wrap(s[1]) for s in steps],
                         [wrap(s[2]) for s in steps], hp)
    for var, buf, _, (want_var, want_buf) in steps:
        np.testing.assert_array_equal(buf, want_buf)
        np.testing.assert_array_equal(var, want_var)
    with pytest.raises(TypeError, match="unexpected keyword argument 'vmaxes'"):
        kernels[dense].multi([], [], [], hp, vmaxes=[])


def test_headers_of_two_rules_go_in_one_c_file(tmp_path):
    """Each rule's struct has a guard of its own (`<PREFIX>_HPARAMS_DEFINED`) and the return
    codes one shared guard: a program includes LazyAdam's and this rule's headers, under strict
    warnings, and links their kernels into one library."""
    if c.unavailable():
        pytest.skip(c.unavailable())
    sources = [generate(spec) for spec in (Spec(), Spec(sparse=False, amsgrad=True),
                                           HEAVY_BALL.spec(), HEAVY_BALL.spec(sparse=False))]
    for source in sources:
        (tmp_path / source.filename).write_text(source.text)
        (tmp_path / f"{source.symbol}.h").write_text(source.header)
    program = "".join(f'#include "{s.symbol}.h"\n' for s in sources) + (
        "int main(void)\n{\n    lazyadam_hparams adam = {0};\n"
        "    lazyadam_heavy_ball_hparams heavy_ball = {0};\n"
        "    return (int)(adam.step + heavy_ball.step) + LAZYADAM_OK;\n}\n")
    (tmp_path / "program.c").write_text(program)
    strict = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
    subprocess.run([*c.compiler(), *strict, "-c", "program.c"], cwd=tmp_path, check=True,
                   capture_output=True)
    subprocess.run([*c.compiler(), *c.flags(), *(s.filename for s in sources), "-o", "both.so",
                    "-lm"], cwd=tmp_path, check=True, capture_output=True)


def test_cuda_sources_of_two_rules_form_one_translation_unit():
    """LazyAdam's and this rule's CUDA sources in one emulation library (one translation unit):
    the shared store of hyperparameters is a template on the struct. This rule's dense kernel
    steps from hyperparameters stored in device memory (`store_hparams`, `device_hparams=`)."""
    if emulation.host_compiler() is None:
        pytest.skip("no host C++ compiler (c++ or g++) to build the CUDA emulation")
    specs = [Spec(sparse=False), Spec(), HEAVY_BALL.spec(sparse=False), HEAVY_BALL.spec()]
    kernels = emulation.build(specs)
    assert emulation.compile_library([generate(s, "cuda") for s in specs]).exists()
    kernel = kernels[HEAVY_BALL.spec(sparse=False)]
    table = np.zeros(kernel.hparams_bytes, np.uint8)
    wrap = emulation.Emulated
    kernel.store_hparams(wrap(table), [hparams_of(HEAVY_BALL).at_step(1, lr=LR, momentum=MU)])
    var, buf, grad, (want_var, want_buf) = _inputs("float32", False)
    kernel(wrap(var), wrap(buf), wrap(grad), None, device_hparams=wrap(table))
    np.testing.assert_array_equal(buf, want_buf)
    np.testing.assert_array_equal(var, want_var)


def test_the_readme_of_a_folder_describes_each_rule_of_its_kernels(tmp_path):
    """`lazyadam generate`'s README: each rule of the folder's kernels, its struct filled with
    its defaults, and its `Rule.readme`."""
    write_sources(Spec(amsgrad=True), "c", tmp_path)
    write_sources(HEAVY_BALL.spec(sparse=False), "c", tmp_path)
    readme = (tmp_path / "README.md").read_text()
    assert "- `heavy_ball`: heavy-ball momentum." in readme
    assert ("lazyadam_heavy_ball_hparams hp = {.lr = 0.1, .momentum = 0.9, .seed = 0, "
            ".step = 1};\nint status = lazyadam_heavy_ball_dense_f32(...);") in readme
    assert "- `var` and `buf` (the velocity, zero at first) are updated in place." in readme
    assert "/* Step t = 1, 2, ...: beta1_power and beta2_power are beta1^t and beta2^t. */\n" \
           "lazyadam_hparams hp = {.lr = 0.001, .beta1 = 0.9," in readme
    assert "- `var`, `m`, `v` (and `vmax` for amsgrad kernels) are the parameter" in readme
