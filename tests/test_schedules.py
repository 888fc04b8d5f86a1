"""Learning-rate schedules against their closed forms (MindSpore's `nn` documentation), the
examples printed in that documentation, and the constructor and step checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lazyadam.runtime.schedules import (CosineDecayLR, ExponentialDecayLR, InverseDecayLR,
                                        LearningRateSchedule, NaturalExpDecayLR,
                                        PolynomialDecayLR, WarmUpLR)

#: float64 arithmetic against float64 closed forms.
RTOL = 1e-12
#: MindSpore prints its examples from float32.
RTOL_FLOAT32 = 1e-7

# Each row: schedule, step k, the closed form at k written out by hand.
CLOSED_FORMS = {
    # learning_rate * decay_rate ** p, p = k / decay_steps or floor(k / decay_steps)
    "exponential k=0": (ExponentialDecayLR(0.1, 0.9, 4), 0, 0.1),
    "exponential k=2": (ExponentialDecayLR(0.1, 0.9, 4), 2, 0.1 * 0.9 ** 0.5),
    "exponential k=4": (ExponentialDecayLR(0.1, 0.9, 4), 4, 0.09),
    "exponential k=6": (ExponentialDecayLR(0.1, 0.9, 4), 6, 0.1 * 0.9 ** 1.5),
    "exponential stair k=3": (ExponentialDecayLR(0.1, 0.9, 4, True), 3, 0.1),
    "exponential stair k=4": (ExponentialDecayLR(0.1, 0.9, 4, True), 4, 0.09),
    "exponential stair k=7": (ExponentialDecayLR(0.1, 0.9, 4, True), 7, 0.09),
    "exponential stair k=8": (ExponentialDecayLR(0.1, 0.9, 4, True), 8, 0.081),
    "exponential growth": (ExponentialDecayLR(0.1, 2.0, 1), 3, 0.8),
    # learning_rate * exp(-decay_rate * p)
    "natural k=0": (NaturalExpDecayLR(0.1, 0.9, 4), 0, 0.1),
    "natural k=1": (NaturalExpDecayLR(0.1, 0.9, 4), 1, 0.1 * math.exp(-0.225)),
    "natural k=2": (NaturalExpDecayLR(0.1, 0.9, 4), 2, 0.1 * math.exp(-0.45)),
    "natural k=8": (NaturalExpDecayLR(0.1, 0.9, 4), 8, 0.1 * math.exp(-1.8)),
    "natural stair k=3": (NaturalExpDecayLR(0.1, 0.9, 4, True), 3, 0.1),
    "natural stair k=5": (NaturalExpDecayLR(0.1, 0.9, 4, True), 5, 0.1 * math.exp(-0.9)),
    "natural stair k=8": (NaturalExpDecayLR(0.1, 0.9, 4, True), 8, 0.1 * math.exp(-1.8)),
    # learning_rate / (1 + decay_rate * p)
    "inverse k=0": (InverseDecayLR(0.1, 0.9, 4), 0, 0.1),
    "inverse k=2": (InverseDecayLR(0.1, 0.9, 4), 2, 0.1 / 1.45),
    "inverse k=4": (InverseDecayLR(0.1, 0.9, 4), 4, 0.1 / 1.9),
    "inverse stair k=2": (InverseDecayLR(0.1, 0.9, 4, True), 2, 0.1),
    "inverse stair k=4": (InverseDecayLR(0.1, 0.9, 4, True), 4, 0.1 / 1.9),
    "inverse stair k=9": (InverseDecayLR(0.1, 0.9, 4, True), 9, 0.1 / 2.8),
    # min_lr + (max_lr - min_lr) / 2 * (1 + cos(pi * min(k, decay_steps) / decay_steps))
    "cosine k=0": (CosineDecayLR(0.01, 0.1, 4), 0, 0.1),
    "cosine k=1": (CosineDecayLR(0.01, 0.1, 4), 1, 0.01 + 0.045 * (1 + math.sqrt(0.5))),
    "cosine k=2": (CosineDecayLR(0.01, 0.1, 4), 2, 0.055),
    "cosine k=3": (CosineDecayLR(0.01, 0.1, 4), 3, 0.01 + 0.045 * (1 - math.sqrt(0.5))),
    "cosine at decay_steps": (CosineDecayLR(0.01, 0.1, 4), 4, 0.01),
    "cosine after decay_steps": (CosineDecayLR(0.01, 0.1, 4), 5, 0.01),
    "cosine long after": (CosineDecayLR(0.01, 0.1, 4), 1000, 0.01),
    "cosine to zero": (CosineDecayLR(0.0, 0.1, 2), 1, 0.05),
    # (lr - end) * (1 - t / T) ** power + end
    "polynomial k=0": (PolynomialDecayLR(0.1, 0.01, 4, 0.5), 0, 0.1),
    "polynomial k=1": (PolynomialDecayLR(0.1, 0.01, 4, 0.5), 1, 0.09 * math.sqrt(0.75) + 0.01),
    "polynomial k=2": (PolynomialDecayLR(0.1, 0.01, 4, 0.5), 2, 0.09 * math.sqrt(0.5) + 0.01),
    "polynomial at decay_steps": (PolynomialDecayLR(0.1, 0.01, 4, 0.5), 4, 0.01),
    "polynomial after decay_steps": (PolynomialDecayLR(0.1, 0.01, 4, 0.5), 9, 0.01),
    "polynomial power 2": (PolynomialDecayLR(0.1, 0.01, 4, 2.0), 1, 0.09 * 0.5625 + 0.01),
    "polynomial to zero": (PolynomialDecayLR(0.1, 0.0, 10, 1.0), 3, 0.07),
    "polynomial rising": (PolynomialDecayLR(0.01, 0.1, 4, 1.0), 2, 0.055),
    # update_decay_steps: t = k, T = decay_steps * max(ceil(k / decay_steps), 1)
    "polynomial update k=0": (PolynomialDecayLR(0.1, 0.01, 4, 0.5, True), 0, 0.1),
    "polynomial update k=2": (PolynomialDecayLR(0.1, 0.01, 4, 0.5, True), 2,
                              0.09 * math.sqrt(0.5) + 0.01),
    "polynomial update k=4": (PolynomialDecayLR(0.1, 0.01, 4, 0.5, True), 4, 0.01),
    "polynomial update k=5": (PolynomialDecayLR(0.1, 0.01, 4, 0.5, True), 5,
                              0.09 * math.sqrt(3 / 8) + 0.01),
    "polynomial update k=8": (PolynomialDecayLR(0.1, 0.01, 4, 0.5, True), 8, 0.01),
    "polynomial update k=9": (PolynomialDecayLR(0.1, 0.01, 4, 0.5, True), 9, 0.055),
    # learning_rate * min(k, warmup_steps) / warmup_steps
    "warmup k=0": (WarmUpLR(0.1, 2), 0, 0.0),
    "warmup k=1": (WarmUpLR(0.1, 2), 1, 0.05),
    "warmup at warmup_steps": (WarmUpLR(0.1, 2), 2, 0.1),
    "warmup after warmup_steps": (WarmUpLR(0.1, 2), 3, 0.1),
    "warmup long after": (WarmUpLR(0.1, 2), 10**6, 0.1),
    "warmup one step": (WarmUpLR(0.3, 1), 0, 0.0),
}


@pytest.mark.parametrize("schedule, step, expected", CLOSED_FORMS.values(), ids=CLOSED_FORMS)
def test_closed_form(schedule, step, expected):
    value = schedule(step)
    assert type(value) is float
    assert value == pytest.approx(expected, rel=RTOL, abs=1e-15)


# The examples printed in MindSpore's documentation (r1.8), all at global_step = 2.
DOCUMENTED = {
    "ExponentialDecayLR": (ExponentialDecayLR(0.1, 0.9, 4), 0.09486833),
    "CosineDecayLR": (CosineDecayLR(0.01, 0.1, 4), 0.055),
    "PolynomialDecayLR": (PolynomialDecayLR(0.1, 0.01, 4, 0.5), 0.07363961),
    "WarmUpLR": (WarmUpLR(0.1, 2), 0.1),
}


@pytest.mark.parametrize("schedule, printed", DOCUMENTED.values(), ids=DOCUMENTED)
def test_documented_example(schedule, printed):
    assert schedule(2) == pytest.approx(printed, rel=RTOL_FLOAT32)


def test_natural_exp_decay_divides_by_decay_steps():
    """The documented form, p = k / decay_steps, not MindSpore's construct (p = k)."""
    schedule = NaturalExpDecayLR(1.0, 0.5, 10)
    assert schedule(10) == pytest.approx(math.exp(-0.5), rel=RTOL)
    assert schedule(10) != pytest.approx(math.exp(-5.0), rel=1e-3)


@pytest.mark.parametrize("cls", [ExponentialDecayLR, NaturalExpDecayLR, InverseDecayLR])
def test_decays_meet_at_multiples_of_decay_steps(cls):
    """Stair and smooth forms agree at multiples of decay_steps; in between, stair holds still."""
    smooth, stair = cls(0.2, 0.7, 3), cls(0.2, 0.7, 3, True)
    for k in (0, 3, 6, 30):
        assert stair(k) == pytest.approx(smooth(k), rel=RTOL)
    assert stair(4) == stair(5) == stair(3)
    assert smooth(3) > smooth(4) > smooth(5) > smooth(6)


def test_polynomial_update_decay_steps_restarts_each_period():
    """Each period of decay_steps steps decays to end_learning_rate, then restarts lower."""
    schedule = PolynomialDecayLR(0.1, 0.01, 4, 1.0, update_decay_steps=True)
    values = [schedule(k) for k in range(13)]
    for end in (4, 8, 12):
        assert values[end] == pytest.approx(0.01, rel=RTOL)
    for start in (1, 5, 9):
        assert values[start] > values[start + 1] > values[start + 2] > values[start + 3]
    assert values[5] > values[4] and values[9] > values[8]
    assert values[1] > values[5] > values[9]


def test_schedules_are_deterministic_functions_of_the_step():
    schedule = CosineDecayLR(0.01, 0.1, 4)
    assert [schedule(k) for k in (3, 1, 3)] == [schedule(3), schedule(1), schedule(3)]


@pytest.mark.parametrize("step", [np.int32(2), np.int64(2), np.uint8(2)])
def test_numpy_integer_steps(step):
    assert ExponentialDecayLR(0.1, 0.9, 4)(step) == ExponentialDecayLR(0.1, 0.9, 4)(2)


@pytest.mark.parametrize("step, error", [
    (-1, ValueError),
    (np.int64(-3), ValueError),
    (True, TypeError),
    (np.bool_(True), TypeError),
    (1.0, TypeError),
    (np.float32(1.0), TypeError),
    ("1", TypeError),
    (None, TypeError),
])
def test_bad_step(step, error):
    with pytest.raises(error, match="global_step") as caught:
        WarmUpLR(0.1, 2)(step)
    assert repr(step) in str(caught.value)


# Valid arguments per class; each bad case overrides one of them.
VALID = {
    ExponentialDecayLR: dict(learning_rate=0.1, decay_rate=0.9, decay_steps=4, is_stair=False),
    NaturalExpDecayLR: dict(learning_rate=0.1, decay_rate=0.9, decay_steps=4, is_stair=False),
    InverseDecayLR: dict(learning_rate=0.1, decay_rate=0.9, decay_steps=4, is_stair=False),
    CosineDecayLR: dict(min_lr=0.01, max_lr=0.1, decay_steps=4),
    PolynomialDecayLR: dict(learning_rate=0.1, end_learning_rate=0.01, decay_steps=4, power=0.5,
                            update_decay_steps=False),
    WarmUpLR: dict(learning_rate=0.1, warmup_steps=2),
}

NOT_A_FLOAT = [1, 0, True, np.float32(0.1), np.float64(0.1), "0.1", None]
POSITIVE_FLOAT_VALUES = [0.0, -0.1, math.nan, math.inf, -math.inf]
NON_NEGATIVE_FLOAT_VALUES = [-0.1, -1e-300, math.nan, math.inf]
NOT_AN_INT = [4.0, True, np.int64(4), "4", None]
BAD_INT_VALUES = [0, -1]
NOT_A_BOOL = [1, 0, None, "True", np.bool_(True)]

POSITIVE_FLOATS = {ExponentialDecayLR: ["learning_rate", "decay_rate"],
                   NaturalExpDecayLR: ["learning_rate", "decay_rate"],
                   InverseDecayLR: ["learning_rate", "decay_rate"],
                   CosineDecayLR: ["max_lr"],
                   PolynomialDecayLR: ["learning_rate", "power"],
                   WarmUpLR: ["learning_rate"]}
NON_NEGATIVE_FLOATS = {CosineDecayLR: ["min_lr"], PolynomialDecayLR: ["end_learning_rate"]}
POSITIVE_INTS = {ExponentialDecayLR: ["decay_steps"], NaturalExpDecayLR: ["decay_steps"],
                 InverseDecayLR: ["decay_steps"], CosineDecayLR: ["decay_steps"],
                 PolynomialDecayLR: ["decay_steps"], WarmUpLR: ["warmup_steps"]}
BOOLS = {ExponentialDecayLR: ["is_stair"], NaturalExpDecayLR: ["is_stair"],
         InverseDecayLR: ["is_stair"], PolynomialDecayLR: ["update_decay_steps"]}


def _cases(table, values, error):
    return [pytest.param(cls, name, value, error, id=f"{cls.__name__}-{name}-{value!r}")
            for cls, names in table.items() for name in names for value in values]


CONSTRUCTOR_ERRORS = (_cases(POSITIVE_FLOATS, NOT_A_FLOAT, TypeError)
                      + _cases(POSITIVE_FLOATS, POSITIVE_FLOAT_VALUES, ValueError)
                      + _cases(NON_NEGATIVE_FLOATS, NOT_A_FLOAT, TypeError)
                      + _cases(NON_NEGATIVE_FLOATS, NON_NEGATIVE_FLOAT_VALUES, ValueError)
                      + _cases(POSITIVE_INTS, NOT_AN_INT, TypeError)
                      + _cases(POSITIVE_INTS, BAD_INT_VALUES, ValueError)
                      + _cases(BOOLS, NOT_A_BOOL, TypeError))


@pytest.mark.parametrize("cls, name, value, error", CONSTRUCTOR_ERRORS)
def test_constructor_error(cls, name, value, error):
    with pytest.raises(error) as caught:
        cls(**{**VALID[cls], name: value})
    message = str(caught.value)
    assert cls.__name__ in message and name in message and repr(value) in message


@pytest.mark.parametrize("min_lr, max_lr", [(0.1, 0.1), (0.2, 0.1)])
def test_cosine_max_lr_must_exceed_min_lr(min_lr, max_lr):
    with pytest.raises(ValueError, match="max_lr must be greater than min_lr") as caught:
        CosineDecayLR(min_lr, max_lr, 4)
    assert repr(min_lr) in str(caught.value) and repr(max_lr) in str(caught.value)


@pytest.mark.parametrize("cls", VALID)
def test_valid_arguments_are_kept(cls):
    schedule = cls(**VALID[cls])
    for name, value in VALID[cls].items():
        assert getattr(schedule, name) == value


@pytest.mark.parametrize("cls, name", [(CosineDecayLR, "min_lr"),
                                       (PolynomialDecayLR, "end_learning_rate")])
def test_zero_floor_is_allowed(cls, name):
    assert getattr(cls(**{**VALID[cls], name: 0.0}), name) == 0.0


@pytest.mark.parametrize("cls", VALID)
def test_repr_shows_the_arguments_and_rebuilds_the_schedule(cls):
    schedule = cls(**VALID[cls])
    text = repr(schedule)
    args = ", ".join(f"{name}={value!r}" for name, value in VALID[cls].items())
    assert text == f"{cls.__name__}({args})"
    rebuilt = eval(text, {cls.__name__: cls})
    assert [rebuilt(k) for k in range(10)] == [schedule(k) for k in range(10)]


def test_base_class_is_abstract():
    with pytest.raises(TypeError):
        LearningRateSchedule()

    class Incomplete(LearningRateSchedule):
        pass

    with pytest.raises(TypeError):
        Incomplete()


def test_subclass_defines_construct_as_in_mindspore():
    class Halving(LearningRateSchedule):
        def __init__(self, start):
            super().__init__()
            self.start = start

        def construct(self, global_step):
            return np.float32(self.start) * np.float32(0.5) ** global_step

    schedule = Halving(0.5)
    assert schedule(3) == 0.0625 and type(schedule(3)) is float
    assert repr(schedule) == "Halving(start=0.5)"
    with pytest.raises(ValueError, match="Halving: global_step"):
        schedule(-1)
