"""Learning-rate schedules as in MindSpore's `mindspore.nn` (learning_rate_schedule).

A schedule is a pure function of the global step k (0 on the optimizer's first call); `LazyAdam`
calls it once per step for a dynamic learning rate or weight decay (docs/semantics.md "Learning
rate and weight decay"):

    schedule = CosineDecayLR(min_lr=0.001, max_lr=0.01, decay_steps=1000)
    schedule(0), schedule(500), schedule(1000)   # about 0.01, 0.0055, 0.001

Names, formulas and constructor checks follow MindSpore's documentation; where its kernels and its
documentation say different things, each class says which one it follows. Values are computed in
float64 (MindSpore computes in float32) and returned as Python floats.

To write a schedule of your own, subclass `LearningRateSchedule` and define `construct(global_step)`
as in MindSpore; calling the schedule checks the step and returns `float(construct(step))`.
"""

from __future__ import annotations

import abc
import math
import numbers
from typing import Any

import numpy as np

__all__ = ["LearningRateSchedule", "ExponentialDecayLR", "NaturalExpDecayLR", "InverseDecayLR",
           "CosineDecayLR", "PolynomialDecayLR", "WarmUpLR"]


class LearningRateSchedule(abc.ABC):
    """A learning rate (or weight decay) as a function of the global step k.

    Subclasses define `construct`; `__call__` checks the step first and returns a Python float.
    `repr` shows the public attributes set by the constructor, which for the schedules here are
    exactly its arguments.
    """

    def __call__(self, global_step: int) -> float:
        """The value at step `global_step`.

        Args:
            global_step: the step k, an int >= 0 (numpy integers are accepted, bools are not).

        Returns:
            The value for step k, as a Python float.

        Raises:
            TypeError: `global_step` is not an int.
            ValueError: `global_step` is negative.
        """
        return float(self.construct(_step(global_step, type(self).__name__)))

    @abc.abstractmethod
    def construct(self, global_step: int) -> float:
        """The value at step `global_step`, already checked to be an int >= 0."""

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={value!r}" for name, value in vars(self).items()
                         if not name.startswith("_"))
        return f"{type(self).__name__}({args})"


class _StepDecayLR(LearningRateSchedule):
    """The shared arguments of the decays that depend on p = k / decay_steps.

    Args:
        learning_rate: initial value, a float > 0.
        decay_rate: a float > 0.
        decay_steps: an int >= 1.
        is_stair: a bool, default False: p = floor(k / decay_steps) when set.

    Raises:
        TypeError: `learning_rate` or `decay_rate` is not a float, `decay_steps` is not an int or
            `is_stair` is not a bool.
        ValueError: `learning_rate` or `decay_rate` is <= 0 or not finite, or `decay_steps` < 1.
    """

    def __init__(self, learning_rate: float, decay_rate: float, decay_steps: int,
                 is_stair: bool = False):
        self.learning_rate, self.decay_rate, self.decay_steps, self.is_stair = _decay_args(
            type(self).__name__, learning_rate, decay_rate, decay_steps, is_stair)


class ExponentialDecayLR(_StepDecayLR):
    """Exponential decay.

        lr(k) = learning_rate * decay_rate ** p
        p = k / decay_steps            (is_stair=False)
        p = floor(k / decay_steps)     (is_stair=True: decays once every decay_steps steps)

    Args and errors: see `_StepDecayLR` (decay_rate < 1 decays, > 1 grows).
    """

    def construct(self, global_step: int) -> float:
        return self.learning_rate * self.decay_rate ** _progress(global_step, self.decay_steps,
                                                                 self.is_stair)


class NaturalExpDecayLR(_StepDecayLR):
    """Natural exponential decay.

        lr(k) = learning_rate * exp(-decay_rate * p)
        p = k / decay_steps            (is_stair=False)
        p = floor(k / decay_steps)     (is_stair=True)

    This is the documented formula (and that of MindSpore's `nn.natural_exp_decay_lr`). MindSpore's
    `NaturalExpDecayLR.construct` differs from it: it uses p = k, and p = floor(k / decay_steps) *
    decay_steps with `is_stair`, i.e. decay_rate there is per step, not per decay_steps steps.

    Args and errors: see `_StepDecayLR`.
    """

    def construct(self, global_step: int) -> float:
        p = _progress(global_step, self.decay_steps, self.is_stair)
        return self.learning_rate * math.exp(-self.decay_rate * p)


class InverseDecayLR(_StepDecayLR):
    """Inverse-time decay.

        lr(k) = learning_rate / (1 + decay_rate * p)
        p = k / decay_steps            (is_stair=False)
        p = floor(k / decay_steps)     (is_stair=True)

    Args and errors: see `_StepDecayLR`.
    """

    def construct(self, global_step: int) -> float:
        p = _progress(global_step, self.decay_steps, self.is_stair)
        return self.learning_rate / (1.0 + self.decay_rate * p)


class CosineDecayLR(LearningRateSchedule):
    """Cosine decay from `max_lr` at step 0 to `min_lr` at step `decay_steps`, then flat.

        lr(k) = min_lr + 0.5 * (max_lr - min_lr) * (1 + cos(pi * t / decay_steps))
        t = min(k, decay_steps)

    The clamp of k is MindSpore's (its `construct` takes `Minimum(global_step, decay_steps)`); the
    documented formula leaves it out.

    Args:
        min_lr: final value, a float >= 0.
        max_lr: initial value, a float > 0 and > `min_lr`.
        decay_steps: an int >= 1.

    Raises:
        TypeError: `min_lr` or `max_lr` is not a float, or `decay_steps` is not an int.
        ValueError: `min_lr` < 0, `max_lr` <= 0, either not finite, `max_lr` <= `min_lr`, or
            `decay_steps` < 1.
    """

    def __init__(self, min_lr: float, max_lr: float, decay_steps: int):
        owner = type(self).__name__
        self.min_lr = _float(min_lr, "min_lr", owner, positive=False)
        self.max_lr = _float(max_lr, "max_lr", owner, positive=True)
        self.decay_steps = _positive_int(decay_steps, "decay_steps", owner)
        if self.min_lr >= self.max_lr:
            raise ValueError(f"{owner}: max_lr must be greater than min_lr, got max_lr={max_lr!r}, "
                             f"min_lr={min_lr!r}")

    def construct(self, global_step: int) -> float:
        t = min(global_step, self.decay_steps)
        return self.min_lr + 0.5 * (self.max_lr - self.min_lr) * (
            1.0 + math.cos(math.pi * t / self.decay_steps))


class PolynomialDecayLR(LearningRateSchedule):
    """Polynomial decay from `learning_rate` to `end_learning_rate`.

        lr(k) = (learning_rate - end_learning_rate) * (1 - t / T) ** power + end_learning_rate

    With `update_decay_steps=False`: t = min(k, decay_steps), T = decay_steps, so the value stays at
    `end_learning_rate` from step `decay_steps` on.

    With `update_decay_steps=True`: t = k, T = decay_steps * max(ceil(k / decay_steps), 1), so the
    decay restarts (from a lower value) on each new period of `decay_steps` steps and reaches
    `end_learning_rate` at every multiple of `decay_steps`. This is MindSpore's `construct` (and
    TensorFlow's `cycle=True`); the documentation writes T without the max(., 1), which only
    matters at k = 0 (T = decay_steps there, not 0).

    Args:
        learning_rate: initial value, a float > 0.
        end_learning_rate: final value, a float >= 0.
        decay_steps: an int >= 1.
        power: a float > 0.
        update_decay_steps: a bool, default False.

    Raises:
        TypeError: `learning_rate`, `end_learning_rate` or `power` is not a float, `decay_steps` is
            not an int or `update_decay_steps` is not a bool.
        ValueError: `learning_rate` or `power` <= 0, `end_learning_rate` < 0, any of them not
            finite, or `decay_steps` < 1.
    """

    def __init__(self, learning_rate: float, end_learning_rate: float, decay_steps: int,
                 power: float, update_decay_steps: bool = False):
        owner = type(self).__name__
        self.learning_rate = _float(learning_rate, "learning_rate", owner, positive=True)
        self.end_learning_rate = _float(end_learning_rate, "end_learning_rate", owner,
                                        positive=False)
        self.decay_steps = _positive_int(decay_steps, "decay_steps", owner)
        self.power = _float(power, "power", owner, positive=True)
        self.update_decay_steps = _bool(update_decay_steps, "update_decay_steps", owner)

    def construct(self, global_step: int) -> float:
        if self.update_decay_steps:
            t = global_step
            periods = -(-global_step // self.decay_steps)
            total = self.decay_steps * max(periods, 1)
        else:
            t = min(global_step, self.decay_steps)
            total = self.decay_steps
        return ((self.learning_rate - self.end_learning_rate) * (1.0 - t / total) ** self.power
                + self.end_learning_rate)


class WarmUpLR(LearningRateSchedule):
    """Linear warm-up from 0 at step 0 to `learning_rate` at step `warmup_steps`, then flat.

        lr(k) = learning_rate * min(k, warmup_steps) / warmup_steps

    Args:
        learning_rate: final value, a float > 0.
        warmup_steps: an int >= 1.

    Raises:
        TypeError: `learning_rate` is not a float or `warmup_steps` is not an int.
        ValueError: `learning_rate` <= 0 or not finite, or `warmup_steps` < 1.
    """

    def __init__(self, learning_rate: float, warmup_steps: int):
        owner = type(self).__name__
        self.learning_rate = _float(learning_rate, "learning_rate", owner, positive=True)
        self.warmup_steps = _positive_int(warmup_steps, "warmup_steps", owner)

    def construct(self, global_step: int) -> float:
        return self.learning_rate * min(global_step, self.warmup_steps) / self.warmup_steps


def _progress(global_step: int, decay_steps: int, is_stair: bool) -> float:
    """p = k / decay_steps, or floor(k / decay_steps) in stair mode (exact integer division)."""
    return float(global_step // decay_steps) if is_stair else global_step / decay_steps


def _decay_args(owner: str, learning_rate: Any, decay_rate: Any, decay_steps: Any,
                is_stair: Any) -> tuple[float, float, int, bool]:
    """The checked arguments shared by the exponential, natural-exponential and inverse decays."""
    return (_float(learning_rate, "learning_rate", owner, positive=True),
            _float(decay_rate, "decay_rate", owner, positive=True),
            _positive_int(decay_steps, "decay_steps", owner),
            _bool(is_stair, "is_stair", owner))


def _float(value: Any, name: str, owner: str, positive: bool) -> float:
    """A Python float, finite and > 0 (`positive`) or >= 0; ints, bools and numpy scalars are not
    floats here, as in MindSpore's checks and the optimizer's hyperparameters."""
    if not isinstance(value, float) or isinstance(value, np.generic):
        raise TypeError(f"{owner}: {name} must be a float, got {type(value).__name__}: {value!r}")
    if not math.isfinite(value) or value < 0.0 or (positive and value == 0.0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{owner}: {name} must be finite and {bound}, got {value!r}")
    return value


def _positive_int(value: Any, name: str, owner: str) -> int:
    """A Python int >= 1 (not a bool)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be an int, got {type(value).__name__}: {value!r}")
    if value < 1:
        raise ValueError(f"{owner}: {name} must be >= 1, got {value!r}")
    return value


def _bool(value: Any, name: str, owner: str) -> bool:
    """A Python bool."""
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be a bool, got {type(value).__name__}: {value!r}")
    return value


def _step(global_step: Any, owner: str) -> int:
    """The global step as an int >= 0; numpy integers are accepted, bools are not."""
    if not isinstance(global_step, numbers.Integral) or isinstance(global_step, (bool, np.bool_)):
        raise TypeError(f"{owner}: global_step must be an int, got {type(global_step).__name__}: "
                        f"{global_step!r}")
    if global_step < 0:
        raise ValueError(f"{owner}: global_step must be >= 0, got {global_step!r}")
    return int(global_step)
