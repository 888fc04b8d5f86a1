"""GPU benchmarks of the CUDA target against PyTorch, side by side in one run, as times and ratios.

    python benchmarks/bench_cuda.py [--repeat 20] [--family] [--rules sgd,lion] [--skip-large]

- dense float32, 16M and 256M elements: one LazyAdam step vs `torch.optim.Adam(fused=True)`, and the
  effective bandwidth (7 arrays of 4 bytes moved per element: w, m, v, g read; w, m, v written) as a
  fraction of a device-to-device copy's (`dst.copy_(src)`, 2 arrays moved), measured in the same run.
- lazy sparse float32, the workloads of issue 8 (row ids from a Zipf law over the rows, which row is
  k-th most frequent random):
      10,000,000 x 128, 262,144 Zipf(1.1) indices
      1,000,000 x 64, 65,536 Zipf(1.2) indices
      1,000,000 x 64, 65,536 uniform indices (mostly unique rows)
  one step each of
      lazyadam            the checking launcher (waits for its index check only)
      lazyadam deferred   the launcher for CUDA graphs (waits for nothing; workspace given)
      lazyadam graph      that deferred step captured in a CUDA graph and replayed: the device
                          time alone, without the Python and launch work of a call
      SparseAdam          `torch.optim.SparseAdam` (eps placed as MindSpore does, like the spec)
      composite           `unique` + `index_add_` (float atomics) + Adam on the gathered rows
      composite, det.     the same under `torch.use_deterministic_algorithms(True)`
  against the traffic limit: each touched row of w, m, v read and written once and every gradient
  row and index read once, at the copy bandwidth.
- the optimizer step (issue 12): wall time per step, Python included (10 steps back to back, then a
  synchronize), over 100 dense parameters (50 of 1024 x 1024 and 50 of 1024) and over 10 of
  4096 x 4096, for
      lazyadam.torch      `lazyadam.torch.LazyAdam.step()`
      lazyadam graph      the same optimizer with capturable=True, its step captured in a CUDA graph:
                          `prepare_replay()` and `graph.replay()` a step
      torch fused         `torch.optim.Adam(fused=True).step()`
      torch foreach       `torch.optim.Adam(foreach=True).step()`
  against the dense traffic limit (7 arrays of 4 bytes per element at the copy bandwidth).

- with `--family` (issue 17), instead of the above, every rule of the family (`--rules`: SGD with
  momentum, Adagrad, rowwise Adagrad, partial-rowwise Adam, Lion) on bench_family.py's workloads:
  dense float32 16M (262,144 x 64), lazy sparse 1,000,000 x 64 with 65,536 Zipf(1.2) indices,
  and that batch on a 40x larger table (bench_family.py's `larger_table`; `--skip-large` leaves it
  out), one step each of
      lazyadam    the rule's CUDA kernel (`lazyadam.compile(spec, "cuda")`, the checking launcher
                  for sparse steps)
      torch       torch's optimizer where torch has the rule (SGD with momentum, Adagrad; sparse
                  on a COO gradient), else the rule in torch ops (bench_family.py's composite)
  against the traffic limit of bench_family.py (the bytes each rule must move) at the copy
  bandwidth.

Needs a CUDA GPU, nvcc and PyTorch with CUDA. Times are medians of CUDA-event timings after a warm-up
(the first call also compiles the kernel); contenders are interleaved round by round.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import numpy as np
import torch

import lazyadam
import lazyadam.torch
from bench_family import HYPER, OPTIONS, RULES, larger_table, moved_bytes, torch_rule_step
from lazyadam import HParams, Spec
from lazyadam.targets.base import hparams_of


def gpu_times(contenders: dict[str, Callable[[], None]], repeat: int) -> dict[str, float]:
    """Median seconds of each contender on the current stream, interleaved, after two warm-ups."""
    for fn in contenders.values():
        fn()
        fn()
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeat):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            contenders[name]()
            end.record()
            end.synchronize()
            times[name].append(start.elapsed_time(end) / 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def copy_bandwidth(repeat: int) -> float:
    """Bytes per second (read plus written) of a 1 GiB device-to-device copy."""
    src = torch.ones(256 << 20, device="cuda")
    dst = torch.empty_like(src)
    seconds = gpu_times({"copy": lambda: dst.copy_(src)}, repeat)["copy"]
    return 2 * src.numel() * 4 / seconds


def dense(n: int, repeat: int, bandwidth: float) -> None:
    gen = torch.Generator(device="cuda").manual_seed(0)
    w = torch.randn(n, device="cuda", generator=gen)
    g = torch.randn(n, device="cuda", generator=gen)
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    kernel = lazyadam.compile(Spec(sparse=False, eps_mode="pytorch"), "cuda")
    hp = HParams.at_step(1)
    param = torch.nn.Parameter(w.clone())
    param.grad = g
    opt = torch.optim.Adam([param], lr=1e-3, fused=True)
    t = gpu_times({"lazyadam": lambda: kernel(w, m, v, g, hp), "torch": opt.step}, repeat)
    ours_bw = 7 * 4 * n / t["lazyadam"]
    print(f"dense f32 n={n:>11,}: lazyadam {t['lazyadam'] * 1e3:8.3f} ms  torch Adam(fused) "
          f"{t['torch'] * 1e3:8.3f} ms  torch/lazyadam {t['torch'] / t['lazyadam']:5.2f}  "
          f"{ours_bw / 1e9:7.1f} GB/s = {ours_bw / bandwidth:5.1%} of copy (target >= 80% at 16M)")


def zipf_indices(rng: np.random.Generator, rows: int, nnz: int, exponent: float) -> np.ndarray:
    """`nnz` row ids with p(k-th most frequent) ~ 1/k^exponent; which row is k-th is random."""
    p = np.arange(1, rows + 1, dtype=np.float64) ** -exponent
    return rng.permutation(rows)[rng.choice(rows, nnz, p=p / p.sum())].astype(np.int64)


def composite(w: torch.Tensor, m: torch.Tensor, v: torch.Tensor, idx: torch.Tensor,
              vals: torch.Tensor, deterministic: bool) -> Callable[[], None]:
    """Adam on the rows of a sparse gradient with torch's own ops (eps as MindSpore places it)."""
    lr, beta1, beta2, eps = 1e-3, 0.9, 0.999, 1e-8
    step = lr * (1 - beta2) ** 0.5 / (1 - beta1)

    def run() -> None:
        torch.use_deterministic_algorithms(deterministic)
        try:
            rows, inverse = torch.unique(idx, return_inverse=True)
            g = torch.zeros((rows.numel(), vals.shape[1]), device="cuda").index_add_(0, inverse, vals)
            mr = m.index_select(0, rows).mul_(beta1).add_(g, alpha=1 - beta1)
            vr = v.index_select(0, rows).mul_(beta2).addcmul_(g, g, value=1 - beta2)
            wr = w.index_select(0, rows).addcdiv_(mr, vr.sqrt().add_(eps), value=-step)
            m.index_copy_(0, rows, mr)
            v.index_copy_(0, rows, vr)
            w.index_copy_(0, rows, wr)
        finally:
            torch.use_deterministic_algorithms(False)
    return run


def sparse(name: str, rows: int, dim: int, idx_host: np.ndarray, repeat: int,
           bandwidth: float) -> None:
    idx = torch.from_numpy(idx_host).cuda()
    vals = torch.randn(idx.numel(), dim, device="cuda")
    hp = HParams.at_step(1)
    kernel = lazyadam.compile(Spec(sparse=True), "cuda")  # SparseAdam places eps as MindSpore does

    def table() -> list[torch.Tensor]:
        return [torch.zeros(rows, dim, device="cuda") for _ in range(3)]

    ours, deferred, graphed, det, atomic = table(), table(), table(), table(), table()
    workspace = torch.empty(kernel.workspace_size(rows, dim, idx.numel()), dtype=torch.uint8,
                            device="cuda")
    record = torch.zeros(kernel.RECORD_WORDS, dtype=torch.int64, device="cuda")
    param = torch.nn.Parameter(torch.zeros(rows, dim, device="cuda"))
    opt = torch.optim.SparseAdam([param], lr=1e-3)
    grad = torch.sparse_coo_tensor(idx[None], vals, (rows, dim))

    def sparse_adam() -> None:
        param.grad = grad
        opt.step()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        kernel(*graphed, (idx, vals), hp, record=record, workspace=workspace)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        kernel(*graphed, (idx, vals), hp, record=record, workspace=workspace)

    t = gpu_times({
        "lazyadam": lambda: kernel(*ours, (idx, vals), hp),
        "lazyadam deferred": lambda: kernel(*deferred, (idx, vals), hp, record=record,
                                            workspace=workspace),
        "lazyadam graph": graph.replay,
        "SparseAdam": sparse_adam,
        "composite": composite(*atomic, idx, vals, deterministic=False),
        "composite, det.": composite(*det, idx, vals, deterministic=True),
    }, repeat)
    kernel.check(record)
    counts = torch.bincount(idx)
    unique = int((counts > 0).sum())
    touched = 6 * unique * dim * 4 + idx.numel() * (dim * 4 + 8)
    limit = touched / bandwidth
    print(f"{name}: {rows:,} x {dim}, {idx.numel():,} indices ({unique:,} unique rows, the "
          f"hottest {int(counts.max()):,} times); traffic limit {limit * 1e3:.3f} ms "
          f"({touched / 2**20:.1f} MiB)")
    for label, seconds in t.items():
        print(f"  {label:20s} {seconds * 1e3:8.3f} ms  {seconds / limit:6.2f}x the limit  "
              f"SparseAdam/this {t['SparseAdam'] / seconds:6.2f}  "
              f"composite/this {t['composite'] / seconds:6.2f}")


def wall_times(contenders: dict[str, Callable[[], None]], repeat: int,
               steps: int = 10) -> dict[str, float]:
    """Median wall seconds per call of each contender, Python included: `steps` calls back to back
    and a synchronize, interleaved round by round, after two warm-up rounds."""
    for fn in contenders.values():
        for _ in range(2 * steps):
            fn()
    torch.cuda.synchronize()
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeat):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            for _ in range(steps):
                contenders[name]()
            torch.cuda.synchronize()
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


def optimizer_steps(label: str, shapes: list[tuple[int, ...]], repeat: int,
                    bandwidth: float) -> None:
    """Whole optimizer steps over dense CUDA parameters of `shapes` (see the module)."""
    def model() -> list[torch.nn.Parameter]:
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s, device="cuda")) for s in shapes]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        return params

    eager = lazyadam.torch.LazyAdam(model(), lr=1e-3)
    replayed = lazyadam.torch.LazyAdam(model(), lr=1e-3, capturable=True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        replayed.step()  # warm-up outside the capture: the state is made
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        replayed.step()

    def replay() -> None:
        replayed.prepare_replay()
        graph.replay()

    contenders = {"lazyadam.torch": eager.step, "lazyadam graph": replay,
                  "torch fused": torch.optim.Adam(model(), lr=1e-3, fused=True).step,
                  "torch foreach": torch.optim.Adam(model(), lr=1e-3, foreach=True).step}
    t = wall_times(contenders, repeat)
    elements = sum(int(np.prod(s)) for s in shapes)
    limit = 7 * 4 * elements / bandwidth
    print(f"\noptimizer step, {label} ({elements / 1e6:.1f}M elements; limit {limit * 1e3:.3f} ms)")
    for name, seconds in t.items():
        print(f"  {name:16s} {seconds * 1e3:8.3f} ms  {limit / seconds:5.2f} of the limit  "
              f"torch fused/this {t['torch fused'] / seconds:5.2f}")
    del eager, replayed, graph, contenders
    torch.cuda.empty_cache()


def family_step(name: str, sparse: bool, w: torch.Tensor) -> Callable[[object], None]:
    """The rule's CUDA kernel bound to `w` and zero state on its device: a function of the
    gradient (a tensor, or an (indices, values) pair)."""
    rule = RULES[name]
    spec = rule.spec(sparse=sparse, **OPTIONS[name]).validate()
    kernel = lazyadam.compile(spec, "cuda")
    per = {s.name: s.per for s in rule.state}
    state = {a: torch.zeros(tuple(w.shape) if per[a] == "element" else tuple(w.shape[:1]),
                            device=w.device) for a in kernel.arrays[1:]}
    step = kernel.bind(w, **state)
    hp = hparams_of(rule).at_step(1, **HYPER[name])
    return lambda grad: step(grad, hp)


def family(names: list[str], repeat: int, bandwidth: float, large: bool) -> None:
    """bench_family.py's workloads for each rule of `names`, on the GPU (see the module)."""
    rng = np.random.default_rng(0)
    n, rows, dim, nnz = 16 << 20, 1_000_000, 64, 65_536
    gen = torch.Generator(device="cuda").manual_seed(0)
    dense_grad = torch.randn(n // dim, dim, device="cuda", generator=gen)
    indices = zipf_indices(rng, rows, nnz, 1.2)
    idx = torch.from_numpy(indices).cuda()
    vals = torch.randn(nnz, dim, device="cuda", generator=gen)
    spread = torch.from_numpy(larger_table(indices, rows, rng)).cuda()
    touched = np.unique(indices).size
    zeros = (lambda shape: torch.zeros(shape, device="cuda"))  # noqa: E731
    print("targets: dense at least 0.8 of the copy bandwidth; sparse within 2x of the limit; "
          "the 40x table at most 1.2x the time")
    for name in names:
        rule = RULES[name]
        spec = rule.spec(sparse=True, **OPTIONS[name])
        ours = family_step(name, False, torch.randn(n // dim, dim, device="cuda", generator=gen))
        theirs, label = torch_rule_step(name, torch.randn(n // dim, dim, device="cuda",
                                                          generator=gen), dense_grad, zeros)
        t = gpu_times({"lazyadam": lambda: ours(dense_grad), "torch": theirs}, repeat)
        limit = moved_bytes(rule, spec, n // dim, dim, n // dim, 0) / bandwidth
        print(f"  {name:22s} dense {n:,}: lazyadam {t['lazyadam'] * 1e3:8.3f} ms  {label} "
              f"{t['torch'] * 1e3:8.3f} ms  torch/lazyadam {t['torch'] / t['lazyadam']:6.2f}  "
              f"limit/lazyadam {limit / t['lazyadam']:5.2f}")
        small = family_step(name, True, torch.zeros(rows, dim, device="cuda"))
        contenders = {"lazyadam": lambda: small((idx, vals))}
        contenders["torch"], label = torch_rule_step(name, torch.zeros(rows, dim, device="cuda"),
                                                     (idx, vals), zeros)
        if large:
            big = family_step(name, True, torch.zeros(40 * rows, dim, device="cuda"))
            contenders["lazyadam 40x"] = lambda: big((spread, vals))
        t = gpu_times(contenders, repeat)
        limit = moved_bytes(rule, spec, touched, dim, nnz, indices.nbytes) / bandwidth
        print(f"  {name:22s} sparse {rows:,} x {dim}: lazyadam {t['lazyadam'] * 1e3:8.3f} ms  "
              f"{label} {t['torch'] * 1e3:8.3f} ms  torch/lazyadam "
              f"{t['torch'] / t['lazyadam']:6.2f}  lazyadam/limit {t['lazyadam'] / limit:5.2f}"
              + (f"  40x table {t['lazyadam 40x'] / t['lazyadam']:5.2f}x" if large else ""))
        del ours, small, contenders
        torch.cuda.empty_cache()


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module).

    Raises:
        SystemExit: an unknown option or rule (argparse's message).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--family", action="store_true",
                        help="the family of rules on bench_family.py's workloads, instead")
    parser.add_argument("--rules", default=",".join(RULES),
                        help=f"with --family, the rules to run, of {', '.join(RULES)}")
    parser.add_argument("--skip-large", action="store_true",
                        help="with --family, leave out the 40x table")
    args = parser.parse_args(argv)
    unknown = [name for name in args.rules.split(",") if name not in RULES]
    if unknown:
        parser.error(f"unknown rule {unknown[0]!r}; choose from {', '.join(RULES)}")
    if args.repeat < 1:
        parser.error(f"--repeat must be >= 1, got {args.repeat}")
    return args


def main() -> None:
    args = arguments()
    if not torch.cuda.is_available():
        raise SystemExit("bench_cuda.py needs PyTorch with a CUDA GPU")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"lazyadam {lazyadam.__version__}")
    bandwidth = copy_bandwidth(args.repeat)
    print(f"device-to-device copy: {bandwidth / 1e9:.0f} GB/s (read + written)")
    if args.family:
        family(args.rules.split(","), args.repeat, bandwidth, not args.skip_large)
        return
    for n in (16 << 20, 256 << 20):
        dense(n, args.repeat, bandwidth)
        torch.cuda.empty_cache()
    rng = np.random.default_rng(0)
    print("targets: 10M x 128 <= 0.3 ms (>= 25x SparseAdam, >= 4x the atomic composite); "
          "1M x 64 Zipf <= 0.1 ms; uniform within 2x of the limit")
    sparse("10M x 128, Zipf(1.1)", 10_000_000, 128, zipf_indices(rng, 10_000_000, 262_144, 1.1),
           args.repeat, bandwidth)
    torch.cuda.empty_cache()
    sparse("1M x 64, Zipf(1.2)", 1_000_000, 64, zipf_indices(rng, 1_000_000, 65_536, 1.2),
           args.repeat, bandwidth)
    sparse("1M x 64, uniform", 1_000_000, 64, rng.integers(0, 1_000_000, 65_536), args.repeat,
           bandwidth)
    print("\ntargets: 100 small parameters at least as fast as torch fused (<= 1 ms on an H200); "
          "10 large within 5% of the limit")
    optimizer_steps("100 parameters", [(1024, 1024)] * 50 + [(1024,)] * 50, args.repeat,
                    bandwidth)
    optimizer_steps("10 parameters of 4096 x 4096", [(4096, 4096)] * 10, args.repeat, bandwidth)


if __name__ == "__main__":
    main()
