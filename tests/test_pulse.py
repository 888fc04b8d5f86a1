"""The test suite's pulse (conftest's `pulse` fixture): what a cold run builds reaches the terminal at
once, under plain `python -m pytest -q` (output captured), also from a worker thread and from
pytest-xdist's workers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

A_TEST = """
import threading


def test_builds(pulse):
    pulse("building 3 c kernels (batch 1/2)")
    worker = threading.Thread(target=pulse, args=("building 2 c kernels (batch 2/2)",))
    worker.start()
    worker.join()
    print("captured, not shown")
"""


def run_pytest(tmp_path, *options: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_builds.py").write_text(A_TEST)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS),
                                                                     os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p",
                           "no:cacheprovider", *options, "test_builds.py"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_the_pulse_shows_under_capture_and_from_threads(tmp_path):
    proc = run_pytest(tmp_path)
    lines = proc.stdout.splitlines()
    assert "[lazyadam] building 3 c kernels (batch 1/2)" in lines
    assert "[lazyadam] building 2 c kernels (batch 2/2)" in lines
    assert "captured, not shown" not in proc.stdout


def test_the_pulse_shows_from_xdist_workers(tmp_path):
    """A worker's stdout goes nowhere: its lines come on the terminal's stderr, named by worker."""
    proc = run_pytest(tmp_path, "-n", "2")
    lines = proc.stderr.splitlines()
    assert any(re.fullmatch(r"\[lazyadam gw[01]\] building 3 c kernels \(batch 1/2\)", line)
               for line in lines), proc.stderr
    assert any(re.fullmatch(r"\[lazyadam gw[01]\] building 2 c kernels \(batch 2/2\)", line)
               for line in lines), proc.stderr
    assert "captured, not shown" not in proc.stdout + proc.stderr
