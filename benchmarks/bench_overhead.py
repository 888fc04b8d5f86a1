"""How much of a `LazyAdam` call is Python, against one step of `torch.optim.Adam`.

A model of 10 dense float32 parameters (sizes from `--size`) is stepped by

    lazyadam   `opt(grads)`: checks, bookkeeping, one generated C kernel per parameter
    C only     the same 10 compiled C functions called directly with prepared pointers
    torch      `torch.optim.Adam.step()` on the same shapes (default implementation)

and the Python overhead of a `LazyAdam` call is `lazyadam - C only`. Run it with
OMP_NUM_THREADS=1 to see Python alone: with several OpenMP threads, a kernel called after Python
work pays for waking the sleeping worker threads (C time, but counted as overhead here), while the
back-to-back calls of "C only" find them spinning. Each figure is the median, over
`--repeats` rounds, of the mean time of `--calls` calls. Example:

    .venv/bin/python benchmarks/bench_overhead.py --size 100
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_overhead.py --size 100
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

import lazyadam
from lazyadam import HParams, LazyAdam, Parameter, RowTensor, Spec


def per_call_us(step, calls: int, repeats: int) -> float:
    """Median over `repeats` rounds of the mean microseconds of one `step()` in a round."""
    for _ in range(max(calls // 10, 10)):
        step()
    rounds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            step()
        rounds.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(rounds)


def raw_c_step(opt: LazyAdam, grads: list[np.ndarray]):
    """A function calling the dense C kernel that `opt` uses on its own arrays, straight through
    cffi with pointers made once: what the C part of a call costs."""
    kernel = lazyadam.compile(Spec(sparse=False, dtype="float32"))
    ffi = kernel.ffi
    hp = ffi.new("lazyadam_hparams *", HParams.at_step(1).as_tuple())
    calls = [(kernel.fn, *(ffi.from_buffer("float[]", a) for a in (p.data, m.data, v.data, g)),
              g.size, hp) for p, m, v, g in zip(opt.parameters, opt.moment1, opt.moment2, grads)]

    def step():
        for fn, var, m, v, grad, n, hp in calls:
            fn(var, m, v, grad, n, hp)
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=int, default=10)
    parser.add_argument("--size", type=int, default=100, help="elements per parameter")
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    shapes = [(args.size,)] * args.params
    params = [Parameter(rng.standard_normal(s).astype(np.float32), name=f"w{i}")
              for i, s in enumerate(shapes)]
    grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    opt = LazyAdam(params, learning_rate=1e-3)
    lazy = per_call_us(lambda: opt(grads), args.calls, args.repeats)
    c_only = per_call_us(raw_c_step(opt, grads), args.calls, args.repeats)

    rows = 1000
    table = Parameter(np.zeros((rows, 16), np.float32), name="table")
    sparse_opt = LazyAdam([table, *params[1:]], learning_rate=1e-3)
    sparse_grads = [RowTensor(rng.integers(0, rows, 32), rng.standard_normal((32, 16))
                              .astype(np.float32), table.shape), *grads[1:]]
    sparse = per_call_us(lambda: sparse_opt(sparse_grads), args.calls, args.repeats)

    import torch
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    tensors = [torch.tensor(p.data, requires_grad=True) for p in params]
    for tensor, grad in zip(tensors, grads):
        tensor.grad = torch.from_numpy(grad.copy())
    adam = torch.optim.Adam(tensors, lr=1e-3)
    torch_step = per_call_us(adam.step, args.calls, args.repeats)

    python = lazy - c_only
    print(f"{args.params} float32 parameters of {args.size} elements; medians of "
          f"{args.repeats} rounds x {args.calls} calls (microseconds per call)")
    print(f"  LazyAdam call (dense)         {lazy:9.1f}")
    print(f"  LazyAdam call (1 sparse)      {sparse:9.1f}")
    print(f"  C kernels only                {c_only:9.1f}")
    print(f"  Python overhead               {python:9.1f}   ({python / args.params:.1f} per parameter)")
    print(f"  torch.optim.Adam.step()       {torch_step:9.1f}")
    print(f"  ratio Python overhead / torch step  {python / torch_step:.2f}")
    print(f"  ratio LazyAdam call / torch step    {lazy / torch_step:.2f}")
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads != "1":
        print(f"  (OMP_NUM_THREADS={threads or 'unset'}: the overhead includes OpenMP thread "
              "wake-ups; set OMP_NUM_THREADS=1 for Python alone)")


if __name__ == "__main__":
    main()
