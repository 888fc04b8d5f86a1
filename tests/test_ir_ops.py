"""The IR's element operations: abs, sign, min, max, comparisons and select.

Each operation is printed by `CPrinter`, compiled by the C target's compiler under the kernels' own
flags, and run on every combination of a grid of special values (±0, NaN of either sign and with a
payload, ±inf, subnormals, the extremes) in float32 and float64. The results must equal, bit for
bit, a numpy reference written from the semantics that `lazyadam/codegen/ir.py` documents, and
`fold_constants` must fold the same expressions on constants to the same bits. The CUDA printer's
text is checked against golden strings and compiled by nvcc, in a small kernel of its own and inside
a rendered half-precision kernel.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import replace
from pathlib import Path

import cffi
import numpy as np
import pytest

from lazyadam import Spec
from lazyadam.codegen import ir
from lazyadam.codegen.ir import Assign, Call, Compare, Const, Elem, Param, Select, Switch
from lazyadam.codegen.passes import PIPELINE, drop_dead_terms, fold_constants, hoist_invariants
from lazyadam.codegen.pipeline import format_kernel, lower
from lazyadam.codegen.printer import CPrinter, CudaPrinter
from lazyadam.codegen.render import render_c
from lazyadam.codegen.render_cuda import render_cuda
from lazyadam.rules.adam import ADAM
from lazyadam.targets import c, cache, nvcc as toolchain

A, B, C = Elem("a"), Elem("b"), Elem("c")

#: Each operation on the operands a, b (and the condition c), by name.
OPS = {
    "abs": Call("abs", (A,)),
    "sign": Call("sign", (A,)),
    "min": Call("min", (A, B)),
    "max": Call("max", (A, B)),
    **{f"compare{n}": Compare(op, A, B) for n, op in enumerate(ir.COMPARISONS)},
    "select": Select(C, A, B),
    "select_of_compare": Select(Compare("<", A, B), A, B),
    "compare_times": ir.Binary("*", Compare(">=", A, B), A),
    "max_minus_inf": Call("max", (A, Const(-np.inf))),
    "min_inf": Call("min", (A, Const(np.inf))),
}
DTYPES = {"float32": (np.float32, np.uint32), "float64": (np.float64, np.uint64)}
CTYPES = {"float32": "float", "float64": "double"}


def grid(dtype: str) -> np.ndarray:
    """Special values of `dtype`: zeros and NaNs of both signs (one NaN with a payload), infinities,
    the smallest and largest subnormals, the smallest normal, the largest finite, and a few
    ordinary numbers."""
    real, word = DTYPES[dtype]
    info = np.finfo(real)
    width = 8 * np.dtype(real).itemsize
    quiet = word(1) << word(info.nmant - 1)
    exponent = ((word(1) << word(width - 1 - info.nmant)) - word(1)) << word(info.nmant)
    sign = word(1) << word(width - 1)
    nans = np.array([exponent | quiet, sign | exponent | quiet, exponent | quiet | word(5)],
                    dtype=word).view(real)
    smallest = info.smallest_subnormal
    largest_subnormal = np.nextafter(info.tiny, real(0))
    values = np.array([0.0, -0.0, 1.0, -1.0, 0.5, -3.0, np.inf, -np.inf, smallest, -smallest,
                       largest_subnormal, -largest_subnormal, info.tiny, -info.max, info.max],
                      dtype=real)
    return np.concatenate([values, nans])


def operands(dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """a, b and c over every combination of the grid."""
    values = grid(dtype)
    return tuple(np.ascontiguousarray(x.ravel())
                 for x in np.meshgrid(values, values, values, indexing="ij"))


def reference(name: str, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """What ir.py's docstring says each operation gives, from numpy's own functions."""
    real = a.dtype.type
    nan = np.isnan(a) | np.isnan(b)
    if name == "abs":
        return np.abs(a)
    if name == "sign":
        # np.sign, except that ±0 and NaN are passed through (np.sign(-0.0) is +0).
        return np.where((a == 0) | np.isnan(a), a, np.sign(a)).astype(real)
    if name in ("min", "max"):
        # The second operand on a tie and when either is NaN; np.minimum / np.maximum otherwise.
        pick = np.minimum(a, b) if name == "min" else np.maximum(a, b)
        return np.where(nan | (a == b), b, pick)
    if name.startswith("compare") and name != "compare_times":
        numpy_op = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal,
                    "==": np.equal, "!=": np.not_equal}[OPS[name].op]
        return numpy_op(a, b).astype(real)
    if name == "compare_times":
        with np.errstate(invalid="ignore"):  # 0 * inf
            return np.greater_equal(a, b).astype(real) * a
    if name == "select":
        return np.where(c != 0, a, b)
    if name == "select_of_compare":
        return np.where(np.less(a, b), a, b)
    if name == "max_minus_inf":
        return reference("max", a, np.full_like(a, -np.inf), c)
    if name == "min_inf":
        return reference("min", a, np.full_like(a, np.inf), c)
    raise AssertionError(name)


def bits(x: np.ndarray) -> np.ndarray:
    return x.view(DTYPES[x.dtype.name][1])


def assert_bitwise(got: np.ndarray, want: np.ndarray, a, b, c, what: str) -> None:
    wrong = np.flatnonzero(bits(got) != bits(want))
    if wrong.size:
        i = wrong[0]
        pytest.fail(f"{what}: {wrong.size} of {got.size} differ; first at a={a[i]!r}, b={b[i]!r}, "
                    f"c={c[i]!r}: got {got[i]!r} ({bits(got)[i]:#x}), "
                    f"want {want[i]!r} ({bits(want)[i]:#x})")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """The library of `op_<name>_<dtype>(a, b, c, out, n)` for every operation and dtype, built by
    the C target's compiler with the kernels' flags (no fused multiply-add, no fast math, -O3)."""
    problem = c.unavailable()
    if problem:
        pytest.skip(problem)
    folder = tmp_path_factory.mktemp("ir_ops")
    lines, decls = [], []
    for dtype, ctype in CTYPES.items():
        printer = CPrinter(dtype)
        for name, expr in OPS.items():
            signature = (f"void op_{name}_{dtype}(const {ctype} *a, const {ctype} *b, "
                         f"const {ctype} *c, {ctype} *out, size_t n)")
            decls.append(signature + ";")
            lines += [signature + " {",
                      "    for (size_t i = 0; i < n; i++) {",
                      f"        const {ctype} a_i = a[i], b_i = b[i], c_i = c[i];",
                      "        (void)a_i; (void)b_i; (void)c_i;",
                      f"        out[i] = {printer.expr(expr)};",
                      "    }", "}"]
    source = folder / "ops.c"
    source.write_text("\n".join(["#include <math.h>", "#include <stddef.h>", *decls, *lines]) + "\n")
    library = folder / "ops.so"
    cmd = [*c.compiler(), *c.flags(), "-Wall", "-Wextra", "-Wconversion", "-Werror", str(source),
           "-o", str(library), "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    ffi = cffi.FFI()
    ffi.cdef("\n".join(decls))
    # RTLD_NODELETE: the flags link OpenMP, and unloading it under idle threads crashes at exit.
    return ffi, ffi.dlopen(str(library), ffi.RTLD_NOW | ffi.RTLD_NODELETE)


def run_c(compiled, name: str, dtype: str, a, b, c_) -> np.ndarray:
    ffi, library = compiled
    out = np.empty_like(a)
    ctype = CTYPES[dtype]
    ptr = lambda x: ffi.cast(f"{ctype} *", x.ctypes.data)  # noqa: E731
    getattr(library, f"op_{name}_{dtype}")(ptr(a), ptr(b), ptr(c_), ptr(out), a.size)
    return out


@pytest.mark.parametrize("dtype", CTYPES)
@pytest.mark.parametrize("name", OPS)
def test_printed_c_follows_the_documented_semantics(compiled, name, dtype):
    a, b, c_ = operands(dtype)
    got = run_c(compiled, name, dtype, a, b, c_)
    assert_bitwise(got, reference(name, a, b, c_), a, b, c_, f"C {name} in {dtype}")


def fold(expressions: list[ir.Expr]) -> list[ir.Expr]:
    """Each expression after `fold_constants`, as one statement of a kernel."""
    kernel = ir.Kernel(spec=Spec(), rule=ADAM, grad=(),
                       update=tuple(Assign("var", e) for e in expressions))
    return [s.expr for s in fold_constants(kernel).update]


@pytest.mark.parametrize("dtype", CTYPES)
@pytest.mark.parametrize("name", OPS)
def test_folding_gives_the_bits_of_the_compiled_c(compiled, name, dtype):
    """fold_constants computes in double, as the scalars are; on values of the arithmetic dtype
    these operations are exact, so its result, in that dtype, is the C result bit for bit."""
    a, b, c_ = operands(dtype)
    expr = OPS[name]
    constants = {"a": a, "b": b, "c": c_}
    folded = fold([ir.transform(expr, lambda e, i=i: Const(float(constants[e.name][i]))
                                if isinstance(e, Elem) else e) for i in range(a.size)])
    assert all(isinstance(e, Const) for e in folded)
    got = np.array([e.value for e in folded]).astype(DTYPES[dtype][0])
    assert_bitwise(got, run_c(compiled, name, dtype, a, b, c_), a, b, c_,
                   f"folded {name} in {dtype}")


def test_a_select_folds_on_its_condition_alone():
    """`c ? x : y` with a constant c is x or y, whatever x and y are (NaN and -0 count as
    nonzero and zero)."""
    x, y = Elem("var"), Elem("m")
    assert fold([Select(Const(c_), x, y) for c_ in (1.0, -0.0, 0.0, float("nan"), -2.0)]) == [
        x, y, y, x, x]
    assert fold([Select(Compare("<", Const(1.0), Const(2.0)), x, y)]) == [x]
    assert fold([Call("max", (x, Const(1.0)))]) == [Call("max", (x, Const(1.0)))]


#: What each operation prints as, for float32 element code and double (scalar or float64) code.
GOLDEN = {
    "abs": ("fabsf(a_i)", "fabs(a_i)"),
    "sign": ("(a_i > 0.0f ? 1.0f : (a_i < 0.0f ? -1.0f : a_i))",
             "(a_i > 0.0 ? 1.0 : (a_i < 0.0 ? -1.0 : a_i))"),
    "min": ("(a_i < b_i ? a_i : b_i)",) * 2,
    "max": ("(a_i > b_i ? a_i : b_i)",) * 2,
    **{f"compare{n}": (f"(a_i {op} b_i)",) * 2 for n, op in enumerate(ir.COMPARISONS)},
    "select": ("(c_i ? a_i : b_i)",) * 2,
    "select_of_compare": ("((a_i < b_i) ? a_i : b_i)",) * 2,
    "compare_times": ("(a_i >= b_i) * a_i",) * 2,
    "max_minus_inf": ("(a_i > -INFINITY ? a_i : -INFINITY)",) * 2,
    "min_inf": ("(a_i < INFINITY ? a_i : INFINITY)",) * 2,
}


@pytest.mark.parametrize("printer_class", [CPrinter, CudaPrinter])
@pytest.mark.parametrize("name", OPS)
def test_printed_text(printer_class, name):
    """C and CUDA print the same element code: fabsf/fabs by dtype, f-suffixed literals in float,
    ternaries (never fmin/fmax) for min and max. A half-precision kernel computes in float32
    (`Spec.compute_dtype`), so it prints the float32 text."""
    single, double = GOLDEN[name]
    half = Spec(dtype="bfloat16", state_dtype="bfloat16").compute_dtype
    assert printer_class(half).expr(OPS[name]) == single
    assert printer_class("float32").expr(OPS[name]) == single
    assert printer_class("float64").expr(OPS[name]) == double
    assert printer_class("float32").expr(OPS[name], scalar=True) == double


def test_constants_beyond_the_range_print_as_infinity_and_a_nan_is_refused():
    """Clamps meet infinite bounds: C99's INFINITY spells them, also for a double constant that
    float element code rounds to infinity; a NaN constant has no exact literal."""
    assert CPrinter("float32").expr(Const(1e300)) == "INFINITY"
    assert CPrinter("float32").expr(Const(-1e300)) == "-INFINITY"
    assert CPrinter("float64").expr(Const(1e300)) == "1e+300"
    assert CPrinter("float32").expr(Const(1e300), scalar=True) == "1e+300"
    with pytest.raises(ValueError, match="C has no exact literal for a NaN"):
        CudaPrinter("float64").expr(Call("max", (A, Const(float("nan")))))


def test_the_ir_listing_names_the_operations():
    spec = Spec()
    rule = Select(Compare("!=", Elem("m"), Const(0.0)),
                  Call("sign", (Elem("m"),)), Call("min", (Call("abs", (Elem("v"),)), Elem("g"))))
    kernel = ir.Kernel(spec=spec, rule=ADAM, grad=(), update=(Assign("m", rule),))
    assert format_kernel(kernel).splitlines()[-1] == (
        "    m = select((m != 0.0), sign(m), min(abs(v), g))")


def test_bad_operations_are_refused():
    with pytest.raises(ValueError, match="unknown function 'fmax'"):
        Call("fmax", (A, B))
    with pytest.raises(ValueError, match="min takes 2 argument"):
        Call("min", (A,))
    with pytest.raises(ValueError, match="unknown comparison '<>'"):
        Compare("<>", A, B)


def test_the_passes_see_through_the_new_nodes():
    """drop_dead_terms resolves switches inside them; hoisting lifts their per-step operands, and
    the whole node when it reads no element (they are pure)."""
    lr = Param("lr")
    spec = Spec(nesterov=True)
    expr = Select(Compare("<", Elem("m"), Switch("nesterov", lr, Const(0.0))),
                  Call("sign", (Call("max", (lr, Param("eps"))),)),
                  Call("abs", (Switch("amsgrad", Elem("vmax"), Elem("v")),)))
    kernel = ir.Kernel(spec=spec, rule=ADAM, grad=(), update=(Assign("m", expr),))
    resolved = drop_dead_terms(kernel).update[0].expr
    assert resolved == Select(Compare("<", Elem("m"), lr),
                              Call("sign", (Call("max", (lr, Param("eps"))),)),
                              Call("abs", (Elem("v"),)))
    hoisted = hoist_invariants(drop_dead_terms(kernel))
    # Unnamed scalars are numbered around the templates' locals: "c" is a chunk counter there.
    assert hoisted.update[0].expr == Select(Compare("<", Elem("m"), ir.Scalar("lr")),
                                            ir.Scalar("c1"), Call("abs", (Elem("v"),)))
    assert [(s.name, s.expr) for s in hoisted.scalars] == [
        ("lr", lr), ("c1", Call("sign", (Call("max", (lr, Param("eps"))),)))]
    assert CPrinter("float32").let(hoisted.scalars[1]) == (
        "const float c1 = (float)(((hp->lr > hp->eps ? hp->lr : hp->eps) > 0.0 ? 1.0 : "
        "((hp->lr > hp->eps ? hp->lr : hp->eps) < 0.0 ? -1.0 : "
        "(hp->lr > hp->eps ? hp->lr : hp->eps))));")


#: A rule using every new node, in place of Adam's weight update: what issue 17's rules need
#: (Lion's sign, clipping by min and max, a select on a comparison).
def with_new_ops(spec: Spec) -> ir.Kernel:
    w, m, g = Elem("var"), Elem("m"), Elem("g")
    step = ir.Binary("*", Param("lr"), Call("sign", (m,)))
    clipped = Call("min", (Call("max", (ir.Binary("-", w, step), Const(-4.0))), Const(4.0)))
    update = Assign("var", Select(Compare(">=", Call("abs", (g,)), Param("eps")), clipped, w))
    kernel = lower(spec)
    kernel = replace(kernel, update=kernel.update[:-1] + (update,))
    for _, run in PIPELINE:
        kernel = run(kernel)
    return kernel


HALF_SPECS = [Spec(dtype="bfloat16", state_dtype="bfloat16", rounding="stochastic"),
              Spec(sparse=False, dtype="float16", grad_dtype="float32"),
              Spec(sparse=False, dtype="float64"), Spec()]


@pytest.mark.parametrize("spec", HALF_SPECS, ids=lambda s: s.symbol())
def test_a_kernel_using_them_compiles_under_strict_warnings(tmp_path, spec):
    """In a rendered kernel (16-bit storage computes in float32): built with -std=c99 -Wall
    -Wextra -Wconversion -Werror -pedantic."""
    problem = c.unavailable()
    if problem:
        pytest.skip(problem)
    source = render_c(with_new_ops(spec))
    body = source.text
    fabs = "fabs" if spec.compute_dtype == "float64" else "fabsf"
    assert re.search(rf"var_i = \(\({fabs}\(g_i\) >= eps\) \? \(\(var_i - lr \* \(m_i > 0\.0f? \? ",
                     body), body
    (tmp_path / source.filename).write_text(body)
    (tmp_path / f"{source.symbol}.h").write_text(source.header)
    proc = subprocess.run([*c.compiler(), "-std=c99", "-Wall", "-Wextra", "-Wconversion",
                           "-Werror", "-pedantic", "-fopenmp", "-fsyntax-only",
                           str(tmp_path / source.filename)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def cuda_kernel(name: str, ops: dict, dtype: str) -> list[str]:
    """A CUDA kernel `name` that writes each of `ops`, as CudaPrinter prints it, to `out`."""
    ctype, printer = CTYPES[dtype], CudaPrinter(dtype)
    return [f"__global__ void {name}(const {ctype} *a, const {ctype} *b, const {ctype} *c, "
            f"{ctype} *out, int n) {{",
            "    int i = blockIdx.x * blockDim.x + threadIdx.x;",
            "    if (i >= n) return;",
            f"    const {ctype} a_i = a[i], b_i = b[i], c_i = c[i];",
            "    (void)a_i; (void)b_i; (void)c_i;",
            *(f"    out[{k} * n + i] = {printer.expr(e)};" for k, e in enumerate(ops.values())),
            "}"]


NVCC_FLAGS = ["-std=c++17", "-arch=sm_80", "-O3", "--fmad=false", "-Werror=all-warnings"]


def nvcc_units(nvcc: str, files: dict[str, str], folder: Path) -> Path:
    """Writes `files` and compiles them (`nvcc -c unit.cu`, `nvcc --ptx minmax.cu`) in `folder`;
    returns the PTX of minmax.cu."""
    for name, text in files.items():
        (folder / name).write_text(text)
    for args in (["-c", "unit.cu", "-o", "unit.o"], ["--ptx", "minmax.cu", "-o", "minmax.ptx"]):
        proc = subprocess.run([nvcc, *NVCC_FLAGS, *args], capture_output=True, text=True,
                              cwd=folder)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return folder / "minmax.ptx"


def test_nvcc_compiles_them():
    """A small kernel of every operation in float and double, and a rendered bfloat16 kernel using
    them, in one translation unit: `nvcc -c`, no GPU needed. In the PTX, min and max of two
    variables are a comparison and a select (setp, selp) as in C, never PTX's min/max, which
    drop a NaN operand. (With a constant -inf or inf operand nvcc may use them: then they agree.)
    A pass is kept in the kernel cache, keyed by the sources, flags and nvcc's version."""
    nvcc = toolchain.nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found on PATH, $CUDA_HOME/bin or /usr/local/cuda/bin")
    minmax = {name: OPS[name] for name in ("min", "max")}
    source = render_cuda(with_new_ops(HALF_SPECS[0]))
    files = {"ops.cu": "\n".join(line for dtype in CTYPES
                                 for line in cuda_kernel(f"ops_{dtype}", OPS, dtype)) + "\n",
             "minmax.cu": "\n".join(line for dtype in CTYPES
                                    for line in cuda_kernel(f"minmax_{dtype}", minmax, dtype)) + "\n",
             source.filename: source.text, f"{source.symbol}.h": source.header,
             "unit.cu": f'#include "{source.filename}"\n#include "ops.cu"\n'}
    key = cache.make_key({"target": "ir-ops-nvcc", "files": files, "flags": NVCC_FLAGS,
                          "nvcc": subprocess.run([nvcc, "--version"], capture_output=True,
                                                 text=True).stdout})
    ptx = cache.fetch(key, "minmax.ptx", lambda folder: nvcc_units(nvcc, files, folder)).read_text()
    assert len(re.findall(r"\bselp\.f32\b", ptx)) == len(re.findall(r"\bselp\.f64\b", ptx)) == 2
    assert not re.search(r"\b(min|max)(\.\w+)*\.f(32|64)\b", ptx)


def test_grid_covers_the_special_values():
    """The grid has what the semantics single out: both zeros, NaNs of both signs, infinities,
    subnormals."""
    for dtype in CTYPES:
        values = grid(dtype)
        assert {(v == 0, bool(np.signbit(v))) for v in values if v == 0} == {(True, False),
                                                                              (True, True)}
        assert {bool(np.signbit(v)) for v in values if np.isnan(v)} == {False, True}
        assert np.isinf(values).sum() == 2
        subnormal = (values != 0) & (np.abs(values) < np.finfo(values.dtype).tiny)
        assert subnormal.sum() == 4
