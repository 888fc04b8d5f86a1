"""The CLI over rules: `lazyadam rules`, and `--rule`, `--option`, `--static` on generate, ir and
build, with a rule defined in a test file alone (tests/test_rule_generic.py's heavy-ball rule)."""

from __future__ import annotations

import subprocess

import pytest
from click.testing import CliRunner

from lazyadam import Spec, generate
from lazyadam.cli import main
from lazyadam.codegen.rule import names as rule_names
from lazyadam.targets import c

HEAVY_BALL = "test_rule_generic:HEAVY_BALL"


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, [str(a) for a in args])

    return invoke


def test_rules_lists_each_rule_with_its_options_hyperparameters_and_state(run):
    result = run("rules")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    headings = [line.partition(":")[0] for line in lines if line and not line.startswith(" ")]
    assert headings == sorted(rule_names())            # every registered rule, by name
    assert {"adam", "sgd", "adagrad", "rowwise_adagrad", "partial_rowwise_adam",
            "lion"} <= set(headings)
    assert any(line.startswith("adam: Adam on the rows a gradient touches") for line in lines)
    assert "    decay: none, l2, decoupled (default none)" in lines
    assert "    beta1_power: default 0.9, in [0.0, 1.0); derived: power:beta1" in lines
    assert "    eps: default 1e-08, in (0.0, inf); static allowed" in lines
    assert "    lr: default 0.001, in [0.0, inf); runtime only" in lines
    assert ("    vmax: per element, dtype state, starts at 0, when amsgrad (mindspore vmax, "
            "torch max_exp_avg_sq, plural vmaxes)") in lines
    assert ("    seen: per row, dtype compute, starts at 0 (1 beside buf), when dampening "
            "(plural seens)") in lines


def test_rules_takes_a_rule_by_module_and_attribute(run):
    result = run("rules", HEAVY_BALL)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[:4] == [
        "heavy_ball: heavy-ball momentum", "  symbols: lazyadam_heavy_ball_<sparse|dense>_...",
        "  options:", "    nesterov: false, true (default false)"]
    assert "    momentum: default 0.9, in [0.0, 1.0); static allowed" in result.output


def test_generate_writes_a_rules_sources_that_build_with_plain_cc(run, tmp_path):
    if c.unavailable():
        pytest.skip(c.unavailable())
    result = run("generate", "--rule", HEAVY_BALL, "--dense", "--option", "nesterov=true",
                 "--static", "momentum=0.5", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    source = next(tmp_path.glob("lazyadam_heavy_ball_dense_nesterov_f32_s*.c"))
    assert "static momentum = 0.5" in source.with_suffix(".h").read_text()
    proc = subprocess.run([*c.compiler(), "-std=c99", "-Wall", "-Wextra", "-Werror", "-c",
                           source.name], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_ir_and_build_take_the_rule(run):
    result = run("ir", "--rule", HEAVY_BALL, "--stage", "lower")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("kernel lazyadam_heavy_ball_sparse_f32_i64")
    assert "    buf = momentum * buf + g\n" in result.output
    assert "    var = var - lr * [nesterov ? g + momentum * buf : buf]\n" in result.output
    if c.unavailable():
        pytest.skip(c.unavailable())
    result = run("build", "--rule", HEAVY_BALL, "--dense", "--dtype", "float64")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("lazyadam_heavy_ball_dense_f64  ")


def test_adam_stays_the_default_and_takes_the_generic_flags_too(run, tmp_path):
    result = run("ir", "--stage", "header", "--dense", "--option", "amsgrad=true",
                 "--static", "beta1=0.85")
    assert result.exit_code == 0, result.output
    assert result.output.rstrip("\n") == generate(
        Spec(sparse=False, amsgrad=True, static={"beta1": 0.85})).header.rstrip("\n")


@pytest.mark.parametrize("args, message", [
    (("--rule", "nope"), "Error: --rule: unknown rule 'nope'; registered: adagrad, adam, lion, "
                            "partial_rowwise_adam, rowwise_adagrad, sgd"),
    (("--rule", HEAVY_BALL, "--amsgrad"), "Error: the heavy_ball rule has no option 'amsgrad'"),
    (("--rule", HEAVY_BALL, "--option", "amsgrad=true"),
     "Error: --option amsgrad: the heavy_ball rule's options are nesterov"),
    (("--rule", HEAVY_BALL, "--option", "nesterov=maybe"),
     "Error: --option nesterov=maybe: choose from false, true"),
    (("--rule", HEAVY_BALL, "--static", "momentum=fast"),
     "Error: --static momentum=fast: 'fast' is not a number"),
    (("--rule", HEAVY_BALL, "--static", "beta1=0.9"),
     "Error: 'beta1' cannot be static; choose from momentum"),
    (("--option", "nesterov"), "Error: --option takes NAME=VALUE, got 'nesterov'"),
])
def test_a_flag_the_rule_does_not_have_is_one_line_naming_it(run, args, message):
    result = run("ir", *args)
    assert result.exit_code == 2
    assert result.output.startswith(message), result.output


def test_the_default_rules_own_flags_come_from_its_declaration(run):
    """Each option of the default rule is a flag of its own (bools as --x/--no-x, choices with
    their values) and each static hyperparameter a --name FLOAT, under the rule's CLI names."""
    from lazyadam.rules.adam import ADAM
    text = " ".join(run("generate", "--help").output.split())
    names = ADAM.frontends["cli"]
    for option in ADAM.options:
        flag = "--" + names.get(option.name, option.name).replace("_", "-")
        if option.values == (False, True):
            assert f"{flag} / --no-{flag[2:]}" in text
        else:
            assert f"{flag} [{'|'.join(option.values)}]" in text
    for name in ADAM.static_hparams:
        flag = "--" + names.get(name, name).replace("_", "-")
        assert f"{flag} FLOAT Bake {name} into the code" in text
