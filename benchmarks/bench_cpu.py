"""CPU benchmarks of the C target against memory-traffic yardsticks and PyTorch, in one process.

    .venv/bin/python benchmarks/bench_cpu.py [--rounds 30] [--warmup 5] [--cold] [--skip-large]
                                             [--json PATH]

- dense float32, 16M elements, one step each of
      lazyadam    the generated dense kernel (eps placed as PyTorch does, to do torch's arithmetic)
      yardstick   a C loop that reads 4 arrays, writes 3 and computes nothing else, built with
                  the same compiler, flags and OpenMP loop as the kernels: the memory-traffic limit
      torch       `torch.optim.Adam(fused=True)` (foreach, with a note, where fused is refused)
- lazy sparse float32, the workloads of issue 8 (row ids drawn from a Zipf law over the rows,
  p(k-th most frequent) ~ 1/k^s, which row is k-th random; duplicates included):
      1,000,000 x 64, 65,536 Zipf(1.2) indices
      10,000,000 x 128, 262,144 Zipf(1.1) indices
  one step each of
      lazyadam    the generated sparse kernel (`Spec()`: groups duplicates, updates touched rows)
      SparseAdam  `torch.optim.SparseAdam` (eps placed as MindSpore does, like the default spec)
      composite   torch's `unique` + `index_add_` to sum duplicates, then Adam on the gathered
                  rows and `index_copy_` back: what a torch user would write by hand
      moving the bytes  a C loop that reads every gradient row once, in order, and reads and writes
                  each touched row once, in no particular order: the traffic limit's bytes with
                  this machine's cost of random row accesses, and nothing else
  against the traffic limit: the bytes a step must move (each touched row of var, m, v read and
  written once, every gradient row and index read once) at the bandwidth of a copy measured in the
  same run (an OpenMP C loop built like the kernels, 256 MiB to 256 MiB). The 1M x 64 tables and
  states are numpy arrays on transparent huge pages, as numpy makes them (and lazyadam also runs on
  4 KiB pages, as PyTorch allocates by default); the 10M x 128 ones have pages made only where a step
  touches them, 4 KiB each, so that they fit in memory side by side. And the 1M x 64 batch on a
  40x larger table (40,000,000 x 64: each row id r becomes 40 r + a random offset below 40, so the
  duplicates and the bytes touched are the same), against the 1M table in one interleaved run.

Each contender runs on its own copy of the state. After a warm-up, the contenders run in rounds,
one call each per round in a rotating order, so that noise hits all alike; the figures are medians of
the per-call times. With `--cold`, 64 MiB are written before every timed call, so that every call
starts with its data out of cache. Before timing, one step of each contender from the same state is
compared, so that the figures are known to be for the same work. Tables start at zero; torch's
optimizers get their state on the same pages as the tables (see `zeros`). With `--json PATH`, the
medians are also written to PATH (`record.py`; `plot.py` draws them).
"""
from __future__ import annotations

import argparse
import mmap
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

import cffi
import numpy as np
import torch

import lazyadam
from lazyadam import HParams, Spec
from lazyadam.targets import c
from record import Recorder

YARDSTICK = r"""
#include <stdint.h>
#define CHUNK 4096

/* The traffic of one dense Adam step (read var, m, v, grad; write var, m, v) and no arithmetic to
 * speak of, split over threads as the dense kernel splits its loop (chunks on var's cache lines). */
void traffic(float *restrict var, float *restrict m, float *restrict v, const float *restrict grad,
             int64_t n)
{
    const int64_t skew = (int64_t)(((uintptr_t)var / sizeof *var) % (64 / sizeof *var));
    const int64_t chunks = (n + skew + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < chunks; c++) {
        const int64_t begin = c * CHUNK - skew > 0 ? c * CHUNK - skew : 0;
        const int64_t end = (c + 1) * CHUNK - skew < n ? (c + 1) * CHUNK - skew : n;
#pragma omp simd
        for (int64_t i = begin; i < end; i++) {
            const float g = grad[i];
            var[i] += g;
            m[i] += g;
            v[i] += g;
        }
    }
}

/* The bytes of one lazy sparse step moved and nothing else: every gradient row read once, in order,
 * and each touched row of var, m, v read and written once, in no particular order (`touched` lists
 * them, without repeats). What the traffic limit costs with this machine's random row accesses. */
void sparse_traffic(float *restrict var, float *restrict m, float *restrict v,
                    const int64_t *restrict touched, int64_t ntouched, int64_t row_size,
                    const float *restrict values, int64_t nnz, float *restrict sink)
{
    float sum = 0.0f;
#pragma omp parallel for simd schedule(static) reduction(+:sum)
    for (int64_t i = 0; i < nnz * row_size; i++)
        sum += values[i];
    *sink = sum;
#pragma omp parallel for schedule(static)
    for (int64_t s = 0; s < ntouched; s++) {
        float *restrict w = var + touched[s] * row_size, *restrict a = m + touched[s] * row_size,
              *restrict b = v + touched[s] * row_size;
#pragma omp simd
        for (int64_t j = 0; j < row_size; j++) {
            w[j] += 1.0f;
            a[j] += 1.0f;
            b[j] += 1.0f;
        }
    }
}

/* A copy from src to dst, split over the threads: the bandwidth the limit of a sparse step uses. */
void copy(float *restrict dst, const float *restrict src, int64_t n)
{
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; i++)
        dst[i] = src[i];
}
"""


class Yardsticks:
    """The loops of `YARDSTICK`, compiled as the C target compiles, on numpy arrays."""

    def __init__(self, folder: Path):
        src, lib = folder / "traffic.c", folder / "traffic.so"
        src.write_text(YARDSTICK)
        subprocess.run([*c.compiler(), *c.flags(), str(src), "-o", str(lib)], check=True)
        self.ffi = cffi.FFI()
        self.ffi.cdef("void traffic(float *, float *, float *, const float *, int64_t);"
                      "void sparse_traffic(float *, float *, float *, const int64_t *, int64_t, "
                      "int64_t, const float *, int64_t, float *);"
                      "void copy(float *, const float *, int64_t);")
        self.lib = self.ffi.dlopen(str(lib))

    def dense(self, var: np.ndarray, m: np.ndarray, v: np.ndarray,
              grad: np.ndarray) -> Callable[[], None]:
        args = [self.ffi.from_buffer("float[]", a) for a in (var, m, v, grad)]
        return lambda: self.lib.traffic(*args, var.size)

    def sparse(self, var: np.ndarray, m: np.ndarray, v: np.ndarray, indices: np.ndarray,
               values: np.ndarray) -> Callable[[], None]:
        touched = np.unique(indices)
        np.random.default_rng(1).shuffle(touched)  # in no particular order, as a kernel may visit them
        ffi, rows = self.ffi, var.shape[0]
        args = [*(ffi.from_buffer("float[]", a) for a in (var, m, v)),
                ffi.from_buffer("int64_t[]", touched), touched.size, var.size // rows,
                ffi.from_buffer("float[]", values), indices.size, ffi.new("float[1]")]
        return lambda: self.lib.sparse_traffic(*args)

    def copy_bandwidth(self, rounds: int, before: Callable[[], None],
                       clock: Callable[[], float] = time.perf_counter) -> float:
        """Bytes per second (read plus written) of a 256 MiB copy: median of `rounds` copies (timed
        by `clock`, see `medians`)."""
        src = np.ones(64 * 2**20, np.float32)
        dst = np.zeros_like(src)
        args = (self.ffi.from_buffer("float[]", dst), self.ffi.from_buffer("float[]", src), src.size)
        seconds = medians({"copy": lambda: self.lib.copy(*args)}, rounds, 2, before, clock)["copy"]
        return 2 * src.nbytes / seconds


def medians(contenders: dict[str, Callable[[], None]], rounds: int, warmup: int,
            before: Callable[[], None] = lambda: None,
            clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median seconds per call of each contender, timed in interleaved rounds after a warm-up;
    `before()` runs, untimed, before each timed call. `clock` reads the time (wall time; e.g.
    `time.thread_time` for the CPU time of calls that run on the calling thread alone)."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            before()
            start = clock()
            contenders[name]()
            times[name].append(clock() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def torch_adam(param: torch.nn.Parameter) -> tuple[torch.optim.Optimizer, str]:
    """`Adam(fused=True)` if this torch runs it on CPU, else `Adam(foreach=True)`; and its label."""
    try:
        opt = torch.optim.Adam([param], lr=1e-3, fused=True)
        opt.step()
        return opt, "torch Adam(fused=True)"
    except RuntimeError as err:
        print(f"  note: torch {torch.__version__} refuses fused Adam on CPU ({err}); using foreach")
        return torch.optim.Adam([param], lr=1e-3, foreach=True), "torch Adam(foreach=True)"


def relative_error(ours: np.ndarray, theirs: torch.Tensor) -> float:
    theirs = theirs.detach().numpy()
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def evictor(cold: bool) -> Callable[[], None]:
    """With `cold`, a function that writes 64 MiB (twice the L3 cache of the machines measured), so
    that the next call finds none of its data in cache, as after a forward and backward pass."""
    if not cold:
        return lambda: None
    junk = np.zeros(16 * 2**20, np.float32)

    def evict() -> None:
        junk[::16] += 1.0
    return evict


def dense(n: int, rounds: int, warmup: int, yardsticks: Yardsticks,
          before: Callable[[], None], recorder: Recorder) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal(n, dtype=np.float32)
    g = rng.standard_normal(n, dtype=np.float32)
    hp = HParams.at_step(1).as_tuple()

    kernel = lazyadam.compile(Spec(sparse=False, eps_mode="pytorch"))
    ours = [w.copy(), np.zeros_like(w), np.zeros_like(w)]
    step = kernel.bind(*ours)
    traffic = yardsticks.dense(w.copy(), np.zeros_like(w), np.zeros_like(w), g)
    param = torch.nn.Parameter(torch.from_numpy(w.copy()))
    param.grad = torch.from_numpy(g)
    opt, label = torch_adam(param)

    moved = 7 * 4 * n
    print(f"dense float32, n = {n:,} ({moved / 2**20:.0f} MiB moved per step); "
          f"medians of {rounds} rounds")
    step(g, hp)
    print(f"  one step from the same state: lazyadam vs {label}, max relative difference "
          f"{relative_error(ours[0], param):.1e}")
    t = medians({"lazyadam": lambda: step(g, hp), "yardstick": traffic, "torch": opt.step},
                rounds, warmup, before)
    for name, shown in (("lazyadam", "lazyadam dense kernel"),
                        ("yardstick", "yardstick (4 reads, 3 writes)"), ("torch", label)):
        print(f"  {shown:32s} {t[name] * 1e3:8.2f} ms  {moved / t[name] / 1e9:6.1f} GB/s")
    print(f"  lazyadam speed / yardstick speed   {t['yardstick'] / t['lazyadam']:6.3f}   "
          "(target >= 0.95)")
    print(f"  lazyadam speed / torch speed       {t['torch'] / t['lazyadam']:6.3f}   (target >= 1)")
    recorder.add(f"dense float32, {n:,} elements",
                 {"lazyadam": t["lazyadam"], label: t["torch"], "yardstick": t["yardstick"]},
                 {"lazyadam": "lazyadam", label: "torch", "yardstick": "yardstick"})


def zipf_indices(rng: np.random.Generator, rows: int, nnz: int, exponent: float) -> np.ndarray:
    """`nnz` row ids with p(k-th most frequent) ~ 1/k^exponent; which row is k-th is random."""
    p = np.arange(1, rows + 1, dtype=np.float64) ** -exponent
    return rng.permutation(rows)[rng.choice(rows, nnz, p=p / p.sum())].astype(np.int64)


def zeros(shape: tuple[int, ...], huge_pages: bool) -> np.ndarray:
    """float32 zeros for a table or its state, on 2 MiB pages or on 4 KiB pages.

    With huge pages: numpy's own array, which asks the kernel for transparent huge pages, as a
    numpy (or MindSpore-style) user's table gets them. Without: an anonymous mapping with huge
    pages turned off, as PyTorch allocates by default, whose pages exist only where a step touches
    them, so that tables larger than memory fit (with huge pages every touched row would make
    2 MiB: 21 GiB a state array for the 40x table). The TLB then misses on every row.
    """
    if huge_pages:
        return np.zeros(shape, np.float32)
    count = int(np.prod(shape))
    block = mmap.mmap(-1, max(count * 4, 1))
    block.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(block, np.float32, count).reshape(shape)


def traffic_bytes(indices: np.ndarray, dim: int) -> int:
    """What a lazy sparse step must move: each touched row of var, m, v read and written once, and
    every gradient row and index read once."""
    unique = np.unique(indices).size
    return 6 * unique * dim * 4 + indices.size * (dim * 4 + indices.itemsize)


class SparseAdamStep:
    """`torch.optim.SparseAdam` on a table, its state made as the table is (see `zeros`)."""

    def __init__(self, table: np.ndarray, indices: np.ndarray, values: np.ndarray,
                 huge_pages: bool):
        self.param = torch.nn.Parameter(torch.from_numpy(table))
        self.opt = torch.optim.SparseAdam([self.param], lr=1e-3)
        self.opt.state[self.param] = {
            "step": 0, "exp_avg": torch.from_numpy(zeros(table.shape, huge_pages)),
            "exp_avg_sq": torch.from_numpy(zeros(table.shape, huge_pages))}
        self.grad = torch.sparse_coo_tensor(torch.from_numpy(indices)[None],
                                            torch.from_numpy(values), table.shape,
                                            check_invariants=True)

    def __call__(self) -> None:
        self.param.grad = self.grad
        self.opt.step()


class CompositeStep:
    """Adam on the rows of a sparse gradient with torch's own ops: `unique` and `index_add_` sum
    the duplicates, then the touched rows are gathered, updated (eps as MindSpore places it) and
    written back with `index_copy_`."""

    def __init__(self, table: np.ndarray, indices: np.ndarray, values: np.ndarray,
                 huge_pages: bool, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        self.w = torch.from_numpy(table)
        self.m = torch.from_numpy(zeros(table.shape, huge_pages))
        self.v = torch.from_numpy(zeros(table.shape, huge_pages))
        self.indices, self.values = torch.from_numpy(indices), torch.from_numpy(values)
        self.lr, self.betas, self.eps, self.t = lr, betas, eps, 0

    def __call__(self) -> None:
        self.t = min(self.t + 1, 1)  # every timed call is a first step, as for the others
        beta1, beta2 = self.betas
        rows, inverse = torch.unique(self.indices, return_inverse=True)
        g = torch.zeros((rows.numel(), self.values.shape[1])).index_add_(0, inverse, self.values)
        m = self.m.index_select(0, rows).mul_(beta1).add_(g, alpha=1 - beta1)
        v = self.v.index_select(0, rows).mul_(beta2).addcmul_(g, g, value=1 - beta2)
        step = self.lr * (1 - beta2 ** self.t) ** 0.5 / (1 - beta1 ** self.t)
        w = self.w.index_select(0, rows).addcdiv_(m, v.sqrt().add_(self.eps), value=-step)
        self.m.index_copy_(0, rows, m)
        self.v.index_copy_(0, rows, v)
        self.w.index_copy_(0, rows, w)


def sparse(name: str, table_shape: tuple[int, int], indices: np.ndarray, exponent: float,
           rounds: int, warmup: int, bandwidth: float, before: Callable[[], None],
           huge_pages: bool, yardsticks: Yardsticks, recorder: Recorder) -> None:
    """Times one workload against torch's optimizers and its traffic limit; prints its figures.
    With huge pages, also lazyadam on a table and state of 4 KiB pages."""
    rows, dim = table_shape
    values = np.random.default_rng(1).standard_normal((indices.size, dim), dtype=np.float32)
    hp = HParams.at_step(1).as_tuple()
    kernel = lazyadam.compile(Spec(sparse=True))
    ours = [zeros(table_shape, huge_pages) for _ in range(3)]
    step = kernel.bind(*ours)
    sparse_adam = SparseAdamStep(zeros(table_shape, huge_pages), indices, values, huge_pages)
    composite = CompositeStep(zeros(table_shape, huge_pages), indices, values, huge_pages)
    counts = np.bincount(indices)
    limit = traffic_bytes(indices, dim) / bandwidth
    print(f"{name}: table {rows:,} x {dim}, {indices.size:,} Zipf({exponent}) indices "
          f"({np.count_nonzero(counts):,} unique rows, the hottest {counts.max():,} times), "
          f"{'2 MiB' if huge_pages else '4 KiB'} pages; medians of {rounds} rounds")
    step((indices, values), hp)
    sparse_adam()
    composite()
    touched = np.unique(indices)
    for label, theirs in (("SparseAdam", sparse_adam.param.detach()), ("composite", composite.w)):
        print(f"  one step from the same state: lazyadam vs {label}, max relative difference "
              f"{relative_error(ours[0][touched], theirs[touched]):.1e}")
    contenders = {"lazyadam": lambda: step((indices, values), hp), "SparseAdam": sparse_adam,
                  "composite": composite,
                  "moving the bytes": yardsticks.sparse(*(zeros(table_shape, huge_pages)
                                                          for _ in range(3)), indices, values)}
    if huge_pages:
        small_pages = kernel.bind(*(zeros(table_shape, False) for _ in range(3)))
        contenders["lazyadam, 4 KiB pages"] = lambda: small_pages((indices, values), hp)
    t = medians(contenders, rounds, warmup, before)
    print(f"  {'traffic limit':24s} {limit * 1e3:8.3f} ms  ({traffic_bytes(indices, dim) / 2**20:.1f} "
          f"MiB at {bandwidth / 1e9:.1f} GB/s)")
    for label in t:
        print(f"  {label:24s} {t[label] * 1e3:8.3f} ms  {t[label] / limit:5.2f}x the limit")
    print(f"  lazyadam speed / SparseAdam speed  {t['SparseAdam'] / t['lazyadam']:6.1f}   "
          "(target >= 10, aim 20)")
    print(f"  lazyadam speed / composite speed   {t['composite'] / t['lazyadam']:6.1f}")
    print(f"  lazyadam time / traffic limit      {t['lazyadam'] / limit:6.2f}   (target <= 2)")
    print(f"  lazyadam time / moving the bytes   {t['lazyadam'] / t['moving the bytes']:6.2f}")
    recorder.add(f"lazy sparse {name}, {indices.size:,} Zipf({exponent}) indices",
                 {"lazyadam": t["lazyadam"], "torch SparseAdam": t["SparseAdam"],
                  "torch unique + index_add_": t["composite"],
                  "moving the bytes": t["moving the bytes"]},
                 {"lazyadam": "lazyadam", "torch SparseAdam": "torch",
                  "torch unique + index_add_": "torch", "moving the bytes": "yardstick"})


def table_size(batch: np.ndarray, rows: int, dim: int, factor: int, rounds: int, warmup: int,
               before: Callable[[], None]) -> None:
    """The same batch on a table `factor` times larger: row r becomes factor*r plus a random offset
    below `factor`, so that the duplicates and the bytes touched are the same; both tables on
    4 KiB pages (the large one would not fit on huge pages), timed in one interleaved run."""
    rng = np.random.default_rng(2)
    spread = (factor * np.arange(rows) + rng.integers(0, factor, rows))[batch]
    values = rng.standard_normal((batch.size, dim), dtype=np.float32)
    hp = HParams.at_step(1).as_tuple()
    kernel = lazyadam.compile(Spec(sparse=True))
    small = kernel.bind(*(zeros((rows, dim), False) for _ in range(3)))
    large = kernel.bind(*(zeros((factor * rows, dim), False) for _ in range(3)))
    t = medians({"small": lambda: small((batch, values), hp),
                 "large": lambda: large((spread, values), hp)}, rounds, warmup, before)
    print(f"the same batch on a {factor}x larger table ({factor * rows:,} x {dim}, 4 KiB pages): "
          f"{t['large'] * 1e3:.3f} ms against {t['small'] * 1e3:.3f} ms, "
          f"{t['large'] / t['small']:.2f}x   (target <= 1.2)")


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in
                  subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
                  if line.startswith("Model name")), platform.processor())
    cc = subprocess.run([*c.compiler(), "--version"], capture_output=True,
                        text=True).stdout.splitlines()[0]
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    return (f"{model}, {os.cpu_count()} CPUs, OMP_NUM_THREADS={threads}, "
            f"torch threads {torch.get_num_threads()}\n{cc}, flags {' '.join(c.flags())}\n"
            f"torch {torch.__version__}, numpy {np.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--dense-size", type=int, default=16 * 2**20)
    parser.add_argument("--cold", action="store_true",
                        help="evict the caches before every timed call")
    parser.add_argument("--skip-large", action="store_true",
                        help="leave out the 40x table and the 10M x 128 workload (40 s, 3 GiB)")
    parser.add_argument("--json", type=Path, help="also write the medians to this file")
    args = parser.parse_args()
    recorder = Recorder("bench_cpu.py")
    print(machine())
    before = evictor(args.cold)
    print("caches:", "evicted before every call" if args.cold else "as the previous call left them")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        yardsticks = Yardsticks(Path(folder))
        dense(args.dense_size, args.rounds, args.warmup, yardsticks, before, recorder)
        bandwidth = yardsticks.copy_bandwidth(args.rounds, before)
        print(f"copy bandwidth: {bandwidth / 1e9:.1f} GB/s (read + written)")
        batch = zipf_indices(rng, 1_000_000, 65_536, 1.2)
        sparse("1M x 64", (1_000_000, 64), batch, 1.2, args.rounds, args.warmup, bandwidth, before,
               huge_pages=True, yardsticks=yardsticks, recorder=recorder)
        if not args.skip_large:
            table_size(batch, 1_000_000, 64, 40, args.rounds, args.warmup, before)
            sparse("10M x 128", (10_000_000, 128), zipf_indices(rng, 10_000_000, 262_144, 1.1),
                   1.1, args.rounds, args.warmup, bandwidth, before, huge_pages=False,
                   yardsticks=yardsticks, recorder=recorder)
    if args.json:
        recorder.write(args.json)

if __name__ == "__main__":
    main()
