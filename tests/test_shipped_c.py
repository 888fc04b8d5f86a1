"""Generated C sources as another project builds them: by the system compiler, without lazyadam.

The sources are written by `lazyadam.sources.write_sources`, compiled into shared libraries with
and without OpenMP under `-std=c99 -Werror` and the usual strict warnings (`STRICT`: `-Wall -Wextra
-pedantic -Wshadow -Wconversion -Wstrict-prototypes -Wmissing-prototypes -Wcast-qual`), called
through cffi and compared with the numpy reference; the C ABI's error codes are checked, and a C++
program includes two headers.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cffi
import numpy as np
import pytest

import product
from lazyadam import HParams, Spec, generate
from lazyadam.rules.adam import ADAM
from lazyadam.codegen.names import LIBRARY
from lazyadam.codegen.pipeline import optimize, renderer
from lazyadam.sources import write_sources
from lazyadam.targets import c, cache, toolchain
from reference import lazyadam_step
from tolerance import assert_close

#: The strict warnings that projects which check the sources into their trees build them under.
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-Wshadow", "-Wconversion",
          "-Wstrict-prototypes", "-Wmissing-prototypes", "-Wcast-qual"]
OK, ENULL, ESIZE, EINDEX = 0, -1, -2, -3
STATIC = {"beta1": 0.85, "beta2": 0.995, "eps": 1e-7, "loss_scale": 8.0, "weight_decay": 0.01}
HYPER = dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.05, loss_scale=4.0)

#: Every flag value at least once, every dtype and index dtype, baked hyperparameters; half-precision
#: parameters with each state and gradient dtype and both roundings.
SPECS = [
    Spec(),
    Spec(nesterov=True, decay="l2", dtype="float64", index_dtype="int32"),
    Spec(amsgrad=True, maximize=True, use_locking=True, eps_mode="pytorch"),
    Spec(decay="decoupled", index_dtype="int32", static=STATIC),
    Spec(sparse=False),
    Spec(sparse=False, dtype="float64", nesterov=True, amsgrad=True, decay="l2",
         eps_mode="pytorch"),
    Spec(sparse=False, use_locking=True, maximize=True, decay="decoupled"),
    Spec(sparse=False, dtype="float64", decay="l2", static={"beta1": 0.85, "loss_scale": 8.0}),
    Spec(dtype="bfloat16", rounding="stochastic", decay="l2", amsgrad=True),
    Spec(dtype="float16", state_dtype="bfloat16", grad_dtype="float32", use_locking=True,
         index_dtype="int32"),
    Spec(sparse=False, dtype="bfloat16", state_dtype="bfloat16", rounding="stochastic",
         nesterov=True),
    Spec(sparse=False, dtype="float16", grad_dtype="float32", decay="decoupled", amsgrad=True,
         rounding="stochastic"),
]
#: The C type through which each storage dtype is passed.
C_TYPES = {"float32": "float", "float64": "double", "bfloat16": "uint16_t", "float16": "uint16_t"}


def cc() -> list[str]:
    problem = c.unavailable()
    if problem:
        pytest.skip(problem)
    return c.compiler()


def openmp_modes() -> list[str]:
    if toolchain.openmp().startswith("yes"):
        return ["openmp", "serial"]
    return ["serial"]


def compile_library(folder: Path, sources: list[Path], openmp: bool) -> Path:
    """All `sources` in one shared library, built in one compiler call under strict warnings."""
    out = folder / f"kernels_{'omp' if openmp else 'serial'}.so"
    cmd = [*cc(), *STRICT, "-O2", "-fPIC", "-shared", *(["-fopenmp"] if openmp else []),
           *map(str, sources), "-o", str(out), "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return out


class Shipped:
    """One generated kernel, called through cffi from a library built outside lazyadam."""

    def __init__(self, spec: Spec, library: Path):
        self.spec = spec
        source = generate(spec)
        self.ffi = cffi.FFI()
        self.ffi.cdef(source.cdef)
        # RTLD_NODELETE: unloading an OpenMP library under libgomp's idle threads crashes at exit.
        library = self.ffi.dlopen(str(library), self.ffi.RTLD_NOW | self.ffi.RTLD_NODELETE)
        self.fn = getattr(library, source.symbol)

    def ptr(self, arr: np.ndarray | None, ctype: str | None = None):
        if arr is None:
            return self.ffi.NULL
        return self.ffi.cast(f"{ctype or C_TYPES[arr.dtype.name]} *", arr.ctypes.data)

    def __call__(self, var, m, v, vmax, grad, hp: tuple, *, rows=None, row_size=None, nnz=None,
                 n=None, null: str = "") -> int:
        """Calls the kernel; `null` names an argument passed as a null pointer."""
        args = {"var": var, "m": m, "v": v} | ({"vmax": vmax} if self.spec.amsgrad else {})
        ptrs = {name: self.ffi.NULL if name == null else self.ptr(a) for name, a in args.items()}
        hp_ptr = self.ffi.NULL if null == "hp" else self.ffi.new("lazyadam_hparams *", hp)
        if not self.spec.sparse:
            grad_ptr = self.ffi.NULL if null == "grad" else self.ptr(grad)
            return self.fn(*ptrs.values(), grad_ptr, var.size if n is None else n, hp_ptr)
        indices, values = grad
        index_ptr = self.ffi.NULL if null == "indices" else self.ptr(indices, f"{indices.dtype}_t")
        values_ptr = self.ffi.NULL if null == "values" else self.ptr(values)
        return self.fn(*ptrs.values(), var.shape[0] if rows is None else rows,
                       var[0].size if row_size is None else row_size, index_ptr, values_ptr,
                       len(indices) if nnz is None else nnz, hp_ptr)


@pytest.fixture(scope="module")
def libraries(tmp_path_factory) -> dict[str, Path]:
    """The representative specs, written with write_sources, built with and without OpenMP; each
    library is kept in the kernel cache, keyed by the files written, the compiler and the mode."""
    folder = tmp_path_factory.mktemp("shipped")
    sources = [write_sources(spec, "c", folder)[0] for spec in SPECS]
    written = {path.name: path.read_text() for path in sorted(folder.iterdir())}
    modes = openmp_modes()

    def build(mode: str) -> Path:
        key = cache.make_key({"test": "shipped-c", "mode": mode, "strict": STRICT,
                              "files": written, **c.identity()})
        return cache.fetch(key, f"kernels_{'omp' if mode == 'openmp' else 'serial'}.so",
                           lambda entry: compile_library(entry, sources, mode == "openmp"))
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(modes, pool.map(build, modes)))


def kernel_hparams(spec: Spec, t: int) -> tuple[tuple, dict]:
    """The `lazyadam_hparams` fields passed to the kernel (baked fields set to NaN: they must be
    ignored) and the hyperparameters the reference uses."""
    hyper = {**HYPER, **spec.statics}
    passed = HParams.at_step(t, **hyper)
    return tuple(float("nan") if name in spec.statics else getattr(passed, name)
                 for name in ADAM.fields), hyper


def run_steps(kernel: Shipped, spec: Spec, seed: int = 3):
    """Three steps of the kernel and of the reference, from the same random start."""
    rng = np.random.default_rng(seed)
    shape = (11, 2, 3) if spec.sparse else (2, 2500)  # dense: two 4096-element chunks
    var0 = rng.standard_normal(shape).astype(product.dtype(spec, "var"))
    zeros = np.zeros(shape, product.dtype(spec, "m"))
    state = [var0.copy(), zeros.copy(), zeros.copy(), zeros.copy() if spec.amsgrad else None]
    ref = [var0.astype(np.float64), np.zeros(shape), np.zeros(shape),
           np.zeros(shape) if spec.amsgrad else None]
    for t, rows in enumerate([[5, 1, 5, 0, 9, 1, 5], [3, 3, 3], [2, 10]], start=1):
        if spec.sparse:
            indices = np.array(rows, spec.index_dtype)
            values = rng.standard_normal((len(rows),) + shape[1:]).astype(product.dtype(spec, "grad"))
            grad = (indices, values)
        else:
            indices, values = None, rng.standard_normal(shape).astype(product.dtype(spec, "grad"))
            grad = values
        hp, hyper = kernel_hparams(spec, t)
        assert kernel(*state, grad, hp) == OK
        ref = list(lazyadam_step(*ref[:3], values, indices=indices, vmax=ref[3],
                                 beta1_power=hyper["beta1"] ** t, beta2_power=hyper["beta2"] ** t,
                                 **hyper, **product.reference_flags(spec, step=t)))
    return state, ref, var0


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.symbol())
def test_shipped_source_matches_reference_with_and_without_openmp(libraries, spec):
    results = {}
    for mode, library in libraries.items():
        got, ref, var0 = run_steps(Shipped(spec, library), spec)
        for name, actual, expected in zip(("var", "m", "v", "vmax"), got, ref):
            if expected is not None:
                assert_close(actual, expected, spec.storage(name), f"{mode} {name}")
        if spec.sparse:  # rows never named keep their values, bit for bit
            untouched = [r for r in range(var0.shape[0]) if r not in (0, 1, 2, 3, 5, 9, 10)]
            np.testing.assert_array_equal(got[0][untouched], var0[untouched])
        results[mode] = got
    if len(results) == 2:  # OpenMP changes nothing: the same bits
        for a, b in zip(*results.values()):
            if a is not None:
                np.testing.assert_array_equal(a, b)


def test_duplicate_row_is_decayed_per_occurrence_and_loss_scaled(libraries):
    """docs/semantics.md: `values[i]/loss_scale + wd*w[indices[i]]` per occurrence, then summed."""
    spec = SPECS[1]  # nesterov, l2, float64, int32 indices
    kernel = Shipped(spec, libraries["serial"])
    var = np.array([[2.0], [3.0]])
    m, v = np.zeros_like(var), np.zeros_like(var)
    hp = HParams.at_step(1, lr=0.1, weight_decay=0.5, loss_scale=4.0).as_tuple()
    assert kernel(var, m, v, None, (np.array([1, 1], np.int32), np.array([[4.0], [8.0]])), hp) == OK
    g = (4.0 / 4.0 + 0.5 * 3.0) + (8.0 / 4.0 + 0.5 * 3.0)  # decayed twice
    assert m[1, 0] == pytest.approx(0.1 * g, rel=1e-15)
    assert v[1, 0] == pytest.approx(0.001 * g * g, rel=1e-15)
    assert var[0, 0] == 2.0 and m[0, 0] == 0.0


CPP_MAIN = r"""
#include "lazyadam_sparse_f32_i64.h"
#include "lazyadam_dense_f64.h"
#include "lazyadam_sparse_f32_i64.h"  /* twice: the include guard holds */
#include <cstdio>

int main() {
    /* The known values of docs/semantics.md: beta powers 0.9 and 0.999 passed in; seed 0, step 1. */
    const lazyadam_hparams hp = {0.001, 0.9, 0.999, 1e-8, 0.0, 1.0, 0.9, 0.999, 0, 1};
    float var[2] = {1, 1}, m[2] = {1, 1}, v[2] = {1, 1}, values[2] = {0.1f, 0.1f};
    const int64_t rows[1] = {0};
    double dvar[2] = {1, 1}, dm[2] = {1, 1}, dv[2] = {1, 1}, grad[2] = {1, 1};
    const int a = lazyadam_sparse_f32_i64(var, m, v, 1, 2, rows, values, 1, &hp);
    const int b = lazyadam_dense_f64(dvar, dm, dv, grad, 2, &hp);
    std::printf("%d %d %.7f %.7f\n", a, b, var[0], dvar[0]);
    return a == LAZYADAM_OK && b == LAZYADAM_OK ? 0 : 1;
}
"""


def test_cpp_program_includes_two_headers_and_links(tmp_path):
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler (c++, g++ or clang++) on PATH")
    sources = [write_sources(spec, "c", tmp_path)[0]
               for spec in (Spec(), Spec(sparse=False, dtype="float64"))]
    objects = []
    for source in sources:
        objects.append(source.with_suffix(".o"))
        subprocess.run([*cc(), *STRICT, "-O2", "-c", str(source), "-o", str(objects[-1])],
                       check=True)
    (tmp_path / "main.cpp").write_text(CPP_MAIN)
    # A C translation unit including both headers, too.
    (tmp_path / "both.c").write_text(CPP_MAIN.split("#include <cstdio>")[0])
    subprocess.run([*cc(), *STRICT, "-fsyntax-only", str(tmp_path / "both.c")], check=True)
    build = subprocess.run([cxx, "-std=c++11", "-Wall", "-Wextra", "-Werror", "-pedantic",
                            str(tmp_path / "main.cpp"), *map(str, objects), "-o",
                            str(tmp_path / "main"), "-lm"], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    out = subprocess.run([str(tmp_path / "main")], capture_output=True, text=True, check=True)
    a, b, sparse_var, dense_var = out.stdout.split()
    assert (a, b) == ("0", "0")
    assert float(sparse_var) == pytest.approx(0.9997121, rel=1e-7)
    assert float(dense_var) == pytest.approx(0.9996838, rel=1e-7)


def syntax_check(folder: Path, source, openmp: bool = True) -> subprocess.CompletedProcess:
    """Writes a rendered kernel into `folder` and compiles it under STRICT, without linking."""
    (folder / source.filename).write_text(source.text)
    (folder / f"{source.symbol}.h").write_text(source.header)
    return subprocess.run([*cc(), *STRICT, *(["-fopenmp"] if openmp else []), "-fsyntax-only",
                           str(folder / source.filename)], capture_output=True, text=True)


@pytest.mark.parametrize("spec, name", [
    (Spec(use_locking=True), "lock"), (Spec(), "prefetch_row"), (Spec(), "SUM_CHUNK"),
    (Spec(), "sort_by_row"), (Spec(), "occurrence"),
    (Spec(sparse=False), "lazyadam_hparams"), (Spec(sparse=False), "LAZYADAM_OK"),
    (Spec(), "malloc"), (Spec(sparse=False), "sqrt"), (Spec(sparse=False), "sqrtf"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_a_refused_name_is_one_that_would_not_compile(tmp_path, spec, name):
    """What `generate` refuses (tests/test_codegen.py) is what the compiler would have refused."""
    own = generate(spec)
    library = any(name in taken for taken in LIBRARY.values())
    assert library or re.search(rf"\b{re.escape(name)}\b", own.text + own.header), (
        f"the C templates no longer use {name!r}: take it out of this list")
    with pytest.raises(ValueError, match=f"symbol '{name}'"):
        generate(spec, symbol=name)
    proc = syntax_check(tmp_path, renderer("c")(optimize(spec), name))
    assert proc.returncode != 0, f"{name!r} compiles; it need not be refused"


@pytest.mark.parametrize("name", ["sparse_step", "lazyadam", "Adam2", "cuda_step", "LOCK",
                                  "LAZYADAM_HPARAMS", "lazyadam_sparse_f32_i64_grad"])
def test_names_that_are_free_are_taken_and_compile(tmp_path, name):
    for spec in (Spec(use_locking=True, amsgrad=True, decay="l2"), Spec(sparse=False)):
        source = generate(spec, symbol=name)
        assert source.symbol == name
        proc = syntax_check(tmp_path, source)
        assert proc.returncode == 0, proc.stderr


def test_static_values_at_the_limits_of_float32_compile(tmp_path):
    """The largest and smallest float32 values print as literals a C compiler reads back."""
    for spec in (Spec(sparse=False, decay="l2", static={"loss_scale": 3.4028235e38, "eps": 1e-45,
                                                         "weight_decay": 1e-45, "beta1": 1e-45}),
                 Spec(decay="l2", static={"weight_decay": 3.4028235e38, "beta2": 1e-45})):
        source = generate(spec.validate())
        assert not re.search(r"\binff?\b|\bnan\b", source.text)
        proc = syntax_check(tmp_path, source)
        assert proc.returncode == 0, proc.stderr


def syntax_check_units(compiler: list[str], sources: list, folder: Path, pulse) -> Path:
    """Writes the sources and checks them in two compiler calls, one per core; returns a marker."""
    pulse(f"checking {len(sources)} C variants under strict warnings ({compiler[0]} -fsyntax-only)")
    for source in sources:
        (folder / source.filename).write_text(source.text)
        (folder / f"{source.symbol}.h").write_text(source.header)
    files = sorted(str(folder / source.filename) for source in sources)
    calls = [[*compiler, *STRICT, "-fsyntax-only", *files[half::2]] for half in (0, 1)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        for proc in pool.map(lambda cmd: subprocess.run(cmd, capture_output=True, text=True),
                             calls):
            assert proc.returncode == 0, proc.stderr[-3000:]
    done = folder / "strict.ok"
    done.write_text(f"{len(files)} sources passed: {' '.join([*compiler, *STRICT, '-fsyntax-only'])}\n")
    return done


@pytest.mark.slow
def test_every_c_variant_compiles_cleanly(pulse):
    """The variants of tests/product.py (the flag product, and a half-precision sample) under strict
    warnings, syntax and warnings only, in two compiler calls (one per core). Serial: OpenMP adds
    nothing that differs between variants (the pragmas are the same), and the representative specs
    above are built both ways. A pass is remembered in the kernel cache, keyed by the sources, the
    flags and the compiler's version, so a rerun of the same sources checks nothing again."""
    compiler = cc()
    sources = [generate(spec) for spec in product.ALL]
    assert len({source.filename for source in sources}) == len(product.ALL)
    key = cache.make_key({"target": "c-strict-check", "flags": STRICT, "compiler": compiler,
                          "version": subprocess.run([*compiler, "--version"], capture_output=True,
                                                    text=True).stdout,
                          "sources": [s.text + s.header for s in sources]})
    assert cache.fetch(key, "strict.ok",
                       lambda folder: syntax_check_units(compiler, sources, folder, pulse))


def test_ship_c_example_checks_its_numbers(tmp_path):
    """examples/ship_c: `make check` generates with the CLI, builds without Python and runs."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    lazyadam_cli = Path(sys.executable).with_name("lazyadam")
    if not lazyadam_cli.exists():
        pytest.skip(f"the lazyadam console script is not installed beside {sys.executable}")
    example = tmp_path / "ship_c"
    shutil.copytree(Path(__file__).parents[1] / "examples" / "ship_c", example,
                    ignore=shutil.ignore_patterns("gen", "step_omp", "step_serial", "build"))
    serial_only = [] if "openmp" in openmp_modes() else ["OPENMP_FLAGS="]
    proc = subprocess.run([make, "-C", str(example), f"LAZYADAM={lazyadam_cli}", f"CC={cc()[0]}",
                           *serial_only, "check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("all checks passed") == 2


UBSAN_MAIN = r"""
#include <stdint.h>
#include <stdio.h>
#include "SYMBOL.h"

int main(void)
{
    /* Sizes whose scratch does not fit 64 bits: each must saturate to SIZE_MAX. */
    const int64_t sizes[][3] = {{300, (int64_t)1 << 62, (int64_t)1 << 40},
                                {1, INT64_MAX, INT64_MAX}, {INT64_MAX, INT64_MAX, 1},
                                {1, (int64_t)1 << 61, 1}};
    int bad = 0;
    for (int k = 0; k < 4; k++)
        bad += SYMBOL_workspace_size(sizes[k][0], sizes[k][1], sizes[k][2]) != SIZE_MAX;
    printf("%d\n", bad);
    return bad;
}
"""


@pytest.mark.parametrize("spec", [SPECS[0], SPECS[2], SPECS[9]], ids=["split", "locking", "half"])
def test_workspace_size_saturates_without_undefined_behaviour(tmp_path, spec):
    """Built with UBSan (any undefined behaviour aborts): impossible sizes give SIZE_MAX, where the
    partial sums' and accumulators' sizes overflowed int64 (1.7e13 came back)."""
    source = write_sources(spec, "c", tmp_path)[0]
    symbol = source.stem
    main = tmp_path / "main.c"
    main.write_text(UBSAN_MAIN.replace("SYMBOL", symbol))
    out = tmp_path / "ubsan"
    build = subprocess.run([*cc(), "-std=c99", "-fsanitize=undefined", "-fno-sanitize-recover=all",
                            str(main), str(source), "-o", str(out), "-lm"],
                           capture_output=True, text=True)
    if build.returncode != 0 and "sanitize" in build.stderr + build.stdout:
        pytest.skip(f"this compiler cannot build with -fsanitize=undefined: {build.stderr[-300:]}")
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(out)], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "0", run.stdout + run.stderr
