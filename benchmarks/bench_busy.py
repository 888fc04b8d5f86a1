"""CPU steps quiet and beside busy processes: does a step hold its speed when the cores are shared?

    .venv/bin/python benchmarks/bench_busy.py [--loads 0 1 2 3] [--rounds 15] [--torch-first]
    .venv/bin/python benchmarks/bench_busy.py --sweep        # where a second thread starts to pay
    .venv/bin/python benchmarks/bench_busy.py --baseline /work/main   # quiet, against a checkout

Each workload runs quiet and beside 1, 2 and 3 busy processes (`python -c 'while True: pass'`,
started before and stopped after that load's rounds), with three contenders on their own state:
    lazyadam           the default configuration (OpenMP's threads, one below the threshold)
    lazyadam 1 thread  the same kernels built with LAZYADAM_PARALLEL_MIN above any step
    torch              PyTorch's optimizer on the same work
Workloads:
    example      a step of examples/matrix_factorization.py (LazyAdam, two tables, batch 4096)
    sparse       1,000,000 x 64, 65,536 Zipf(1.2) indices (bench_cpu.py's), vs SparseAdam
    dense        16M float32 elements, vs torch.optim.Adam(fused=True)
    torch loop   examples/torch_recommender.py's model in a training loop (forward and backward
                 on torch's threads, then the step); the step is timed, vs SparseAdam + Adam
The contenders run in rounds, one call each per round in a rotating order (bench_cpu.medians),
10 ms apart (threads that spin after one call would otherwise slow the next); figures are medians. Ratios: lazyadam / lazyadam 1 thread (target <= 1.25 at every load), and each
contender's slowdown against its quiet median (lazyadam's target: no more than torch's).

The first kernel is loaded before torch is imported, so that lazyadam starts OpenMP's runtime with
passive waits (lazyadam.targets.c), as in a program that steps lazyadam before it imports torch;
torch then shares that runtime. With --torch-first, torch is imported first and starts the runtime
with its own default (spinning waits), as in a torch training script.

--sweep times lazyadam's dense and sparse (dim 64) kernels at growing sizes on one thread and on
two (every step, -DLAZYADAM_ADAPT=0), quiet and beside one busy process: the thresholds of
`lazyadam.codegen.spec.PARALLEL_MIN`.
--baseline DIR times the default lazyadam quiet, in processes that alternate between this checkout
and the lazyadam of DIR, --repeat times each (main's kernels start OpenMP with its default waits).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import runpy
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

import lazyadam
from lazyadam import HParams, Spec

ROOT = Path(__file__).resolve().parent.parent
#: LAZYADAM_PARALLEL_MIN for the one-thread contender: more elements than any step has.
ONE_THREAD = str(2 ** 62 - 1)
BUSY = "while True: pass"
#: Seconds between timed calls: OpenMP threads that spin after a contender's call (libgomp's default
#: waits, as torch starts it) would otherwise land on the next contender's call.
PAUSE = 0.01


def start_openmp_first() -> None:
    """Loads a kernel, which starts OpenMP's runtime (lazyadam's choice of waits), before torch."""
    lazyadam.compile(Spec(sparse=False))


if "--torch-first" not in sys.argv:
    start_openmp_first()

import torch  # noqa: E402

sys.path.insert(0, str(ROOT / "examples"))
from bench_cpu import SparseAdamStep, medians, torch_adam, zeros, zipf_indices  # noqa: E402
from torch_recommender import (Ratings, Recommender, lazyadam_optimizer,  # noqa: E402
                               torch_optimizers)


@contextlib.contextmanager
def busy(count: int) -> Iterator[None]:
    """`count` processes that spin on the CPU for as long as the block runs."""
    procs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(count)]
    try:
        time.sleep(0.5 if count else 0)
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def parallel_min(elements: str, adapt: bool = True) -> Iterator[None]:
    """Kernels loaded in this block run steps of fewer `elements` on one thread; without `adapt`,
    larger ones always on every thread (-DLAZYADAM_ADAPT=0)."""
    os.environ["LAZYADAM_PARALLEL_MIN"] = elements
    if not adapt:
        os.environ["LAZYADAM_CFLAGS"] = "-DLAZYADAM_ADAPT=0"
    try:
        yield
    finally:
        del os.environ["LAZYADAM_PARALLEL_MIN"]
        os.environ.pop("LAZYADAM_CFLAGS", None)


def one_thread() -> contextlib.AbstractContextManager[None]:
    """Kernels loaded in this block run every step on one thread."""
    return parallel_min(ONE_THREAD)


Contenders = dict[str, Callable[[], None]]


def example() -> Contenders:
    """A step of examples/matrix_factorization.py, on gradients of its first 8 batches."""
    ex = runpy.run_path(str(ROOT / "examples" / "matrix_factorization.py"), run_name="example")
    rng = np.random.default_rng(0)
    u, i, r = ex["synthetic_ratings"](rng, 50_000, 200_000, 32, 400_000)
    contenders: Contenders = {}
    for name, scope in (("lazyadam", contextlib.nullcontext), ("lazyadam 1 thread", one_thread)):
        model = ex["Model"](np.random.default_rng(1), 50_000, 200_000, 32)
        opt, _ = ex["optimizer"](model, 1000)
        grads = [model.loss_and_gradients(u[b], i[b], r[b])[1]
                 for b in (rng.integers(0, len(r), 4096) for _ in range(8))]
        with scope():
            opt(grads[0])  # loads the kernels
        calls = iter(range(10 ** 9))
        contenders[name] = lambda opt=opt, grads=grads, calls=calls: opt(grads[next(calls) % 8])
    return contenders


def sparse() -> Contenders:
    """1M x 64, 65,536 Zipf(1.2) indices, as in bench_cpu.py."""
    shape = (1_000_000, 64)
    indices = zipf_indices(np.random.default_rng(0), shape[0], 65_536, 1.2)
    values = np.random.default_rng(1).standard_normal((indices.size, shape[1]), dtype=np.float32)
    hp = HParams.at_step(1).as_tuple()
    contenders: Contenders = {}
    for name, scope in (("lazyadam", contextlib.nullcontext), ("lazyadam 1 thread", one_thread)):
        with scope():
            step = lazyadam.compile(Spec()).bind(*(zeros(shape, True) for _ in range(3)))
        contenders[name] = lambda step=step: step((indices, values), hp)
    contenders["torch"] = SparseAdamStep(zeros(shape, True), indices, values, True)
    return contenders


def dense() -> Contenders:
    """16M float32 elements, torch's arithmetic (eps_mode="pytorch"), as in bench_cpu.py."""
    rng = np.random.default_rng(0)
    n = 16 * 2 ** 20
    w, g = rng.standard_normal(n, dtype=np.float32), rng.standard_normal(n, dtype=np.float32)
    hp = HParams.at_step(1).as_tuple()
    contenders: Contenders = {}
    for name, scope in (("lazyadam", contextlib.nullcontext), ("lazyadam 1 thread", one_thread)):
        with scope():
            kernel = lazyadam.compile(Spec(sparse=False, eps_mode="pytorch"))
        step = kernel.bind(w.copy(), np.zeros_like(w), np.zeros_like(w))
        contenders[name] = lambda step=step: step(g, hp)
    param = torch.nn.Parameter(torch.from_numpy(w.copy()))
    param.grad = torch.from_numpy(g)
    contenders["torch"] = torch_adam(param)[0].step
    return contenders


class TrainingStep:
    """One iteration of a training loop on torch_recommender's model: forward and backward (torch's
    threads), then the optimizer step, whose time alone is kept in `times`."""

    def __init__(self, make_optimizer: Callable, data: Ratings, batches: int = 4,
                 users: int = 200_000, items: int = 50_000):
        torch.manual_seed(0)
        self.model = Recommender(users, items, 64)
        self.step = make_optimizer(self.model)
        self.batches = [data.batch(b, 2048) for b in range(batches)]
        self.calls, self.times = 0, []

    def __call__(self) -> None:
        users, items, history, ratings = self.batches[self.calls % len(self.batches)]
        self.calls += 1
        self.model.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(self.model(users, items, history), ratings).backward()
        start = time.perf_counter()
        self.step()
        self.times.append(time.perf_counter() - start)


def torch_loop() -> Contenders:
    data = Ratings(200_000, 50_000, 64)

    def ours(model: Recommender) -> Callable[[], None]:
        return lazyadam_optimizer(model, lr=1e-3).step

    def theirs(model: Recommender) -> Callable[[], None]:
        optimizers = torch_optimizers(model, lr=1e-3)
        return lambda: [o.step() for o in optimizers]

    contenders: Contenders = {"lazyadam": TrainingStep(ours, data)}
    with one_thread():
        contenders["lazyadam 1 thread"] = TrainingStep(ours, data)
        contenders["lazyadam 1 thread"]()  # loads its kernels while the variable is set
    contenders["torch"] = TrainingStep(theirs, data)
    return contenders


WORKLOADS = {"example": example, "sparse": sparse, "dense": dense, "torch loop": torch_loop}


def run(name: str, loads: list[int], rounds: int, warmup: int) -> None:
    contenders = WORKLOADS[name]()
    table: dict[int, dict[str, float]] = {}
    for load in loads:
        with busy(load):
            t = medians(contenders, rounds, warmup, lambda: time.sleep(PAUSE))
        for label, fn in contenders.items():
            if isinstance(fn, TrainingStep):  # the step's own time, not the iteration's
                t[label] = statistics.median(fn.times[-rounds:])
        table[load] = t
    labels = list(contenders)
    print(f"\n{name}: medians of {rounds} rounds, ms per step")
    print(f"  {'busy':>4s} " + " ".join(f"{label:>18s}" for label in labels)
          + f" {'default / 1 thread':>19s}" + "".join(f" {'slowdown ' + label:>26s}"
                                                     for label in ("lazyadam", "torch")
                                                     if label in labels))
    for load, t in table.items():
        slow = "".join(f" {t[label] / table[loads[0]][label]:25.2f}x"
                       for label in ("lazyadam", "torch") if label in labels)
        print(f"  {load:4d} " + " ".join(f"{t[label] * 1e3:18.3f}" for label in labels)
              + f" {t['lazyadam'] / t['lazyadam 1 thread']:18.2f}x" + slow)
    del contenders
    gc.collect()


def sweep(rounds: int) -> None:
    """One thread against two, quiet and beside one busy process, at growing sizes."""
    rng = np.random.default_rng(0)
    hp = HParams.at_step(1).as_tuple()
    print("\nsweep: medians of interleaved calls, us per step; ratio = 2 threads / 1 thread")
    for kind, sizes in (("dense", [2 ** k for k in range(14, 23)]),
                        ("sparse", [2 ** k for k in range(8, 16)])):
        for size in sizes:
            contenders: Contenders = {}
            for threads, elements in (("1", ONE_THREAD), ("2", "0")):
                with parallel_min(elements, adapt=False):
                    kernel = lazyadam.compile(Spec(sparse=kind == "sparse"))
                if kind == "dense":
                    w = rng.standard_normal(size, dtype=np.float32)
                    step = kernel.bind(w, np.zeros_like(w), np.zeros_like(w))
                    grad = rng.standard_normal(size, dtype=np.float32)
                else:
                    table = np.zeros((200_000, 64), np.float32)
                    step = kernel.bind(table, np.zeros_like(table), np.zeros_like(table))
                    grad = (zipf_indices(rng, 200_000, size, 1.2),
                            rng.standard_normal((size, 64), dtype=np.float32))
                contenders[threads] = lambda step=step, grad=grad: step(grad, hp)
            elements = size if kind == "dense" else size * 64
            cells = []
            for load in (0, 1):
                with busy(load):
                    t = medians(contenders, rounds, 5)
                cells.append(f"busy {load}: {t['1'] * 1e6:9.1f} {t['2'] * 1e6:9.1f} "
                             f"ratio {t['2'] / t['1']:5.2f}")
            print(f"  {kind:6s} {elements:>10,} elements   " + "   ".join(cells))


BASELINE_CHILD = """
import json, sys, time
sys.path[:0] = [sys.argv[1], {site!r}, {benchmarks!r}]
import numpy as np
import lazyadam
from lazyadam import HParams, Spec
lazyadam.compile(Spec(sparse=False))
from bench_cpu import medians, zeros, zipf_indices
hp = HParams.at_step(1).as_tuple()
n = 16 * 2 ** 20
w = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
dense = lazyadam.compile(Spec(sparse=False, eps_mode="pytorch")).bind(w, np.zeros_like(w),
                                                                      np.zeros_like(w))
indices = zipf_indices(np.random.default_rng(0), 1_000_000, 65_536, 1.2)
values = np.random.default_rng(1).standard_normal((indices.size, 64), dtype=np.float32)
sparse = lazyadam.compile(Spec()).bind(*(zeros((1_000_000, 64), True) for _ in range(3)))
small_i = indices[:4096] % 200_000
small_v = values[:4096, :32].copy()
small = lazyadam.compile(Spec()).bind(*(np.zeros((200_000, 32), np.float32) for _ in range(3)))
print(json.dumps(medians({{"dense 16M": lambda: dense(w, hp),
                          "sparse 1M x 64": lambda: sparse((indices, values), hp),
                          "sparse 4096 x 32 (the example's size)": lambda: small((small_i, small_v), hp)}},
                         {rounds}, 5)))
"""


def baseline(other: Path, repeat: int, rounds: int) -> None:
    """The default lazyadam quiet: this checkout and `other`, in alternating processes."""
    script = BASELINE_CHILD.format(site=sysconfig.get_paths()["purelib"],
                                   benchmarks=str(ROOT / "benchmarks"), rounds=rounds)
    results: dict[str, list[dict[str, float]]] = {"this": [], str(other): []}
    for _ in range(repeat):
        for label, path in (("this", ROOT), (str(other), other)):
            # -S: no site hooks, so that the editable install of this checkout stays out
            out = subprocess.run([sys.executable, "-S", "-c", script, str(path)], check=True,
                                 capture_output=True, text=True).stdout
            results[label].append(json.loads(out.splitlines()[-1]))
    print(f"\nquiet, default configuration: medians over {repeat} alternating processes of each "
          f"process's median of {rounds} calls, ms")
    for name in results["this"][0]:
        ours = statistics.median(r[name] for r in results["this"])
        theirs = statistics.median(r[name] for r in results[str(other)])
        print(f"  {name:40s} this {ours * 1e3:9.3f}  {other} {theirs * 1e3:9.3f}  "
              f"ratio {ours / theirs:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loads", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--only", choices=list(WORKLOADS), nargs="+", default=list(WORKLOADS))
    parser.add_argument("--torch-first", action="store_true",
                        help="import torch before any kernel (torch starts OpenMP's runtime)")
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--baseline", type=Path, help="another checkout to compare, quiet")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), "?")
    print(f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} "
          f"threads), OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, OpenMP started "
          f"by {'torch' if args.torch_first else 'lazyadam'}; load average before: "
          f"{open('/proc/loadavg').read().split()[0]}")
    if args.sweep:
        sweep(args.rounds)
        return
    if args.baseline:
        baseline(args.baseline, args.repeat, args.rounds)
        return
    for name in args.only:
        run(name, args.loads, args.rounds, args.warmup)


if __name__ == "__main__":
    main()
