"""MindSpore's learning-rate schedules, for `LazyAdam(learning_rate=...)` and dynamic weight decay.

    from lazyadam.schedules import WarmUpLR
    opt = LazyAdam(params, learning_rate=WarmUpLR(0.01, warmup_steps=100))

A schedule is called with the step k (0 on the first call) and gives that step's value.
"""

from .runtime.schedules import (CosineDecayLR, ExponentialDecayLR, InverseDecayLR,
                                LearningRateSchedule, NaturalExpDecayLR, PolynomialDecayLR,
                                WarmUpLR)

__all__ = ["LearningRateSchedule", "ExponentialDecayLR", "NaturalExpDecayLR", "InverseDecayLR",
           "CosineDecayLR", "PolynomialDecayLR", "WarmUpLR"]
