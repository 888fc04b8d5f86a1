"""Golden digests of LazyAdam's outputs: what `tests/test_bitwise.py` holds every later change to.

    python tests/golden/record.py          # rewrites tests/golden/adam.json

Two kinds of digest, each a sha256 of the arrays' bytes (and dtypes and shapes):
- `kernels`: every spec of `product.ALL` on the C target, after 3 steps from a fixed seed, of var,
  m, v and vmax. Sparse steps have duplicate indices, and one row seen 300 times, so its sum crosses
  `SUM_CHUNK`; dense steps divide by a loss scale of 4 (a power of two: the loop that multiplies by
  the inverse) and of 3 (the division).
  The CUDA kernels give the same bits: `tests/test_bitwise.py` runs `EMULATED` through the host
  emulation of the CUDA target (tests/cuda_emulation) against the same digests.
- `frontends`: the `state_dict()` of each front end after 3 steps, for a few configurations
  (`FRONTENDS`).

Only outputs are digested, never generated sources: a change of the templates that keeps the
numbers keeps the goldens. Record again only for a change that is meant to change LazyAdam's
numbers, and say so in its commit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # run as a script: import the tests' helpers
    sys.path.insert(0, str(HERE.parent))

import conftest  # noqa: E402,F401  (the tests' kernel cache, when run as a script)
import openmp  # noqa: E402
import product  # noqa: E402

import lazyadam  # noqa: E402
from lazyadam import HParams, LazyAdam, Parameter, RowTensor, Spec  # noqa: E402
from lazyadam.codegen import SUM_CHUNK  # noqa: E402
from lazyadam.schedules import LearningRateSchedule  # noqa: E402

GOLDEN = HERE / "adam.json"
SEED = 12345
STEPS = 3
#: The runtime loss scale of each step: 4 takes the dense kernels' inverse loop, 3 the division.
LOSS_SCALES = (4.0, 3.0, 4.0)
#: eps is large so that the two eps modes differ even in bfloat16 (every variant has its own bits).
HYPER = dict(lr=0.01, beta1=0.9, beta2=0.999, eps=0.1, weight_decay=0.05)
SPARSE_SHAPE = (7, 3)
DENSE_SHAPE = (5, 7)
HOT_ROW_COUNT = 300
assert HOT_ROW_COUNT > SUM_CHUNK


def digest(value: Any) -> str:
    """A sha256 of `value`: arrays (numpy, or torch tensors) by dtype, shape and bytes, mappings
    by sorted key, sequences in order, other values by `repr`."""
    h = hashlib.sha256()
    _feed(h, value)
    return h.hexdigest()


def _feed(h, value: Any) -> None:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value)
        h.update(f"array {array.dtype.str} {array.shape}:".encode())
        h.update(array.tobytes())
    elif isinstance(value, dict):
        h.update(f"dict {len(value)}:".encode())
        for key in sorted(value, key=repr):
            h.update(repr(key).encode())
            _feed(h, value[key])
    elif isinstance(value, (list, tuple)):
        h.update(f"seq {len(value)}:".encode())
        for item in value:
            _feed(h, item)
    else:
        h.update(f"{type(value).__name__} {value!r};".encode())


def _indices(rng: np.random.Generator) -> list[np.ndarray]:
    """The rows of the three sparse steps: unsorted with duplicates; row 2 seen HOT_ROW_COUNT
    times among others, shuffled; a single row."""
    hot = np.concatenate([np.full(HOT_ROW_COUNT, 2), [0, 4, 4, 6, 1, 6]])
    return [np.array([5, 1, 5, 0, 6, 1, 5]), rng.permutation(hot), np.array([3])]


def kernel_state(spec: Spec, kernel: Callable | None = None,
                 device: Callable = lambda array: array) -> tuple[np.ndarray, ...]:
    """var, m, v (and vmax with amsgrad) after STEPS steps from SEED of `kernel` (by default
    `spec`'s C kernel), which takes each array as `device(array)`."""
    kernel = kernel or lazyadam.compile(spec)
    rng = np.random.default_rng(SEED)
    shape = SPARSE_SHAPE if spec.sparse else DENSE_SHAPE
    var = rng.standard_normal(shape).astype(product.dtype(spec, "var"))
    state = [np.zeros(shape, product.dtype(spec, a)) for a in ("m", "v", "vmax")]
    m, v, vmax = state if spec.amsgrad else (*state[:2], None)
    rows = _indices(rng)
    for t, loss_scale in enumerate(LOSS_SCALES, start=1):
        if spec.sparse:
            indices = rows[t - 1].astype(spec.index_dtype)
            values = rng.standard_normal((indices.size,) + shape[1:])
            grad = (device(indices), device(values.astype(product.dtype(spec, "grad"))))
        else:
            grad = device(rng.standard_normal(shape).astype(product.dtype(spec, "grad")))
        kernel(device(var), device(m), device(v), grad,
               HParams.at_step(t, loss_scale=loss_scale, seed=SEED, **HYPER),
               vmax=None if vmax is None else device(vmax))
    return (var, m, v) if vmax is None else (var, m, v, vmax)


#: The variants whose emulated CUDA kernels are checked against the C goldens: sparse and dense,
#: locked or not, in every parameter dtype, with stochastic rounding, amsgrad, L2 decay and nesterov.
EMULATED = [spec for spec in product.ALL
            if spec.amsgrad and spec.nesterov and spec.decay == "l2" and not spec.maximize
            and spec.index_dtype == "int64" and spec.eps_mode == "mindspore"]


def kernel_digests(specs=None, threads: int | None = None,
                   load: Callable = lazyadam.compile) -> dict[str, str]:
    """{spec JSON: digest of `kernel_state(spec, load(spec))`} for `specs` (by default
    `product.ALL`), on `threads` OpenMP threads (by default OpenMP's own count). The numbers do
    not depend on it, nor on the optimization level that `load`'s build took."""
    with contextlib.nullcontext() if threads is None else openmp.threads(threads):
        return {spec.to_json(): digest(kernel_state(spec, load(spec)))
                for spec in (specs or product.ALL)}


class _Halving(LearningRateSchedule):
    def __init__(self, start: float):
        super().__init__()
        self.start = start

    def construct(self, global_step):
        return self.start * 0.5 ** global_step


def _mindspore(dtype: str, sparse: bool, index_dtype: str = "int64",
               groups: bool = False, **options) -> dict:
    """The `state_dict()` of `lazyadam.LazyAdam` after STEPS steps: a table with sparse gradients
    (when `sparse`) and a dense matrix, of `dtype`; with `groups`, two parameter groups and a
    learning-rate schedule."""
    rng = np.random.default_rng(SEED)
    table = Parameter(rng.standard_normal((9, 4)).astype(product.NUMPY[dtype]), name="embedding")
    dense = Parameter(rng.standard_normal((3, 5)).astype(product.NUMPY[dtype]), name="dense")
    params: Any = [table, dense]
    if groups:
        params = [{"params": [table], "lr": 0.02},
                  {"params": [dense], "weight_decay": 0.1}]
        options["learning_rate"] = _Halving(0.01)
    opt = LazyAdam(params, weight_decay=0.05, loss_scale=2.0, **options)
    rows = _indices(rng)
    for t in range(STEPS):
        grads = [rng.standard_normal(p.shape).astype(product.NUMPY[dtype]) for p in (table, dense)]
        if sparse:
            indices = rows[t].astype(index_dtype)
            values = rng.standard_normal((indices.size, 4)).astype(product.NUMPY[dtype])
            grads[0] = RowTensor(indices, values, table.shape)
        assert opt(tuple(grads)) is True
    # The bits as recorded before state dicts named their rule ("rule": "adam", not a number).
    return {k: v for k, v in opt.state_dict().items() if k != "rule"}


def _torch(sparse: bool, **options) -> dict:
    """The `state_dict()` and parameters of `lazyadam.torch.LazyAdam` after STEPS steps, on a
    float32 table (sparse COO gradients when `sparse`) and a float32 matrix."""
    import torch

    import lazyadam.torch

    rng = np.random.default_rng(SEED)
    table = torch.nn.Parameter(torch.from_numpy(rng.standard_normal((9, 4)).astype(np.float32)))
    dense = torch.nn.Parameter(torch.from_numpy(rng.standard_normal((3, 5)).astype(np.float32)))
    opt = lazyadam.torch.LazyAdam([table, dense], lr=0.01, weight_decay=0.05, **options)
    rows = _indices(rng)
    for t in range(STEPS):
        dense.grad = torch.from_numpy(rng.standard_normal((3, 5)).astype(np.float32))
        if sparse:
            indices = torch.from_numpy(rows[t][None, :].astype(np.int64))
            values = torch.from_numpy(rng.standard_normal((indices.shape[1], 4)).astype(np.float32))
            table.grad = torch.sparse_coo_tensor(indices, values, (9, 4), check_invariants=True)
        else:
            table.grad = torch.from_numpy(rng.standard_normal((9, 4)).astype(np.float32))
        opt.step()
    return {"parameters": [table, dense], "state_dict": opt.state_dict()}


#: Front-end configurations: name -> a function returning the state to digest.
FRONTENDS: dict[str, Callable[[], Any]] = {
    "mindspore-float32-dense": lambda: _mindspore("float32", sparse=False),
    "mindspore-float32-sparse-int32": lambda: _mindspore("float32", sparse=True,
                                                         index_dtype="int32"),
    "mindspore-bfloat16-stochastic": lambda: _mindspore("bfloat16", sparse=True,
                                                        rounding="stochastic", seed=SEED),
    "mindspore-float64-amsgrad": lambda: _mindspore("float64", sparse=True, amsgrad=True,
                                                    use_nesterov=True),
    "mindspore-groups-schedule": lambda: _mindspore("float32", sparse=True, groups=True,
                                                    decoupled_weight_decay=True),
    "torch-dense": lambda: _torch(sparse=False, amsgrad=True),
    "torch-sparse": lambda: _torch(sparse=True),
}


def frontend_digests() -> dict[str, str]:
    return {name: digest(run()) for name, run in FRONTENDS.items()}


def main() -> None:
    record = {"kernels": kernel_digests(), "frontends": frontend_digests()}
    GOLDEN.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(f"{GOLDEN}: {len(record['kernels'])} kernels, {len(record['frontends'])} front-end runs")


if __name__ == "__main__":
    main()
