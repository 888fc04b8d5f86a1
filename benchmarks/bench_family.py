"""The family of rules (lazyadam/rules) on CPU, kernel against torch, in one process.

    .venv/bin/python benchmarks/bench_family.py [--rounds 15] [--warmup 3] [--rules sgd,lion]
                                                [--skip-large] [--small]

For every rule of the family, one step each of
    lazyadam    the rule's generated C kernel (`lazyadam.compile(rule.spec(...))`, bound)
    torch       torch's optimizer where torch has the rule (SGD with momentum, Adagrad: dense, and
                sparse on a sparse COO gradient), else the rule written with torch's own ops (a
                "composite": `unique` and `index_add_` sum a sparse gradient's duplicates, the
                touched rows are gathered, updated and written back with `index_copy_`)
on the workloads of bench_cpu.py: dense float32 16M elements; lazy sparse float32 1,000,000 x 64
with 65,536 Zipf(1.2) indices; the same batch on a 40x larger table (`--skip-large` leaves it out).
Against the traffic limit: the bytes a step must move (each touched row of var and of every
per-element state array read and written once, per-row state once, every gradient row and index
read once) at the bandwidth of a copy measured in the same run (bench_cpu.py's). Contenders run in
rotating rounds after a warm-up; medians; ratios are of medians of the same run. `--small` runs
100x smaller workloads (a check of the script, not a measurement).

Also printed: the state bytes per parameter element of every rule and state dtype.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import lazyadam
from bench_cpu import Yardsticks, machine, medians, zeros, zipf_indices
from lazyadam.rules import ADAGRAD, LION, PARTIAL_ROWWISE_ADAM, ROWWISE_ADAGRAD, SGD
from lazyadam.targets.base import hparams_of

RULES = {r.name: r for r in (SGD, ADAGRAD, ROWWISE_ADAGRAD, PARTIAL_ROWWISE_ADAM, LION)}
#: The options of the kernel each rule is timed with (torch's defaults where torch has the rule).
OPTIONS = {"sgd": dict(momentum=True), "adagrad": {}, "rowwise_adagrad": {},
           "partial_rowwise_adam": {}, "lion": {}}
HYPER = {"sgd": dict(lr=0.01, mu=0.9), "adagrad": dict(lr=0.01, eps=1e-10),
         "rowwise_adagrad": dict(lr=0.01, eps=1e-8), "partial_rowwise_adam": dict(lr=1e-3),
         "lion": dict(lr=1e-4)}


def state_of(rule, spec, shape) -> list[np.ndarray]:
    """var's state arrays, zeros (pages made where a step touches them), in the kernel's order."""
    kept = rule.arrays(spec)[1:] + rule.row_arrays(spec)
    per = {s.name: s.per for s in rule.state}
    return [zeros(shape if per[name] == "element" else shape[:1], False) for name in kept]


def moved_bytes(rule, spec, touched_rows: int, dim: int, grad_rows: int, index_bytes: int) -> int:
    """The traffic limit's bytes: var and each per-element state row read and written once, each
    per-row state value read and written once, the gradient (and indices) read once."""
    per = {s.name: s.per for s in rule.state}
    kept = rule.arrays(spec)[1:] + rule.row_arrays(spec)
    elements = 1 + sum(per[name] == "element" for name in kept)
    rows = sum(per[name] == "row" for name in kept)
    return 4 * (2 * touched_rows * (elements * dim + rows) + grad_rows * dim) + index_bytes


# --- torch's side: the optimizer where torch has one, else the rule in torch ops --------------

def torch_step(name: str, table: np.ndarray, grad) -> tuple[Callable[[], None], str]:
    """One step of the rule on a torch tensor over `table`'s memory; grad is dense or
    (indices, values)."""
    h = HYPER[name]
    w = torch.from_numpy(table)
    if name in ("sgd", "adagrad"):
        param = torch.nn.Parameter(w)
        if isinstance(grad, tuple):
            indices, values = grad
            param.grad = torch.sparse_coo_tensor(torch.from_numpy(indices)[None],
                                                 torch.from_numpy(values), table.shape)
        else:
            param.grad = torch.from_numpy(grad)
        opt = (torch.optim.SGD([param], lr=h["lr"], momentum=h["mu"]) if name == "sgd"
               else torch.optim.Adagrad([param], lr=h["lr"], eps=h["eps"]))
        label = "torch SGD(momentum)" if name == "sgd" else "torch Adagrad"
        return opt.step, label + (" sparse" if isinstance(grad, tuple) else "")
    state = {"m": torch.from_numpy(zeros(table.shape, False)),
             "row": torch.from_numpy(zeros(table.shape[:1], False))}

    def gathered():
        if not isinstance(grad, tuple):
            return None, torch.from_numpy(grad)
        indices, values = (torch.from_numpy(a) for a in grad)
        rows, inverse = torch.unique(indices, return_inverse=True)
        g = torch.zeros((rows.numel(), values.shape[1])).index_add_(0, inverse, values)
        return rows, g

    def take(x, rows):
        return x if rows is None else x.index_select(0, rows)

    def put(x, rows, value):
        if rows is None:
            x.copy_(value)
        else:
            x.index_copy_(0, rows, value)

    def step():
        rows, g = gathered()
        if name == "lion":
            m = take(state["m"], rows)
            c = m.mul(0.9).add_(g, alpha=0.1)
            put(w, rows, take(w, rows).add_(c.sign_(), alpha=-h["lr"]))
            put(state["m"], rows, m.mul_(0.99).add_(g, alpha=0.01))
        elif name == "rowwise_adagrad":
            acc = take(state["row"], rows).add_(g.square().mean(dim=1))
            put(state["row"], rows, acc)
            put(w, rows, take(w, rows).addcdiv_(g, acc.sqrt().add_(h["eps"])[:, None],
                                                value=-h["lr"]))
        else:  # partial_rowwise_adam, t = 1
            m = take(state["m"], rows).mul_(0.9).add_(g, alpha=0.1)
            v = take(state["row"], rows).mul_(0.999).add_(g.square().mean(dim=1), alpha=0.001)
            put(state["m"], rows, m)
            put(state["row"], rows, v)
            denominator = (v / 0.001).sqrt_().add_(1e-8)[:, None]
            put(w, rows, take(w, rows).addcdiv_(m / 0.1, denominator, value=-h["lr"]))
    return step, "torch ops (composite)"


def run(name: str, workload: str, fresh: Callable[[], np.ndarray], grad, rounds: int,
        warmup: int, bandwidth: float, moved: int) -> dict[str, float]:
    """Times the rule's kernel and torch's step on tables from `fresh()` each."""
    rule = RULES[name]
    sparse = isinstance(grad, tuple)
    spec = rule.spec(sparse=sparse, **OPTIONS[name]).validate()
    kernel = lazyadam.compile(spec)
    table = fresh()
    ours = [table, *state_of(rule, spec, table.shape)]
    step = kernel.bind(*ours)
    hp = hparams_of(rule).at_step(1, **HYPER[name]).as_tuple()
    theirs, label = torch_step(name, fresh(), grad)
    t = medians({"lazyadam": lambda: step(grad, hp), "torch": theirs}, rounds, warmup)
    limit = moved / bandwidth
    print(f"  {name:22s} {workload:26s} lazyadam {t['lazyadam'] * 1e3:8.2f} ms   "
          f"{label} {t['torch'] * 1e3:8.2f} ms   torch/lazyadam {t['torch'] / t['lazyadam']:6.2f}"
          f"   lazyadam/limit {t['lazyadam'] / limit:5.2f}")
    return t


def state_bytes() -> None:
    print("state bytes per parameter element (D = 64 elements a row):")
    for name, rule in RULES.items():
        for state_dtype in (None, "bfloat16"):
            dtype = "bfloat16" if state_dtype else "float32"
            spec = rule.spec(sparse=True, dtype=dtype, state_dtype=state_dtype,
                             **OPTIONS[name]).validate()
            per = {s.name: s.per for s in rule.state}
            size = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}
            kept = rule.arrays(spec)[1:] + rule.row_arrays(spec)
            total = sum(size[spec.storage(a)] / (64 if per[a] == "row" else 1) for a in kept)
            print(f"  {name:22s} {dtype:9s} state {spec.storage(kept[0]) if kept else '-':9s} "
                  f"{total:7.3f} B")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rules", default=",".join(RULES))
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    scale = 100 if args.small else 1
    print(machine())
    state_bytes()
    with tempfile.TemporaryDirectory() as folder:
        yardsticks = Yardsticks(Path(folder))
        bandwidth = yardsticks.copy_bandwidth(args.rounds, lambda: None)
    print(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s (read + written)")
    rng = np.random.default_rng(0)
    n, rows, dim, nnz = 16 * 2**20 // scale, 1_000_000 // scale, 64, 65_536 // scale
    dense_table = rng.standard_normal((n // dim, dim), dtype=np.float32)
    dense_grad = rng.standard_normal(dense_table.shape, dtype=np.float32)
    indices = zipf_indices(rng, rows, nnz, 1.2)
    values = rng.standard_normal((nnz, dim), dtype=np.float32)
    touched = np.unique(indices).size
    for name in args.rules.split(","):
        rule = RULES[name]
        spec = rule.spec(sparse=True, **OPTIONS[name])
        run(name, f"dense {n:,}", dense_table.copy, dense_grad, args.rounds, args.warmup, bandwidth,
            moved_bytes(rule, spec, n // dim, dim, n // dim, 0))
        small = run(name, f"sparse {rows:,} x {dim}", lambda: zeros((rows, dim), False),
                    (indices, values), args.rounds,
                    args.warmup, bandwidth, moved_bytes(rule, spec, touched, dim, nnz,
                                                        indices.nbytes))
        if not args.skip_large:
            spread = indices * 40 + rng.integers(0, 40, indices.size)
            large = run(name, f"sparse {40 * rows:,} x {dim}",
                        lambda: zeros((40 * rows, dim), False), (spread, values),
                        args.rounds, args.warmup, bandwidth,
                        moved_bytes(rule, spec, touched, dim, nnz, indices.nbytes))
            print(f"  {name:22s} 40x table / 1x table: "
                  f"{large['lazyadam'] / small['lazyadam']:5.2f} (target <= 1.2)")


if __name__ == "__main__":
    main()
