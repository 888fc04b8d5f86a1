"""The checks of a front end's options, written once: a real number in a rule's domain
(`number`), a flag (`flag`), one of some values (`choice`), the common rounding options
(`rounding_options`). Each error names where the value came from (`where`: "param group 1") and
the argument as the front end calls it.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

from ..codegen.rule import Interval
from ..codegen.spec import ROUNDINGS, STATE_DTYPES
from .specs import check_seed


def within(domain: Interval) -> str:
    """What a value of `domain` must do, as errors say it: "be finite and >= 0", "be finite and
    > 0", "lie in [0, 1)"."""
    low = f"{domain.low:g}"
    if domain.high == math.inf:
        return f"be finite and {'>=' if domain.closed[0] == '[' else '>'} {low}"
    return f"lie in {domain.closed[0]}{low}, {domain.high:g}{domain.closed[1]}"


def _named(where: str, name: str) -> str:
    return f"{where}: {name}" if where else name


def real(value: Any, where: str, name: str, tensor_type: type | None = None) -> float:
    """`value` as a float: a real number, not a bool (and, where `tensor_type` is given, a
    one-element tensor of it).

    Raises:
        TypeError: anything else.
        ValueError: a tensor of another size than one.
    """
    if type(value) is float:  # what groups hold, every step: the cheap test first
        return value
    if tensor_type is not None and isinstance(value, tensor_type):
        if value.numel() != 1:
            raise ValueError(f"{_named(where, name)} must be a one-element tensor, got shape "
                             f"{tuple(value.shape)}")
        return float(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"{_named(where, name)} must be a real number, got {type(value).__name__}: "
                    f"{value!r}")


def number(value: Any, domain: Interval, where: str, name: str,
           tensor_type: type | None = None) -> float:
    """`real(value)`, in `domain`.

    Raises:
        TypeError: as `real`.
        ValueError: outside `domain` (or not finite), saying what it must be (`within`).
    """
    value = real(value, where, name, tensor_type)
    if value not in domain:
        raise ValueError(f"{_named(where, name)} must {within(domain)}, got {value!r}")
    return value


def flag(value: Any, where: str, name: str) -> bool:
    """Raises TypeError unless `value` is a bool; returns it."""
    if not isinstance(value, bool):
        raise TypeError(f"{_named(where, name)} must be a bool, got {type(value).__name__}: "
                        f"{value!r}")
    return value


def choice(value: Any, values: Sequence[Any], where: str, name: str) -> Any:
    """Raises ValueError unless `value` is one of `values`; returns it."""
    if value not in values:
        raise ValueError(f"{_named(where, name)} must be one of {', '.join(map(str, values))}, "
                         f"got {value!r}")
    return value


def rounding_options(state_dtype: Any, rounding: Any, seed: Any,
                     where: str) -> tuple[str | None, str, int]:
    """The options of half-precision storage every front end takes: `state_dtype` (None or one
    of `STATE_DTYPES`), `rounding` (one of `ROUNDINGS`), `seed` (an int in [0, 2**64)).

    Raises:
        ValueError: an unknown state_dtype or rounding; a seed out of range.
        TypeError: a seed that is not an int.
    """
    if state_dtype is not None:
        choice(state_dtype, STATE_DTYPES, where, "state_dtype")
    choice(rounding, ROUNDINGS, where, "rounding")
    try:
        seed = check_seed(seed)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{_named(where, '')}{error}" if where else str(error)) from None
    return state_dtype, rounding, seed
