"""CPU benchmarks of the C target against memory-traffic yardsticks and PyTorch, in one process.

    .venv/bin/python benchmarks/bench_cpu.py [--rounds 30] [--warmup 5] [--cold]

- dense float32, 16M elements, one step each of
      lazyadam    the generated dense kernel (eps placed as PyTorch does, to do torch's arithmetic)
      yardstick   a C loop that reads 4 arrays, writes 3 and computes nothing else, built with
                  the same compiler, flags and OpenMP loop as the kernels: the memory-traffic limit
      torch       `torch.optim.Adam(fused=True)` (foreach, with a note, where fused is refused)
- lazy sparse float32: a 1,000,000 x 64 table, 65,536 indices drawn from a Zipf(1.2) law over the
  rows (p(k) ~ 1/k^1.2, rows shuffled; duplicates included), one step each of
      lazyadam    the generated sparse kernel (groups duplicates, updates the touched rows)
      yardstick   a C loop that reads the gradient rows once, in order, and reads and writes each
                  touched row of var, m, v once: what moving the data alone costs
      torch       `torch.optim.SparseAdam` (eps placed as MindSpore does, like the default spec)

Each contender runs on its own copy of the state. After a warm-up, the contenders run in rounds,
one call each per round in a rotating order, so that noise hits all alike; the figures are medians of
the per-call times. With `--cold`, 64 MiB are written before every timed call, so that every call
starts with its data out of cache. Before timing, one step of each contender from the same state is
compared, so that the figures are known to be for the same work.
"""
from __future__ import annotations

import argparse
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

/* The least traffic of one lazy sparse step: read every gradient row once, in order, and read and
 * write each touched row of var, m, v once (`touched` lists them, without repeats). */
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
"""


class Yardsticks:
    """The two traffic loops of `YARDSTICK`, compiled as the C target compiles, on numpy arrays."""

    def __init__(self, folder: Path):
        src, lib = folder / "traffic.c", folder / "traffic.so"
        src.write_text(YARDSTICK)
        subprocess.run([*c.compiler(), *c.flags(), str(src), "-o", str(lib)], check=True)
        self.ffi = cffi.FFI()
        self.ffi.cdef("void traffic(float *, float *, float *, const float *, int64_t);"
                      "void sparse_traffic(float *, float *, float *, const int64_t *, int64_t, "
                      "int64_t, const float *, int64_t, float *);")
        self.lib = self.ffi.dlopen(str(lib))

    def dense(self, var: np.ndarray, m: np.ndarray, v: np.ndarray,
              grad: np.ndarray) -> Callable[[], None]:
        args = [self.ffi.from_buffer("float[]", a) for a in (var, m, v, grad)]
        return lambda: self.lib.traffic(*args, var.size)

    def sparse(self, var: np.ndarray, m: np.ndarray, v: np.ndarray, indices: np.ndarray,
               values: np.ndarray) -> Callable[[], None]:
        touched = np.unique(indices)
        np.random.default_rng(1).shuffle(touched)  # in no particular order, as the kernel visits them
        ffi, rows = self.ffi, var.shape[0]
        args = [*(ffi.from_buffer("float[]", a) for a in (var, m, v)),
                ffi.from_buffer("int64_t[]", touched), touched.size, var.size // rows,
                ffi.from_buffer("float[]", values), indices.size,
                ffi.new("float[1]")]
        return lambda: self.lib.sparse_traffic(*args)


def medians(contenders: dict[str, Callable[[], None]], rounds: int, warmup: int,
            before: Callable[[], None] = lambda: None) -> dict[str, float]:
    """Median seconds per call of each contender, timed in interleaved rounds after a warm-up;
    `before()` runs, untimed, before each timed call."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            before()
            start = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - start)
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
          before: Callable[[], None]) -> None:
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


def zipf_indices(rng: np.random.Generator, rows: int, nnz: int, exponent: float) -> np.ndarray:
    """`nnz` row ids with p(k-th most frequent) ~ 1/k^exponent; which row is k-th is random."""
    p = np.arange(1, rows + 1, dtype=np.float64) ** -exponent
    return rng.permutation(rows)[rng.choice(rows, nnz, p=p / p.sum())].astype(np.int64)


def sparse(rows: int, dim: int, nnz: int, rounds: int, warmup: int, yardsticks: Yardsticks,
           before: Callable[[], None]) -> None:
    rng = np.random.default_rng(0)
    table = rng.standard_normal((rows, dim), dtype=np.float32)
    indices = zipf_indices(rng, rows, nnz, 1.2)
    values = rng.standard_normal((nnz, dim), dtype=np.float32)
    hp = HParams.at_step(1).as_tuple()

    kernel = lazyadam.compile(Spec(sparse=True))
    ours = [table.copy(), np.zeros_like(table), np.zeros_like(table)]
    step = kernel.bind(*ours)
    param = torch.nn.Parameter(torch.from_numpy(table.copy()))
    grad = torch.sparse_coo_tensor(torch.from_numpy(indices)[None], torch.from_numpy(values),
                                   table.shape, check_invariants=True)
    param.grad = grad
    opt = torch.optim.SparseAdam([param], lr=1e-3)

    def torch_step() -> None:
        param.grad = grad
        opt.step()

    unique = np.unique(indices).size
    print(f"lazy sparse float32, table {rows:,} x {dim}, {nnz:,} Zipf(1.2) indices "
          f"({unique:,} unique rows); medians of {rounds} rounds")
    step((indices, values), hp)
    torch_step()
    print(f"  one step from the same state: lazyadam vs torch SparseAdam, max relative difference "
          f"{relative_error(ours[0], param):.1e}")
    traffic = yardsticks.sparse(table.copy(), np.zeros_like(table), np.zeros_like(table), indices,
                                values)
    t = medians({"lazyadam": lambda: step((indices, values), hp), "yardstick": traffic,
                 "torch": torch_step}, rounds, warmup, before)
    print(f"  {'lazyadam sparse kernel':32s} {t['lazyadam'] * 1e3:8.2f} ms")
    print(f"  {'yardstick (values + rows once)':32s} {t['yardstick'] * 1e3:8.2f} ms")
    print(f"  {'torch SparseAdam':32s} {t['torch'] * 1e3:8.2f} ms")
    print(f"  lazyadam speed / torch speed       {t['torch'] / t['lazyadam']:6.1f}   "
          "(target >= 10)")
    print(f"  yardstick speed / torch speed      {t['torch'] / t['yardstick']:6.1f}   "
          "(what moving the data alone allows)")
    print(f"  lazyadam speed / yardstick speed   {t['yardstick'] / t['lazyadam']:6.2f}")


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
    args = parser.parse_args()
    print(machine())
    before = evictor(args.cold)
    print("caches:", "evicted before every call" if args.cold else "as the previous call left them")
    with tempfile.TemporaryDirectory() as folder:
        yardsticks = Yardsticks(Path(folder))
        dense(args.dense_size, args.rounds, args.warmup, yardsticks, before)
        sparse(1_000_000, 64, 65_536, args.rounds, args.warmup, yardsticks, before)


if __name__ == "__main__":
    main()
