"""The family's rules shipped as C sources: `lazyadam generate --rule NAME` into a folder, built by
the system compiler without lazyadam, as tests/test_shipped_c.py and examples/ship_c do for Adam.

For each of SGD, Adagrad, rowwise Adagrad, partial-rowwise Adam and Lion, a sparse and a dense
kernel and a sparse half-precision one are written by the real CLI (the file names must be the
symbols of the specs the flags describe), compiled into one shared library under
tests/test_shipped_c.py's strict warnings, with OpenMP (every step on every thread:
`LAZYADAM_PARALLEL_MIN=0`) and without, and called through cffi from declarations read out of the
written headers alone (run through the compiler's preprocessor). Two steps, the first with
duplicate indices, go through each kernel and tests/reference_family.py; a bad index must return
the header's `LAZYADAM_EINDEX` (-3, as the folder's README documents it) having written nothing.
"""

from __future__ import annotations

import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cffi
import numpy as np
import pytest
from click.testing import CliRunner

import product
from lazyadam.cli import main
from lazyadam.targets import c, cache
from test_kernel_reference import assert_matches, rounds
from test_shipped_c import EINDEX, OK, STRICT, cc, openmp_modes

#: One worker builds the libraries (the module's fixture) and runs every test on them.
pytestmark = pytest.mark.xdist_group("shipped_family")
SEED = 20261124
#: Step 1 names rows 5 and 1 three and two times; step 2 row 3 twice; rows 2, 4, 6, 7, 8 never.
STEPS = [[5, 1, 5, 0, 9, 1, 5], [3, 10, 3, 1]]
UNTOUCHED = [2, 4, 6, 7, 8]
SPARSE_SHAPE, DENSE_SHAPE = (11, 4, 6), (3, 37)
#: The C type of each storage dtype, as the headers spell it.
C_TYPES = {"float32": "float", "float64": "double", "bfloat16": "lazyadam_bfloat16",
           "float16": "lazyadam_float16"}


@dataclass(frozen=True)
class Case:
    """One kernel: the rule, its layout and storage (the generic CLI flags), its options (each an
    `--option NAME=VALUE`) and the hyperparameters it bakes in (each a `--static NAME=VALUE`,
    at the value of `product.FAMILY_HYPER`, which the reference uses)."""

    rule: str
    layout: dict
    options: dict = field(default_factory=dict)
    static: dict = field(default_factory=dict)

    @property
    def spec(self):
        return product.RULES[self.rule].spec(**self.layout, **self.options,
                                             static=self.static).validate()

    def args(self) -> list[str]:
        args = ["--rule", self.rule]
        for name, value in self.layout.items():
            if name == "sparse":
                args.append("--sparse" if value else "--dense")
            elif name == "use_locking":
                args.append("--locking" if value else "--no-locking")
            else:
                args += [f"--{name.replace('_', '-')}", value]
        for name, value in self.options.items():
            args += ["--option", f"{name}={str(value).lower()}"]
        for name, value in self.static.items():
            args += ["--static", f"{name}={value!r}"]
        return args


HALF = dict(sparse=True, dtype="bfloat16", state_dtype="float32")
#: Per rule a sparse and a dense kernel, in float32 and float64, with most options on, and a
#: sparse 16-bit one; both index dtypes, both roundings, locking, baked hyperparameters.
CASES = [
    Case("sgd", dict(sparse=True, index_dtype="int32"),
         dict(momentum=True, nesterov=True, decay="l2")),
    Case("sgd", dict(sparse=False, dtype="float64"),
         dict(momentum=True, dampening=True, maximize=True), {"mu": 0.9}),
    Case("sgd", HALF, dict(momentum=True)),
    Case("adagrad", dict(sparse=True), dict(decay="l2", maximize=True), {"eps": 1e-3}),
    Case("adagrad", dict(sparse=False, dtype="float64"), dict(decay="l2")),
    Case("adagrad", {**HALF, "rounding": "stochastic"}, dict(decay="l2")),
    Case("rowwise_adagrad", dict(sparse=True, use_locking=True), dict(decay="decoupled")),
    Case("rowwise_adagrad", dict(sparse=False), dict(decay="l2", maximize=True)),
    Case("rowwise_adagrad", dict(sparse=True, dtype="float16", grad_dtype="float32",
                                 index_dtype="int32"), dict(decay="l2")),
    Case("partial_rowwise_adam", dict(sparse=True),
         dict(nesterov=True, amsgrad=True, decay="l2", eps_mode="mindspore")),
    Case("partial_rowwise_adam", dict(sparse=False, dtype="float64"), dict(decay="decoupled"),
         {"beta1": 0.9, "loss_scale": 4.0}),
    Case("partial_rowwise_adam", HALF, dict(amsgrad=True, maximize=True)),
    Case("lion", dict(sparse=True, use_locking=True), dict(decay="decoupled", maximize=True)),
    Case("lion", dict(sparse=False), static={"beta2": 0.99}),
    Case("lion", HALF, dict(decay="decoupled")),
]


def case_id(case: Case) -> str:
    return case.spec.symbol()


@dataclass(frozen=True)
class Shipped:
    """The folder the CLI wrote and the shared library built from it, by OpenMP mode."""

    folder: Path
    libraries: dict


def build(folder: Path, mode: str) -> Path:
    """The folder's sources in one shared library, in one compiler call under strict warnings;
    kept in the kernel cache, keyed by the files written, the compiler and the mode (as
    tests/test_shipped_c.py keeps its libraries)."""
    flags = ["-fopenmp", "-DLAZYADAM_PARALLEL_MIN=0"] if mode == "openmp" else []
    sources = sorted(folder.glob("*.c"))
    written = {path.name: path.read_text() for path in sorted(folder.iterdir()) if path.is_file()}
    name = f"kernels_{mode}.so"

    def compile_into(entry: Path) -> Path:
        cmd = [*cc(), *STRICT, "-O2", "-fPIC", "-shared", *flags, *map(str, sources),
               "-o", str(entry / name), "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return entry / name
    key = cache.make_key({"test": "shipped-family", "mode": mode, "flags": [*STRICT, *flags],
                          "files": written, **c.identity()})
    return cache.fetch(key, name, compile_into)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> Shipped:
    """Every case written into one folder by `lazyadam generate`, built with and without OpenMP."""
    cc()  # a skip that says why, without a C compiler
    folder = tmp_path_factory.mktemp("shipped_family")
    runner = CliRunner()
    for case in CASES:
        result = runner.invoke(main, ["generate", *case.args(), "--out", str(folder)])
        assert result.exit_code == 0, result.output
        symbol = case.spec.symbol()
        assert result.output.split() == [str(folder / f"{symbol}.{ext}")
                                         for ext in ("c", "h")] + [str(folder / "README.md")]
    with ThreadPoolExecutor(max_workers=2) as pool:
        modes = openmp_modes()
        return Shipped(folder, dict(zip(modes, pool.map(lambda m: build(folder, m), modes))))


class Kernel:
    """A kernel called through cffi as the written header declares it: its parameters by name."""

    def __init__(self, folder: Path, symbol: str, library: Path):
        stubs = folder / "stubs"  # empty <stddef.h> and <stdint.h>: cffi knows their types
        stubs.mkdir(exist_ok=True)
        for name in ("stddef.h", "stdint.h"):
            (stubs / name).write_text("")
        header = subprocess.run([*cc(), "-E", "-P", "-nostdinc", "-I", str(stubs),
                                 str(folder / f"{symbol}.h")], capture_output=True, text=True,
                                check=True).stdout
        self.ffi = cffi.FFI()
        self.ffi.cdef(header)
        # RTLD_NODELETE: unloading an OpenMP library under libgomp's idle threads crashes at exit.
        self.lib = self.ffi.dlopen(str(library), self.ffi.RTLD_NOW | self.ffi.RTLD_NODELETE)
        self.fn = getattr(self.lib, symbol)
        params = re.search(rf"\bint {symbol}\(([^)]*)\);", header).group(1).split(",")
        self.params = [re.findall(r"\w+", p)[-1] for p in params]
        #: Each parameter's type as the header spells it (cffi resolves the 16-bit typedefs).
        self.declared = {name: " ".join(p.strip()[:-len(name)].split())
                         for name, p in zip(self.params, params)}
        self.types = dict(zip(self.params, self.ffi.typeof(self.fn).args))
        self.hparams = [name for name, _ in self.types["hp"].item.fields]

    def arrays(self) -> list[str]:
        """The arrays the step writes: var and the state, in the header's order."""
        return [name for name in self.params if name not in ("hp", "indices", "values", "grad")
                and self.types[name].kind == "pointer"]

    def __call__(self, arrays: dict, grad, hp: dict) -> int:
        var = arrays["var"]
        args = {**arrays, "rows": var.shape[0], "row_size": var[0].size, "n": var.size,
                "hp": self.ffi.new(self.types["hp"], hp)}
        if isinstance(grad, tuple):
            args["indices"], args["values"] = grad
            args["nnz"] = len(grad[0])
        else:
            args["grad"] = grad
        return self.fn(*(self.ffi.cast(self.types[name], args[name].ctypes.data)
                         if isinstance(args[name], np.ndarray) else args[name]
                         for name in self.params))


def hparams(case: Case, t: int, fields: list[str]) -> dict:
    """The struct of step t as a C caller fills it: `product.FAMILY_HYPER`'s values, a baked one
    NaN (the kernel must ignore it), Adagrad's `t` and partial-rowwise Adam's beta powers."""
    hyper = product.FAMILY_HYPER[case.rule]
    derived = {"seed": SEED, "step": t}
    if case.rule == "adagrad":
        derived["t"] = t
    if case.rule == "partial_rowwise_adam":
        derived |= {"beta1_power": hyper["beta1"] ** t, "beta2_power": hyper["beta2"] ** t}
    hp = {**hyper, **derived} | {name: float("nan") for name in case.static}
    assert sorted(hp) == sorted(fields), "the header's struct has other fields"
    return hp


def start(case: Case, kernel: Kernel, rng) -> dict:
    """var drawn at random and every state array at 0, in its storage dtype, shaped as the rule
    declares it (per element or per row)."""
    spec = case.spec
    shape = SPARSE_SHAPE if spec.sparse else DENSE_SHAPE
    per = {s.name: s.per for s in spec.RULE.state}
    arrays = {"var": rng.standard_normal(shape).astype(product.dtype(spec, "var"))}
    for name in kernel.arrays()[1:]:
        arrays[name] = np.zeros(shape if per[name] == "element" else shape[0],
                                product.dtype(spec, name))
    for name, array in arrays.items():  # the header passes each as its storage's C type
        assert kernel.declared[name] == f"{C_TYPES[spec.storage(name)]} *", name
    return arrays


def gradient(spec, rng, t: int, shape: tuple):
    dtype = product.dtype(spec, "grad")
    if not spec.sparse:
        return rng.standard_normal(shape).astype(dtype)
    rows = STEPS[t - 1]
    return (np.array(rows, spec.index_dtype),
            rng.standard_normal((len(rows),) + shape[1:]).astype(dtype))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_generated_kernel_matches_the_reference_with_and_without_openmp(shipped, case):
    """Two steps through the shipped kernel and through tests/reference_family.py, from the same
    start; a 16-bit kernel is compared after each step and the reference goes on from what it
    stored (the family's reference does not round). Rows never named keep their bits and zero
    state; OpenMP changes no bit."""
    spec = case.spec
    results = {}
    for mode, library in shipped.libraries.items():
        kernel = Kernel(shipped.folder, spec.symbol(), library)
        rng = np.random.default_rng(SEED)
        arrays = start(case, kernel, rng)
        var0 = arrays["var"].copy()
        ref = {name: array.astype(np.float64) for name, array in arrays.items()}
        for t in (1, 2):
            grad = gradient(spec, rng, t, var0.shape)
            assert kernel(arrays, grad, hparams(case, t, kernel.hparams)) == OK
            indices, values = grad if spec.sparse else (None, grad)
            ref = product.family_step(spec, ref, values.astype(np.float64), indices, t)
            if not rounds(spec) or t == 2:
                assert_matches(spec, arrays, ref, f"{mode}, step {t}: ")
                ref.update((name, a.astype(np.float64)) for name, a in arrays.items())
        if spec.sparse:
            np.testing.assert_array_equal(arrays["var"][UNTOUCHED], var0[UNTOUCHED])
            for name in kernel.arrays()[1:]:
                assert not arrays[name][UNTOUCHED].astype(np.float64).any(), name
        results[mode] = arrays
    if len(results) == 2:
        for name, array in results["openmp"].items():
            np.testing.assert_array_equal(array, results["serial"][name], err_msg=name)


@pytest.mark.parametrize("bad", [11, -1], ids=["rows", "negative"])
@pytest.mark.parametrize("case", [case for case in CASES if case.layout["sparse"]], ids=case_id)
def test_a_bad_index_returns_eindex_and_writes_nothing(shipped, case, bad):
    """The index outside [0, rows) comes last, after duplicates: the kernel must refuse the step
    before it writes a row, with the header's LAZYADAM_EINDEX, which is the README's -3."""
    readme = " ".join((shipped.folder / "README.md").read_text().split())
    assert "`LAZYADAM_EINDEX` (an index outside `[0, rows)`)" in readme
    spec = case.spec
    for mode, library in shipped.libraries.items():
        kernel = Kernel(shipped.folder, spec.symbol(), library)
        assert kernel.lib.LAZYADAM_EINDEX == EINDEX == -3
        rng = np.random.default_rng(SEED)
        arrays = start(case, kernel, rng)
        for name in kernel.arrays()[1:]:  # state that a write would change
            arrays[name][...] = rng.uniform(0.5, 1.0, arrays[name].shape)
        before = {name: array.copy() for name, array in arrays.items()}
        indices, values = gradient(spec, rng, 1, SPARSE_SHAPE)
        grad = (np.append(indices, bad).astype(spec.index_dtype),
                np.concatenate([values, values[:1]]))
        assert kernel(arrays, grad, hparams(case, 1, kernel.hparams)) == EINDEX, mode
        for name, array in arrays.items():
            np.testing.assert_array_equal(array, before[name], err_msg=f"{mode} {name}")
