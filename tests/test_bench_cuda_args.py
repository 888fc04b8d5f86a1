"""benchmarks/bench_cuda.py without a GPU: it imports, and its command line is checked before any
GPU is asked for (the figures need one; benchmarks/README.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_cuda  # noqa: E402


def test_the_family_options_are_read():
    args = bench_cuda.arguments(["--family", "--rules", "lion,rowwise_adagrad", "--skip-large"])
    assert args.family and args.skip_large and args.rules.split(",") == ["lion", "rowwise_adagrad"]
    assert bench_cuda.arguments([]).rules.split(",") == list(bench_cuda.RULES)


@pytest.mark.parametrize("argv, message", [
    (["--family", "--rules", "adam,sgd"], "unknown rule 'adam'; choose from sgd, adagrad"),
    (["--repeat", "0"], "--repeat must be >= 1, got 0"),
])
def test_bad_arguments_are_refused_by_name(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench_cuda.arguments(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_without_a_gpu_it_says_so():
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the benchmark would run")
    run = subprocess.run([sys.executable, str(BENCHMARKS / "bench_cuda.py"), "--family"],
                         capture_output=True, text=True, cwd=BENCHMARKS)
    assert run.returncode == 1 and "needs PyTorch with a CUDA GPU" in run.stderr
