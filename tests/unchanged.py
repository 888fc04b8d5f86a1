"""One way to check that a refused call changed nothing: `with refused(x, Error, match=...):` around
the call, or `before = snapshot(x)` ahead of it and `assert_unchanged(x, before)` after it.
`assert_same(x, y)` compares two of them the same way.

`x` is what the call may write:

- a MindSpore-style optimizer (`lazyadam.LazyAdam`, `lazyadam.Momentum`, ...): its whole
  `state_dict()`, that is every parameter and state array, the step, the running powers and the
  seed;
- a `torch.optim.Optimizer` (`lazyadam.torch.*`): every parameter of its groups, every state
  entry of every parameter (which entries exist, too), and every group's options;
- anything else: arrays, tensors, device arrays and scalars, alone or in lists, tuples and dicts
  (a raw kernel's arrays).

Arrays, tensors and floats are compared bit for bit (dtype, shape and bytes: a NaN equals itself,
-0.0 differs from 0.0), other values with `==`; a difference names where it is.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pytest

from lazyadam.interop import arrays as interop


def snapshot(x: Any) -> Any:
    """A frozen copy of everything in `x` that a step may write (see the module)."""
    return _frozen(_writable(x))


def assert_unchanged(x: Any, before: Any) -> None:
    """Fails, naming the first difference, unless `snapshot(x)` is `before` bit for bit."""
    difference = _first_difference(before, snapshot(x), "")
    assert difference is None, f"a refused call changed {difference or 'the snapshot'}"


@contextlib.contextmanager
def refused(x: Any, error: type[BaseException], match: str | None = None) -> Iterator[None]:
    """The block raises `error` (its message matching `match`) and leaves `x` as it was."""
    before = snapshot(x)
    with pytest.raises(error, match=match):
        yield
    assert_unchanged(x, before)


def assert_same(x: Any, y: Any) -> None:
    """Fails, naming the first difference, unless `x` and `y` hold the same state bit for bit
    (two optimizers that took the same steps by different paths)."""
    difference = _first_difference(snapshot(y), snapshot(x), "")
    assert difference is None, f"the two differ in {difference or 'the snapshot'}"


def _writable(x: Any) -> Any:
    if hasattr(x, "param_groups") and hasattr(x, "state"):  # a torch.optim.Optimizer
        params = [p for group in x.param_groups for p in group["params"]]
        return {"parameters": params,
                "state": {k: dict(x.state[p]) for k, p in enumerate(params) if p in x.state},
                "options": [{key: value for key, value in group.items() if key != "params"}
                            for group in x.param_groups]}
    if hasattr(x, "state_dict") and hasattr(x, "global_step"):  # a MindSpore-style optimizer
        return x.state_dict()
    return x


def _frozen(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _frozen(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(item) for item in value)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        dense = value.detach() if value.layout == torch.strided else value.detach().to_dense()
        host = dense.as_subclass(torch.Tensor).cpu().contiguous()
        return ("tensor", str(value.layout), str(host.dtype), tuple(host.shape),
                host.reshape(-1).view(torch.uint8).numpy().tobytes())
    if isinstance(value, (float, np.floating)):  # bitwise: a NaN equals itself
        return ("float", type(value).__name__, float(value).hex())
    if isinstance(value, np.ndarray) or interop.is_device_array(value):
        host = np.ascontiguousarray(interop.to_host(value))
        return ("array", host.dtype.str, host.shape, host.tobytes())
    return value


def _first_difference(before: Any, after: Any, where: str) -> str | None:
    if isinstance(before, dict) and isinstance(after, dict):
        if before.keys() != after.keys():
            return f"the entries of {where or 'the snapshot'}: {sorted(map(str, before))} -> " \
                   f"{sorted(map(str, after))}"
        return next((found for key in before
                     if (found := _first_difference(before[key], after[key], f"{where}[{key!r}]"))),
                    None)
    if isinstance(before, tuple) and isinstance(after, tuple) and len(before) == len(after) \
            and not (before and before[0] in ("array", "tensor", "float")):
        return next((found for k, (b, a) in enumerate(zip(before, after))
                     if (found := _first_difference(b, a, f"{where}[{k}]"))), None)
    return None if before == after else where or "the snapshot"
