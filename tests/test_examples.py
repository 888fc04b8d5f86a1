"""The examples run as a new user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parents[1] / "examples"


def test_the_main_example_trains(tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLES / "matrix_factorization.py"), "--users",
                           "300", "--items", "900", "--ratings", "30000", "--batch", "256",
                           "--steps", "30"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "LazyAdam step: first" in proc.stdout and "test RMSE" in proc.stdout


def test_the_quickstart_runs():
    proc = subprocess.run([sys.executable, str(EXAMPLES / "quickstart.py")], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
