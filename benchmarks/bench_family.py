"""The family of rules (lazyadam/rules) on CPU, kernel against torch, in one process.

    .venv/bin/python benchmarks/bench_family.py [--rounds 15] [--warmup 3] [--rules sgd,lion]
                                                [--skip-large] [--small] [--threads N]
                                                [--width D] [--dense-only | --sparse-only]

For every rule of the family, one step each of
    lazyadam    the rule's generated C kernel (`lazyadam.compile(rule.spec(...))`, bound)
    torch       torch's optimizer where torch has the rule (SGD with momentum, Adagrad: dense, and
                sparse on a sparse COO gradient), else the rule written with torch's own ops (a
                "composite": `unique` and `index_add_` sum a sparse gradient's duplicates, the
                touched rows are gathered, updated and written back with `index_copy_`)
on the workloads of bench_cpu.py:
- dense float32, 16M elements (a 262,144 x 64 table), against the rule's yardstick: bench_cpu.py's
  traffic loop for the rule's arrays (read var, each per-element state array and the gradient,
  write var and the state; per-row state read and written once a row) and no arithmetic, built with
  the kernels' compiler, flags and OpenMP loop, timed in the same rounds;
- lazy sparse float32, 1,000,000 x 64 with 65,536 Zipf(1.2) indices, against the traffic limit:
  the bytes a step must move (each touched row of var and of every per-element state array read
  and written once, per-row state once, every gradient row and index read once) at the bandwidth of
  a copy measured in the same run (bench_cpu.py's), and against its floor: a loop that moves those
  bytes as a lazy step must (the gradient in order, then the touched rows at their places) and
  does nothing else, timed in the same rounds (`floor_source`);
- the same batch on a 40x larger table (each row id r becomes 40 r + a random offset below 40,
  drawn once per row, so that duplicates and bytes are the same: `larger_table`), timed against
  the 1x table in rounds of their own, as bench_cpu.py times its larger table (`--skip-large`
  leaves it out). Tables and state are on 4 KiB pages made where a step touches them, as PyTorch
  allocates (bench_cpu.py's `zeros`).
Contenders run in rotating rounds after a warm-up; medians; ratios are of medians of the same run.
`--small` runs 100x smaller workloads (a check of the script, not a measurement). The load average
is printed before and after: on a machine shared with other jobs, the kernels' steps run on one
thread while more tasks are runnable than there are processors (docs/threads.md), torch's and the
yardsticks' on all of theirs, whose barriers then wait for the scheduler: `--threads 1` runs every
contender on one thread (OMP_NUM_THREADS and torch's), for ratios that such a machine can give,
and then times the CPU time of the calling thread (`time.thread_time`: every contender runs on it),
which leaves out the time the scheduler gives other jobs.

`--width D` makes the dense table's rows D elements long (16M / D rows; the row kernels compile
a copy of a row's step for some widths, docs/kernels.md), `--dense-only` leaves the sparse
workloads out, `--sparse-only` the dense one.

Also printed: the state bytes per parameter element of every rule and state dtype
(`lazyadam.rules.memory.state_table`).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

import cffi
import numpy as np
import torch

import lazyadam
from bench_cpu import Yardsticks, machine, medians, zeros, zipf_indices
from lazyadam.rules import ADAGRAD, LION, PARTIAL_ROWWISE_ADAM, ROWWISE_ADAGRAD, SGD
from lazyadam.rules.memory import state_table
from lazyadam.targets import c
from lazyadam.targets.base import hparams_of

RULES = {r.name: r for r in (SGD, ADAGRAD, ROWWISE_ADAGRAD, PARTIAL_ROWWISE_ADAM, LION)}
#: The options of the kernel each rule is timed with (torch's defaults where torch has the rule).
OPTIONS = {"sgd": dict(momentum=True), "adagrad": {}, "rowwise_adagrad": {},
           "partial_rowwise_adam": {}, "lion": {}}
HYPER = {"sgd": dict(lr=0.01, mu=0.9), "adagrad": dict(lr=0.01, eps=1e-10),
         "rowwise_adagrad": dict(lr=0.01, eps=1e-8), "partial_rowwise_adam": dict(lr=1e-3),
         "lion": dict(lr=1e-4)}


def state_of(rule, spec, shape, huge_pages: bool) -> list[np.ndarray]:
    """var's state arrays, zeros (on huge pages as numpy makes them, or on 4 KiB pages made where a
    step touches them: bench_cpu.py's `zeros`), in the kernel's order."""
    kept = rule.arrays(spec)[1:] + rule.row_arrays(spec)
    per = {s.name: s.per for s in rule.state}
    return [zeros(shape if per[name] == "element" else shape[:1], huge_pages) for name in kept]


def array_counts(rule, spec) -> tuple[int, int]:
    """(arrays of the parameter's shape that a step reads and writes, var included; per-row ones)."""
    per = {s.name: s.per for s in rule.state}
    kept = rule.arrays(spec)[1:] + rule.row_arrays(spec)
    return 1 + sum(per[name] == "element" for name in kept), sum(per[name] == "row" for name in kept)


def moved_bytes(rule, spec, touched_rows: int, dim: int, grad_rows: int, index_bytes: int) -> int:
    """The traffic limit's bytes: var and each per-element state row read and written once, each
    per-row state value read and written once, the gradient (and indices) read once."""
    elements, rows = array_counts(rule, spec)
    return 4 * (2 * touched_rows * (elements * dim + rows) + grad_rows * dim) + index_bytes


def traffic_source(elements: int, rows: int) -> str:
    """bench_cpu.py's dense yardstick for `elements` arrays of the parameter's shape and `rows`
    per-row arrays: chunks of var's cache lines split over the threads, each element of every array
    read, the gradient added, written back; then each per-row value read and written."""
    arrays = [f"float *restrict a{k}" for k in range(elements)] + [
        f"float *restrict r{k}" for k in range(rows)]
    body = "\n".join(f"            a{k}[i] += g;" for k in range(elements))
    per_row = "\n".join(f"        r{k}[row] += 1.0f;" for k in range(rows))
    return f"""
#include <stdint.h>
#define CHUNK 4096
void traffic_{elements}_{rows}({", ".join(arrays)}, const float *restrict grad, int64_t nrows,
                   int64_t row_size)
{{
    const int64_t n = nrows * row_size;
    const int64_t skew = (int64_t)(((uintptr_t)a0 / sizeof *a0) % (64 / sizeof *a0));
    const int64_t chunks = (n + skew + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < chunks; c++) {{
        const int64_t begin = c * CHUNK - skew > 0 ? c * CHUNK - skew : 0;
        const int64_t end = (c + 1) * CHUNK - skew < n ? (c + 1) * CHUNK - skew : n;
#pragma omp simd
        for (int64_t i = begin; i < end; i++) {{
            const float g = grad[i];
{body}
        }}
    }}
{"#pragma omp parallel for simd schedule(static)" if rows else ""}
{"    for (int64_t row = 0; row < nrows; row++) {" if rows else ""}
{per_row}
{"    }" if rows else ""}
}}
"""


def built(folder: Path, name: str, source: str, returns: str, rest: str, arrays: int
          ) -> tuple[cffi.FFI, Callable]:
    """`source`'s function `name` (`arrays` float pointers, then `rest`), built in `folder` with the
    C target's compiler and flags, as bench_cpu.py builds its yardsticks; its ffi and function."""
    src, lib = folder / f"{name}.c", folder / f"{name}.so"
    src.write_text(source)
    subprocess.run([*c.compiler(), *c.flags(), str(src), "-o", str(lib)], check=True)
    ffi = cffi.FFI()
    ffi.cdef(f"{returns} {name}({', '.join(['float *'] * arrays)}, {rest});")
    return ffi, getattr(ffi.dlopen(str(lib)), name)


class DenseYardstick:
    """`traffic_source(elements, rows)` built as bench_cpu.py builds its yardsticks (the C target's
    compiler and flags), called on its own copy of a table and the rule's state."""

    def __init__(self, folder: Path, elements: int, rows: int):
        self.ffi, self.fn = built(folder, f"traffic_{elements}_{rows}", traffic_source(
            elements, rows), "void", "const float *, int64_t, int64_t", elements + rows)
        self.elements, self.rows = elements, rows

    def step(self, table: np.ndarray, grad: np.ndarray) -> Callable[[], None]:
        arrays = [table] + [np.zeros_like(table) for _ in range(self.elements - 1)] + [
            np.zeros(table.shape[0], np.float32) for _ in range(self.rows)]  # as `ours` makes them
        pointers = [self.ffi.from_buffer("float[]", a) for a in arrays]
        g = self.ffi.from_buffer("float[]", grad)
        return lambda: self.fn(*pointers, g, table.shape[0], table.shape[1])



def floor_source(elements: int, rows: int) -> str:
    """The sparse floor for `elements` arrays of the parameter's shape and `rows` per-row arrays:
    the bytes of `moved_bytes`, moved as a lazy step must move them, and nothing else. The threads
    read their shares of the indices and gradient rows in order (summing them, so that the reads
    stay); then take the touched rows (given, sorted and unique: no sort, no sums) in blocks of 64,
    each row of every array read and written (+1), their lines requested 8 rows ahead, as the
    kernels take their runs. (bench_cpu.py's "moving the bytes" is LazyAdam's three arrays, its rows
    in no particular order and not requested ahead: its figures stay comparable with their past.)"""
    arrays = [f"float *restrict a{k}" for k in range(elements)] + [
        f"float *restrict r{k}" for k in range(rows)]
    ahead = "".join(f"\n                    __builtin_prefetch(a{k} + next * row_size + j, 1);"
                    for k in range(elements))
    ahead_rows = "".join(f"\n                __builtin_prefetch(r{k} + next, 1);" for k in range(rows))
    body = "".join(f"\n                a{k}[row * row_size + j] += 1.0f;" for k in range(elements))
    per_row = "".join(f"\n            r{k}[row] += 1.0f;" for k in range(rows))
    return f"""
#include <stdint.h>
float floor_{elements}_{rows}({", ".join(arrays)}, const int64_t *restrict touched,
                 int64_t n_touched, const int64_t *restrict indices, const float *restrict values,
                 int64_t nnz, int64_t row_size)
{{
    float total = 0.0f;
#pragma omp parallel reduction(+ : total)
    {{
        int64_t index_sum = 0;
#pragma omp for schedule(static)
        for (int64_t k = 0; k < nnz; k++) {{
            float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
            for (int64_t j = 0; j < row_size; j++)
                sum += values[k * row_size + j];
            total += sum;
            index_sum += indices[k];
        }}
        total += (float)index_sum;
#pragma omp for schedule(dynamic, 64)
        for (int64_t r = 0; r < n_touched; r++) {{
            const int64_t row = touched[r];
            if (r + 8 < n_touched) {{
                const int64_t next = touched[r + 8];
                for (int64_t j = 0; j < row_size && j < 128; j += 16) {{{ahead}
                }}{ahead_rows}
            }}
#pragma omp simd
            for (int64_t j = 0; j < row_size; j++) {{{body}
            }}{per_row}
        }}
    }}
    return total;
}}
"""


class SparseFloor:
    """`floor_source(elements, rows)` built as the kernels are: `step(shape, batch)` binds it to a
    table and state of its own (4 KiB pages, as the sparse contenders') and the batch, whose sorted
    unique rows it makes beforehand."""

    def __init__(self, folder: Path, elements: int, rows: int):
        self.ffi, self.fn = built(
            folder, f"floor_{elements}_{rows}", floor_source(elements, rows), "float",
            "const int64_t *, int64_t, const int64_t *, const float *, int64_t, int64_t",
            elements + rows)
        self.elements, self.rows = elements, rows

    def step(self, shape: tuple[int, int], batch: tuple[np.ndarray, np.ndarray]
             ) -> Callable[[], float]:
        return self.bind([zeros(shape, False) for _ in range(self.elements)]
                         + [zeros(shape[:1], False) for _ in range(self.rows)], batch)

    def bind(self, arrays: list[np.ndarray], batch: tuple[np.ndarray, np.ndarray]
             ) -> Callable[[], float]:
        """The floor on these float32 arrays (the element-wise ones, then the per-row ones) and the
        batch (int64 indices, float32 values): a function that runs it and returns its sum."""
        indices, values = batch
        touched = np.unique(indices).astype(np.int64)
        # from_buffer's pointers keep their arrays alive
        arguments = [self.ffi.from_buffer("float[]", a) for a in arrays] + [
            self.ffi.from_buffer("int64_t[]", touched), touched.size,
            self.ffi.from_buffer("int64_t[]", indices), self.ffi.from_buffer("float[]", values),
            indices.size, values.shape[1]]
        return lambda: self.fn(*arguments)


# --- torch's side: the optimizer where torch has one, else the rule in torch ops --------------

def torch_step(name: str, table: np.ndarray, grad) -> tuple[Callable[[], None], str]:
    """One step of the rule on a torch tensor over `table`'s memory; grad is dense or
    (indices, values), numpy arrays. A composite's state is made as `ours` makes the kernel's:
    on huge pages for a dense step, else on 4 KiB pages (`zeros`)."""
    tensors = (tuple(torch.from_numpy(a) for a in grad) if isinstance(grad, tuple)
               else torch.from_numpy(grad))
    huge_pages = not isinstance(grad, tuple)
    return torch_rule_step(name, torch.from_numpy(table), tensors,
                           lambda shape: torch.from_numpy(zeros(shape, huge_pages)))


def torch_rule_step(name: str, w: torch.Tensor, grad, zeros_like: Callable[[tuple], torch.Tensor]
                    ) -> tuple[Callable[[], None], str]:
    """One step of the rule in torch on `w` (any device), and its label: torch's optimizer where it
    has the rule, else the rule in torch ops; grad is a dense tensor or (indices, values) tensors,
    and `zeros_like(shape)` makes the composite's state."""
    h = HYPER[name]
    if name in ("sgd", "adagrad"):
        param = torch.nn.Parameter(w)
        if isinstance(grad, tuple):
            indices, values = grad
            param.grad = torch.sparse_coo_tensor(indices[None], values, w.shape)
        else:
            param.grad = grad
        opt = (torch.optim.SGD([param], lr=h["lr"], momentum=h["mu"]) if name == "sgd"
               else torch.optim.Adagrad([param], lr=h["lr"], eps=h["eps"]))
        label = "torch SGD(momentum)" if name == "sgd" else "torch Adagrad"
        return opt.step, label + (" sparse" if isinstance(grad, tuple) else "")
    state = {"m": zeros_like(tuple(w.shape)), "row": zeros_like(tuple(w.shape[:1]))}

    def gathered():
        if not isinstance(grad, tuple):
            return None, grad
        indices, values = grad
        rows, inverse = torch.unique(indices, return_inverse=True)
        g = torch.zeros((rows.numel(), values.shape[1]), device=values.device).index_add_(
            0, inverse, values)
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


def ours(name: str, sparse: bool, table: np.ndarray) -> Callable[[object], None]:
    """The rule's kernel bound to `table` and fresh state: a function of the gradient."""
    rule = RULES[name]
    spec = rule.spec(sparse=sparse, **OPTIONS[name]).validate()
    # Dense steps: state on huge pages, as numpy makes var and the yardstick's arrays (and
    # bench_cpu.py's dense arrays); sparse steps: on 4 KiB pages, as their tables.
    step = lazyadam.compile(spec).bind(table, *state_of(rule, spec, table.shape, not sparse))
    hp = hparams_of(rule).at_step(1, **HYPER[name]).as_tuple()
    return lambda grad: step(grad, hp)


def dense(name: str, table: np.ndarray, grad: np.ndarray, rounds: int, warmup: int,
          folder: Path, clock: Callable[[], float]) -> dict[str, float]:
    """The rule's dense kernel, torch's step and the rule's yardstick, in one run; their medians."""
    rule = RULES[name]
    spec = rule.spec(sparse=False, **OPTIONS[name]).validate()
    step = ours(name, False, table.copy())
    theirs, label = torch_step(name, table.copy(), grad)
    yardstick = DenseYardstick(folder, *array_counts(rule, spec)).step(table.copy(), grad)
    t = medians({"lazyadam": lambda: step(grad), "torch": theirs, "yardstick": yardstick},
                rounds, warmup, clock=clock)
    print(f"  {name:22s} dense {table.shape[0]:,} x {table.shape[1]}: lazyadam "
          f"{t['lazyadam'] * 1e3:7.2f} ms   {label} "
          f"{t['torch'] * 1e3:7.2f} ms ({t['torch'] / t['lazyadam']:5.2f}x)   yardstick "
          f"{t['yardstick'] * 1e3:7.2f} ms: lazyadam speed / yardstick speed "
          f"{t['yardstick'] / t['lazyadam']:5.3f} (target >= 0.95)")
    return t | {"label": label}


def sparse(name: str, shape: tuple[int, int], batch: tuple[np.ndarray, np.ndarray],
           spread: np.ndarray | None, rounds: int, warmup: int, bandwidth: float,
           moved: int, floor: SparseFloor, clock: Callable[[], float]) -> dict[str, float]:
    """The rule's sparse kernel, its floor and torch's step on the table of `shape`, in one run;
    then, with `spread` (the batch's rows on a 40x larger table), the kernel on both tables, in a
    run of their own, as bench_cpu.py's `table_size` (a step on the large table walks the page
    tables of its 10 GiB arrays and leaves the caches colder than the others do); their medians."""
    indices, values = batch
    step = ours(name, True, zeros(shape, False))

    def small() -> None:
        step(batch)
    theirs, label = torch_step(name, zeros(shape, False), batch)
    t = medians({"lazyadam": small, "torch": theirs, "floor": floor.step(shape, batch)},
                rounds, warmup, clock=clock)
    limit = moved / bandwidth
    print(f"  {name:22s} sparse {shape[0]:,} x {shape[1]}: lazyadam {t['lazyadam'] * 1e3:7.3f} ms"
          f"   {label} {t['torch'] * 1e3:7.2f} ms ({t['torch'] / t['lazyadam']:5.2f}x)   "
          f"lazyadam / limit {t['lazyadam'] / limit:5.2f} (target <= 2)   floor "
          f"{t['floor'] * 1e3:7.3f} ms: lazyadam / floor {t['lazyadam'] / t['floor']:5.2f}")
    if spread is not None:
        large = ours(name, True, zeros((40 * shape[0], shape[1]), False))
        sizes = medians({"1x": small, "40x": lambda: large((spread, values))}, rounds, warmup,
                        clock=clock)
        t["40x / 1x"] = sizes["40x"] / sizes["1x"]
        print(f"  {name:22s} 40x table: {sizes['40x'] * 1e3:7.3f} ms against {sizes['1x'] * 1e3:7.3f}"
              f" ms, {t['40x / 1x']:5.2f}x the 1x table's (target <= 1.2)")
    return t | {"label": label, "limit": limit}


def state_bytes() -> None:
    print("state bytes per parameter element, D = 64 elements a row (lazyadam.rules.memory):")
    for line in state_table(64):
        print("  " + line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rules", default=",".join(RULES))
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--threads", type=int,
                        help="threads of every contender (OpenMP's and torch's); default: theirs")
    parser.add_argument("--width", type=int, default=64,
                        help="elements a row of the dense table (of 16M elements in all)")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--dense-only", action="store_true")
    only.add_argument("--sparse-only", action="store_true")
    args = parser.parse_args()
    if args.threads:  # read by OpenMP when the first kernel or yardstick loads it
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    scale = 100 if args.small else 1
    print(machine())
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    state_bytes()
    rng = np.random.default_rng(0)
    n, rows, dim, nnz = 16 * 2**20 // scale, 1_000_000 // scale, 64, 65_536 // scale
    dense_table = rng.standard_normal((n // args.width, args.width), dtype=np.float32)
    dense_grad = rng.standard_normal(dense_table.shape, dtype=np.float32)
    indices = zipf_indices(rng, rows, nnz, 1.2)
    values = rng.standard_normal((nnz, dim), dtype=np.float32)
    spread = None if args.skip_large else larger_table(indices, rows, rng)
    touched = np.unique(indices).size
    table = []
    with tempfile.TemporaryDirectory() as folder:
        bandwidth = Yardsticks(Path(folder)).copy_bandwidth(args.rounds, lambda: None, clock)
        print(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s (read + written); times are "
              + ("CPU times of the calling thread" if clock is time.thread_time else "wall times"))
        for name in args.rules.split(","):
            rule = RULES[name]
            spec = rule.spec(sparse=True, **OPTIONS[name])
            d = None if args.sparse_only else dense(name, dense_table, dense_grad, args.rounds,
                                                    args.warmup, Path(folder), clock)
            s = None if args.dense_only else sparse(
                name, (rows, dim), (indices, values), spread, args.rounds, args.warmup, bandwidth,
                moved_bytes(rule, spec, touched, dim, nnz, indices.nbytes),
                SparseFloor(Path(folder), *array_counts(rule, spec)), clock)
            table.append(row_of(name, d, s))
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("\n| rule | dense 16M: lazyadam / torch (x) | / yardstick speed | sparse 1M x 64: "
          "lazyadam / torch (x) | / limit | / floor | 40x table / 1x |\n|---|---|---|---|---|---|---|")
    print("\n".join(table))


def larger_table(indices: np.ndarray, rows: int, rng: np.random.Generator) -> np.ndarray:
    """The batch on a 40x larger table, as bench_cpu.py's `table_size` makes it: row r becomes
    40 r plus an offset below 40 drawn once per row, so that a row's occurrences stay one row and
    the duplicates and bytes are the same (an offset drawn per occurrence would spread the 10,544
    rows of the 1M x 64 batch over 22,817)."""
    return (40 * np.arange(rows) + rng.integers(0, 40, rows))[indices]


def row_of(name: str, d: dict | None, s: dict | None) -> str:
    """A line of the figures' markdown table (times in ms; "-" for steps not run)."""
    def versus(t: dict) -> str:
        ops = ", ops" if "composite" in t["label"] else ""
        return (f"{t['lazyadam'] * 1e3:.2f} / {t['torch'] * 1e3:.2f} "
                f"({t['torch'] / t['lazyadam']:.2f}x{ops})")
    dense_part = "- | -" if d is None else f"{versus(d)} | {d['yardstick'] / d['lazyadam']:.3f}"
    if s is None:
        return f"| {name} | {dense_part} | - | - | - | - |"
    large = f"{s['40x / 1x']:.2f}" if "40x / 1x" in s else "-"
    return (f"| {name} | {dense_part} | {versus(s)} | {s['lazyadam'] / s['limit']:.2f} | "
            f"{s['lazyadam'] / s['floor']:.2f} | {large} |")


if __name__ == "__main__":
    main()
