"""Matrix factorization on synthetic ratings, trained with `LazyAdam`.

The model predicts a rating as `<P[user] @ W, Q[item]> + bias`: two large embedding tables that get
sparse `RowTensor` gradients (only the rows of a batch's users and items are touched, so a step
costs O(batch), not O(table)), and a small dense mixing matrix and bias. Parameters are split in two
groups (embeddings: weight decay; dense: gradient centralization) and the learning rate follows a
cosine decay schedule.

    .venv/bin/python examples/matrix_factorization.py --steps 300

The first step compiles the kernels its parameters need (or loads them from the kernel cache, when
an earlier run built them); the last line says which happened, and the median of the later steps.

Threads: numpy's BLAS starts threads of its own for the matrix products, and they keep spinning on
the cores after each product, just when the kernels' OpenMP threads need them. The products here
are small, so this script runs BLAS on one thread: it sets OPENBLAS_NUM_THREADS (and
MKL_NUM_THREADS, for numpy built on MKL) to 1 before numpy is imported, unless you set them
yourself. Do the same in a training script of your own whose matrix products are small; to see the
difference on your machine, compare the median step of

    OPENBLAS_NUM_THREADS=2 .venv/bin/python examples/matrix_factorization.py

with that of a plain run (docs/performance.md has the figures measured on ours).
"""

from __future__ import annotations

import os

for _blas_threads in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_blas_threads, "1")  # before numpy starts its BLAS (see "Threads")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from lazyadam import LazyAdam, Parameter, RowTensor  # noqa: E402
from lazyadam.schedules import CosineDecayLR  # noqa: E402
from lazyadam.targets import cache  # noqa: E402


def synthetic_ratings(rng, users, items, dim, count):
    """Ratings from hidden factors: `<p_u, q_i> + 3 + noise`."""
    p = rng.standard_normal((users, dim)) / dim ** 0.25
    q = rng.standard_normal((items, dim)) / dim ** 0.25
    u = rng.integers(0, users, count)
    i = rng.integers(0, items, count)
    r = np.einsum("nd,nd->n", p[u], q[i]) + 3.0 + 0.1 * rng.standard_normal(count)
    return u, i, r.astype(np.float32)


class Model:
    def __init__(self, rng, users, items, dim):
        self.P = Parameter((0.1 * rng.standard_normal((users, dim))).astype(np.float32),
                           name="user_embedding")
        self.Q = Parameter((0.1 * rng.standard_normal((items, dim))).astype(np.float32),
                           name="item_embedding")
        self.W = Parameter(np.eye(dim, dtype=np.float32), name="mixing")
        self.b = Parameter(np.zeros(1, np.float32), name="bias")

    def loss_and_gradients(self, u, i, r):
        """Mean squared error and the gradients of (P, Q, W, b), the tables' as RowTensors."""
        P, Q, W = self.P.data, self.Q.data, self.W.data
        pu, qi = P[u], Q[i]
        pw = pu @ W
        error = np.einsum("nd,nd->n", pw, qi) + self.b.data[0] - r
        loss = float(np.mean(error ** 2))
        d = (2.0 / len(r)) * error[:, None]
        return loss, (
            RowTensor(u, d * (qi @ W.T), P.shape),
            RowTensor(i, d * pw, Q.shape),
            pu.T @ (d * qi),
            np.array([d.sum()], np.float32),
        )

    def rmse(self, u, i, r):
        pred = np.einsum("nd,nd->n", self.P.data[u] @ self.W.data, self.Q.data[i]) + self.b.data[0]
        return float(np.sqrt(np.mean((pred - r) ** 2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--ratings", type=int, default=400_000)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    u, i, r = synthetic_ratings(rng, args.users, args.items, args.dim, args.ratings)
    test = slice(0, 20_000)
    train = slice(20_000, None)
    model = Model(rng, args.users, args.items, args.dim)
    schedule = CosineDecayLR(min_lr=0.002, max_lr=0.02, decay_steps=args.steps)
    opt = LazyAdam([{"params": [model.P, model.Q], "weight_decay": 1e-5},
                    {"params": [model.W, model.b], "grad_centralization": True}],
                   learning_rate=schedule)
    table_mb = (model.P.data.nbytes + model.Q.data.nbytes) / 2 ** 20
    print(f"{args.users} users x {args.items} items, dim {args.dim}: embeddings {table_mb:.0f} MiB, "
          f"batch {args.batch}, {args.steps} steps")

    train_u, train_i, train_r = u[train], i[train], r[train]
    times = []
    builds = cache.builds()
    for step in range(args.steps):
        batch = rng.integers(0, len(train_r), args.batch)
        loss, grads = model.loss_and_gradients(train_u[batch], train_i[batch], train_r[batch])
        start = time.perf_counter()
        opt(grads)
        times.append(time.perf_counter() - start)
        if step == 0:
            builds = cache.builds() - builds
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  lr {schedule(step):.4f}  batch loss {loss:.4f}  "
                  f"test RMSE {model.rmse(u[test], i[test], r[test]):.4f}")
    first = (f"compiled {builds} kernel{'s' * (builds != 1)}" if builds
             else "loaded its kernels from the cache")
    later = (f"then median {statistics.median(times[1:]) * 1e3:.2f} ms" if len(times) > 1
             else "no later step")
    print(f"LazyAdam step: first {times[0] * 1e3:.1f} ms ({first}), {later}; each step touches "
          f"at most {2 * args.batch} of the {args.users + args.items} embedding rows")


if __name__ == "__main__":
    main()
