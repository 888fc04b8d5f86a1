"""CPU benchmarks of the half-precision C kernels: bfloat16 parameters with float32 and with bfloat16
state, against memory-traffic yardsticks of their own byte counts and PyTorch on bfloat16.

    .venv/bin/python benchmarks/bench_mixed.py [--rounds 30] [--warmup 5] [--cold] [--skip-sparse]

- dense, 16M bfloat16 parameters and gradients, one step each of
      lazyadam f32 state      `Spec(sparse=False, dtype="bfloat16", eps_mode="pytorch")`: 22 bytes
                              an element (read var 2, m 4, v 4, grad 2; write var, m, v)
      lazyadam bf16 state     the same with `state_dtype="bfloat16"`: 14 bytes an element
      ... stochastic          both again with `rounding="stochastic"`
      yardstick 22 / 14 B     a C loop that moves the same arrays in the same types and computes
                              nothing else, built and split over threads as the kernels are
      torch fused             `torch.optim.Adam(fused=True)` on bfloat16 parameters (its state is
                              bfloat16 too: 14 bytes an element)
  and each kernel's speed against the yardstick of its byte count (target >= 0.9).
- lazy sparse, a bfloat16 table 1,000,000 x 64 and 65,536 Zipf(1.2) indices (the workload of
  bench_cpu.py), one step each of lazyadam (float32 and bfloat16 state) and
  `torch.optim.SparseAdam` on the bfloat16 table (which keeps bfloat16 state), against the traffic
  limit of each one's bytes at the bandwidth of a copy.

Memory per parameter element (the parameter and its state) is printed beside each contender. The
timing is bench_cpu.py's: contenders interleaved in rotating rounds after a warm-up, medians of the
per-call times, quoted as ratios within one run (the machine is shared and noisy).
"""
from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import cffi
import ml_dtypes
import numpy as np
import torch

import bench_cpu
import lazyadam
from bench_cpu import evictor, machine, medians, zipf_indices
from lazyadam import HParams, Spec
from lazyadam.targets import c

BF16 = ml_dtypes.bfloat16

YARDSTICK = r"""
#include <stdint.h>
#define CHUNK 4096

/* The traffic of one dense step (read var, m, v, grad; write var, m, v) in the given types and no
 * arithmetic to speak of, split over threads as the dense kernel splits its loop. */
#define TRAFFIC(name, V, S, G)                                                                     \
void name(V *restrict var, S *restrict m, S *restrict v, const G *restrict grad, int64_t n)         \
{                                                                                                  \
    const int64_t skew = (int64_t)(((uintptr_t)var / sizeof *var) % (64 / sizeof *var));          \
    const int64_t chunks = (n + skew + CHUNK - 1) / CHUNK;                                         \
    _Pragma("omp parallel for schedule(static)")                                                   \
    for (int64_t c = 0; c < chunks; c++) {                                                         \
        const int64_t begin = c * CHUNK - skew > 0 ? c * CHUNK - skew : 0;                         \
        const int64_t end = (c + 1) * CHUNK - skew < n ? (c + 1) * CHUNK - skew : n;               \
        _Pragma("omp simd")                                                                        \
        for (int64_t i = begin; i < end; i++) {                                                    \
            const G g = grad[i];                                                                   \
            var[i] += g;                                                                           \
            m[i] += g;                                                                             \
            v[i] += g;                                                                             \
        }                                                                                          \
    }                                                                                              \
}

TRAFFIC(traffic22, uint16_t, float, uint16_t)
TRAFFIC(traffic14, uint16_t, uint16_t, uint16_t)
"""


class Yardsticks(bench_cpu.Yardsticks):
    """The loops of `YARDSTICK` (and bench_cpu's copy), compiled as the C target compiles."""

    def __init__(self, folder: Path):
        super().__init__(folder)
        src, lib = folder / "mixed.c", folder / "mixed.so"
        src.write_text(YARDSTICK)
        subprocess.run([*c.compiler(), *c.flags(), str(src), "-o", str(lib)], check=True)
        self.mixed_ffi = cffi.FFI()
        self.mixed_ffi.cdef(
            "void traffic22(uint16_t *, float *, float *, const uint16_t *, int64_t);"
            "void traffic14(uint16_t *, uint16_t *, uint16_t *, const uint16_t *, int64_t);")
        self.mixed = self.mixed_ffi.dlopen(str(lib))

    def dense(self, var: np.ndarray, m: np.ndarray, v: np.ndarray,
              grad: np.ndarray) -> Callable[[], None]:
        """The loop that moves these arrays' bytes (bfloat16 parameter and gradient; float32 or
        bfloat16 state)."""
        ctype = {2: "uint16_t[]", 4: "float[]"}
        args = [self.mixed_ffi.from_buffer(ctype[a.itemsize], a) for a in (var, m, v, grad)]
        loop = self.mixed.traffic22 if m.itemsize == 4 else self.mixed.traffic14
        return lambda: loop(*args, var.size)


def dense_bytes(spec: Spec) -> int:
    """Bytes a dense step moves per element: var, m, v read and written, the gradient read."""
    size = {"float32": 4, "bfloat16": 2}
    return 2 * (size[spec.storage("var")] + 2 * size[spec.storage("m")]) + size[spec.storage("grad")]


def memory(spec: Spec) -> int:
    """Bytes per parameter element: the parameter, m and v."""
    size = {"float32": 4, "bfloat16": 2}
    return size[spec.storage("var")] + 2 * size[spec.storage("m")]


def max_difference(ours: np.ndarray, theirs: torch.Tensor) -> float:
    theirs = theirs.detach().float().numpy()
    return float(np.max(np.abs(ours.astype(np.float32) - theirs)) / np.max(np.abs(theirs)))


def dense(n: int, rounds: int, warmup: int, yardsticks: Yardsticks,
          before: Callable[[], None]) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal(n, dtype=np.float32).astype(BF16)
    g = rng.standard_normal(n, dtype=np.float32).astype(BF16)
    hp = HParams.at_step(1, seed=7).as_tuple()
    specs = {f"lazyadam {state} state{', stochastic' if rounding == 'stochastic' else ''}":
             Spec(sparse=False, dtype="bfloat16", state_dtype=state, rounding=rounding,
                  eps_mode="pytorch")
             for rounding in ("nearest", "stochastic") for state in ("float32", "bfloat16")}
    contenders, states, steps = {}, {}, {}
    for label, spec in specs.items():
        dtype = BF16 if spec.storage("m") == "bfloat16" else np.float32
        states[label] = [w.copy(), np.zeros(n, dtype), np.zeros(n, dtype)]
        steps[label] = lazyadam.compile(spec).bind(*states[label])
        contenders[label] = (lambda step: lambda: step(g, hp))(steps[label])
    for size, dtype in ((22, np.float32), (14, BF16)):
        contenders[f"yardstick {size} B"] = yardsticks.dense(w.copy(), np.zeros(n, dtype),
                                                             np.zeros(n, dtype), g)
    param = torch.nn.Parameter(torch.from_numpy(w.view(np.int16).copy()).view(torch.bfloat16))
    param.grad = torch.from_numpy(g.view(np.int16).copy()).view(torch.bfloat16)
    opt = torch.optim.Adam([param], lr=1e-3, fused=True)
    contenders["torch Adam(fused=True)"] = opt.step

    print(f"dense bfloat16, n = {n:,}; medians of {rounds} rounds")
    first = "lazyadam bfloat16 state"
    steps[first](g, hp)
    opt.step()
    print(f"  one step from the same state: {first} vs torch fused, max relative difference "
          f"{max_difference(states[first][0], param):.1e} (both store bfloat16)")
    t = medians(contenders, rounds, warmup, before)
    sizes = {label: dense_bytes(spec) for label, spec in specs.items()}
    sizes |= {"yardstick 22 B": 22, "yardstick 14 B": 14, "torch Adam(fused=True)": 14}
    held = {label: memory(spec) for label, spec in specs.items()} | {"torch Adam(fused=True)": 6}
    print(f"  {'':34s} {'ms':>8s} {'B/elem':>7s} {'GB/s':>6s} {'B/param':>8s}")
    for label in contenders:
        print(f"  {label:34s} {t[label] * 1e3:8.2f} {sizes[label]:7d} "
              f"{sizes[label] * n / t[label] / 1e9:6.1f} {held.get(label, ''):>8}")
    for label, spec in specs.items():
        yardstick = f"yardstick {dense_bytes(spec)} B"
        print(f"  {label + ' / ' + yardstick:52s} {t[yardstick] / t[label]:6.3f}   (target >= 0.9)")
    print(f"  {'lazyadam bfloat16 state / torch fused':52s} "
          f"{t['torch Adam(fused=True)'] / t['lazyadam bfloat16 state']:6.3f}   (speed ratio)")


def sparse(rounds: int, warmup: int, bandwidth: float, before: Callable[[], None]) -> None:
    rows, dim, nnz = 1_000_000, 64, 65_536
    indices = zipf_indices(np.random.default_rng(0), rows, nnz, 1.2)
    values = np.random.default_rng(1).standard_normal((nnz, dim), dtype=np.float32).astype(BF16)
    unique = np.unique(indices).size
    hp = HParams.at_step(1, seed=7).as_tuple()
    contenders, limits, held = {}, {}, {}
    for state in ("float32", "bfloat16"):
        spec = Spec(dtype="bfloat16", state_dtype=state)
        dtype = BF16 if state == "bfloat16" else np.float32
        arrays = [np.zeros((rows, dim), BF16), np.zeros((rows, dim), dtype),
                  np.zeros((rows, dim), dtype)]
        step = lazyadam.compile(spec).bind(*arrays)
        label = f"lazyadam {state} state"
        contenders[label] = (lambda step: lambda: step((indices, values), hp))(step)
        limits[label] = 2 * unique * dim * memory(spec) + nnz * (dim * 2 + 8)
        held[label] = memory(spec)
    table = torch.nn.Parameter(torch.zeros((rows, dim), dtype=torch.bfloat16))
    opt = torch.optim.SparseAdam([table], lr=1e-3)
    grad = torch.sparse_coo_tensor(torch.from_numpy(indices)[None],
                                   torch.from_numpy(values.view(np.int16)).view(torch.bfloat16),
                                   (rows, dim), check_invariants=True)

    def sparse_adam() -> None:
        table.grad = grad
        opt.step()
    contenders["torch SparseAdam"] = sparse_adam
    limits["torch SparseAdam"] = 2 * unique * dim * 6 + nnz * (dim * 2 + 8)
    held["torch SparseAdam"] = 6
    print(f"lazy sparse bfloat16, table {rows:,} x {dim}, {nnz:,} Zipf(1.2) indices ({unique:,} "
          f"unique rows); medians of {rounds} rounds")
    t = medians(contenders, rounds, warmup, before)
    print(f"  {'':26s} {'ms':>8s} {'limit ms':>9s} {'x limit':>8s} {'B/param':>8s}")
    for label in contenders:
        limit = limits[label] / bandwidth
        print(f"  {label:26s} {t[label] * 1e3:8.3f} {limit * 1e3:9.3f} {t[label] / limit:8.2f} "
              f"{held[label]:8d}")
    for label in ("lazyadam float32 state", "lazyadam bfloat16 state"):
        print(f"  {label + ' / SparseAdam (speed)':44s} "
              f"{t['torch SparseAdam'] / t[label]:6.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--dense-size", type=int, default=16 * 2**20)
    parser.add_argument("--cold", action="store_true",
                        help="evict the caches before every timed call")
    parser.add_argument("--skip-sparse", action="store_true", help="the dense section only")
    args = parser.parse_args()
    print(machine())
    before = evictor(args.cold)
    print("caches:", "evicted before every call" if args.cold else "as the previous call left them")
    with tempfile.TemporaryDirectory() as folder:
        yardsticks = Yardsticks(Path(folder))
        dense(args.dense_size, args.rounds, args.warmup, yardsticks, before)
        bandwidth = yardsticks.copy_bandwidth(args.rounds, before)
    print(f"copy bandwidth: {bandwidth / 1e9:.1f} GB/s (read + written)")
    if not args.skip_sparse:
        sparse(args.rounds, args.warmup, bandwidth, before)


if __name__ == "__main__":
    main()
