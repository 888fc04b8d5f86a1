"""A rule other than Adam, defined in this file alone, through the code generator: heavy-ball
momentum (`m = momentum*m + g; var -= lr*m`), one state array and two hyperparameters.

Its C kernels, dense and lazy sparse, are rendered from the shared templates, compiled by the C
compiler and run against a numpy model of the rule written here; their sources name none of Adam's
state or hyperparameters.
"""

from __future__ import annotations

import re
import subprocess

import cffi
import numpy as np
import pytest

import cuda_emulation as emulation
from lazyadam import Spec
from lazyadam.codegen.ir import Assign, Binary, Elem, Param, assemble
from lazyadam.codegen.passes import PIPELINE
from lazyadam.codegen.render import render_c
from lazyadam.codegen.render_cuda import render_cuda
from lazyadam.codegen.rule import HParam, Interval, Lowering, Rule, State, hparams_struct
from lazyadam.targets import c


def lower(spec) -> Lowering:
    m, g = Elem("m"), Elem("g")
    return Lowering(
        grad=(Assign("g", Elem("grad")),),
        update=(Assign("m", Binary("+", Binary("*", Param("momentum"), m), g)),
                Assign("var", Binary("-", Elem("var"), Binary("*", Param("lr"), m)))))


MOMENTUM = Rule(
    name="momentum",
    prefix="lazyadam_momentum",
    options=(),
    hparams=(HParam("lr", 0.1, Interval(0.0)), HParam("momentum", 0.9, Interval(0.0, 1.0))),
    state=(State("m", names={"mindspore": "moment", "torch": "momentum_buffer",
                             "plural": "ms"}),),
    symbol_order=("use_locking",),
    lower=lower,
    doc="heavy-ball momentum",
)
LR, MU = 0.25, 0.5
#: Adam's names, which no source of this rule may contain.
ADAM_NAMES = re.compile(r"\b(v|vmax|beta[12](_power)?|eps|weight_decay|amsgrad)\b")


def model(var, m, rows, grads):
    """The rule in numpy, in the kernel's dtype: each row's gradient summed, then one update."""
    var, m = var.copy(), m.copy()
    lr, mu = var.dtype.type(LR), var.dtype.type(MU)
    for row in rows:
        g = grads[row]
        m[row] = mu * m[row] + g
        var[row] = var[row] - lr * m[row]
    return var, m


def render(spec, target="c"):
    kernel = assemble(spec, MOMENTUM)
    for _, run in PIPELINE:
        kernel = run(kernel)
    symbol = f"momentum_{'sparse' if spec.sparse else 'dense'}_{spec.dtype}"
    return (render_c if target == "c" else render_cuda)(kernel, symbol)


def assert_names_no_adam(source):
    for text in (source.text, source.header):
        # The spec line is Adam's `Spec` until a rule has a spec of its own.
        code = "\n".join(line for line in text.splitlines() if not line.startswith(" * spec:"))
        assert not ADAM_NAMES.search(code), ADAM_NAMES.search(code)


def build(spec, tmp_path):
    source = render(spec)
    symbol = source.symbol
    (tmp_path / f"{symbol}.h").write_text(source.header)
    (tmp_path / source.filename).write_text(source.text)
    library = tmp_path / f"{symbol}.so"
    subprocess.run([*c.compiler(), *c.flags(), str(tmp_path / source.filename), "-o",
                    str(library), "-lm"], check=True, capture_output=True)
    ffi = cffi.FFI()
    ffi.cdef(source.cdef)
    return source, ffi, ffi.dlopen(str(library))


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("locking", [False, True], ids=["", "locking"])
def test_a_rule_defined_here_gets_c_kernels_from_the_templates(tmp_path, sparse, dtype, locking):
    if c.unavailable():
        pytest.skip(c.unavailable())
    spec = Spec(sparse=sparse, dtype=dtype, use_locking=locking)
    source, ffi, lib = build(spec, tmp_path)
    assert hparams_struct(MOMENTUM) in source.header
    assert_names_no_adam(source)
    rng = np.random.default_rng(7)
    var = rng.standard_normal((6, 5)).astype(dtype)
    m = rng.standard_normal((6, 5)).astype(dtype)
    hp = ffi.new("lazyadam_momentum_hparams *", {"lr": LR, "momentum": MU})
    ctype = "float[]" if dtype == "float32" else "double[]"
    got_var, got_m = var.copy(), m.copy()
    if sparse:
        indices = np.array([4, 1, 4, 0, 4], dtype=np.int64)
        # Multiples of 1/8: every sum of a row's occurrences is exact, in any order.
        values = (rng.integers(-16, 16, (5, 5)) / 8).astype(dtype)
        status = lib.momentum_sparse_float32 if dtype == "float32" else lib.momentum_sparse_float64
        status = status(ffi.from_buffer(ctype, got_var), ffi.from_buffer(ctype, got_m), 6, 5,
                        ffi.from_buffer("int64_t[]", indices), ffi.from_buffer(ctype, values),
                        5, hp)
        grads = np.zeros_like(var)
        np.add.at(grads, indices, values)
        want = model(var, m, sorted(set(indices.tolist())), grads)
    else:
        grad = rng.standard_normal((6, 5)).astype(dtype)
        fn = lib.momentum_dense_float32 if dtype == "float32" else lib.momentum_dense_float64
        status = fn(ffi.from_buffer(ctype, got_var), ffi.from_buffer(ctype, got_m),
                    ffi.from_buffer(ctype, grad), var.size, hp)
        want = model(var, m, range(6), grad)
    assert status == 0
    np.testing.assert_array_equal(got_m, want[1])
    np.testing.assert_array_equal(got_var, want[0])


def test_its_cuda_sources_build_in_the_host_emulation(tmp_path):
    """Dense and sparse, one translation unit (the CUDA sources as the emulation build compiles
    them for the host, tests/cuda_emulation)."""
    if emulation.host_compiler() is None:
        pytest.skip("no host C++ compiler (c++ or g++) to build the CUDA emulation")
    sources = [render(Spec(sparse=sparse, use_locking=True, dtype="bfloat16",
                           rounding="stochastic"), "cuda") for sparse in (False, True)]
    for source in sources:
        assert hparams_struct(MOMENTUM) in source.header
        assert_names_no_adam(source)
    assert emulation.compile_library(sources, tmp_path).exists()
