"""The family's optimizers on bfloat16 and float16 parameters, in both front ends, against
tests/reference_family.py: each step from what the optimizer stored at the step before.

The kernels compute in float32 and store 16-bit arrays rounded (nearest or stochastic), and the
reference computes in float64 without rounding; so each step starts the reference from the arrays
the optimizer stored (read as float64), and a stored 16-bit value may be a unit in the last place
from the reference's, float32 state a few float32 units. The weights are small, so that a step
moves them by many units in their last place: a front end that bound the wrong dtype, state or
hyperparameters to a half-precision parameter is off by far more.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import reference_family as ref
import test_mindspore_family as mindspore
from lazyadam import Parameter

torch = pytest.importorskip("torch", reason="lazyadam.torch needs torch")
import lazyadam.torch  # noqa: E402  (after the skip: it imports torch)
import test_torch_family as family  # noqa: E402

HALF = {"bfloat16": (ml_dtypes.bfloat16, torch.bfloat16, 2.0 ** -7),
        "float16": (np.float16, torch.float16, 2.0 ** -10)}
CASES = [("bfloat16", "nearest"), ("bfloat16", "stochastic"), ("float16", "nearest"),
         ("float16", "stochastic")]


def assert_stored(actual, expected, eps: float, what: str) -> None:
    """`actual`, as stored, within a unit in the last place (`eps` relative) of the float64
    `expected` (float32 arrays: within a few float32 units), each element; the float32
    arithmetic's own error, relative to the largest element, is allowed besides."""
    if actual.dtype == np.float32:
        eps = 2.0 ** -20
    largest = float(np.abs(expected).max(initial=0.0))
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=eps,
                               atol=2.0 ** -20 * largest, err_msg=what)


def as_float64(state: dict) -> dict:
    return {key: np.asarray(value, dtype=np.float64) for key, value in state.items()}


# -- the MindSpore-style classes ------------------------------------------------------------------


@pytest.mark.parametrize("dtype, rounding", CASES, ids=["-".join(case) for case in CASES])
@pytest.mark.parametrize("name", mindspore.CLASSES)
def test_mindspore_classes_step_half_precision_parameters_as_the_reference(name, dtype, rounding):
    numpy_type, _, eps = HALF[dtype]
    table, dense, grads = mindspore.data(numpy_type, seed=3)
    # weights of about 1/64 (an exact scaling): a step's change is many units in their last place
    table, dense = ((a.astype(np.float32) / 64).astype(numpy_type) for a in (table, dense))
    params = [Parameter(table.copy(), name="table"), Parameter(dense.copy(), name="dense")]
    opt = mindspore.CLASSES[name](params, rounding=rounding, seed=5)
    for t, batch in enumerate(grads[:3], start=1):
        before = opt.state_dict()
        sections = [key for key, value in before.items() if isinstance(value, dict)]
        stored = {param: as_float64({key: before[key][param] for key in sections})
                  for param in ("table", "dense")}
        for state in stored.values():  # SGD without dampening keeps no `seen`: a buffer
            state.setdefault("seen", np.ones(len(state["parameters"])))  # starts at zero
        assert opt(mindspore.step_of(batch)) is True
        after = opt.state_dict()
        expected = {"table": mindspore._reference(name, stored["table"], batch[1], batch[0], t),
                    "dense": mindspore._reference(name, stored["dense"], batch[2], None, t)}
        for param in ("table", "dense"):
            assert after["parameters"][param].dtype == numpy_type
            for key in sections:
                assert_stored(after[key][param], expected[param][key], eps,
                              f"{key} of {param}, step {t}")


# -- lazyadam.torch -------------------------------------------------------------------------------


def _sgd(w, state, grad, indices, t, options):
    buffer = state.get("momentum_buffer", np.zeros_like(w))
    seen = state.get("seen", np.zeros(len(w))) != 0
    w, buffer, seen = ref.sgd_step(w, buffer, seen, grad, lr=options["lr"],
                                   momentum=options["momentum"], dampening=options["dampening"],
                                   indices=indices)
    return w, {"momentum_buffer": buffer, "seen": seen}


def _adagrad(w, state, grad, indices, t, options):
    w, total = ref.adagrad_step(w, state["sum"], grad, lr=options["lr"], step=t,
                                lr_decay=options["lr_decay"], indices=indices)
    return w, {"sum": total}


def _rowwise(w, state, grad, indices, t, options):
    first = np.full(len(w), options.get("initial_accumulator_value", 0.0))
    w, total = family._rowwise(w, state.get("sum", first), grad, indices, t, options)
    return w, {"sum": total}


def _partial(w, state, grad, indices, t, options):
    keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    before = (tuple(state.get(key) for key in keys) if state
              else (np.zeros_like(w), np.zeros(len(w)), None))
    w, after = family._partial(w, before, grad, indices, t, options)
    return w, dict(zip(keys, after))


def _lion(w, state, grad, indices, t, options):
    w, m = family._lion(w, state.get("exp_avg"), grad, indices, t, options)
    return w, {"exp_avg": m}


TORCH_REFERENCES = {lazyadam.torch.SGD: _sgd, lazyadam.torch.Adagrad: _adagrad,
                    lazyadam.torch.RowWiseAdagrad: _rowwise,
                    lazyadam.torch.PartialRowWiseAdam: _partial, lazyadam.torch.Lion: _lion}


@pytest.mark.parametrize("dtype, rounding", CASES, ids=["-".join(case) for case in CASES])
@pytest.mark.parametrize("cls, options", family.CLASSES, ids=family.CLASS_IDS)
def test_torch_classes_step_half_precision_parameters_as_the_reference(cls, options, dtype,
                                                                        rounding):
    _, torch_type, eps = HALF[dtype]
    table = torch.nn.Embedding(family.ROWS, family.DIM, sparse=True)
    with torch.no_grad():  # weights of about 1/64: a step moves them many units in the last place
        table.weight.div_(64)
    table.to(torch_type)
    dense = torch.nn.Parameter((family.gradient((3, family.DIM), 50) / 64).to(torch_type))
    opt = cls([table.weight, dense], rounding=rounding, seed=5, **options)
    reference = TORCH_REFERENCES[cls]
    for t in range(1, 4):
        family.sparse_backward(table, t)
        table.weight.grad = table.weight.grad.to(torch_type)
        dense.grad = family.gradient(dense.shape, t, torch_type)
        stored = {}
        for param in (table.weight, dense):
            state = {key: value.double().numpy() for key, value in opt.state[param].items()
                     if key != "step"}
            stored[param] = (param.detach().double().numpy(), state)
        opt.step()
        grad = table.weight.grad
        expected = {
            table.weight: reference(*stored[table.weight], grad._values().double().numpy(),
                                    grad._indices()[0].numpy(), t, options),
            dense: reference(*stored[dense], dense.grad.double().numpy(), None, t, options)}
        for param, (w, state) in expected.items():
            what = "table" if param is table.weight else "dense"
            assert param.dtype == torch_type
            assert_stored(param.detach().float().numpy().astype(np.float64), w, eps,
                          f"{what}, step {t}")
            for key, value in state.items():
                if value is not None and key in opt.state[param]:
                    kept = opt.state[param][key]
                    assert_stored(kept.float().numpy() if kept.dtype == torch.float32
                                  else kept.double().numpy(), value, eps,
                                  f"{key} of {what}, step {t}")
