"""GPU benchmarks of the CUDA target against PyTorch, printed as times and ratios.

    python benchmarks/bench_cuda.py [--repeat 20]

- dense float32, 16M and 256M elements: one LazyAdam step vs `torch.optim.Adam(fused=True)`, and the
  effective bandwidth (7 arrays of 4 bytes moved per element: w, m, v, g read; w, m, v written) as a
  fraction of a device-to-device copy's (`dst.copy_(src)`, 2 arrays moved).
- lazy sparse: a 10,000,000 x 128 float32 table, 262,144 Zipf-distributed indices (duplicates
  included) vs `torch.optim.SparseAdam` on the same GPU.

Needs a CUDA GPU, nvcc and PyTorch with CUDA; times are medians of CUDA-event timings after a warm-up
(the first call also compiles the kernel).
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

import lazyadam
from lazyadam import HParams, Spec


def gpu_time(fn, repeat: int) -> float:
    """Median seconds of `fn()` on the current stream, after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def dense(n: int, repeat: int) -> None:
    gen = torch.Generator(device="cuda").manual_seed(0)
    w = torch.randn(n, device="cuda", generator=gen)
    g = torch.randn(n, device="cuda", generator=gen)
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    kernel = lazyadam.compile(Spec(sparse=False, eps_mode="pytorch"), "cuda")
    hp = HParams.at_step(1)
    ours = gpu_time(lambda: kernel(w, m, v, g, hp), repeat)

    param = torch.nn.Parameter(w.clone())
    param.grad = g
    opt = torch.optim.Adam([param], lr=1e-3, fused=True)
    theirs = gpu_time(opt.step, repeat)
    del opt, param

    dst = torch.empty_like(w)
    copy = gpu_time(lambda: dst.copy_(w), repeat)
    copy_bw = 2 * 4 * n / copy
    ours_bw = 7 * 4 * n / ours
    print(f"dense f32 n={n:>11,}: lazyadam {ours * 1e3:8.3f} ms  torch Adam(fused) "
          f"{theirs * 1e3:8.3f} ms  ratio torch/lazyadam {theirs / ours:5.2f}  "
          f"bandwidth {ours_bw / 1e9:7.1f} GB/s = {ours_bw / copy_bw:5.1%} of copy "
          f"({copy_bw / 1e9:.1f} GB/s)")


def sparse(rows: int, dim: int, nnz: int, repeat: int) -> None:
    rng = np.random.default_rng(0)
    idx = torch.from_numpy((rng.zipf(1.1, nnz) - 1) % rows).cuda()
    vals = torch.randn(nnz, dim, device="cuda")
    w = torch.randn(rows, dim, device="cuda")
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    kernel = lazyadam.compile(Spec(sparse=True), "cuda")  # SparseAdam places eps as MindSpore does
    hp = HParams.at_step(1)
    ours = gpu_time(lambda: kernel(w, m, v, (idx, vals), hp), repeat)
    unique = int(torch.unique(idx).numel())

    param = torch.nn.Parameter(w)
    opt = torch.optim.SparseAdam([param], lr=1e-3)
    grad = torch.sparse_coo_tensor(idx[None], vals, w.shape)

    def torch_step():
        param.grad = grad
        opt.step()
    theirs = gpu_time(torch_step, repeat)
    print(f"sparse f32 {rows:,} x {dim}, {nnz:,} Zipf indices ({unique:,} unique rows): "
          f"lazyadam {ours * 1e3:8.3f} ms  torch SparseAdam {theirs * 1e3:8.3f} ms  "
          f"ratio torch/lazyadam {theirs / ours:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_cuda.py needs PyTorch with a CUDA GPU")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"lazyadam {lazyadam.__version__}")
    for n in (16 << 20, 256 << 20):
        dense(n, args.repeat)
        torch.cuda.empty_cache()
    sparse(10_000_000, 128, 262_144, args.repeat)


if __name__ == "__main__":
    main()
