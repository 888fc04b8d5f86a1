"""The compiler's stages: spec values, each pass, printers and rendered source."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest

from lazyadam import Spec, SpecError, generate, stages
from lazyadam.codegen import ir, names, pipeline
from lazyadam.codegen.passes import drop_dead_terms, fold_constants, hoist_invariants
from lazyadam.codegen.printer import CPrinter
from lazyadam.rules.adam import ADAM


# --- spec ---------------------------------------------------------------------------------------
def test_spec_is_a_hashable_value_with_a_stable_key():
    a = Spec(sparse=True, static={"eps": 1e-6, "beta1": 0.8})
    b = Spec(sparse=True, static=(("beta1", 0.8), ("eps", 1e-6)))
    assert a == b and hash(a) == hash(b) and a.key() == b.key()
    assert a.key() != Spec(sparse=True).key()
    assert Spec.from_json(a.to_json()) == a
    assert re.fullmatch(r"[0-9a-f]{64}", a.key())


def test_symbols_are_readable_and_distinct():
    assert Spec(sparse=True, nesterov=True).symbol() == "lazyadam_sparse_nesterov_f32_i64"
    assert Spec(sparse=False, dtype="float64", decay="decoupled").symbol() == \
        "lazyadam_dense_adamw_f64"
    assert Spec(static={"beta1": 0.9}).symbol() != Spec(static={"beta1": 0.8}).symbol()


def test_half_precision_specs_name_what_they_store():
    assert Spec(dtype="bfloat16").symbol() == "lazyadam_sparse_bf16_i64"
    assert Spec(sparse=False, dtype="float16", state_dtype="bfloat16", grad_dtype="float32",
                rounding="stochastic").symbol() == "lazyadam_dense_f16_mbf16_gf32_sr"
    # A default spelled out is the same spec, key and kernel.
    spelled = Spec(dtype="bfloat16", state_dtype="float32", grad_dtype="bfloat16")
    assert spelled == Spec(dtype="bfloat16") and spelled.key() == Spec(dtype="bfloat16").key()
    assert Spec(dtype="float32", grad_dtype="float32") == Spec()
    assert [Spec(dtype="float16", state_dtype="bfloat16").storage(a)
            for a in ("var", "m", "v", "vmax", "grad")] == ["float16"] + ["bfloat16"] * 3 + ["float16"]
    assert Spec(dtype="bfloat16").compute_dtype == "float32"
    assert Spec.from_json(Spec(dtype="float16", rounding="stochastic").to_json()) == \
        Spec(dtype="float16", rounding="stochastic")


@pytest.mark.parametrize("kwargs, match", [
    (dict(dtype="float8"), "dtype must be one of float32, float64, bfloat16, float16; got 'float8'"),
    (dict(dtype="float32", state_dtype="bfloat16"),
     "state_dtype='bfloat16' needs a bfloat16 or float16 parameter; float32 parameters keep"),
    (dict(dtype="bfloat16", state_dtype="float16"), "state_dtype must be one of float32, bfloat16"),
    (dict(dtype="float64", grad_dtype="float32"), "grad_dtype='float32' needs a bfloat16 or float16"),
    (dict(dtype="float16", grad_dtype="bfloat16"), "grad_dtype must be one of float32, float16; "
                                                    "got 'bfloat16'"),
    (dict(rounding="stochastic"), "rounding='stochastic' needs a bfloat16 or float16 parameter"),
    (dict(dtype="bfloat16", rounding="down"), "rounding must be one of nearest, stochastic"),
    (dict(index_dtype="uint8"), "index_dtype must be one of"),
    (dict(decay="l1"), "decay must be one of none, l2, decoupled"),
    (dict(eps_mode="keras"), "eps_mode must be one of"),
    (dict(nesterov=1), "nesterov must be a bool"),
    (dict(static={"lr": 0.1}), "'lr' cannot be static"),
    (dict(static={"beta1": 1.0}), r"static beta1 must lie in \(0, 1\)"),
    (dict(static={"eps": 0.0}), "static eps must be > 0"),
    (dict(static={"loss_scale": float("nan")}), "static loss_scale must be a finite number"),
    (dict(static={"weight_decay": 0.1}), "a static weight_decay needs decay='l2' or 'decoupled'"),
    (dict(decay="l2", static={"weight_decay": 0.0}), "use decay='none'"),
    (dict(decay="l2", static={"weight_decay": -1.0}), "static weight_decay must be >= 0"),
    (dict(static={"loss_scale": 10 ** 400}), "static loss_scale must be a finite number"),
    # A baked value whose literal in the kernel's dtype would be inf, or 0 where 0 is illegal.
    (dict(static={"loss_scale": 1e50}), r"static loss_scale = 1e\+50 overflows float32"),
    (dict(decay="l2", static={"weight_decay": 3.5e38}),
     r"static weight_decay = 3.5e\+38 overflows"),
    (dict(static={"eps": 1e-50}), "static eps = 1e-50 underflows to 0 in float32"),
    (dict(static={"beta1": 1e-46}), "static beta1 = 1e-46 underflows to 0 in float32"),
    (dict(static={"loss_scale": 5e-324}, dtype="float32"), "underflows to 0 in float32"),
    (dict(static={"loss_scale": 1e50}, dtype="bfloat16"),  # literals of its float32 arithmetic
     r"static loss_scale = 1e\+50 overflows float32"),
])
def test_illegal_specs_say_what_to_change(kwargs, match):
    with pytest.raises(SpecError, match=match):
        Spec(**kwargs).validate()


def test_static_values_at_the_limits_of_the_dtype_are_kept():
    """The largest and the smallest float32 are legal static values; float64 takes far more."""
    Spec(static={"loss_scale": 3.4028235e38, "eps": 1e-45}).validate()
    Spec(dtype="float64", static={"loss_scale": 1e300, "eps": 5e-324}).validate()


# --- passes -------------------------------------------------------------------------------------
def nodes(kernel: ir.Kernel, stmts="all"):
    chosen = {"grad": kernel.grad, "update": kernel.update, "all": kernel.grad + kernel.update}
    return [n for s in chosen[stmts] for n in ir.walk(s.expr)]


def test_lowering_keeps_every_option_behind_a_switch():
    kernel = pipeline.lower(Spec())
    flags = {n.flag for n in nodes(kernel) if isinstance(n, ir.Switch)}
    gates = {s.when for s in kernel.grad + kernel.update if s.when}
    assert flags | gates == {"amsgrad", "nesterov", "eps_mode=pytorch", "maximize", "decay=l2",
                             "decay=decoupled"}


def test_fold_constants_bakes_statics_and_folds_arithmetic():
    kernel = fold_constants(pipeline.lower(Spec(static={"beta1": 0.9, "loss_scale": 1.0})))
    params = {n.name for n in nodes(kernel) if isinstance(n, ir.Param)}
    assert "beta1" not in params and "loss_scale" not in params and "beta2" in params
    # 1 - beta1 is now a constant computed in double, and g / 1 is gone.
    assert ir.Const(1.0 - 0.9) in nodes(kernel)
    assert kernel.grad[0] == ir.Assign("g", ir.Elem("grad"))


def test_fold_constants_keeps_ieee_non_identities():
    x = ir.Elem("var")
    spec = Spec()
    kernel = ir.Kernel(spec, ADAM, grad=(ir.Assign("g", ir.Binary("*", x, ir.Const(0.0))),),
                       update=())
    assert fold_constants(kernel).grad == kernel.grad  # x*0 is NaN for infinite x: kept


def test_drop_dead_terms_resolves_switches_by_the_spec():
    plain = drop_dead_terms(pipeline.lower(Spec()))
    assert not any(isinstance(n, ir.Switch) for n in nodes(plain))
    assert [s.target for s in plain.grad] == ["g"]
    assert [s.target for s in plain.update] == ["m", "v", "var"]
    full = drop_dead_terms(pipeline.lower(Spec(amsgrad=True, maximize=True, decay="decoupled")))
    assert [s.target for s in full.grad] == ["g", "g"]
    assert [s.target for s in full.update] == ["m", "v", "vmax", "var", "var"]


def test_hoist_invariants_leaves_only_elements_and_literals_in_the_loop():
    kernel = hoist_invariants(drop_dead_terms(pipeline.lower(Spec(nesterov=True, decay="decoupled"))))
    assert not any(isinstance(n, ir.Param) for n in nodes(kernel))
    names = [s.name for s in kernel.scalars]
    assert len(names) == len(set(names))
    assert {"lr_t", "one_minus_beta1", "one_minus_beta2", "decay_factor", "eps"} <= set(names)
    # one_minus_beta1 is used twice with nesterov but computed once
    assert sum(1 for s in kernel.scalars if s.expr == ir.Binary("-", ir.Const(1.0),
                                                                 ir.Param("beta1"))) == 1


def test_conversions_are_in_the_ir_and_the_rule_is_not_repeated():
    """Loads widen and stores round; the update statements are those of a float32 kernel."""
    half = hoist_invariants(drop_dead_terms(pipeline.lower(Spec(dtype="float16", state_dtype="bfloat16",
                                                          rounding="stochastic", amsgrad=True))))
    plain = hoist_invariants(drop_dead_terms(pipeline.lower(Spec(amsgrad=True))))
    assert half.grad == plain.grad and half.update == plain.update
    assert half.load("var").expr == ir.Load("var", "float16")
    assert half.load("grad").expr == ir.Load("grad", "float16")
    rounded = {s.target: s.expr for s in half.stores}
    assert set(rounded) == {"var", "m", "v", "vmax"}
    # var and m share the 32 bits of stream 0, v and vmax those of stream 1
    assert rounded["m"] == ir.Round(ir.Elem("m"), "bfloat16",
                                    ir.Bits(ir.Scalar("rounding_key0"), ir.Elem("position"), 1))
    assert rounded["v"] == ir.Round(ir.Elem("v"), "bfloat16",
                                    ir.Bits(ir.Scalar("rounding_key1"), ir.Elem("position"), 0))
    keys = {s.name: s.expr for s in half.scalars if isinstance(s.expr, ir.StepKey)}
    assert keys == {"rounding_key0": ir.StepKey(0), "rounding_key1": ir.StepKey(1)}
    assert not plain.converts and all(isinstance(s.expr, ir.Elem) for s in plain.stores)
    nearest = pipeline.lower(Spec(dtype="bfloat16"))
    assert {s.target: s.expr for s in nearest.stores}["var"] == ir.Round(ir.Elem("var"), "bfloat16")
    assert {s.target: s.expr for s in nearest.stores}["m"] == ir.Elem("m")  # float32 state


def test_half_precision_says_it_computes_in_float32():
    spec = Spec(sparse=False, dtype="bfloat16", rounding="stochastic")
    out = stages(spec)
    assert "arithmetic in float32, stochastic rounding" in out["lower"]
    assert "var = var[position] as bfloat16" in out["hoist_invariants"]
    assert "var = round_stochastic_bfloat16(var, bits(rounding_key0, position))" in \
        out["hoist_invariants"]
    assert "rounding_key0 = key(seed, step, 0)" in out["hoist_invariants"]
    header = " ".join(out["header"].split())
    assert "storage: var bfloat16, m, v float32, gradient bfloat16. Every step computes in float32" \
        in header
    assert "lazyadam_bfloat16 *var, float *m, float *v, const lazyadam_bfloat16 *grad" in header
    assert "typedef uint16_t lazyadam_bfloat16;" in out["header"]
    text = out["source"]
    assert "const uint64_t rounding_key0 = lazyadam_step_key(hp->seed, hp->step, 0u);" in text
    assert "float var_i = lazyadam_bf16_to_f32(var[i]), m_i = m[i], v_i = v[i], g_i;" in text
    assert ("var[i] = lazyadam_f32_to_bf16_stochastic(var_i, lazyadam_random_bits(rounding_key0, "
            "i));") in text
    assert "sqrtf(v_i)" in text  # float32 arithmetic
    # float32 kernels neither convert nor say anything about it
    plain = stages(Spec(sparse=False))
    assert "lazyadam_bfloat16" not in plain["source"] and "storage:" not in plain["header"]


def test_every_stage_prints():
    out = stages(Spec(nesterov=True, static={"beta2": 0.99}))
    assert list(out) == ["spec", "lower", "fold_constants", "drop_dead_terms",
                         "hoist_invariants", "header", "source"]
    assert "[nesterov ?" in out["lower"] and "[nesterov ?" not in out["drop_dead_terms"]
    assert "one_minus_beta2 = 0.010000000000000009" in out["hoist_invariants"]


def test_dump_writes_every_stage(tmp_path, monkeypatch):
    monkeypatch.setenv("LAZYADAM_DUMP", str(tmp_path))
    source = generate(Spec(sparse=False))
    files = sorted(p.name for p in (tmp_path / f"{source.symbol}.c").iterdir())
    assert files[0] == "00-spec.txt" and files[-1] == "06-source.txt"
    assert (tmp_path / f"{source.symbol}.c" / "06-source.txt").read_text().strip() == \
        source.text.strip()


# --- printer ------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0.9, 0.999, 1e-8, 0.09999999999999998, 3.0, 1e20, 2.0 ** -130])
def test_float_literals_are_exact(value):
    text = CPrinter("float32").literal(value, scalar=False)
    assert text.endswith("f")
    assert np.float32(float(text[:-1])) == np.float32(value)
    assert float(CPrinter("float32").literal(value, scalar=True)) == value


def test_printer_respects_precedence_and_dtype():
    e = ir.Binary("-", ir.Elem("var"), ir.Binary("-", ir.Elem("m"), ir.Call("sqrt", (ir.Elem("v"),))))
    assert CPrinter("float32").expr(e) == "var_i - (m_i - sqrtf(v_i))"
    assert CPrinter("float64").expr(e) == "var_i - (m_i - sqrt(v_i))"
    quotient = ir.Binary("/", ir.Elem("m"), ir.Binary("*", ir.Elem("v"), ir.Const(2.0)))
    assert CPrinter("float64").expr(quotient) == "m_i / (v_i * 2.0)"


# --- rendered source ----------------------------------------------------------------------------
def test_dense_source_is_an_openmp_simd_loop_without_locks():
    text = generate(Spec(sparse=False)).text
    assert "#pragma omp parallel for" in text and "#pragma omp simd" in text
    assert "lock(" not in text and "vmax" not in text and "hp->" in text


def test_a_power_of_two_loss_scale_multiplies_by_its_inverse():
    text = generate(Spec(sparse=False)).text
    assert "if (exact_inverse(hp->loss_scale)) {" in text
    assert "g_i = grad_i * inverse_loss_scale;" in text and "g_i = grad_i / loss_scale;" in text
    static = generate(Spec(sparse=False, static={"loss_scale": 8.0})).text
    assert "exact_inverse" not in static and "g_i = grad_i / 8.0f;" in static
    assert "inverse_loss_scale" not in generate(Spec(sparse=True)).text


def test_locking_and_amsgrad_appear_only_when_asked():
    text = generate(Spec(sparse=True, use_locking=True, amsgrad=True)).text
    assert "lock(var_row);" in text and "unlock(var_row);" in text
    assert "vmax_row[j] = vmax_i;" in text


def test_static_hyperparameters_are_documented_in_the_header():
    source = generate(Spec(static={"beta1": 0.9}))
    assert "static beta1 = 0.9: baked into the code, hp->beta1 is ignored." in source.header
    assert not re.search(r"hp->beta1\b", source.text)


@pytest.mark.parametrize("symbol", ["x y", "2fast", "int", "__mine", "", "new", "main"])
def test_symbols_that_cannot_name_a_c_function_are_refused(symbol):
    with pytest.raises(ValueError, match=f"symbol '{symbol}'"):
        generate(Spec(), symbol=symbol)
    with pytest.raises(ValueError, match=f"symbol '{symbol}'"):
        stages(Spec(), symbol=symbol)


#: Names a kernel cannot take, with the spec and target whose files already hold them: the
#: templates' own identifiers (functions, types, enum constants, macros), and names of the headers
#: that generated files include.
CLASHES = [
    (Spec(use_locking=True), "c", "lock"),
    (Spec(use_locking=True), "c", "unlock"),
    (Spec(), "c", "prefetch_row"),
    (Spec(), "c", "sort_by_row"),
    (Spec(), "c", "occurrence"),
    (Spec(), "c", "SUM_CHUNK"),
    (Spec(), "c", "RADIX_BITS"),
    (Spec(sparse=False), "c", "CHUNK"),
    (Spec(sparse=False), "c", "lazyadam_hparams"),
    (Spec(sparse=False), "c", "LAZYADAM_OK"),
    (Spec(), "c", "malloc"),
    (Spec(sparse=False), "c", "sqrt"),
    (Spec(sparse=False), "c", "sqrtf"),
    (Spec(), "c", "omp_get_max_threads"),
    (Spec(), "cuda", "LAZYADAM_WARP"),
    (Spec(sparse=False), "cuda", "lazyadam_device_guard"),
    (Spec(), "cuda", "cudaMallocAsync"),
    (Spec(sparse=False), "cuda", "snprintf"),
    (Spec(sparse=False), "cuda", "threadIdx"),
]


def clash_id(case) -> str:
    spec, target, name = case
    return f"{target}-{'sparse' if spec.sparse else 'dense'}-{name}"


@pytest.mark.parametrize("case", CLASHES, ids=map(clash_id, CLASHES))
def test_a_name_the_generated_files_already_use_is_refused(case):
    spec, target, name = case
    own = generate(spec, target)
    library = any(name in taken for taken in names.LIBRARY.values())
    assert library or re.search(rf"\b{re.escape(name)}\b", own.text + own.header), (
        f"the {target} templates no longer use {name!r}: take it out of CLASHES")
    with pytest.raises(ValueError, match=f"symbol '{name}' is (already an identifier|declared by|"
                                         "reserved by)"):
        generate(spec, target, symbol=name)
    with pytest.raises(ValueError, match=f"symbol '{name}'"):
        stages(spec, target, symbol=name)


def test_every_identifier_of_the_generated_files_is_refused():
    """All but those built from the kernel's own symbol (`<symbol>_multi`): they follow it."""
    for spec in (Spec(use_locking=True, amsgrad=True), Spec(sparse=False, use_locking=True)):
        for target in ("c", "cuda"):
            own = generate(spec, target)
            for name in names.identifiers(own.text + own.header):
                if own.symbol in name or own.symbol.upper() in name:
                    continue
                with pytest.raises(ValueError, match=f"symbol '{name}'"):
                    generate(spec, target, symbol=name)


def test_a_name_is_refused_when_a_name_built_from_it_clashes():
    """A CUDA kernel named `step` also defines `step_multi`, `STEP_H`, ...: they must be free."""
    own = ("lazyadam_dense_f32", "int lazyadam_dense_f32_multi(void); int step_multi; "
                                 "#define LAZYADAM_DENSE_F32_H")
    with pytest.raises(ValueError, match="symbol 'step' would make the generated files define "
                                         "'step_multi', which is already an identifier"):
        names.check_symbol("step", own)
    assert names.check_symbol("other", own) == "other"


def test_identifiers_skip_comments_literals_numbers_and_includes():
    text = """#include <stdlib.h>
    #pragma omp parallel for
    /* a comment: free */ // another: exit
    static const char *s = "malloc"; float x = 0.9f + 1e-8 + 0x1p-3; char c = 'q';
    #define ROWS 4"""
    assert names.identifiers(text) == {"static", "const", "char", "s", "float", "x", "c", "ROWS"}


def imported_lazyadam_modules(path: Path) -> set[str]:
    """The modules of lazyadam that the module at `path` imports (relative imports resolved)."""
    package = ["lazyadam", *path.parent.relative_to(Path(pipeline.__file__).parents[1]).parts]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lazyadam")}
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) + 1 - node.level] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            if module.startswith("lazyadam"):
                found |= {f"{module}.{a.name}" for a in node.names}
    return found


def test_codegen_imports_neither_targets_nor_runtime_nor_rules():
    """codegen is the lowest floor: pure code generation, both renderers registered in it; it
    knows rules only through `rule.get`."""
    for path in sorted(Path(pipeline.__file__).parent.glob("*.py")):
        for module in imported_lazyadam_modules(path):
            assert module.startswith("lazyadam.codegen.") or module == "lazyadam.__version__", \
                f"{path.name} imports {module}"
    assert set(pipeline.RENDERERS) == {"c", "cuda"}


def test_rules_import_codegen_only():
    for path in sorted(Path(ADAM.lower.__code__.co_filename).parent.glob("*.py")):
        for module in imported_lazyadam_modules(path):
            assert module.startswith(("lazyadam.codegen.", "lazyadam.rules.")), \
                f"rules/{path.name} imports {module}"
