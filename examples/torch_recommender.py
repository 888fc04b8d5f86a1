"""A PyTorch recommender trained with `lazyadam.torch.LazyAdam`, next to torch's own optimizers.

The model (a factorization machine with an MLP, as in DeepFM) predicts a rating from three sparse
tables and a dense MLP:

    users  nn.Embedding(users, dim, sparse=True)        the user's factors
    items  nn.Embedding(items, dim, sparse=True)        the item's factors
    seen   nn.EmbeddingBag(items, dim, sparse=True)     the mean of the last items the user rated
    rating = <users[u], items[i]> + mlp([users[u], items[i], seen[history]])

The data is synthetic with a known structure: hidden factors give `rating = <p_u, q_i> + 3 + noise`,
where `<p_u, q_i>` has variance 1 and the noise 0.01. So a model that has learnt only the mean
rating has a mean squared error of about 1.0, one that has learnt the factors 0.01; items are drawn
by a Zipf-like popularity, so a batch looks the same item up many times. Two copies of the model start
from the same weights and see the same batches: one is stepped by `lazyadam.torch.LazyAdam`
(tables with SparseAdam's eps placement, the MLP with Adam's), the other by
`torch.optim.SparseAdam` (tables) and `torch.optim.Adam` (MLP). Every `--every` steps it prints
both losses, the median time of each optimizer's `step()` since the last line and their ratio. The
first line, step 1, has no ratio: lazyadam's first step compiles its kernels (or loads them from the
kernel cache, when an earlier run built them), and the line says which.

    .venv/bin/python examples/torch_recommender.py

Data parallel, two processes on one machine (gloo; each process trains on its share of every batch,
rank 0 prints):

    .venv/bin/torchrun --nproc_per_node=2 examples/torch_recommender.py
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch
from torch import nn

import lazyadam.torch
from lazyadam.targets import cache


class Recommender(nn.Module):
    def __init__(self, users: int, items: int, dim: int, hidden: int = 256):
        super().__init__()
        self.users = nn.Embedding(users, dim, sparse=True)
        self.items = nn.Embedding(items, dim, sparse=True)
        self.seen = nn.EmbeddingBag(items, dim, mode="mean", sparse=True)
        for table in (self.users, self.items, self.seen):
            nn.init.normal_(table.weight, std=0.1)
        self.mlp = nn.Sequential(nn.Linear(3 * dim, hidden), nn.ReLU(), nn.Linear(hidden, 64),
                                 nn.ReLU(), nn.Linear(64, 1))

    def forward(self, users: torch.Tensor, items: torch.Tensor,
                history: torch.Tensor) -> torch.Tensor:
        u, i, h = self.users(users), self.items(items), self.seen(history)
        return (u * i).sum(dim=1) + self.mlp(torch.cat([u, i, h], dim=1)).squeeze(1)

    def tables(self) -> list[nn.Parameter]:
        return [self.users.weight, self.items.weight, self.seen.weight]

    def dense(self) -> list[nn.Parameter]:
        return list(self.mlp.parameters())


class Ratings:
    """Synthetic ratings from hidden factors; items by Zipf-like popularity (p(k) ~ 1/k^1.1)."""

    def __init__(self, users: int, items: int, dim: int, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.p = torch.randn(users, dim, generator=generator) / dim ** 0.25
        self.q = torch.randn(items, dim, generator=generator) / dim ** 0.25
        self.popularity = 1.0 / torch.arange(1, items + 1, dtype=torch.float64) ** 1.1
        self.items = torch.randperm(items, generator=generator)  # popular ids spread out
        self.users = users

    def batch(self, step: int, size: int, history: int = 8):
        """Batch `step`: user ids, item ids, the user's history bags, ratings."""
        generator = torch.Generator().manual_seed(10_000 + step)
        users = torch.randint(0, self.users, (size,), generator=generator)
        draws = torch.multinomial(self.popularity, size * (history + 1), replacement=True,
                                  generator=generator)
        items = self.items[draws].view(size, history + 1)
        noise = 0.1 * torch.randn(size, generator=generator)
        ratings = (self.p[users] * self.q[items[:, 0]]).sum(dim=1) + 3.0 + noise
        return users, items[:, 0], items[:, 1:], ratings


def lazyadam_optimizer(model: Recommender, lr: float) -> torch.optim.Optimizer:
    return lazyadam.torch.LazyAdam([{"params": model.tables(), "eps_mode": "mindspore"},
                                    {"params": model.dense()}], lr=lr)


def torch_optimizers(model: Recommender, lr: float) -> list[torch.optim.Optimizer]:
    return [torch.optim.SparseAdam(model.tables(), lr=lr), torch.optim.Adam(model.dense(), lr=lr)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4096, help="global batch size")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--every", type=int, default=30, help="print every this many steps")
    args = parser.parse_args()

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        torch.distributed.init_process_group("gloo")
    torch.manual_seed(0)
    ours = Recommender(args.users, args.items, args.dim)
    theirs = copy.deepcopy(ours)
    data = Ratings(args.users, args.items, args.dim)
    runs = [(ours, [lazyadam_optimizer(ours, args.lr)]),
            (theirs, torch_optimizers(theirs, args.lr))]
    replicas = [torch.nn.parallel.DistributedDataParallel(m) if world > 1 else m
                for m, _ in runs]
    if rank == 0:
        print(f"{args.users:,} users x {args.items:,} items, dim {args.dim}, batch {args.batch}"
              f"{f' over {world} processes' if world > 1 else ''}; loss: mean squared error "
              "(1.0 knowing only the mean rating, 0.01 knowing the hidden factors)")
        print(f"{'step':>6} {'loss lazyadam':>14} {'loss torch':>11} {'step ms lazyadam':>17} "
              f"{'step ms torch':>14} {'ratio':>6}")
    share = args.batch // world
    times: list[list[float]] = [[], []]
    builds = cache.builds()
    for step in range(1, args.steps + 1):
        users, items, history, ratings = (t[rank * share:(rank + 1) * share]
                                          for t in data.batch(step, args.batch))
        losses = []
        for k, (replica, (_, opts)) in enumerate(zip(replicas, runs)):
            for opt in opts:
                opt.zero_grad()
            loss = nn.functional.mse_loss(replica(users, items, history), ratings)
            loss.backward()
            start = time.perf_counter()
            for opt in opts:
                opt.step()
            times[k].append(time.perf_counter() - start)
            losses.append(loss.item())
        if rank == 0 and (step % args.every == 0 or step == 1):
            ms = [statistics.median(t) * 1e3 for t in times]
            if step == 1:
                builds = cache.builds() - builds
                ratio = (f"  first step: lazyadam compiled {builds} kernel{'s' * (builds != 1)}"
                         if builds else "  first step: lazyadam loaded its kernels from the cache")
            else:
                ratio = f" {ms[1] / ms[0]:>5.1f}x"
            print(f"{step:>6} {losses[0]:>14.4f} {losses[1]:>11.4f} {ms[0]:>17.2f} {ms[1]:>14.2f}"
                  f"{ratio}")
            times = [[], []]
    if world > 1:
        torch.distributed.barrier()  # every process done before the group is torn down
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
