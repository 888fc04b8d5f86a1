"""The first step over many tiny parameters: its time and the memory it takes, against torch Adam.

`--params` float32 parameters of `--shape` (100,000 of 4 elements by default), each with a dense
gradient, are stepped once by

    torch      `torch.optim.Adam` (its default implementation), on torch tensors
    lazyadam.torch   `lazyadam.torch.LazyAdam`, on the same kind of tensors
    lazyadam   `lazyadam.LazyAdam` (MindSpore's API), on numpy arrays

each in a process of its own, so that each resident-memory figure is that contender's alone. A
process makes the parameters and their gradients, then measures

    first step   making the optimizer plus its first step (where lazyadam makes each parameter's
                 state and binds its kernel, and torch Adam makes its state): its wall-clock time,
                 and the CPU time of the process meanwhile (all its threads), which other jobs
                 on a shared machine disturb less
    later step   the second step, for scale
    memory       growth of the resident set (VmRSS) from before the optimizer was made to after
                 its first step

The kernels come from the disk cache (a warm-up process fills it), as in any run after the first
on a machine. After the warm-up, `--rounds` rounds run the three processes each, in an order that
rotates every round so that noise on a shared machine hits all alike; the figures are medians over
the rounds, and the ratios are lazyadam's medians over torch's, within this one run.

    .venv/bin/python benchmarks/bench_many_params.py
    .venv/bin/python benchmarks/bench_many_params.py --params 10000 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

CONTENDERS = ("torch", "lazyadam.torch", "lazyadam")


def rss_bytes() -> int:
    """The resident set of this process (VmRSS), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def child(contender: str, count: int, shape: tuple[int, ...]) -> dict:
    """Runs one contender in this process; returns its figures."""
    import numpy as np
    import torch

    torch.manual_seed(0)
    if contender == "lazyadam":
        import lazyadam
        params = [lazyadam.Parameter(np.random.default_rng(i).standard_normal(shape, np.float32),
                                     name=f"p{i}") for i in range(count)]
        grads = tuple(np.full(shape, 0.5, np.float32) for _ in range(count))
        before = rss_bytes()
        start = time.perf_counter()
        cpu = time.process_time()
        opt = lazyadam.LazyAdam(params, learning_rate=1e-3)
        opt(grads)
        first = time.perf_counter() - start
        first_cpu = time.process_time() - cpu
        after = rss_bytes()
        start = time.perf_counter()
        opt(grads)
        later = time.perf_counter() - start
    else:
        params = [torch.nn.Parameter(torch.randn(shape)) for _ in range(count)]
        for p in params:
            p.grad = torch.full(shape, 0.5)
        make = torch.optim.Adam
        if contender == "lazyadam.torch":
            import lazyadam.torch
            make = lazyadam.torch.LazyAdam
        before = rss_bytes()
        start = time.perf_counter()
        cpu = time.process_time()
        opt = make(params, lr=1e-3)
        opt.step()
        first = time.perf_counter() - start
        first_cpu = time.process_time() - cpu
        after = rss_bytes()
        start = time.perf_counter()
        opt.step()
        later = time.perf_counter() - start
    return {"first_s": first, "first_cpu_s": first_cpu, "later_s": later,
            "rss_growth_bytes": after - before}


def run_child(contender: str, args: argparse.Namespace) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", contender,
                           "--params", str(args.params), "--shape", args.shape],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{contender} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=int, default=100_000)
    parser.add_argument("--shape", default="4", help="comma-separated, e.g. 4 or 2,3")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = tuple(int(n) for n in args.shape.split(","))
    if args.child:
        print(json.dumps(child(args.child, args.params, shape)))
        return

    print(f"# {args.params:,} float32 parameters of shape {shape}, {args.rounds} rounds; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    subprocess.run([sys.executable, __file__, "--child", "lazyadam", "--params", "1",
                    "--shape", args.shape], check=True, capture_output=True)
    results: dict[str, list[dict]] = {c: [] for c in CONTENDERS}
    for r in range(args.rounds):
        order = CONTENDERS[r % 3:] + CONTENDERS[:r % 3]
        for contender in order:
            results[contender].append(run_child(contender, args))
            found = results[contender][-1]
            print(f"round {r}: {contender:15s} first step {found['first_s']:8.3f} s "
                  f"({found['first_cpu_s']:.3f} s CPU), later "
                  f"{found['later_s']:7.3f} s, memory +{found['rss_growth_bytes'] / 2**20:7.1f} MiB",
                  flush=True)

    def median(contender: str, field: str) -> float:
        return statistics.median(found[field] for found in results[contender])

    print(f"\n{'contender':15s} {'first step s':>12s} {'CPU s':>6s} {'later s':>8s} "
          f"{'memory MiB':>10s} {'B/param':>8s} {'first/torch':>11s} {'CPU/torch':>9s} "
          f"{'memory/torch':>12s}")
    for contender in CONTENDERS:
        first, later = median(contender, "first_s"), median(contender, "later_s")
        cpu, memory = median(contender, "first_cpu_s"), median(contender, "rss_growth_bytes")
        print(f"{contender:15s} {first:12.3f} {cpu:6.2f} {later:8.3f} {memory / 2**20:10.1f} "
              f"{memory / args.params:8.0f} {first / median('torch', 'first_s'):11.2f} "
              f"{cpu / median('torch', 'first_cpu_s'):9.2f} "
              f"{memory / median('torch', 'rss_growth_bytes'):12.2f}")


if __name__ == "__main__":
    main()
