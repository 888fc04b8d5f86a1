"""The examples run as a new user runs them, and the main one keeps numpy's BLAS to one thread."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[1] / "examples"

# Loads the main example without running it, then asks numpy's OpenBLAS how many threads it runs.
BLAS_THREADS = textwrap.dedent("""
    import ctypes, runpy, sys
    runpy.run_path({example!r}, run_name="example")
    import numpy as np
    np.ones((64, 64)) @ np.ones((64, 64))
    paths = {{line.split()[-1] for line in open("/proc/self/maps") if "openblas" in line}}
    for path in paths:
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_",
                     "openblas_get_num_threads"):
            if hasattr(lib, name):
                print(getattr(lib, name)())
                sys.exit(0)
    print("no OpenBLAS")
""")


SMALL = {"matrix_factorization.py": ["--users", "300", "--items", "900", "--ratings", "30000",
                                     "--batch", "256", "--steps", "30"],
         "torch_recommender.py": ["--users", "300", "--items", "200", "--batch", "64",
                                  "--steps", "4", "--every", "2"]}


def run_example(name: str, cache_dir: Path, warm=None) -> str:
    """The example's output, run in a process of its own, or by `warm` (a
    tests/warm_python.py server) for an example that imports torch first."""
    env = {**os.environ, "LAZYADAM_CACHE_DIR": str(cache_dir), "LAZYADAM_DISABLE_CACHE": ""}
    if warm is not None:
        proc = warm.run(script=EXAMPLES / name, args=tuple(SMALL[name]), cwd=Path.cwd(), env=env,
                        timeout=300)
    else:
        proc = subprocess.run([sys.executable, str(EXAMPLES / name), *SMALL[name]], env=env,
                              capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_main_example_says_whether_its_first_step_compiled_or_loaded(tmp_path):
    cold = run_example("matrix_factorization.py", tmp_path)
    warm = run_example("matrix_factorization.py", tmp_path)
    assert "test RMSE" in cold
    assert re.search(r"LazyAdam step: first [\d.]+ ms \(compiled [2-9] kernels\), then median", cold)
    assert re.search(r"LazyAdam step: first [\d.]+ ms \(loaded its kernels from the cache\), then "
                     "median", warm)


@pytest.mark.xdist_group("warm_python")
def test_the_torch_example_gives_its_compiling_step_no_ratio(tmp_path, warm):
    for run, expected in (("cold", r"compiled [2-9] kernels"),
                          ("warm", r"loaded its kernels from the cache")):
        lines = run_example("torch_recommender.py", tmp_path, warm).splitlines()
        first = next(line for line in lines if line.split()[:1] == ["1"])
        assert re.search(rf"first step: lazyadam {expected}$", first), (run, first)
        assert not re.search(r"\d+\.\dx", first), (run, first)
        later = [line for line in lines if line.split()[:1] in (["2"], ["4"])]
        assert len(later) == 2 and all(re.search(r" \d+\.\dx$", line) for line in later), lines


def test_the_quickstart_runs():
    proc = subprocess.run([sys.executable, str(EXAMPLES / "quickstart.py")], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("given, expected", [(None, 1), ("2", 2)],
                         ids=["default", "set by the user"])
def test_the_main_example_runs_blas_on_one_thread_unless_told_otherwise(given, expected):
    """numpy's BLAS threads spin on the cores the kernels need: the example runs BLAS on one."""
    if not Path("/proc/self/maps").exists() or (os.cpu_count() or 1) < 2:
        pytest.skip("needs Linux's /proc/self/maps and two cores, where BLAS would start threads")
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")}
    if given:
        env["OPENBLAS_NUM_THREADS"] = given
    script = BLAS_THREADS.format(example=str(EXAMPLES / "matrix_factorization.py"))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    if proc.stdout.strip() == "no OpenBLAS":
        pytest.skip("numpy here is not built on OpenBLAS")
    assert int(proc.stdout) == expected
