"""The kernel variants that the tests compile on every target, and what the reference needs of one.

LazyAdam's: the full flag product in float32 and float64 (576 kernels), and a sample of the
half-precision product (`half_variants`: every flag combination once, 288 kernels, each of the 16
ways of storing a bfloat16 or float16 parameter meeting every flag value). The whole half-precision
product would be 4608 kernels more, eight times the compile time of the rest of the suite.

The family's (lazyadam/rules: SGD, Adagrad, rowwise Adagrad, partial-rowwise Adam, Lion), by the
same scheme: `FAMILY`, 1515 kernels, and `family_step`, one step of tests/reference_family.py for
a spec.
"""

import dataclasses
import functools
import itertools

import ml_dtypes
import numpy as np

import reference_family as ref
from lazyadam import Spec
from lazyadam.codegen import generate
from lazyadam.codegen.spec import HALF_DTYPES, SpecError
from lazyadam.codegen.variants import STORAGE_FIELDS, choices, half_variants, variants
from lazyadam.rules import ADAGRAD, ADAM, LION, PARTIAL_ROWWISE_ADAM, ROWWISE_ADAGRAD, SGD

FULL = variants(dtype="float32") + variants(dtype="float64")
HALF = half_variants()
ALL = FULL + HALF

#: The family's rules, by name.
RULES = {rule.name: rule for rule in (SGD, ADAGRAD, ROWWISE_ADAGRAD, PARTIAL_ROWWISE_ADAM, LION)}


def storage_way(spec: Spec) -> tuple:
    """How `spec` stores its arrays: its `STORAGE_FIELDS` values."""
    return tuple(getattr(spec, field) for field in STORAGE_FIELDS)


def half_sample(rule) -> list:
    """`half_variants(rule)` and as many more as it takes for every value of every flag to meet
    every way of storing a half-precision parameter (16): a rule with fewer flag combinations
    than LazyAdam's 288 deals the ways to them again, shifted by one each round, keeping the
    specs that show a flag value with a way not seen yet (SGD 96 + 13, Adagrad and Lion
    24 + 34, rowwise Adagrad 36 + 30, partial-rowwise Adam 288 + 0)."""
    flags = ("sparse", *rule.flags)
    ways = [dict(zip(STORAGE_FIELDS, values)) for values in itertools.product(
        *({**choices(rule), "dtype": HALF_DTYPES}[field] for field in STORAGE_FIELDS))]
    layouts = variants(rule, dtype="float32")

    def meets(spec):
        return {(flag, getattr(spec, flag), storage_way(spec)) for flag in flags}

    chosen = half_variants(rule)
    met = set().union(*map(meets, chosen))
    wanted = {(flag, getattr(layout, flag), tuple(way.values()))
              for flag in flags for layout in layouts for way in ways}
    shift = 1
    while not wanted <= met and shift < len(ways):
        for k, layout in enumerate(layouts):
            try:
                spec = dataclasses.replace(
                    layout, **ways[(k // len(ways) + k + shift) % len(ways)]).validate()
            except SpecError:
                continue
            if not meets(spec) <= met:
                chosen.append(spec)
                met |= meets(spec)
        shift += 1
    return chosen


#: Every rule's full flag product in float32 and float64 and its half-precision sample, as
#: LazyAdam's (SGD 192 + 109 kernels, Adagrad 48 + 58, rowwise Adagrad 72 + 66, partial-rowwise
#: Adam 576 + 288, Lion 48 + 58: 1515).
FAMILY = [spec for rule in RULES.values()
          for spec in variants(rule, dtype="float32") + variants(rule, dtype="float64")
          + half_sample(rule)]

#: numpy's type of each storage dtype.
NUMPY = {"float32": np.float32, "float64": np.float64, "bfloat16": ml_dtypes.bfloat16,
         "float16": np.float16}


def dtype(spec: Spec, array: str) -> type:
    """The numpy type in which `array` ("var", "m", "v", "vmax" or "grad") of `spec` is stored."""
    return NUMPY[spec.storage(array)]


def reference_flags(spec: Spec, seed: int = 0, step: int = 0) -> dict:
    """The keywords of `reference.lazyadam_step` that describe `spec` (its storage included), for
    step `step` of a run with seed `seed`."""
    flags = dict(nesterov=spec.nesterov, decay=spec.decay, amsgrad=spec.amsgrad,
                 maximize=spec.maximize, eps_mode=spec.eps_mode)
    if spec.dtype in ("bfloat16", "float16"):
        flags.update(dtype=spec.dtype, state_dtype=spec.storage("m"), rounding=spec.rounding,
                     seed=seed, step=step)
    return flags



@functools.lru_cache(maxsize=None)
def cuda_refusal(spec: Spec) -> str | None:
    """Why the CUDA target does not render `spec` (its SpecError), or None where it does."""
    try:
        generate(spec, "cuda")
    except SpecError as error:
        return str(error)
    return None


def covering(specs: list, flags: tuple) -> list:
    """The specs of `specs` (in order) that show a value of one of `flags` (spec field names) not
    shown by those before: a few specs in which every value of every flag appears."""
    chosen, shown = [], set()
    for spec in specs:
        values = {(flag, getattr(spec, flag)) for flag in flags}
        if not values <= shown:
            chosen.append(spec)
            shown |= values
    return chosen


def sample(specs: list, rule) -> list:
    """The specs of `specs` of `rule` that the C target builds with its own flags (tests/quick_c.py
    builds the rest): a few that show every value of every flag and storage field."""
    return covering([spec for spec in specs if spec.RULE is rule],
                    ("sparse", *rule.flags, "dtype", "index_dtype", "state_dtype", "grad_dtype",
                     "rounding"))


#: LazyAdam's kernels that the C target builds with its own flags (16 of `ALL`).
SAMPLE = sample(ALL, ADAM)

#: The family's (68 of `FAMILY`).
FAMILY_SAMPLE = [spec for rule in RULES.values() for spec in sample(FAMILY, rule)]

#: The hyperparameters of the family's reference runs, by rule (every option's effect shows).
FAMILY_HYPER = {
    "sgd": dict(lr=0.05, mu=0.9, dampening=0.3, weight_decay=0.1, loss_scale=4.0),
    "adagrad": dict(lr=0.1, lr_decay=0.05, weight_decay=0.1, eps=1e-3, loss_scale=4.0),
    "rowwise_adagrad": dict(lr=0.1, eps=1e-3, weight_decay=0.1, loss_scale=4.0),
    "partial_rowwise_adam": dict(lr=0.01, beta1=0.9, beta2=0.99, eps=1e-3, weight_decay=0.1,
                                 loss_scale=4.0),
    "lion": dict(lr=0.01, beta1=0.9, beta2=0.99, weight_decay=0.1, loss_scale=4.0),
}


def family_step(spec: Spec, state: dict, grad: np.ndarray, indices, t: int) -> dict:
    """Step `t` (1 on the first) of tests/reference_family.py for `spec` of a family rule, with
    `FAMILY_HYPER`: the new state, by array name, with what the reference keeps that the kernel
    need not (SGD's `seen` without dampening)."""
    rule = spec.RULE
    h = dict(FAMILY_HYPER[rule.name])
    flags = dict(maximize=spec.maximize, loss_scale=h.pop("loss_scale"), indices=indices)
    var = state["var"]
    if rule is SGD:
        buffer = state.get("buf", np.zeros_like(var))
        seen = state.get("seen", np.zeros(len(var))) != 0
        var, b, seen = ref.sgd_step(var, buffer, seen, grad, lr=h["lr"],
                                    momentum=h["mu"] if spec.momentum else 0.0,
                                    dampening=h["dampening"] if spec.dampening else 0.0,
                                    weight_decay=h["weight_decay"] if spec.decay == "l2" else 0.0,
                                    nesterov=spec.nesterov, **flags)
        return {"var": var, "buf": b, "seen": seen.astype(np.float64)}
    if rule is ADAGRAD:
        var, s = ref.adagrad_step(var, state["sum"], grad, lr=h["lr"], step=t,
                                  lr_decay=h["lr_decay"], eps=h["eps"],
                                  weight_decay=h["weight_decay"] if spec.decay == "l2" else 0.0,
                                  **flags)
        return {"var": var, "sum": s}
    if rule is ROWWISE_ADAGRAD:
        var, a = ref.rowwise_adagrad_step(var, state["acc"], grad, lr=h["lr"], eps=h["eps"],
                                          weight_decay=h["weight_decay"], decay=spec.decay,
                                          **flags)
        return {"var": var, "acc": a}
    if rule is PARTIAL_ROWWISE_ADAM:
        var, m, v, vmax = ref.partial_rowwise_adam_step(
            var, state["m"], state["v"], grad, lr=h["lr"], beta1=h["beta1"], beta2=h["beta2"],
            eps=h["eps"], beta1_power=h["beta1"] ** t, beta2_power=h["beta2"] ** t,
            weight_decay=h["weight_decay"], decay=spec.decay, amsgrad=spec.amsgrad,
            vmax=state.get("vmax"), nesterov=spec.nesterov, eps_mode=spec.eps_mode, **flags)
        return {"var": var, "m": m, "v": v, "vmax": vmax}
    var, m = ref.lion_step(var, state["m"], grad, lr=h["lr"], beta1=h["beta1"], beta2=h["beta2"],
                           weight_decay=h["weight_decay"] if spec.decay == "decoupled" else 0.0,
                           **flags)
    return {"var": var, "m": m}
