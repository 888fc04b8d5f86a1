"""Host time of an optimizer step on CUDA parameters, measured on any machine.

The Python work of a step on device parameters (checks, bindings, multi-tensor plans, the launcher
calls through cffi) is the same with or without a GPU. Here every tensor is a CPU tensor presented
as a CUDA tensor (`__cuda_array_interface__`, as PyTorch's CUDA tensors present themselves), and
the CUDA kernels are the host-emulation build (tests/cuda_emulation) compiled with
LAZYADAM_EMULATION_NO_KERNELS: each launch and CUB call is counted and returns at once. What is
timed is the host side of a step alone, which on a GPU overlaps the kernels of the step before.

Contenders, each on its own copy of the same parameters, one call each per round in interleaved
rounds (medians of the per-call times):

    lazyadam.torch        `lazyadam.torch.LazyAdam.step()` (and with capturable=True)
    lazyadam              `lazyadam.LazyAdam(params)(grads)`, MindSpore's API
    torch foreach, fused  `torch.optim.Adam(foreach=True)` and `(fused=True)` stepping as many
                          one-element CPU tensors: torch's own host cost per step, as a yardstick

Workloads: 100 dense parameters (50 of 1024 x 1024 and 50 of 1024), 10 of 4096 x 4096, and one
1,000,000 x 64 table stepped with a RowTensor of 65,536 indices (the eager call checks the index
range on the host: a reduction and a copy, which on a GPU are a device kernel and a wait; the
capturable one leaves the check to the device). Issue 12's target: under 200 us a step for 100
parameters.

    .venv/bin/python benchmarks/bench_host.py
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import lazyadam.torch
from lazyadam import LazyAdam, Parameter, RowTensor, targets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import cuda_emulation as emulation  # noqa: E402


class OnDevice(torch.Tensor):
    """A CPU tensor that presents itself as a CUDA tensor does. Without a `__torch_function__` of
    its own: a real CUDA tensor is a plain `torch.Tensor`, whose attributes cost no Python call."""

    __torch_function__ = torch._C._disabled_torch_function_impl

    def new_empty(self, *args, **kwargs):  # scratch of a CUDA tensor is on its device
        return super().new_empty(*args, **kwargs).as_subclass(OnDevice)

    def new_full(self, *args, **kwargs):  # so is the state made beside it (`full_beside`)
        return super().new_full(*args, **kwargs).as_subclass(OnDevice)

    def __getitem__(self, key):
        return super().__getitem__(key).as_subclass(OnDevice)

    @property
    def __cuda_array_interface__(self) -> dict:
        return {"shape": tuple(self.shape), "version": 3, "strides": None,
                "typestr": np.dtype(str(self.dtype).removeprefix("torch.")).str,
                "data": (self.data_ptr(), False)}


def host_side_only() -> None:
    """`targets.compile(spec, "cuda")` gives kernels whose launches return at once (their host
    code at -O1, as the figures of benchmarks/README.md were taken; the tests build the
    emulation at -O0), and `lazyadam.torch` sees every tensor as a device array."""
    real = targets.compile

    def compile_(spec, target="c"):
        if target != "cuda":
            return real(spec, target)
        return emulation.build([spec], {"LAZYADAM_EMULATION_NO_KERNELS": 1}, optimize="-O1")[spec]

    targets.compile = compile_
    lazyadam.torch.tensors.view = lambda tensor, memory=None: tensor.detach().as_subclass(OnDevice)
    zeros_like = torch.zeros_like

    def zeros_like_on_device(tensor, *args, **kwargs):
        """The moments of a CUDA tensor are CUDA tensors: of a stand-in, stand-ins."""
        out = zeros_like(tensor, *args, **kwargs)
        return out.as_subclass(OnDevice) if type(tensor) is OnDevice else out

    torch.zeros_like = zeros_like_on_device


def shapes_of(workload: str) -> list[tuple[int, ...]]:
    if workload == "100 small":
        return [(1024, 1024)] * 50 + [(1024,)] * 50
    return [(4096, 4096)] * 10


def contenders(workload: str) -> dict[str, Callable[[], object]]:
    """Each contender's step on its own tensors, with gradients made once."""
    shapes = shapes_of(workload)
    torch.manual_seed(0)
    out = {}
    for name, capturable in (("lazyadam.torch", False), ("lazyadam.torch capturable", True)):
        params = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
        for p in params:
            p.grad = torch.full(p.shape, 0.1)
        opt = lazyadam.torch.LazyAdam(params, lr=1e-3, capturable=capturable)
        out[name] = opt.step
    device = [Parameter(torch.zeros(s).as_subclass(OnDevice), name=f"p{k}")
              for k, s in enumerate(shapes)]
    grads = [torch.full(s, 0.1).as_subclass(OnDevice) for s in shapes]
    mindspore = LazyAdam(device, learning_rate=1e-3)
    out["lazyadam"] = lambda: mindspore(grads)
    for kind in ("foreach", "fused"):
        tiny = [torch.nn.Parameter(torch.zeros(1)) for _ in shapes]
        for p in tiny:
            p.grad = torch.full((1,), 0.1)
        out[f"torch {kind} (1-element tensors)"] = torch.optim.Adam(tiny, lr=1e-3,
                                                                     **{kind: True}).step
    return out


def sparse_contenders(rows: int, dim: int, nnz: int) -> dict[str, Callable[[], object]]:
    rng = np.random.default_rng(0)
    indices = torch.from_numpy(((rng.zipf(1.2, nnz) - 1) % rows).astype(np.int64))
    values = torch.full((nnz, dim), 0.1)
    out = {}
    for name, capturable in (("lazyadam sparse", False), ("lazyadam sparse capturable", True)):
        table = Parameter(torch.zeros(rows, dim).as_subclass(OnDevice), name="table")
        grad = RowTensor(indices.as_subclass(OnDevice), values.as_subclass(OnDevice), (rows, dim))
        opt = LazyAdam([table], learning_rate=1e-3, capturable=capturable)
        out[name] = lambda opt=opt, grad=grad: opt([grad])
    return out


def medians(steps: dict[str, Callable[[], object]], warmup: int, rounds: int) -> dict[str, float]:
    """Median microseconds of one call of each contender over interleaved rounds."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {name: [] for name in steps}
    order = list(steps.items())
    for r in range(rounds):
        for name, step in order[r % len(order):] + order[:r % len(order)]:
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e6 for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    if emulation.host_compiler() is None:
        sys.exit("bench_host.py builds the CUDA emulation: it needs a host C++ compiler (c++/g++)")
    host_side_only()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, medians of {args.rounds} interleaved rounds")
    workloads = [(w, contenders(w)) for w in ("100 small", "10 large")]
    workloads.append(("sparse 1M x 64, 65,536 indices", sparse_contenders(1_000_000, 64, 65_536)))
    for workload, steps in workloads:
        figures = medians(steps, args.warmup, args.rounds)
        print(f"\n{workload}: host time per step (us)")
        base = figures.get("torch fused (1-element tensors)")
        for name, us in figures.items():
            ratio = f"  {us / base:5.2f}x torch fused's" if base else ""
            print(f"  {name:34s} {us:8.1f}{ratio}")


if __name__ == "__main__":
    main()
