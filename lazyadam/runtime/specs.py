"""Which kernel a parameter takes: its spec from its dtype, its rule and the optimizer's options
(`spec_for`), the state arrays that spec keeps (`state_names`), the variant a gradient picks
(dense or lazy sparse, its index and gradient dtypes: `variant`), its target (`target_for`); one
object for each equal value met (`shared`); the seeds of stochastic rounding (`SEED_STRIDE`,
`check_seed`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import numpy as np

from ..codegen.rule import Rule
from ..codegen.spec import HALF_DTYPES, SpecBase
from ..dtypes import storage_name
from ..interop.arrays import is_device_array
from .parameter import Parameter

FLOAT_DTYPES = ("float32", "float64", "bfloat16", "float16")
#: Stochastic rounding of parameter number i (in the order of gradients) hashes the optimizer's seed
#: plus i times this odd constant (2^64 / the golden ratio), modulo 2^64: parameters of one shape
#: draw unrelated bits.
SEED_STRIDE = 0x9E3779B97F4A7C15


def target_for(data: Any) -> str:
    """The kernel target for a parameter's array: "cuda" for device arrays, else "c"."""
    return "cuda" if is_device_array(data) else "c"


def spec_for(param: Parameter, rule: Rule, options: Mapping[str, Any], *, use_locking: bool,
             state_dtype: str | None = None, rounding: str = "nearest") -> SpecBase:
    """The kernel spec of `param` under `rule` (dense; each gradient picks dense or sparse and the
    index dtype).

    Args:
        param: the parameter; its dtype is the kernel's.
        rule: the update rule.
        options: the rule's options (`Rule.options`) by name; a missing one takes its default.
        use_locking: the spec's common flag.
        state_dtype, rounding: the state dtype and rounding of a bfloat16 or float16 parameter
            (float32 and float64 parameters keep their state in their own dtype, round nothing).

    Raises:
        TypeError: a parameter that is not float32, float64, bfloat16 or float16, or not in this
            machine's byte order.
    """
    try:
        dtype = storage_name(param.dtype)
    except TypeError as error:  # the other byte order
        raise TypeError(f"parameter {param.name!r}: {error}") from None
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"parameter {param.name!r} has dtype {param.dtype}; the {rule.name} "
                        "kernels update float32, float64, bfloat16 or float16 parameters")
    half = dtype in HALF_DTYPES
    spec = rule.spec(**options, use_locking=use_locking, dtype=dtype,
                     state_dtype=state_dtype if half else None,
                     rounding=rounding if half else "nearest")
    return shared(spec)


@functools.lru_cache(maxsize=None)
def state_names(spec: SpecBase) -> tuple[str, ...]:
    """The state arrays a kernel of `spec` keeps, in the order it takes them: the per-element
    ones (`Rule.arrays` after var), then the per-row ones (`Rule.row_arrays`)."""
    rule = spec.RULE
    return rule.arrays(spec)[1:] + rule.row_arrays(spec)


def shared(value: Any) -> Any:
    """One object for each value made so far (of its type): the specs, shapes, strides and dtype
    lists of 100,000 parameters of one kind are one object each, not 100,000 (about 50 bytes
    each a tuple, a spec more)."""
    return _SHARED.setdefault((type(value), value), value)


#: Every value `shared` has seen, by its type and itself (a `torch.Size` equals the tuple of its
#: elements, and must not stand for it: it prints otherwise).
_SHARED: dict[tuple[type, Any], Any] = {}


@functools.lru_cache(maxsize=None)
def variant(spec: SpecBase, sparse: bool, index_dtype: str, grad_dtype: str) -> SpecBase:
    """`spec` for a dense or sparse gradient of `grad_dtype` with `index_dtype` indices, made
    once for each (a dataclass replace takes microseconds, per parameter)."""
    return dataclasses.replace(spec, sparse=sparse, index_dtype=index_dtype, grad_dtype=grad_dtype)


def check_seed(value: Any) -> int:
    """A seed of stochastic rounding: an int (not a bool) in [0, 2**64).

    Raises:
        TypeError: not an int; ValueError: out of range.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(value).__name__}: {value!r}")
    if not 0 <= value < 2**64:
        raise ValueError(f"seed must lie in [0, 2**64), got {value!r}")
    return int(value)
