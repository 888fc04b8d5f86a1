"""The optimizer step of examples/torch_recommender.py's model: `lazyadam.torch` against torch.

Three contenders step the same model (three sparse tables and an MLP) with the same gradients,
taken from one real batch (uncoalesced sparse gradients with the duplicates of Zipf-popular items):

    lazyadam      `lazyadam.torch.LazyAdam.step()`: tables with eps_mode="mindspore", MLP "pytorch"
    kernels only  the kernel calls of that step, prepared once and called back to back: what the
                  generated C kernels cost, so that `lazyadam - kernels only` is the Python overhead
    torch         `torch.optim.SparseAdam.step()` (tables) + `torch.optim.Adam.step()` (MLP, foreach)

lazyadam and torch each step their own copy of the model; kernels only steps lazyadam's copy.
Before timing, one step of lazyadam and torch from the same state is compared (the figures are for
the same work). After `--warmup` calls each, the contenders run `--rounds` rounds, one call each per
round, in an order that rotates every round so that noise on a shared machine hits all alike; the
figures are medians of the per-call times, and ratios within this one run.

    .venv/bin/python benchmarks/bench_torch.py
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from torch_recommender import (Ratings, Recommender, lazyadam_optimizer,  # noqa: E402
                               torch_optimizers)


def kernels_only(opt):
    """The kernel calls of `opt`'s next step, checked and prepared once; a function that makes
    them back to back, as `LazyAdam.step` finally does."""
    with opt._lock:
        work, hparams, pending, _ = opt._check()
        for param, binding, created in pending:
            opt.state[param].update(created)
            opt._bindings[param] = binding
    calls = [(call, grad, hparams[key]) for call, grad, key, _, _ in work]

    def step():
        for call, grad, hp in calls:
            call(grad, hp)
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()

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
    worst = max(float((a - b).abs().max() / b.abs().max())
                for a, b in zip(ours.parameters(), theirs.parameters()))
    print(f"one step from the same state: largest difference {worst:.1e} of the largest value")

    def torch_step():
        for o in torch_opts:
            o.step()

    contenders = {"lazyadam": opt.step, "kernels only": kernels_only(opt), "torch": torch_step}
    names = list(contenders)
    for name in names:
        for _ in range(args.warmup):
            contenders[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - start)
    ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}

    nnz = {name: p.grad._nnz() for name, p in ours.named_parameters() if p.grad.is_sparse}
    dense = sum(p.numel() for p in ours.dense())
    print(f"tables {args.users:,} + {args.items:,} + {args.items:,} rows x {args.dim}; gradient "
          f"rows {', '.join(f'{n} {k:,}' for n, k in nnz.items())}; MLP {dense:,} parameters")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} torch threads, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, {platform.processor() or platform.machine()}"
          f", {os.cpu_count()} CPUs")
    print(f"medians of {args.rounds} interleaved rounds (ms per step):")
    for name in names:
        print(f"  {name:14s} {ms[name]:8.3f}")
    python = ms["lazyadam"] - ms["kernels only"]
    print(f"  torch / lazyadam              {ms['torch'] / ms['lazyadam']:.1f}x")
    print(f"  Python overhead per step      {python * 1e3:.0f} us = "
          f"{python / ms['lazyadam']:.0%} of the lazyadam step")


if __name__ == "__main__":
    main()
