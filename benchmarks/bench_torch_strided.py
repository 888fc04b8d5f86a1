"""What a parameter that is not contiguous costs a `lazyadam.torch.LazyAdam` step.

Such a parameter (a transposed view, every other column of a matrix) steps through a contiguous
working copy: copied in before the kernel, written back after. Contenders, each stepping its own
float32 parameter of the same shape with a dense gradient of its layout (as autograd makes it):

    lazyadam contiguous     the parameter as the kernels take it, updated in place
    lazyadam transposed     `w.t()` of a contiguous matrix: the working copy
    lazyadam every other    `w[:, ::2]` of a matrix twice as wide: the working copy
    torch Adam ...          `torch.optim.Adam` (foreach, its default on CPU) on the same layouts

After `--warmup` calls each they run `--rounds` interleaved rounds; the figures are medians of the
per-call times, with their ratios to lazyadam's contiguous step and to torch's on the same layout.

    .venv/bin/python benchmarks/bench_torch_strided.py
"""

from __future__ import annotations

import argparse
import os
import platform

import torch

import lazyadam.torch
from bench_host import medians


def layouts(rows: int, cols: int) -> dict[str, torch.Tensor]:
    """Float32 parameters of shape (rows, cols) in three layouts."""
    generator = torch.Generator().manual_seed(0)
    return {"contiguous": torch.randn(rows, cols, generator=generator),
            "transposed": torch.randn(cols, rows, generator=generator).t(),
            "every other": torch.randn(rows, 2 * cols, generator=generator)[:, ::2]}


def contender(cls: type, tensor: torch.Tensor):
    param = torch.nn.Parameter(tensor)
    param.grad = torch.randn_like(param)
    opt = cls([param], lr=1e-3)
    return opt.step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--cols", type=int, default=1024)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()
    steps = {}
    for name, tensor in layouts(args.rows, args.cols).items():
        steps[f"lazyadam {name}"] = contender(lazyadam.torch.LazyAdam, tensor)
        steps[f"torch Adam {name}"] = contender(torch.optim.Adam, _twin(tensor))
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, {args.rows} x {args.cols} float32, medians of {args.rounds} "
          "interleaved rounds")
    figures = medians(steps, args.warmup, args.rounds)
    base = figures["lazyadam contiguous"]
    for name, us in figures.items():
        layout = name.removeprefix("lazyadam ").removeprefix("torch Adam ")
        torch_us = figures[f"torch Adam {layout}"]
        print(f"  {name:24s} {us:9.1f} us  {us / base:5.2f}x lazyadam contiguous  "
              f"{us / torch_us:5.2f}x torch Adam {layout}")


def _twin(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor of the same values and strides over storage of its own."""
    base = tensor if tensor._base is None else tensor._base
    return base.clone().as_strided(tensor.shape, tensor.stride(), tensor.storage_offset())


if __name__ == "__main__":
    main()
