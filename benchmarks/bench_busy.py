"""CPU steps quiet and beside busy processes: does a step hold its speed when the cores are shared?

    .venv/bin/python benchmarks/bench_busy.py [--loads 0 1 2 3] [--rounds 15] [--torch-first]
    .venv/bin/python benchmarks/bench_busy.py --sweep              # where a second thread pays
    .venv/bin/python benchmarks/bench_busy.py --baseline /work/main  # against another checkout

Each workload runs quiet and beside 1, 2 and 3 busy processes (`python -c 'while True: pass'`,
started before and stopped after that load's rounds), with three contenders on their own state:
    lazyadam           the default configuration (OpenMP's threads, one below the threshold)
    lazyadam 1 thread  the same kernels built with LAZYADAM_PARALLEL_MIN above any step
    torch              PyTorch's optimizer on the same work
Workloads:
    example      a step of examples/matrix_factorization.py's optimizer (LazyAdam, two embedding
                 tables and a dense matrix, batch 4096)
    sparse       1,000,000 x 64, 65,536 Zipf(1.2) indices (bench_cpu.py's), vs SparseAdam
    dense        16M float32 elements, vs torch.optim.Adam(fused=True)
    torch loop   examples/torch_recommender.py's model in a training loop (forward and backward
                 on torch's threads, then the step); the step is timed, vs SparseAdam + Adam
The contenders run in rounds, one call each per round in a rotating order (bench_cpu.medians),
10 ms apart; figures are medians. Ratios: lazyadam / lazyadam 1 thread (target <= 1.25 at every
load), and each contender's slowdown against its quiet median (lazyadam's target: no more than
torch's).

torch is imported and its intra-op pool warmed before the timing. By default the first kernel is
loaded before torch is imported, so that lazyadam starts OpenMP's runtime with passive waits
(lazyadam.targets.c), and torch, which ships a libgomp.so.1 of its own, shares that runtime. With
--torch-first, torch is imported first and starts the runtime with its default (spinning) waits, as
in a training script that imports torch before any kernel is loaded.

--sweep times the dense and sparse (dim 64) kernels at growing sizes on one thread and on two
(parallel_min 0), interleaved, quiet and beside one busy process: the thresholds of
`lazyadam.codegen.spec.PARALLEL_MIN`.
--baseline DIR times the default lazyadam of this checkout and of DIR (e.g. a checkout of main) in
processes that alternate between the two, --repeat times each, at each of --loads: compare them
only within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
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
#: Seconds between timed calls.
PAUSE = 0.01

if "--torch-first" not in sys.argv:
    lazyadam.compile(Spec(sparse=False))  # starts OpenMP's runtime (lazyadam's waits) before torch

import torch  # noqa: E402

sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_cpu import SparseAdamStep, medians, torch_adam, zeros, zipf_indices  # noqa: E402
from torch_recommender import (Ratings, Recommender, lazyadam_optimizer,  # noqa: E402
                               torch_optimizers)


def warm_torch() -> None:
    """Runs an op on torch's intra-op threads, so that its pool is started and warm."""
    x = torch.randn(2 ** 20)
    for _ in range(3):
        (x * 2.0).sum()


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
def parallel_min(elements: str) -> Iterator[None]:
    """Kernels loaded in this block run steps of fewer `elements` on one thread."""
    os.environ["LAZYADAM_PARALLEL_MIN"] = elements
    try:
        yield
    finally:
        del os.environ["LAZYADAM_PARALLEL_MIN"]


def one_thread() -> contextlib.AbstractContextManager[None]:
    """Kernels loaded in this block run every step on one thread."""
    return parallel_min(ONE_THREAD)


Contenders = dict[str, Callable[[], None]]


def example_step() -> Callable[[], None]:
    """A step of examples/matrix_factorization.py's optimizer (its parameters, groups, schedule
    and batch size), cycling over the gradients of 8 batches; loads its kernels."""
    from lazyadam import LazyAdam
    from lazyadam.schedules import CosineDecayLR
    sys.path.insert(0, str(ROOT / "examples"))
    from matrix_factorization import Model, synthetic_ratings
    rng = np.random.default_rng(0)
    u, i, r = synthetic_ratings(rng, 50_000, 200_000, 32, 400_000)
    model = Model(np.random.default_rng(1), 50_000, 200_000, 32)
    opt = LazyAdam([{"params": [model.P, model.Q], "weight_decay": 1e-5},
                    {"params": [model.W, model.b], "grad_centralization": True}],
                   learning_rate=CosineDecayLR(min_lr=0.002, max_lr=0.02, decay_steps=1000))
    grads = [model.loss_and_gradients(u[b], i[b], r[b])[1]
             for b in (rng.integers(0, len(r), 4096) for _ in range(8))]
    opt(grads[0])
    calls = iter(range(10 ** 9))
    return lambda: opt(grads[next(calls) % 8])


def example() -> Contenders:
    contenders: Contenders = {"lazyadam": example_step()}
    with one_thread():
        contenders["lazyadam 1 thread"] = example_step()
    return contenders


def sparse_data() -> tuple[np.ndarray, np.ndarray]:
    """bench_cpu.py's 1M x 64 step: 65,536 Zipf(1.2) indices and their rows."""
    indices = zipf_indices(np.random.default_rng(0), 1_000_000, 65_536, 1.2)
    values = np.random.default_rng(1).standard_normal((indices.size, 64), dtype=np.float32)
    return indices, values


def sparse() -> Contenders:
    """1M x 64, 65,536 Zipf(1.2) indices, as in bench_cpu.py."""
    shape = (1_000_000, 64)
    indices, values = sparse_data()
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
    print(f"\n{name}: medians of {rounds} rounds, ms per step (load average now "
          f"{os.getloadavg()[0]:.2f})")
    print(f"  {'busy':>4s} " + " ".join(f"{label:>18s}" for label in labels)
          + f" {'default / 1 thread':>19s}" + "".join(f" {'slowdown ' + label:>26s}"
                                                     for label in ("lazyadam", "torch")
                                                     if label in labels))
    for load, t in table.items():
        slow = "".join(f" {t[label] / table[loads[0]][label]:25.2f}x"
                       for label in ("lazyadam", "torch") if label in labels)
        print(f"  {load:4d} " + " ".join(f"{t[label] * 1e3:18.3f}" for label in labels)
              + f" {t['lazyadam'] / t['lazyadam 1 thread']:18.2f}x" + slow, flush=True)
    del contenders
    gc.collect()


def sweep(rounds: int) -> None:
    """One thread against two, quiet and beside one busy process, at growing sizes."""
    rng = np.random.default_rng(0)
    hp = HParams.at_step(1).as_tuple()
    print("\nsweep: medians of interleaved calls, us per step; ratio = 2 threads / 1 thread")
    for kind, sizes in (("dense", [2 ** k for k in range(15, 23)]),
                        ("sparse", [2 ** k for k in range(9, 16)])):
        for size in sizes:
            contenders: Contenders = {}
            for threads, elements in (("1", int(ONE_THREAD)), ("2", 0)):
                kernel = lazyadam.compile(Spec(sparse=kind == "sparse", parallel_min=elements))
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
                    t = medians(contenders, rounds, 5, lambda: time.sleep(0.001))
                cells.append(f"busy {load}: {t['1'] * 1e6:9.1f} {t['2'] * 1e6:9.1f} "
                             f"ratio {t['2'] / t['1']:5.2f}")
            print(f"  {kind:6s} {elements:>10,} elements   " + "   ".join(cells), flush=True)


#: Run by --baseline with the lazyadam of the checkout in argv[1]: the default configuration's
#: medians, as JSON, with torch imported and warm as in the main run.
BASELINE_CHILD = """
import json, sys
checkout, rounds = sys.argv[1], int(sys.argv[2])
sys.path[:0] = [checkout, {here!r}]
sys.argv[1:] = sys.argv[3:]  # --torch-first, for bench_busy's import
import bench_busy as b
assert b.lazyadam.__file__.startswith(checkout), b.lazyadam.__file__
b.warm_torch()
import numpy as np
from lazyadam import HParams, Spec
hp = HParams.at_step(1).as_tuple()
n = 16 * 2 ** 20
w = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
dense = b.lazyadam.compile(Spec(sparse=False, eps_mode="pytorch")).bind(w, np.zeros_like(w),
                                                                        np.zeros_like(w))
indices, values = b.sparse_data()
sparse = b.lazyadam.compile(Spec()).bind(*(b.zeros((1_000_000, 64), True) for _ in range(3)))
contenders = {{"example": b.example_step(), "sparse 1M x 64": lambda: sparse((indices, values), hp),
              "dense 16M": lambda: dense(w, hp)}}
print(json.dumps(b.medians(contenders, rounds, 3, lambda: b.time.sleep(b.PAUSE))))
"""


def baseline(other: Path, loads: list[int], repeat: int, rounds: int, torch_first: bool) -> None:
    """The default lazyadam of this checkout and of `other`, in alternating processes."""
    script = BASELINE_CHILD.format(here=str(ROOT / "benchmarks"))
    labels = ("this", str(other))
    for load in loads:
        results: dict[str, list[dict[str, float]]] = {label: [] for label in labels}
        with busy(load):
            for r in range(repeat):
                for label, path in (zip(labels, (ROOT, other)) if r % 2 == 0
                                    else reversed(list(zip(labels, (ROOT, other))))):
                    args = [str(path), str(rounds), *(["--torch-first"] if torch_first else [])]
                    # -S: no site hooks, so that an editable install of this checkout stays out
                    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
                    env["PYTHONPATH"] = os.pathsep.join(
                        p for p in sys.path if p.endswith("site-packages"))
                    proc = subprocess.run([sys.executable, "-S", "-c", script, *args],
                                          capture_output=True, text=True, env=env)
                    if proc.returncode:
                        sys.exit(f"{path}: {proc.stderr}")
                    results[label].append(json.loads(proc.stdout.splitlines()[-1]))
        print(f"\nbeside {load} busy processes (load average now {os.getloadavg()[0]:.2f}): "
              f"medians over {repeat} alternating processes of each one's median of {rounds} "
              "calls, ms")
        for name in results["this"][0]:
            ours = statistics.median(r[name] for r in results["this"])
            theirs = statistics.median(r[name] for r in results[str(other)])
            print(f"  {name:16s} this {ours * 1e3:9.3f}  {other} {theirs * 1e3:9.3f}  "
                  f"ratio {ours / theirs:5.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loads", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--only", choices=list(WORKLOADS), nargs="+", default=list(WORKLOADS))
    parser.add_argument("--torch-first", action="store_true",
                        help="import torch before any kernel (torch starts OpenMP's runtime)")
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--baseline", type=Path, help="another checkout to compare against")
    parser.add_argument("--repeat", type=int, default=6)
    args = parser.parse_args()
    warm_torch()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), "?")
    print(f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} "
          f"threads), OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, OpenMP started "
          f"by {'torch' if args.torch_first else 'lazyadam'}; load average before: "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    if args.sweep:
        sweep(args.rounds)
    elif args.baseline:
        baseline(args.baseline, args.loads, args.repeat, args.rounds, args.torch_first)
    else:
        for name in args.only:
            run(name, args.loads, args.rounds, args.warmup)


if __name__ == "__main__":
    main()
