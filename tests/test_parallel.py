"""How the C kernels use their threads (docs/performance.md): steps below `parallel_min` elements
on one thread, with the same bits as on several; the threshold from the spec, the environment or the
default; OpenMP started with passive waits unless the environment or another library chose."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import lazyadam
import openmp
from lazyadam import HParams, Spec
from lazyadam.codegen import SUM_CHUNK
from lazyadam.codegen.spec import SpecError
from reference import lazyadam_step
from tolerance import assert_close

#: A parallel_min above any step: every step on one thread.
ONE_THREAD = 2 ** 62 - 1
SPECS = [Spec(sparse=True), Spec(sparse=True, use_locking=True, decay="l2"),
         Spec(sparse=False, decay="decoupled")]
HYPER = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)


def steps(spec: Spec, rng: np.random.Generator, rows: int = 3000, dim: int = 9):
    """Three steps' gradients: sparse ones of 20,000 Zipf indices (rows seen far more than a
    summation chunk, and a sort of several blocks), or dense ones."""
    if not spec.sparse:
        return [rng.standard_normal((rows, dim)).astype(np.float32) for _ in range(3)]
    grads = []
    for _ in range(3):
        indices = (rng.zipf(1.3, 20_000) % rows).astype(np.int64)
        grads.append((indices, rng.standard_normal((indices.size, dim)).astype(np.float32)))
    return grads


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.symbol())
def test_one_thread_below_the_threshold_gives_the_bits_of_two_threads(spec, rng, monkeypatch):
    """The same steps with every step parallel (not the faster way: -DLAZYADAM_ADAPT=0) and every
    step on one thread, on 2 threads."""
    monkeypatch.setenv("LAZYADAM_CFLAGS", "-DLAZYADAM_ADAPT=0")
    start = rng.standard_normal((3000, 9)).astype(np.float32)
    grads = steps(spec, rng)
    assert not spec.sparse or np.bincount(grads[0][0]).max() > 4 * SUM_CHUNK
    results = []
    for parallel_min in (0, ONE_THREAD):
        kernel = lazyadam.compile(dataclasses.replace(spec, parallel_min=parallel_min))
        var, m, v = start.copy(), np.zeros_like(start), np.zeros_like(start)
        with openmp.threads(2):
            for t, grad in enumerate(grads, 1):
                kernel(var, m, v, grad, HParams.at_step(t, **HYPER))
        results.append((var, m, v))
    for parallel, serial in zip(*results):
        np.testing.assert_array_equal(parallel, serial)
    var, m, v = start.astype(np.float64), np.zeros(start.shape), np.zeros(start.shape)
    for t, grad in enumerate(grads, 1):
        indices, values = grad if spec.sparse else (None, grad)
        var, m, v, _ = lazyadam_step(var, m, v, values, **HYPER, beta1_power=0.9 ** t,
                                     beta2_power=0.999 ** t, indices=indices, decay=spec.decay)
    assert_close(results[0][0], var, "float32", what="var after 3 steps")


# Counts the threads of this process before and after one small dense step (4,096 elements):
# OpenMP starts its worker threads on the first region that asks for more than one.
COUNT_THREADS = textwrap.dedent("""
    import os, sys
    import numpy as np
    import lazyadam
    from lazyadam import HParams, Spec
    spec = Spec(sparse=False, parallel_min=None if sys.argv[1] == "none" else int(sys.argv[1]))
    kernel = lazyadam.compile(spec)
    var = np.ones(4096, np.float32)
    before = len(os.listdir("/proc/self/task"))
    kernel(var, np.zeros_like(var), np.zeros_like(var), np.ones_like(var), HParams.at_step(1))
    print(len(os.listdir("/proc/self/task")) - before)
""")


def threads_started(spec_value: str, env_value: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if k != "LAZYADAM_PARALLEL_MIN"}
    env["OMP_NUM_THREADS"] = "2"
    if env_value is not None:
        env["LAZYADAM_PARALLEL_MIN"] = env_value
    proc = subprocess.run([sys.executable, "-c", COUNT_THREADS, spec_value], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout)


@pytest.mark.parametrize("spec_value, env_value, parallel", [
    ("none", None, False),         # the default: 4,096 elements is far below it
    ("none", "0", True),           # the environment lowers it
    ("none", "4097", False),       # ... or not below this step's size
    ("0", None, True),             # the spec lowers it
    (str(ONE_THREAD), "0", False),  # the spec wins over the environment
], ids=["default", "env 0", "env above the step", "spec 0", "spec over env"])
def test_the_threshold_comes_from_the_spec_then_the_environment(spec_value, env_value, parallel):
    if not os.path.isdir("/proc/self/task"):
        pytest.skip("needs Linux's /proc/self/task to count threads")
    started = threads_started(spec_value, env_value)
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


# Loads a kernel (which starts libgomp), then prints whether the environment still names a wait
# policy, how many OpenMP runtimes the process maps, and (where the runtime can) its settings.
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
    if hasattr(gomp, "omp_display_env"):  # OpenMP 5.1; the libgomp that torch ships is older
        gomp.omp_display_env(1)
""")


@pytest.mark.parametrize("first, given, spins", [
    ("lazyadam", None, "0"),                  # lazyadam starts the runtime: passive waits
    ("lazyadam", "active", "30000000000"),  # the user's choice stands
    ("torch", None, None),                    # torch started it first: its default stands
], ids=["lazyadam first", "set by the user", "torch first"])
def test_openmp_waits_asleep_when_lazyadam_starts_it(first, given, spins):
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
    if spins is not None:
        assert f"GOMP_SPINCOUNT = '{spins}'" in proc.stderr, proc.stderr


def test_a_threshold_set_after_a_compile_reaches_the_next_one(monkeypatch):
    """`compile` keeps a kernel per spec and environment: a new LAZYADAM_PARALLEL_MIN is a new
    kernel, not the one compiled before it was set."""
    monkeypatch.delenv("LAZYADAM_PARALLEL_MIN", raising=False)
    before = lazyadam.compile(Spec(sparse=False))
    monkeypatch.setenv("LAZYADAM_PARALLEL_MIN", "7")
    after = lazyadam.compile(Spec(sparse=False))
    assert after.path != before.path  # another cache entry: the flag is part of the build
