"""The `lazyadam` command, through click's CliRunner: every command, its help, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from lazyadam import Spec, stages
from lazyadam.cli import STAGES, main
from lazyadam.codegen.variants import specs_from_json, variants


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args: str, env: dict | None = None):
        return runner.invoke(main, [str(a) for a in args], env=env)

    return invoke


def all_commands(group: click.Group, path: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        yield (*path, name)
        if isinstance(command, click.Group):
            yield from all_commands(command, (*path, name))


@pytest.mark.parametrize("command", [(), *all_commands(main)], ids=" ".join)
def test_every_command_has_help(run, command):
    result = run(*command, "--help")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: {' '.join(('main', *command))}")


def test_stage_names_are_the_library_stages():
    assert STAGES == tuple(stages(Spec()))


@pytest.mark.parametrize("args", [
    ["generate", "--target", "fortran"],
    ["generate", "--dtype", "float8"],
    ["generate", "--rounding", "stochastic"],
    ["generate", "--dtype", "float16", "--grad-dtype", "bfloat16"],
    ["generate", "--beta1", "2"],
    ["generate", "--beta1", "abc"],
    ["generate", "--eps", "nan"],
    ["generate", "--wd", "0.1"],
    ["generate", "--name", "9lives"],
    ["generate", "--name", "int"],
    ["generate", "--name", "__reserved"],
    ["generate", "--name", "malloc"],
    ["generate", "--locking", "--name", "lock"],
    ["generate", "--dense", "--name", "LAZYADAM_OK"],
    ["generate", "--loss-scale", "1e50"],
    ["generate", "--dense", "--eps", "1e-50"],
    ["generate", "--bogus"],
    ["ir", "--stage", "assembly"],
    ["build", "--spec-json", "/nonexistent/specs.json"],
    ["cache", "prune"],
    ["compile"],
], ids=" ".join)
def test_bad_options_exit_non_zero_with_one_line(run, args):
    result = run(*args)
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output


def test_bad_spec_file_is_one_line(run, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"sparse": true, "adamw": true}')
    result = run("build", "--spec-json", bad)
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "Error: spec 0 has unknown field(s) adamw; choose from amsgrad, decay, dtype, eps_mode, "
        "grad_dtype, index_dtype, maximize, nesterov, parallel_min, rounding, sparse, state_dtype, "
        "static, use_locking (see 'main build --help')")


def test_the_installed_script_prints_one_line(tmp_path):
    script = Path(sys.executable).with_name("lazyadam")
    if not script.exists():
        pytest.skip(f"the console script is not installed beside {sys.executable}")
    proc = subprocess.run([str(script), "generate", "--weight-decay", "l3"], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == ("Error: Invalid value for '--weight-decay': 'l3' is not one of 'none', "
                           "'l2', 'decoupled'. (see 'lazyadam generate --help')\n")


def test_generate_writes_source_header_and_readme(run, tmp_path):
    result = run("generate", "--sparse", "--nesterov", "--dtype", "float64", "--index-dtype",
                 "int32", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    symbol = "lazyadam_sparse_nesterov_f64_i32"
    written = [tmp_path / f"{symbol}.c", tmp_path / f"{symbol}.h", tmp_path / "README.md"]
    assert result.stdout.splitlines() == [str(p) for p in written]
    assert f'#include "{symbol}.h"' in written[0].read_text()
    header = written[1].read_text()
    assert f"int {symbol}(double *var, double *m, double *v," in header
    assert "const int32_t *indices" in header
    readme = written[2].read_text()
    assert f"### `{symbol}` (C)" in readme and f"cc -std=c99 -O3 -fopenmp -c {symbol}.c" in readme


def test_static_hyperparameters_and_name(run, tmp_path):
    result = run("generate", "--dense", "--weight-decay", "decoupled", "--beta1", "0.8",
                 "--wd", "0.01", "--name", "my_adamw", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    header = (tmp_path / "my_adamw.h").read_text()
    assert '"static":[["beta1",0.8],["weight_decay",0.01]]' in header
    assert " * static beta1 = 0.8: baked into the code, hp->beta1 is ignored." in header
    assert (" * static weight_decay = 0.01: baked into the code, hp->weight_decay is ignored."
            in header)
    assert "int my_adamw(float *var" in header
    assert "- static beta1 = 0.8: baked into the code" in (tmp_path / "README.md").read_text()


def _generate_all(run, out: Path, order: list[list[str]]) -> dict[str, bytes]:
    for args in order:
        assert run("generate", *args, "--out", out).exit_code == 0
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_regeneration_is_byte_identical_in_any_order(run, tmp_path):
    kernels = [["--sparse", "--amsgrad"], ["--dense", "--dtype", "float64"],
               ["--sparse", "--beta2", "0.99", "--name", "tuned"]]
    first = _generate_all(run, tmp_path / "a", kernels)
    again = _generate_all(run, tmp_path / "a", kernels)
    reversed_ = _generate_all(run, tmp_path / "b", kernels[::-1])
    assert len(first) == 7  # three sources, three headers, one README
    assert first == again == reversed_
    readme = first["README.md"].decode()
    assert readme.index("lazyadam_dense_f64") < readme.index("lazyadam_sparse_amsgrad_f32_i64") \
        < readme.index("`tuned`")


def test_generate_refuses_to_overwrite_foreign_files(run, tmp_path):
    (tmp_path / "README.md").write_text("# my project\n")
    result = run("generate", "--out", tmp_path)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: refusing to overwrite {tmp_path / 'README.md'}: it was not generated by lazyadam; "
        "choose another --out folder or --name"]
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]


def test_out_must_be_a_folder(run, tmp_path):
    (tmp_path / "file").write_text("")
    result = run("generate", "--out", tmp_path / "file")
    assert result.exit_code == 2 and "is a file" in result.stderr


def test_generate_cuda_writes_cu_and_header(run, tmp_path):
    result = run("generate", "--target", "cuda", "--dense", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "README.md", "lazyadam_dense_f32.cu", "lazyadam_dense_f32.h"]
    assert "cudaStream_t stream" in (tmp_path / "lazyadam_dense_f32.h").read_text()
    readme = (tmp_path / "README.md").read_text()
    assert "nvcc -O3 --fmad=false -arch=native -c lazyadam_dense_f32.cu" in readme
    clash = run("generate", "--target", "c", "--dense", "--out", tmp_path)
    assert clash.exit_code == 1 and len(clash.stderr.strip().splitlines()) == 1
    assert "would share the header lazyadam_dense_f32.h" in clash.stderr


def test_ir_prints_every_stage_with_headings(run):
    result = run("ir", "--dense", "--nesterov")
    assert result.exit_code == 0, result.output
    headings = [line for line in result.stdout.splitlines() if line.startswith("==== ")]
    assert headings == [f"==== {name} ====" for name in STAGES]
    assert "nesterov ? " in result.stdout  # the switch is visible before drop_dead_terms


@pytest.mark.parametrize("stage", STAGES)
def test_ir_prints_one_stage(run, stage):
    spec = Spec(sparse=True, decay="l2", static={"beta1": 0.9})
    result = run("ir", "--weight-decay", "l2", "--beta1", "0.9", "--stage", stage)
    assert result.exit_code == 0, result.output
    assert result.stdout == stages(spec)[stage].rstrip("\n") + "\n"


def test_build_and_cache_ls_clear(run, tmp_path):
    env = {"LAZYADAM_CACHE_DIR": str(tmp_path / "cache"), "LAZYADAM_DISABLE_CACHE": ""}
    # A static eps no other test uses: the kernel cannot come from this process's loaded kernels.
    result = run("build", "--dense", "--dtype", "float64", "--eps", "3.25e-7", env=env)
    assert result.exit_code == 0, result.output
    symbol, path = result.stdout.split()
    assert symbol == Spec(sparse=False, dtype="float64", static={"eps": 3.25e-7}).symbol()
    assert Path(path).is_relative_to(tmp_path / "cache") and Path(path).is_file()

    listing = run("cache", "ls", env=env)
    assert listing.exit_code == 0
    lines = listing.stdout.splitlines()
    assert lines[0] == f"{tmp_path / 'cache'}: 1 entries"
    assert " ok " in lines[1] and f"{symbol}.so" in lines[1]

    cleared = run("cache", "clear", env=env)
    assert cleared.stdout.strip() == f"removed 1 entries from {tmp_path / 'cache'}"
    assert run("cache", "ls", env=env).stdout.strip() == f"{tmp_path / 'cache'}: 0 entries"


def test_build_all_varies_the_flags_not_given(run, tmp_path):
    env = {"LAZYADAM_CACHE_DIR": str(tmp_path / "cache"), "LAZYADAM_DISABLE_CACHE": ""}
    result = run("build", "--all", "--dense", "--dtype", "float64", "--weight-decay", "none",
                 "--eps-mode", "mindspore", "--no-nesterov", "--no-locking", "--beta1", "0.77",
                 env=env)
    assert result.exit_code == 0, result.output
    assert "building 4 c kernels" in result.stderr  # the progress bar's label
    built = [line.split()[0] for line in result.stdout.splitlines()]
    fixed = dict(sparse=False, dtype="float64", static={"beta1": 0.77})
    assert built == [Spec(**fixed, amsgrad=amsgrad, maximize=maximize).symbol()
                     for amsgrad in (False, True) for maximize in (False, True)]


def test_build_from_spec_json(run, tmp_path):
    specs = [Spec(sparse=False, static={"loss_scale": 2.5}),
             Spec(sparse=True, index_dtype="int32", static={"loss_scale": 2.5})]
    path = tmp_path / "specs.json"
    path.write_text(json.dumps([json.loads(s.to_json()) for s in specs]))
    env = {"LAZYADAM_CACHE_DIR": str(tmp_path / "cache"), "LAZYADAM_DISABLE_CACHE": ""}
    result = run("build", "--spec-json", path, env=env)
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.stdout.splitlines()] == [s.symbol() for s in specs]
    mixed = run("build", "--spec-json", path, "--dense", env=env)
    assert mixed.exit_code == 2 and "with --spec-json alone" in mixed.stderr


def test_info_reports_everything(run):
    result = run("info")
    assert result.exit_code == 0, result.output
    keys = [line.split(":")[0] for line in result.stdout.splitlines()[1:]]
    assert keys == ["C compiler", "OpenMP", "nvcc", "pycuda", "GPU", "cache"]


def test_info_never_crashes_when_tools_are_missing(run):
    missing = {"LAZYADAM_CC": "/nonexistent/cc", "LAZYADAM_NVCC": "/nonexistent/nvcc"}
    result = run("info", env=missing)
    assert result.exit_code == 0, result.output
    report = dict(line.split(":", 1) for line in result.stdout.splitlines()[1:])
    for key in ("C compiler", "OpenMP", "nvcc"):
        assert report[key].strip().startswith("not found"), report


def test_variants_cover_the_flag_product_once():
    specs = variants()
    flags = 96 + 2 * 96  # dense, and sparse with two index dtypes
    # float32 and float64 once each; bfloat16 and float16 with 2 state x 2 gradient x 2 roundings
    assert len(specs) == len(set(specs)) == len({s.symbol() for s in specs}) == (2 + 16) * flags
    assert {s.index_dtype for s in specs if not s.sparse} == {"int64"}
    assert len(variants(dtype="float32")) == flags
    assert {(s.state_dtype, s.grad_dtype, s.rounding) for s in variants(dtype="float64")} == {
        (None, None, "nearest")}
    decayed = variants(static={"weight_decay": 0.1})
    assert {s.decay for s in decayed} == {"l2", "decoupled"}


def test_specs_from_json_round_trip():
    specs = [Spec(sparse=False, nesterov=True), Spec(static={"beta1": 0.8, "eps": 1e-6})]
    text = "[" + ",".join(s.to_json() for s in specs) + "]"
    assert specs_from_json(text) == specs
    assert specs_from_json('{"static": {"beta2": 0.99}}') == [Spec(static={"beta2": 0.99})]
