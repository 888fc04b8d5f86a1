"""The optimizer step of examples/torch_recommender.py's model: `lazyadam.torch` against torch.

Two contenders step their own copy of the same model (three sparse tables and an MLP) with the
same gradients, taken from one real batch (uncoalesced sparse gradients with the duplicates of
Zipf-popular items):

    lazyadam   `lazyadam.torch.LazyAdam.step()`: tables with eps_mode="mindspore", the MLP "pytorch"
    torch      `torch.optim.SparseAdam.step()` (tables) + `torch.optim.Adam.step()` (MLP, foreach)

Before timing, one step of each from the same state is compared (the figures are for the same
work). After `--warmup` calls each, they run `--rounds` rounds, one call each per round, the first
alternating, so that noise on a shared machine hits both alike; the figures are medians of the
per-call times, and their ratio within this one run.

The Python overhead of a lazyadam step is measured inside each step: the step's time minus the time
of its kernel calls (`lazyadam.runtime.launcher.Launcher.run`, timed by a wrapper; the microseconds
each call spends passing its arguments through cffi count as kernel time), so the noise of the
kernels' time does not enter it; the figure is the median over the rounds, and its share of the
median step.

    .venv/bin/python benchmarks/bench_torch.py [--json PATH]

With `--json PATH`, the medians are also written to PATH (`record.py`; `plot.py` draws them).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import lazyadam.torch
from lazyadam.runtime.launcher import Launcher

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from record import Recorder  # noqa: E402
from torch_recommender import (Ratings, Recommender, lazyadam_optimizer,  # noqa: E402
                               torch_optimizers)


def time_kernel_calls(spent: list[float]) -> None:
    """Makes `lazyadam.torch` append the time of each step's kernel calls (its apply phase,
    `Launcher.run`) to `spent`."""
    run = Launcher.run

    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        run(self, *args, **kwargs)
        spent.append(time.perf_counter() - start)
    Launcher.run = timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the medians to this file")
    args = parser.parse_args()
    recorder = Recorder("bench_torch.py")

    torch.manual_seed(0)
    ours = Recommender(args.users, args.items, args.dim)
    theirs = copy.deepcopy(ours)
    users, items, history, ratings = Ratings(args.users, args.items, args.dim).batch(
        0, args.batch)
    torch.nn.functional.mse_loss(ours(users, items, history), ratings).backward()
    for mine, other in zip(ours.parameters(), theirs.parameters()):
        other.grad = mine.grad  # the same gradient tensors; no optimizer writes to them

    opt = lazyadam_optimizer(ours, lr=1e-3)
    torch_opts = torch_optimizers(theirs, lr=1e-3)
    opt.step()
    for o in torch_opts:
        o.step()
    with torch.no_grad():
        worst = max(float((a - b).abs().max() / b.abs().max())
                    for a, b in zip(ours.parameters(), theirs.parameters()))
    print(f"one step from the same state: largest difference {worst:.1e} of the largest value")

    def torch_step():
        for o in torch_opts:
            o.step()

    contenders = {"lazyadam": opt.step, "torch": torch_step}
    for name, step in contenders.items():
        for _ in range(args.warmup):
            step()
    kernels: list[float] = []
    time_kernel_calls(kernels)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for r in range(args.rounds):
        for name in list(contenders)[::1 if r % 2 else -1]:
            start = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - start)
    ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    python = statistics.median(t - k for t, k in zip(times["lazyadam"], kernels))

    nnz = {name: p.grad._nnz() for name, p in ours.named_parameters() if p.grad.is_sparse}
    dense = sum(p.numel() for p in ours.dense())
    print(f"tables {args.users:,} + {args.items:,} + {args.items:,} rows x {args.dim}; gradient "
          f"rows {', '.join(f'{n} {k:,}' for n, k in nnz.items())}; MLP {dense:,} parameters")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} torch threads, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, {platform.processor() or platform.machine()}"
          f", {os.cpu_count()} CPUs")
    print(f"medians of {args.rounds} interleaved rounds (ms per step):")
    for name in contenders:
        print(f"  {name:14s} {ms[name]:8.3f}")
    print(f"  torch / lazyadam              {ms['torch'] / ms['lazyadam']:.1f}x")
    print(f"  Python overhead per step      {python * 1e6:.0f} us = "
          f"{python * 1e3 / ms['lazyadam']:.1%} of the lazyadam step")
    if args.json:
        recorder.add(f"recommender step: tables {args.users:,} + 2 x {args.items:,} rows x "
                     f"{args.dim}, batch {args.batch:,}",
                     {"lazyadam.torch": ms["lazyadam"] / 1e3,
                      "torch SparseAdam + Adam": ms["torch"] / 1e3},
                     {"lazyadam.torch": "lazyadam", "torch SparseAdam + Adam": "torch"})
        recorder.write(args.json)


if __name__ == "__main__":
    main()
