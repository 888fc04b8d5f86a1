"""The learning rate and weight decay of `lazyadam.LazyAdam` and its groups: each fixed, a sequence
(an array, or an iterator read as the steps need it) or a `LearningRateSchedule`, read for step k
(`Rate.at`) in the check phase and committed (`Rate.read`) when the step is counted.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Iterator, Mapping, Set, Sized
from typing import Any

import numpy as np

from .schedules import LearningRateSchedule


class Group:
    __slots__ = ("lr", "wd")

    def __init__(self, lr: Rate, wd: Rate):
        self.lr, self.wd = lr, wd


class Rate:
    """A learning rate or weight decay as a function of the step k: fixed, a sequence or a schedule.

    A sequence is an array read once, or an iterator (a generator, `itertools.repeat`, ...) read
    as the steps need it, so that an endless one works. Values of an iterator are checked as they
    are read; a bad one is refused at the step that needs it, and at every later one.
    """

    __slots__ = ("what", "value", "values", "schedule", "dynamic", "pending", "refused", "lock")

    def __init__(self, what: str, value: float = 0.0, values: np.ndarray | list | None = None,
                 schedule: LearningRateSchedule | None = None, pending: Iterator | None = None):
        self.what, self.value, self.values, self.schedule = what, value, values, schedule
        self.pending = pending  # the iterator that `values` is still read from
        self.refused: Exception | None = None  # why the iterator's next value was refused
        self.lock = threading.Lock()  # one reader of `pending` at a time
        self.dynamic = values is not None or schedule is not None

    @property
    def source(self) -> float | np.ndarray | Iterator | LearningRateSchedule:
        """What the user gave, as read: a float, a float64 array (one value per step), an iterator
        or a schedule."""
        if self.schedule is not None:
            return self.schedule
        if self.pending is not None:
            return self.pending
        return self.values if self.values is not None else self.value

    def at(self, step: int) -> float:
        """The value for step `step` (0 on the first call).

        Raises:
            IndexError: a sequence has no value for `step`.
            TypeError: an iterator gave something other than a real number for `step` or before.
            ValueError: a schedule failed (overflowed) or gave a negative or non-finite value; an
                iterator gave one for `step` or before.
        """
        if self.values is not None:
            if step >= len(self.values) and self.pending is not None:
                self.read(step)
            if step >= len(self.values):
                raise IndexError(f"{self.what} has {len(self.values)} values (steps 0.."
                                 f"{len(self.values) - 1}); there is none for step {step}")
            return float(self.values[step])
        if self.schedule is None:
            return self.value
        try:
            value = float(self.schedule(step))
        except ArithmeticError as error:
            raise ValueError(f"{self.what} schedule {self.schedule!r} failed at step {step}: "
                             f"{type(error).__name__}: {error}") from None
        if not (math.isfinite(value) and value >= 0.0):
            raise ValueError(f"{self.what} schedule {type(self.schedule).__name__} gave "
                             f"{value!r} for step {step}; it must be finite and >= 0")
        return value

    def read(self, step: int) -> None:
        """Reads the iterator up to the value of `step` (or its end), checking each value.

        Raises:
            TypeError, ValueError: a value up to `step` is refused (`_sequence_value`); the values
                after it cannot be numbered, so every later read raises the same.
        """
        with self.lock:
            while self.pending is not None and len(self.values) <= step:
                if self.refused is not None:
                    raise type(self.refused)(*self.refused.args)
                try:
                    value = next(self.pending)
                except StopIteration:
                    self.pending = None
                    return
                try:
                    self.values.append(_sequence_value(value, self.what, len(self.values)))
                except (TypeError, ValueError) as error:
                    self.refused = error
                    raise


def _sequence_value(value: Any, what: str, position: int) -> float:
    """One value of a learning-rate iterator, as a float.

    Raises:
        TypeError: not a real number.
        ValueError: negative or not finite.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer,
                                                                     np.floating)):
        raise TypeError(f"{what}[{position}] must be a real number, got "
                        f"{type(value).__name__}: {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{what} must be finite and >= 0, got {value!r} at position {position}")
    return value


def is_float(value: Any) -> bool:
    """A Python float, subclasses included: np.float64 is one (as MindSpore's checks accept it),
    np.float32 is not."""
    return isinstance(value, float)


def is_number(value: Any) -> bool:
    """A Python float or int, not a bool."""
    return is_float(value) or (isinstance(value, int) and not isinstance(value, bool))


def check_loss_scale(value: Any) -> float:
    """MindSpore's loss_scale: a Python float or an int (a bool is an int), finite and > 0.

    Raises:
        TypeError, ValueError: naming loss_scale.
    """
    if not (is_float(value) or isinstance(value, int)):
        raise TypeError(f"loss_scale must be a float or an int, got {type(value).__name__}: "
                        f"{value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"loss_scale must be a finite number > 0, got {value!r}")
    return float(value)


def parse_rate(value: Any, what: str) -> Rate:
    """Parses a learning rate (docs/semantics.md "Learning rate and weight decay").

    An iterator (anything iterable without a length, e.g. a generator) is read lazily; its first
    value is read and checked here.
    """
    if isinstance(value, LearningRateSchedule):
        return Rate(what, schedule=value)
    if is_number(value):  # np.float64 too (a float); other numpy scalars are refused below
        return Rate(what, _non_negative(float(value), what))
    if isinstance(value, (str, bytes, Mapping, Set, np.generic, bool)) or not (
            isinstance(value, (Iterable, np.ndarray)) or hasattr(value, "__array__")):
        raise TypeError(f"{what} must be a float, an int, an array, an ordered iterable (not a "
                        f"set) or a LearningRateSchedule, got {type(value).__name__}: {value!r}")
    if not (isinstance(value, Sized) or hasattr(value, "__array__")):
        rate = Rate(what, values=[], pending=iter(value))
        rate.read(0)
        if not rate.values:
            raise ValueError(f"{what} is an empty iterator")
        return rate
    try:
        values = np.asarray(value if hasattr(value, "__array__") else list(value))
    except (TypeError, ValueError) as error:
        raise TypeError(f"{what}: cannot read {type(value).__name__} as numbers: {error}") from None
    if values.dtype.kind not in "iuf":
        raise TypeError(f"{what} must hold real numbers, got dtype {values.dtype}")
    if values.ndim > 1:
        raise ValueError(f"{what} must be 0-d or 1-d, got shape {values.shape}")
    values = values.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(values) | (values < 0))
    if bad.size:
        raise ValueError(f"{what} must be finite and >= 0, got {values.flat[bad[0]]!r}"
                         + (f" at position {bad[0]}" if values.ndim else ""))
    if values.ndim == 0:
        return Rate(what, float(values))
    if values.size == 0:
        raise ValueError(f"{what} is an empty sequence")
    return Rate(what, values=values)


def parse_weight_decay(value: Any, what: str) -> Rate:
    """Parses a weight decay: a float or int >= 0, or a schedule."""
    if isinstance(value, LearningRateSchedule):
        return Rate(what, schedule=value)
    if not is_number(value):
        raise TypeError(f"{what} must be a float, an int or a LearningRateSchedule, got "
                        f"{type(value).__name__}: {value!r}")
    return Rate(what, _non_negative(float(value), what))


def _non_negative(value: float, what: str) -> float:
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{what} must be finite and >= 0, got {value!r}")
    return value
