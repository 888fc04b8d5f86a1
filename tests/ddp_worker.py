"""One replica of the data-parallel test (tests/test_torch_ddp.py), and what the test shares with it.

    python tests/ddp_worker.py RANK WORLD INIT_FILE OUT_DIR

joins a gloo process group of WORLD processes through INIT_FILE (a `file://` rendezvous: no port to
pick), wraps `build()`'s model in `DistributedDataParallel`, trains it `STEPS` steps with
`lazyadam.torch.LazyAdam` on its share of each global batch, and saves the parameters to
`OUT_DIR/rank<RANK>.pt`. Every wait is bounded: the process group times out after `TIMEOUT`
seconds, so a replica whose peer died stops by itself.
"""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

import torch

import lazyadam.torch

STEPS = 6
GLOBAL_BATCH = 64
TIMEOUT = 60.0


class Model(torch.nn.Module):
    """A user table (nn.Embedding), an item-history bag (nn.EmbeddingBag), both sparse, and an MLP."""

    def __init__(self):
        super().__init__()
        self.users = torch.nn.Embedding(40, 8, sparse=True)
        self.items = torch.nn.EmbeddingBag(30, 8, mode="sum", sparse=True)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(),
                                       torch.nn.Linear(16, 1))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([self.users(users), self.items(items)], dim=1)).squeeze(1)


def build() -> Model:
    """The same initial model in every process."""
    torch.manual_seed(7)
    return Model()


def optimizer(model: torch.nn.Module) -> lazyadam.torch.LazyAdam:
    """Tables with SparseAdam's eps placement, the MLP as Adam with L2 decay; both tables and MLP
    decayed. The tables' decay is decoupled: DDP coalesces the sparse gradients it averages, and
    L2 decay adds `wd*w` once per occurrence of a row, so it would decay a row looked up twice in
    a batch twice in one process and once under DDP."""
    tables = [p for name, p in model.named_parameters() if "mlp" not in name]
    dense = [p for name, p in model.named_parameters() if "mlp" in name]
    return lazyadam.torch.LazyAdam([{"params": tables, "eps_mode": "mindspore",
                                     "weight_decay": 1e-3, "decoupled_weight_decay": True},
                                    {"params": dense, "weight_decay": 0.01}], lr=0.05)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Global batch `step`: users (with repeats), item bags of 3, targets."""
    generator = torch.Generator().manual_seed(1000 + step)
    users = torch.randint(0, 40, (GLOBAL_BATCH,), generator=generator)
    items = torch.randint(0, 30, (GLOBAL_BATCH, 3), generator=generator)
    targets = torch.randn(GLOBAL_BATCH, generator=generator)
    return users, items, targets


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, rank: int = 0,
          world: int = 1) -> None:
    """`STEPS` steps of mean squared error, each process on its slice of every global batch."""
    share = GLOBAL_BATCH // world
    for step in range(STEPS):
        users, items, targets = (t[rank * share:(rank + 1) * share] for t in batch(step))
        loss = torch.nn.functional.mse_loss(model(users, items), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()


def main(rank: int, world: int, init_file: str, out: Path) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                         world_size=world,
                                         timeout=datetime.timedelta(seconds=TIMEOUT))
    try:
        model = build()
        replica = torch.nn.parallel.DistributedDataParallel(model)
        train(replica, optimizer(model), rank, world)
        torch.save(model.state_dict(), out / f"rank{rank}.pt")
        # Both replicas done with every collective before either leaves.
        torch.distributed.barrier()
    except BaseException:
        torch.distributed.destroy_process_group()
        raise
    # Saved, and the peer is past its last collective: leave without tearing the group down.
    # gloo with a file rendezvous sometimes left the later replica hanging in
    # destroy_process_group, barrier or not (once in about 20 runs here), until the test's deadline.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))
