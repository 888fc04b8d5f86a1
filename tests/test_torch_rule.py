"""`lazyadam.torch.optimizer(rule)`: a rule defined in this file alone (sign-SGD with momentum)
gets a `torch.optim.Optimizer` with no other change, checked against a numpy model of the rule
written here; and the family's torch classes on the emulated CUDA path (tests/cuda_emulation),
for the rules whose CUDA kernels render today (per-element state: SGD, Adagrad, Lion).
"""

from __future__ import annotations

import io

import numpy as np
import pytest

from lazyadam.codegen.ir import Assign, Elem, Param, Switch, sign
from lazyadam.codegen.rule import HParam, Interval, Lowering, Option, Rule, State
from reference_family import (adagrad_step, lion_step, partial_rowwise_adam_step,
                              rowwise_adagrad_step, sgd_step, touched)
from tolerance import assert_close

torch = pytest.importorskip("torch", reason="lazyadam.torch needs torch")
import lazyadam.torch  # noqa: E402  (after the skip: it imports torch)
from test_runtime_device import TorchOnDevice  # noqa: E402

nn = torch.nn


def lower(spec) -> Lowering:
    g, buf, mu = Elem("g"), Elem("buf"), Param("mu")
    return Lowering(
        grad=(Assign("g", Elem("grad")), Assign("g", -g, when="maximize")),
        update=(Assign("buf", mu * buf + g),
                Assign("var", Elem("var") - Param("lr") * Switch("nesterov", sign(g + mu * buf),
                                                                  sign(buf)))))


#: Not registered: a rule a user keeps in a module of their own.
SIGN_SGD = Rule(
    name="signum",
    prefix="lazyadam_test_signum",
    options=(Option("nesterov", (False, True), False), Option("maximize", (False, True), False)),
    hparams=(HParam("lr", 0.01, Interval(0.0), static=False),
             HParam("mu", 0.9, Interval(0.0, 1.0))),
    state=(State("buf", names={"torch": "momentum_buffer"}),),
    symbol_order=("nesterov", "maximize", "use_locking"),
    lower=lower,
    doc="sign-SGD with momentum",
)


def sign_sgd_step(w, buf, grad, *, lr, mu, nesterov=False, maximize=False, indices=None):
    """The numpy model: on the rows a gradient touches (its occurrences summed),
    `b = mu*b + g`; `w -= lr * sign(nesterov ? g + mu*b : b)`."""
    w, buf = np.array(w, np.float64), np.array(buf, np.float64)
    rows, g = touched(w, grad, indices, loss_scale=1.0, maximize=maximize)
    b = mu * buf[rows] + g
    buf[rows] = b
    w[rows] = w[rows] - lr * np.sign(g + mu * b if nesterov else b)
    return w, buf


def grad_of(shape, step):
    return torch.randn(shape, generator=torch.Generator().manual_seed(40 + step),
                       dtype=torch.float64)


def test_a_rule_gets_a_class_with_its_keywords_and_defaults():
    cls = lazyadam.torch.optimizer(SIGN_SGD)
    assert cls is lazyadam.torch.optimizer(SIGN_SGD) and cls.__name__ == "Signum"
    assert issubclass(cls, torch.optim.Optimizer)
    opt = cls([nn.Parameter(torch.ones(2))])
    group = opt.param_groups[0]
    assert (group["lr"], group["mu"], group["nesterov"], group["maximize"]) == (0.01, 0.9, False,
                                                                                False)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['momentum'\]"):
        cls([nn.Parameter(torch.ones(2))], momentum=0.9)
    with pytest.raises(ValueError, match=r"mu must lie in \[0, 1\), got 1.5"):
        cls([nn.Parameter(torch.ones(2))], mu=1.5)
    with pytest.raises(TypeError, match="nesterov must be a bool"):
        cls([nn.Parameter(torch.ones(2))], nesterov="yes")


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("options", [dict(lr=0.1), dict(lr=0.05, mu=0.5, nesterov=True,
                                                        maximize=True)], ids=str)
def test_a_rule_defined_here_steps_as_its_numpy_model(options, sparse):
    cls = lazyadam.torch.optimizer(SIGN_SGD)
    weight = nn.Parameter(grad_of((6, 3), 99))
    opt = cls([weight], **options)
    w, buf = weight.detach().numpy().copy(), np.zeros((6, 3))
    for step in range(4):
        if sparse:
            indices = torch.tensor([step % 6, 2, 5, 2])
            values = grad_of((4, 3), step)
            weight.grad = torch.sparse_coo_tensor(indices[None], values, (6, 3))
            w, buf = sign_sgd_step(w, buf, values.numpy(), indices=indices.numpy(),
                                   **{"mu": 0.9, **options})
        else:
            weight.grad = grad_of((6, 3), step)
            w, buf = sign_sgd_step(w, buf, weight.grad.numpy(), **{"mu": 0.9, **options})
        opt.step()
        assert_close(weight.detach().numpy(), w, "float64", f"step {step}")
        assert_close(opt.state[weight]["momentum_buffer"].numpy(), buf, "float64")


def test_a_rule_defined_here_round_trips_its_state_dict():
    cls = lazyadam.torch.optimizer(SIGN_SGD)
    weight = nn.Parameter(grad_of((4, 2), 1))
    opt = cls([weight], lr=0.1)
    weight.grad = grad_of((4, 2), 2)
    opt.step()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    twin = nn.Parameter(weight.detach().clone())
    other = cls([twin], lr=0.1)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    assert set(other.state[twin]) == {"momentum_buffer", "step"}
    for p in (weight, twin):
        p.grad = grad_of((4, 2), 3)
    opt.step()
    other.step()
    assert torch.equal(weight, twin)
    assert torch.equal(opt.state[weight]["momentum_buffer"], other.state[twin]["momentum_buffer"])


# -- the family on the emulated CUDA path ---------------------------------------------------------


@pytest.fixture
def on_device(monkeypatch, emulated_cuda):
    """`lazyadam.torch` sees every tensor as a device array, its CUDA kernels emulated."""
    monkeypatch.setattr(lazyadam.torch.tensors, "view",
                        lambda tensor, memory=None: tensor.detach().as_subclass(TorchOnDevice))
    return emulated_cuda


def _sgd(w, state, grad, indices, t):
    b, seen = state or (np.zeros_like(w), np.zeros(len(w), bool))
    w, b, seen = sgd_step(w, b, seen, grad, lr=0.1, momentum=0.9, weight_decay=0.01,
                          indices=indices)
    return w, (b, seen)


def _adagrad(w, state, grad, indices, t):
    s = np.zeros_like(w) if state is None else state
    return adagrad_step(w, s, grad, lr=0.1, step=t, lr_decay=0.01, indices=indices)


def _lion(w, state, grad, indices, t):
    m = np.zeros_like(w) if state is None else state
    return lion_step(w, m, grad, lr=0.01, weight_decay=0.1, indices=indices)


def _rowwise(w, state, grad, indices, t):
    a = np.zeros(len(w)) if state is None else state
    return rowwise_adagrad_step(w, a, grad, lr=0.1, eps=1e-10, weight_decay=0.01, decay="l2",
                                indices=indices)


def _partial(w, state, grad, indices, t):
    m, v = (np.zeros_like(w), np.zeros(len(w))) if state is None else state
    w, m, v, _ = partial_rowwise_adam_step(w, m, v, grad, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8,
                                           beta1_power=0.9 ** t, beta2_power=0.999 ** t,
                                           indices=indices)
    return w, (m, v)


EMULATED = [(lazyadam.torch.SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.01), _sgd),
            (lazyadam.torch.Adagrad, dict(lr=0.1, lr_decay=0.01), _adagrad),
            (lazyadam.torch.Lion, dict(lr=0.01, weight_decay=0.1), _lion),
            (lazyadam.torch.RowWiseAdagrad, dict(lr=0.1, weight_decay=0.01), _rowwise),
            (lazyadam.torch.PartialRowWiseAdam, dict(lr=0.01), _partial)]


@pytest.mark.parametrize("cls, options, reference", EMULATED,
                         ids=[cls.__name__ for cls, _, _ in EMULATED])
def test_the_family_on_emulated_cuda_matches_its_reference(on_device, cls, options, reference):
    """A table stepped sparse and a dense parameter, both through the emulated CUDA kernels."""
    table = nn.Parameter(grad_of((8, 3), 50))
    dense = nn.Parameter(grad_of((3, 2), 51))
    opt = cls([table, dense], **options)
    expected = [(table.detach().numpy().copy(), None), (dense.detach().numpy().copy(), None)]
    for step in range(3):
        indices = torch.tensor([step % 8, 4, 7, 4])
        values = grad_of((4, 3), step)
        table.grad = torch.sparse_coo_tensor(indices[None], values, (8, 3))
        dense.grad = grad_of((3, 2), 10 + step)
        expected = [reference(*expected[0], values.numpy(), indices.numpy(), step + 1),
                    reference(*expected[1], dense.grad.numpy(), None, step + 1)]
        opt.step()
        for param, (w, _) in zip((table, dense), expected):
            assert_close(param.detach().numpy(), w, "float64", f"step {step}")
    assert {spec.RULE.name for spec in on_device} == {cls.RULE.name}
    assert {spec.sparse for spec in on_device} == {False, True}  # both went through the emulation


def test_a_capturable_step_of_another_rule_reads_its_own_struct_from_the_table(on_device):
    """A capturable step's hyperparameters go through a device table of one entry per distinct
    hyperparameters, SGD's struct (7 fields, 56 bytes; Adam's has 10): two groups, two learning
    rates, and the sparse step of the second group's table must read the second entry where it
    was stored."""
    dense, table = nn.Parameter(grad_of((3, 2), 60)), nn.Parameter(grad_of((6, 2), 61))
    opt = lazyadam.torch.SGD([{"params": [dense], "lr": 0.1}, {"params": [table], "lr": 0.3}],
                             momentum=0.9, capturable=True)
    w, b, seen = dense.detach().numpy().copy(), np.zeros((3, 2)), np.zeros(3, bool)
    tw, tb, tseen = table.detach().numpy().copy(), np.zeros((6, 2)), np.zeros(6, bool)
    for step in range(2):
        dense.grad = grad_of((3, 2), 20 + step)
        indices, values = torch.tensor([step, 4, 4]), grad_of((3, 2), 30 + step)
        table.grad = torch.sparse_coo_tensor(indices[None], values, (6, 2))
        w, b, seen = sgd_step(w, b, seen, dense.grad.numpy(), lr=0.1, momentum=0.9)
        tw, tb, tseen = sgd_step(tw, tb, tseen, values.numpy(), lr=0.3, momentum=0.9,
                                 indices=indices.numpy())
        opt.step()
        assert_close(dense.detach().numpy(), w, "float64", f"step {step}")
        assert_close(table.detach().numpy(), tw, "float64", f"step {step}")


# -- a group's options, read again when they may have changed -------------------------------------


def test_options_changed_in_place_are_read_again():
    """A step reads a group's options again unless it holds the same immutable objects: a list
    of betas changed in place, or a one-element tensor lr changed in place, is noticed."""
    weight = nn.Parameter(torch.ones(3, dtype=torch.float64))
    lr = torch.tensor(0.1, dtype=torch.float64)
    opt = lazyadam.torch.SGD([weight], lr=lr)
    weight.grad = torch.ones(3, dtype=torch.float64)
    opt.step()
    lr.fill_(0.5)
    opt.step()
    assert torch.allclose(weight, torch.full((3,), 1 - 0.1 - 0.5, dtype=torch.float64))
    betas = [0.9, 0.99]
    lion = lazyadam.torch.Lion([weight], betas=betas)
    lion.step()
    betas[0] = 1.5
    before = weight.detach().clone()
    with pytest.raises(ValueError, match=r"beta1 must lie in \[0, 1\), got 1.5"):
        lion.step()
    assert torch.equal(weight, before)
