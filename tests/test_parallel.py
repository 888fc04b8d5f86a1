"""How the C kernels use their threads (docs/threads.md): steps below `parallel_min` elements, and
all steps on a machine with more runnable tasks than processors, on one thread, with the same bits
as on several, quiet or beside a busy process; the threshold from the spec, then the environment,
then the default; OpenMP started with a short spin unless the environment or another library
chose."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import lazyadam
import openmp
from lazyadam import HParams, Spec
from lazyadam.codegen import SUM_CHUNK
from lazyadam.codegen.spec import PARALLEL_MIN, SpecError
from lazyadam.targets.c import SPIN_COUNT
from reference import lazyadam_step
from tolerance import assert_close

#: A parallel_min above any step: every step on one thread.
ONE_THREAD = 2 ** 62 - 1
SPECS = [Spec(sparse=True), Spec(sparse=True, use_locking=True, decay="l2"),
         Spec(sparse=False, decay="decoupled")]
HYPER = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)


def steps(spec: Spec, rng: np.random.Generator, rows: int = 3000, dim: int = 9):
    """Three steps' gradients: sparse ones of 20,000 Zipf indices (rows seen far more often than a
    summation chunk), or dense ones."""
    if not spec.sparse:
        return [rng.standard_normal((rows, dim)).astype(np.float32) for _ in range(3)]
    grads = []
    for _ in range(3):
        indices = (rng.zipf(1.3, 20_000) % rows).astype(np.int64)
        grads.append((indices, rng.standard_normal((indices.size, dim)).astype(np.float32)))
    return grads


def run(kernel, start: np.ndarray, grads) -> tuple[np.ndarray, ...]:
    var, m, v = start.copy(), np.zeros_like(start), np.zeros_like(start)
    for t, grad in enumerate(grads, 1):
        kernel(var, m, v, grad, HParams.at_step(t, **HYPER))
    return var, m, v


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.symbol())
def test_one_thread_below_the_threshold_gives_the_bits_of_two_threads(spec, rng):
    """The same steps with every step parallel and every step on one thread, on 2 threads, and
    the parallel ones again beside a busy process (threads then run late and out of turn)."""
    start = rng.standard_normal((3000, 9)).astype(np.float32)
    grads = steps(spec, rng)
    assert not spec.sparse or np.bincount(grads[0][0]).max() > 4 * SUM_CHUNK
    parallel = lazyadam.compile(dataclasses.replace(spec, parallel_min=0))
    serial = lazyadam.compile(dataclasses.replace(spec, parallel_min=ONE_THREAD))
    with openmp.threads(2):
        results = [run(parallel, start, grads), run(serial, start, grads)]
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            results += [run(parallel, start, grads) for _ in range(5)]
        finally:
            busy.kill()
            busy.wait()
    for arrays in zip(*results):
        for other in arrays[1:]:
            np.testing.assert_array_equal(other, arrays[0])
    var, m, v = start.astype(np.float64), np.zeros(start.shape), np.zeros(start.shape)
    for t, grad in enumerate(grads, 1):
        indices, values = grad if spec.sparse else (None, grad)
        var, m, v, _ = lazyadam_step(var, m, v, values, **HYPER, beta1_power=0.9 ** t,
                                     beta2_power=0.999 ** t, indices=indices, decay=spec.decay)
    assert_close(results[0][0], var, "float32", what="var after 3 steps")


# Prints how many threads this process gains in one step of `elements` elements (sparse: rows of
# 64, one index each): OpenMP starts its worker threads on the first region that asks for more
# than one thread.
COUNT_THREADS = textwrap.dedent("""
    import os, sys
    import numpy as np
    import lazyadam
    from lazyadam import HParams, Spec
    kind, value, elements = sys.argv[1], sys.argv[2], int(sys.argv[3])
    spec = Spec(sparse=kind == "sparse", parallel_min=None if value == "none" else int(value))
    kernel = lazyadam.compile(spec)
    if kind == "sparse":
        var = np.ones((elements // 64, 64), np.float32)
        grad = (np.arange(elements // 64, dtype=np.int64), np.ones_like(var))
    else:
        var = np.ones(elements, np.float32)
        grad = np.ones_like(var)
    before = len(os.listdir("/proc/self/task"))
    kernel(var, np.zeros_like(var), np.zeros_like(var), grad, HParams.at_step(1))
    print(len(os.listdir("/proc/self/task")) - before)
""")


#: /proc/loadavg of a quiet machine and of one with more runnable tasks (the 4th field) than any
#: machine has processors.
QUIET, OVERLOADED = "0.10 0.20 0.30 1/300 4242\n", "9.00 9.00 9.00 100000/100300 4242\n"


def threads_started(kind: str, spec_value: str, env_value: str | None, elements: int,
                    loadavg: Path) -> int:
    """The threads one step starts, in kernels built to read `loadavg` for /proc/loadavg (at -O0:
    each test builds its own, and the threads a step starts do not depend on the level)."""
    env = {k: v for k, v in os.environ.items() if k != "LAZYADAM_PARALLEL_MIN"}
    env["OMP_NUM_THREADS"] = "2"
    env["LAZYADAM_CFLAGS"] = "-O0 " + shlex.quote(f'-DLAZYADAM_LOADAVG="{loadavg}"')
    if env_value is not None:
        env["LAZYADAM_PARALLEL_MIN"] = env_value
    proc = subprocess.run([sys.executable, "-c", COUNT_THREADS, kind, spec_value, str(elements)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout)


@pytest.mark.parametrize("kind, spec_value, env_value, elements, parallel", [
    ("dense", "none", None, 4096, False),                         # far below the default
    ("dense", "none", None, PARALLEL_MIN["dense"], True),          # at the default
    ("dense", "none", "0", 4096, True),                           # the environment lowers it
    ("dense", "none", "4097", 4096, False),                       # ... or not below this step
    ("dense", "0", None, 4096, True),                             # the spec lowers it
    ("dense", str(ONE_THREAD), "0", 4096, False),                 # the spec wins over the environment
    ("sparse", "none", None, PARALLEL_MIN["sparse"] - 64, False),  # indices x row size, below
    ("sparse", "none", None, PARALLEL_MIN["sparse"], True),        # ... and at the default
    ("sparse", "6400", None, 6400, True),                         # the spec's, at it
    ("sparse", "6401", None, 6400, False),                        # ... and one element below
], ids=["dense default below", "dense default at", "env 0", "env above the step", "spec 0",
        "spec over env", "sparse default below", "sparse default at", "sparse spec at",
        "sparse spec below"])
def test_the_threshold_comes_from_the_spec_then_the_environment(kind, spec_value, env_value,
                                                                elements, parallel, tmp_path):
    if not os.path.isdir("/proc/self/task"):
        pytest.skip("needs Linux's /proc/self/task to count threads")
    (tmp_path / "loadavg").write_text(QUIET)
    started = threads_started(kind, spec_value, env_value, elements, tmp_path / "loadavg")
    assert (started > 0) == parallel, started


@pytest.mark.parametrize("kind, spec_value, parallel", [
    ("dense", "none", False), ("sparse", "none", False),  # the default threshold: one thread
    ("dense", "6400", False),                            # a threshold of the spec's too
    ("dense", "0", True), ("sparse", "0", True),          # 0: every thread, whatever the load
], ids=["dense", "sparse", "spec threshold", "dense spec 0", "sparse spec 0"])
def test_steps_above_the_threshold_run_on_one_thread_when_the_machine_is_overloaded(
        kind, spec_value, parallel, tmp_path):
    """More runnable tasks than processors: a team thread would wait for the scheduler."""
    if not os.path.isdir("/proc/self/task"):
        pytest.skip("needs Linux's /proc/self/task to count threads")
    (tmp_path / "loadavg").write_text(OVERLOADED)
    elements = 4 * PARALLEL_MIN[kind]
    started = threads_started(kind, spec_value, None, elements, tmp_path / "loadavg")
    assert (started > 0) == parallel, started


@pytest.mark.parametrize("value", ["many", "-1", "1e6", str(2 ** 62)])
def test_a_bad_threshold_in_the_environment_is_refused(monkeypatch, value):
    monkeypatch.setenv("LAZYADAM_PARALLEL_MIN", value)
    with pytest.raises(ValueError, match="LAZYADAM_PARALLEL_MIN must be a whole number"):
        lazyadam.compile(Spec(sparse=False))


@pytest.mark.parametrize("value", [-1, 2 ** 62, 1.5, True, "0"])
def test_a_bad_threshold_in_the_spec_is_refused(value):
    with pytest.raises(SpecError, match="parallel_min must be None or an int"):
        Spec(parallel_min=value).validate()


def test_parallel_min_changes_the_json_and_symbol_only_when_given():
    """Specs without it keep the JSON (the key of the golden digests and of the cache) and symbol
    they had before the field existed; one with it names it and reads back."""
    plain = json.loads(Spec().to_json())
    assert "parallel_min" not in plain and Spec().symbol() == "lazyadam_sparse_f32_i64"
    given = Spec(parallel_min=0)
    assert json.loads(given.to_json()) == {**plain, "parallel_min": 0}
    assert given.symbol() == "lazyadam_sparse_f32_i64_p0"
    assert Spec.from_json(given.to_json()) == given
    assert Spec.from_json(Spec().to_json()) == Spec()


# Loads a kernel (which starts libgomp, unless torch did), then prints whether the environment
# still names a wait policy, how many OpenMP runtimes the process maps, and the runtime's settings.
WAIT_POLICY = textwrap.dedent("""
    import ctypes, os, sys
    if sys.argv[1] == "torch":
        import torch
    import lazyadam
    from lazyadam import Spec
    lazyadam.compile(Spec(sparse=False))
    print(os.environ.get("OMP_WAIT_POLICY"))
    print(len({line.split()[-1] for line in open("/proc/self/maps") if "libgomp" in line}),
          flush=True)
    gomp = ctypes.CDLL("libgomp.so.1")
    if hasattr(gomp, "omp_display_env"):  # OpenMP 5.1; an older libgomp cannot say
        gomp.omp_display_env(1)
""")


@pytest.mark.parametrize("first, given, spins", [
    ("lazyadam", None, str(SPIN_COUNT)),    # lazyadam starts the runtime: a short spin
    ("lazyadam", "passive", "0"),           # the user's choice stands
    ("torch", None, None),                  # torch started it first: its default stands
], ids=["lazyadam first", "set by the user", "torch first"])
def test_openmp_spins_briefly_when_lazyadam_starts_it(first, given, spins):
    if not os.path.exists("/proc/self/maps"):
        pytest.skip("needs Linux's /proc/self/maps")
    if first == "torch":
        pytest.importorskip("torch")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if given:
        env["OMP_WAIT_POLICY"] = given
    proc = subprocess.run([sys.executable, "-c", WAIT_POLICY, first], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    # The process's environment is left as it was; the kernels and torch share one runtime.
    assert proc.stdout.split() == [str(given), "1"]
    if "GOMP_SPINCOUNT" not in proc.stderr:
        pytest.skip("this libgomp has no omp_display_env to show its spin count")
    if spins is not None:
        assert f"GOMP_SPINCOUNT = '{spins}'" in proc.stderr, proc.stderr
    else:
        assert f"GOMP_SPINCOUNT = '{SPIN_COUNT}'" not in proc.stderr, proc.stderr


def test_the_command_line_takes_parallel_min(tmp_path):
    """--parallel-min is the spec's: the source fixes it; without it, the build may set it."""
    from click.testing import CliRunner

    from lazyadam.cli import main
    runner = CliRunner()
    for name, options in (("given", ["--parallel-min", "0"]), ("unset", [])):
        result = runner.invoke(main, ["generate", "--dense", *options, "--name", name, "--out",
                                      str(tmp_path / name)])
        assert result.exit_code == 0, result.output
    given, unset = ((tmp_path / n / f"{n}.c").read_text() for n in ("given", "unset"))
    assert "#undef LAZYADAM_PARALLEL_MIN\n#define LAZYADAM_PARALLEL_MIN 0 " in given
    assert (f"#ifndef LAZYADAM_PARALLEL_MIN\n#define LAZYADAM_PARALLEL_MIN {PARALLEL_MIN['dense']}\n"
            in unset)
    result = runner.invoke(main, ["generate", "--dense", "--parallel-min", "-1", "--out",
                                  str(tmp_path / "bad")])
    assert result.exit_code == 2 and "--parallel-min" in result.output
