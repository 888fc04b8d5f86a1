"""issue 17's torch classes: `lazyadam.torch.SGD`, `Adagrad`, `RowWiseAdagrad`,
`PartialRowWiseAdam` and `Lion`, each a `torch.optim.Optimizer`.

Checked step by step against torch's own optimizer where torch has one (`SGD`, `Adagrad`: dense,
and sparse with the uncoalesced gradients of `nn.Embedding(sparse=True)`), against the numpy
references of tests/reference_family.py where it has not; a saved state round trip (torch's state
into ours and back, where torch has the optimizer). Bad input, which leaves parameters and state as
they were, is checked in tests/test_bad_input.py.
"""

from __future__ import annotations

import io
import itertools
import re

import numpy as np
import pytest

from reference_family import (adagrad_step, lion_step, partial_rowwise_adam_step,
                              rowwise_adagrad_step, sgd_step)
from tolerance import assert_close

torch = pytest.importorskip("torch", reason="lazyadam.torch needs torch")
import lazyadam.torch  # noqa: E402  (after the skip: it imports torch)

nn = torch.nn
ROWS, DIM = 12, 3


def gradient(shape, step, dtype=torch.float64):
    generator = torch.Generator().manual_seed(500 + step)
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)


def lookup(step):
    """Row indices with duplicates, as an embedding lookup of a batch makes them."""
    generator = torch.Generator().manual_seed(900 + step)
    return torch.randint(0, ROWS, (7,), generator=generator)


def embedding_twins():
    """Two `nn.Embedding(sparse=True)` with the same float64 weights."""
    torch.manual_seed(3)
    ours = nn.Embedding(ROWS, DIM, sparse=True).double()
    theirs = nn.Embedding(ROWS, DIM, sparse=True).double()
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def sparse_backward(embedding, step):
    """An uncoalesced sparse gradient: the embedding's rows at `lookup(step)`."""
    embedding.zero_grad(set_to_none=True)
    out = embedding(lookup(step))
    (out * gradient(out.shape, step)).sum().backward()
    assert not embedding.weight.grad.is_coalesced()


def dense_twins(shape=(5, 4)):
    a = nn.Parameter(gradient(shape, 77))
    return a, nn.Parameter(a.detach().clone())


def step_dense_twins(ours, theirs, opt, reference, steps, check=lambda: None):
    """Steps `opt` on `ours` and torch's `reference` on `theirs` with the same dense gradients,
    the parameters close after each step (and `check()`)."""
    for step in steps:
        ours.grad = gradient(ours.shape, step)
        theirs.grad = ours.grad.clone()
        opt.step()
        reference.step()
        assert_close(ours.detach().numpy(), theirs.detach().numpy(), "float64", f"step {step}")
        check()


# -- against torch: SGD ----------------------------------------------------------------------------

SGD_OPTIONS = [dict(lr=0.1)] + [
    dict(lr=0.05, momentum=0.9, dampening=dampening, nesterov=nesterov, weight_decay=wd,
         maximize=maximize)
    for dampening, nesterov, wd, maximize in itertools.product((0.0, 0.3), (False, True),
                                                               (0.0, 0.01), (False, True))
    if not (nesterov and dampening)]


@pytest.mark.parametrize("options", SGD_OPTIONS, ids=str)
def test_sgd_matches_torch_dense(options):
    ours, theirs = dense_twins()
    opt, reference = lazyadam.torch.SGD([ours], **options), torch.optim.SGD([theirs], **options)

    def same_buffer():
        if options.get("momentum"):
            assert_close(opt.state[ours]["momentum_buffer"].numpy(),
                         reference.state[theirs]["momentum_buffer"].numpy(), "float64")
    step_dense_twins(ours, theirs, opt, reference, range(4), same_buffer)


def test_sgd_keeps_torch_state_names_and_none_before_the_first_step():
    ours, theirs = dense_twins()
    plain = lazyadam.torch.SGD([ours], lr=0.1)
    ours.grad = gradient(ours.shape, 0)
    plain.step()
    assert plain.state_dict()["state"] == {} == torch.optim.SGD([theirs]).state_dict()["state"]
    momentum = lazyadam.torch.SGD([ours], lr=0.1, momentum=0.9)
    assert momentum.state_dict()["state"] == {}
    momentum.step()
    assert set(momentum.state_dict()["state"][0]) == {"momentum_buffer"}
    damped = lazyadam.torch.SGD([ours], lr=0.1, momentum=0.9, dampening=0.5)
    damped.step()
    assert set(damped.state_dict()["state"][0]) == {"momentum_buffer", "seen"}


def test_sparse_sgd_without_momentum_matches_torch_on_uncoalesced_gradients():
    ours, theirs = embedding_twins()
    opt = lazyadam.torch.SGD(ours.parameters(), lr=0.1, maximize=True)
    reference = torch.optim.SGD(theirs.parameters(), lr=0.1, maximize=True)
    for step in range(3):
        sparse_backward(ours, step)
        sparse_backward(theirs, step)
        opt.step()
        reference.step()
        assert_close(ours.weight.detach().numpy(), theirs.weight.detach().numpy(), "float64")


@pytest.mark.parametrize("dampening", [0.0, 0.3])
def test_sparse_sgd_with_momentum_is_lazy_as_the_reference(dampening):
    """torch's sparse momentum goes on moving every row it has seen; ours moves only the rows of
    each gradient (tests/reference_family.py), a row's first step starting its buffer."""
    ours, _ = embedding_twins()
    opt = lazyadam.torch.SGD(ours.parameters(), lr=0.1, momentum=0.9, dampening=dampening,
                             weight_decay=0.01)
    w = ours.weight.detach().numpy().copy()
    b, seen = np.zeros_like(w), np.zeros(ROWS, bool)
    for step in range(4):
        sparse_backward(ours, step)
        grad = ours.weight.grad
        w, b, seen = sgd_step(w, b, seen, grad._values().numpy(), lr=0.1, momentum=0.9,
                              dampening=dampening, weight_decay=0.01,
                              indices=grad._indices()[0].numpy())
        opt.step()
        assert_close(ours.weight.detach().numpy(), w, "float64", f"step {step}")
        assert_close(opt.state[ours.weight]["momentum_buffer"].numpy(), b, "float64")


def test_sgd_refuses_nesterov_with_dampening_as_torch():
    param = nn.Parameter(torch.ones(2))
    for options in (dict(nesterov=True), dict(momentum=0.9, dampening=0.1, nesterov=True)):
        with pytest.raises(ValueError, match="Nesterov momentum requires a momentum and zero "
                                             "dampening"):
            torch.optim.SGD([param], **options)
        with pytest.raises(ValueError, match="Nesterov momentum requires a momentum and zero "
                                             "dampening"):
            lazyadam.torch.SGD([param], **options)


def test_a_torch_sgd_state_loads_and_goes_on_as_torch():
    """With dampening: torch's buffers (and no `seen`) mean every row was stepped."""
    options = dict(lr=0.05, momentum=0.9, dampening=0.3)
    opt, reference, ours, theirs = resumed_from_torch(lazyadam.torch.SGD, torch.optim.SGD,
                                                      options)
    step_dense_twins(ours, theirs, opt, reference, range(1, 3))


@pytest.mark.parametrize("dampening", [0.0, 0.3])
def test_a_saved_sgd_state_loads_into_torch_and_goes_on_as_ours(dampening):
    """Ours into torch's: torch's SGD takes `momentum_buffer` (and keeps, unread, the `seen` of
    dampening), and both go on with the same numbers and buffers."""
    options = dict(lr=0.05, momentum=0.9, dampening=dampening, weight_decay=0.01)
    ours, theirs = dense_twins()
    opt = lazyadam.torch.SGD([ours], **options)
    for step in range(2):
        ours.grad = gradient(ours.shape, step)
        opt.step()
    with torch.no_grad():
        theirs.copy_(ours)
    reference = torch.optim.SGD([theirs], **options)
    reference.load_state_dict(saved(opt))

    def same_buffer():
        assert_close(opt.state[ours]["momentum_buffer"].numpy(),
                     reference.state[theirs]["momentum_buffer"].numpy(), "float64")
    step_dense_twins(ours, theirs, opt, reference, range(2, 5), same_buffer)


# -- against torch: Adagrad ------------------------------------------------------------------------

ADAGRAD_OPTIONS = [dict(lr=0.1), dict(lr=0.1, lr_decay=0.05, initial_accumulator_value=0.2,
                                      eps=1e-6, maximize=True)]


@pytest.mark.parametrize("options", ADAGRAD_OPTIONS + [dict(lr=0.1, weight_decay=0.02)], ids=str)
def test_adagrad_matches_torch_dense(options):
    ours, theirs = dense_twins()
    opt = lazyadam.torch.Adagrad([ours], **options)
    reference = torch.optim.Adagrad([theirs], **options)
    step_dense_twins(ours, theirs, opt, reference, range(4))
    assert_close(opt.state[ours]["sum"].numpy(), reference.state[theirs]["sum"].numpy(),
                 "float64")
    assert float(opt.state[ours]["step"]) == float(reference.state[theirs]["step"]) == 4


@pytest.mark.parametrize("options", ADAGRAD_OPTIONS, ids=str)
def test_sparse_adagrad_matches_torch_on_uncoalesced_gradients(options):
    ours, theirs = embedding_twins()
    opt = lazyadam.torch.Adagrad(ours.parameters(), **options)
    reference = torch.optim.Adagrad(theirs.parameters(), **options)
    step_sparse_twins(ours, theirs, opt, reference, range(4))


def step_sparse_twins(ours, theirs, opt, reference, steps):
    """Both tables take each step's uncoalesced sparse gradient and their optimizer's step, and
    come out with the same weights."""
    for step in steps:
        sparse_backward(ours, step)
        sparse_backward(theirs, step)
        opt.step()
        reference.step()
        assert_close(ours.weight.detach().numpy(), theirs.weight.detach().numpy(), "float64",
                     f"step {step}")


def test_adagrad_state_is_made_at_construction_as_torch_makes_it():
    ours, theirs = dense_twins()
    opt = lazyadam.torch.Adagrad([ours], initial_accumulator_value=0.5)
    reference = torch.optim.Adagrad([theirs], initial_accumulator_value=0.5)
    assert_same_state(opt.state_dict(), reference.state_dict())


def test_adagrad_states_load_both_ways_with_torch():
    options = dict(lr=0.1, lr_decay=0.01)
    opt, reference, ours, theirs = resumed_from_torch(lazyadam.torch.Adagrad,
                                                      torch.optim.Adagrad, options)
    ours.grad = theirs.grad = gradient(ours.shape, 1)
    opt.step()
    reference.step()
    assert_close(ours.detach().numpy(), theirs.detach().numpy(), "float64")
    again = torch.optim.Adagrad([theirs], **options)
    again.load_state_dict(saved(opt))
    with torch.no_grad():
        theirs.copy_(ours)
    ours.grad = theirs.grad = gradient(ours.shape, 2)
    opt.step()
    again.step()
    assert_close(ours.detach().numpy(), theirs.detach().numpy(), "float64")


@pytest.mark.parametrize("ours_first", [True, False], ids=["ours-to-torch", "torch-to-ours"])
def test_adagrad_states_after_sparse_steps_load_both_ways_with_torch(ours_first):
    """Three steps of uncoalesced sparse gradients on one side; the other side's optimizer
    loads that state (its table those weights), and both go on with the same numbers: `sum`
    and `step` (lr_decay reads it) carried over."""
    options = dict(lr=0.1, lr_decay=0.05, initial_accumulator_value=0.2)
    ours, theirs = embedding_twins()
    opt = lazyadam.torch.Adagrad(ours.parameters(), **options)
    reference = torch.optim.Adagrad(theirs.parameters(), **options)
    sides = [(opt, ours), (reference, theirs)]
    (first, first_table), (then, then_table) = sides if ours_first else sides[::-1]
    for step in range(3):
        sparse_backward(first_table, step)
        first.step()
    then_table.load_state_dict(first_table.state_dict())
    then.load_state_dict(saved(first))
    step_sparse_twins(ours, theirs, opt, reference, range(3, 6))
    assert_close(opt.state[ours.weight]["sum"].numpy(),
                 reference.state[theirs.weight]["sum"].numpy(), "float64")
    assert float(opt.state[ours.weight]["step"]) == float(reference.state[theirs.weight]["step"])
    assert float(opt.state[ours.weight]["step"]) == 6


def test_sparse_adagrad_takes_weight_decay_where_torch_refuses_it():
    """docs/pytorch.md: L2 weight decay works with sparse gradients too, on the rows they touch
    (torch's Adagrad raises): the numpy reference, lazy as torch's sparse Adagrad."""
    options = dict(lr=0.1, weight_decay=0.02, initial_accumulator_value=0.1)
    ours, theirs = embedding_twins()
    opt = lazyadam.torch.Adagrad(ours.parameters(), **options)
    reference = torch.optim.Adagrad(theirs.parameters(), **options)
    sparse_backward(theirs, 0)
    with pytest.raises(RuntimeError, match="weight_decay option is not compatible with sparse"):
        reference.step()
    w = ours.weight.detach().numpy().copy()
    total = np.full_like(w, 0.1)
    for step in range(3):
        sparse_backward(ours, step)
        grad = ours.weight.grad
        w, total = adagrad_step(w, total, grad._values().numpy(), lr=0.1, step=step + 1,
                                weight_decay=0.02, indices=grad._indices()[0].numpy())
        opt.step()
        assert_close(ours.weight.detach().numpy(), w, "float64", f"step {step}")
    assert_close(opt.state[ours.weight]["sum"].numpy(), total, "float64")


def resumed_from_torch(ours_class, torch_class, options):
    """A torch optimizer stepped once on one of `dense_twins`, and ours on the other (given the
    same values) resuming from its saved state: (ours, torch's, our parameter, torch's)."""
    ours, theirs = dense_twins()
    reference = torch_class([theirs], **options)
    theirs.grad = gradient(theirs.shape, 0)
    reference.step()
    with torch.no_grad():
        ours.copy_(theirs)
    opt = ours_class([ours], **options)
    opt.load_state_dict(saved(reference))
    return opt, reference, ours, theirs


def saved(opt):
    """`opt.state_dict()` through torch.save/torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def assert_same_state(a, b):
    assert a["state"].keys() == b["state"].keys()
    for index, entries in a["state"].items():
        assert entries.keys() == b["state"][index].keys()
        for key, value in entries.items():
            assert value.dtype == b["state"][index][key].dtype, key
            assert torch.equal(value, b["state"][index][key]), key


# -- against torch: the arguments each refuses and takes at construction ------------------------

NAN, INF = float("nan"), float("inf")

SGD_ARGUMENTS = [
    # torch refuses these
    dict(lr=-0.1), dict(lr=-INF), dict(weight_decay=-0.1), dict(nesterov=True),
    dict(momentum=0.9, dampening=0.1, nesterov=True), dict(lr=torch.tensor([0.1, 0.2])),
    dict(lr="0.1"), dict(lr=None), dict(lr=1j), dict(momentum=-0.1), dict(momentum=None),
    dict(fused=True, foreach=True),
    # torch takes these
    dict(lr=0.0), dict(lr=1), dict(momentum=1.5), dict(dampening=1.0),
    dict(momentum=0.9, nesterov=True), dict(lr=torch.tensor(0.1)), dict(lr=torch.tensor([0.1])),
    dict(momentum=torch.tensor(0.9)), dict(maximize=True), dict(foreach=True),
    dict(foreach=False), dict(fused=True),
]

ADAGRAD_ARGUMENTS = [
    # torch refuses these
    dict(lr=-0.1), dict(lr=NAN), dict(lr_decay=-0.1), dict(lr_decay=NAN),
    dict(weight_decay=-0.1), dict(weight_decay=NAN), dict(initial_accumulator_value=-0.1),
    dict(initial_accumulator_value=NAN), dict(eps=-1e-10), dict(eps=NAN),
    dict(lr=torch.tensor([0.1, 0.2])), dict(lr="0.1"), dict(lr=None),
    dict(fused=True, foreach=True),
    # torch takes these
    dict(lr=0.0), dict(lr=1), dict(lr_decay=0.5), dict(initial_accumulator_value=0.5),
    dict(eps=1e-30), dict(lr=torch.tensor(0.1)), dict(lr_decay=torch.tensor(0.1)),
    dict(maximize=True), dict(foreach=True), dict(fused=True),
]

def raised(make):
    """The exception `make()` raises, or None."""
    try:
        make()
    except Exception as error:  # torch's, whatever its type, is the reference
        return error
    return None


def assert_constructed_as_torch(cls, twin, options):
    """`cls` raises what torch's `twin` raises with `options` (the type; a message that is
    torch's, or names each keyword given), and takes what torch takes."""
    theirs = raised(lambda: twin([nn.Parameter(torch.ones(2))], **options))
    ours = raised(lambda: cls([nn.Parameter(torch.ones(2))], **options))
    if theirs is None:
        assert ours is None, f"torch takes {options}; ours raises {ours!r}"
        return
    assert type(ours) is type(theirs), f"torch raises {theirs!r}; ours {ours!r}"
    assert str(theirs) in str(ours) or all(re.search(rf"\b{key}\b", str(ours))
                                           for key in options), (str(ours), str(theirs))


@pytest.mark.parametrize("options", SGD_ARGUMENTS, ids=str)
def test_sgd_refuses_what_torch_refuses_and_takes_what_it_takes(options):
    assert_constructed_as_torch(lazyadam.torch.SGD, torch.optim.SGD, options)


@pytest.mark.parametrize("options", ADAGRAD_ARGUMENTS, ids=str)
def test_adagrad_refuses_what_torch_refuses_and_takes_what_it_takes(options):
    assert_constructed_as_torch(lazyadam.torch.Adagrad, torch.optim.Adagrad, options)


SGD, ADAGRAD = (lazyadam.torch.SGD, torch.optim.SGD), (lazyadam.torch.Adagrad, torch.optim.Adagrad)


@pytest.mark.parametrize("classes, options, error, match", [
    (SGD, dict(differentiable=True), ValueError, "differentiable=True"),
    (ADAGRAD, dict(differentiable=True), ValueError, "differentiable=True"),
    (ADAGRAD, dict(eps=0.0), ValueError, r"eps must be .*> 0, got 0\.0"),
    (SGD, dict(dampening=-0.1), ValueError, "dampening must .*got -0.1"),
    (SGD, dict(dampening=1.5), ValueError, "dampening must .*got 1.5"),
    *((SGD, {key: value}, ValueError, f"{key} must be finite")
      for key in ("lr", "momentum", "weight_decay") for value in (NAN, INF)),
    *((ADAGRAD, {key: INF}, ValueError, f"{key} must be finite")
      for key in ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps")),
    (SGD, dict(lr=True), TypeError, "lr must be a real number, got bool"),
    (ADAGRAD, dict(lr=True), TypeError, "lr must be a real number, got bool"),
    (SGD, dict(maximize=1), TypeError, "maximize must be a bool, got int"),
    (SGD, dict(momentum=0.9, nesterov=1), TypeError, "nesterov must be a bool, got int"),
    (ADAGRAD, dict(maximize=1), TypeError, "maximize must be a bool, got int"),
    (SGD, dict(foreach="yes"), TypeError, "foreach must be None or a bool, got str"),
    (ADAGRAD, dict(foreach="yes"), TypeError, "foreach must be None or a bool, got str"),
], ids=str)
def test_the_documented_refusals_of_what_torch_takes(classes, options, error, match):
    """docs/pytorch.md: `differentiable=True` is refused (the kernels work outside autograd);
    Adagrad's eps must be > 0 and SGD's dampening in [0, 1]; every hyperparameter a finite real
    number, not a bool; every flag a bool (foreach and fused None or a bool). torch takes each."""
    cls, twin = classes
    twin([nn.Parameter(torch.ones(2))], **options)
    with pytest.raises(error, match=match):
        cls([nn.Parameter(torch.ones(2))], **options)


# -- against the references: RowWiseAdagrad, PartialRowWiseAdam, Lion ----------------------------


def reference_steps(cls, options, sparse):
    """The optimizer's parameter after 4 steps, and the reference's; a table of ROWS x DIM."""
    ours, _ = embedding_twins()
    opt = cls(ours.parameters(), **options)
    w = ours.weight.detach().numpy().copy()
    state = None
    for step in range(4):
        if sparse:
            sparse_backward(ours, step)
            grad = ours.weight.grad
            values, indices = grad._values().numpy(), grad._indices()[0].numpy()
        else:
            ours.weight.grad = gradient((ROWS, DIM), step)
            values, indices = ours.weight.grad.numpy(), None
        w, state = REFERENCES[cls](w, state, values, indices, step + 1, options)
        opt.step()
        assert_close(ours.weight.detach().numpy(), w, "float64", f"step {step}")
    return opt, ours.weight, state


def _rowwise(w, state, grad, indices, t, options):
    acc = np.full(ROWS, options.get("initial_accumulator_value", 0.0)) if state is None else state
    decay = ("decoupled" if options.get("decoupled_weight_decay") else "l2") \
        if options.get("weight_decay") else "none"
    return rowwise_adagrad_step(w, acc, grad, lr=options["lr"], eps=options.get("eps", 1e-10),
                                weight_decay=options.get("weight_decay", 0.0), decay=decay,
                                maximize=options.get("maximize", False), indices=indices)


def _partial(w, state, grad, indices, t, options):
    m, v, vmax = (np.zeros_like(w), np.zeros(ROWS), None) if state is None else state
    beta1, beta2 = options.get("betas", (0.9, 0.999))
    decay = ("decoupled" if options.get("decoupled_weight_decay") else "l2") \
        if options.get("weight_decay") else "none"
    w, m, v, vmax = partial_rowwise_adam_step(
        w, m, v, grad, lr=options["lr"], beta1=beta1, beta2=beta2, eps=options.get("eps", 1e-8),
        beta1_power=beta1 ** t, beta2_power=beta2 ** t,
        weight_decay=options.get("weight_decay", 0.0), decay=decay,
        amsgrad=options.get("amsgrad", False), vmax=vmax,
        nesterov=options.get("nesterov", False), eps_mode=options.get("eps_mode", "pytorch"),
        maximize=options.get("maximize", False), indices=indices)
    return w, (m, v, vmax)


def _lion(w, state, grad, indices, t, options):
    m = np.zeros_like(w) if state is None else state
    beta1, beta2 = options.get("betas", (0.9, 0.99))
    return lion_step(w, m, grad, lr=options["lr"], beta1=beta1, beta2=beta2,
                     weight_decay=options.get("weight_decay", 0.0),
                     maximize=options.get("maximize", False), indices=indices)


REFERENCES = {lazyadam.torch.RowWiseAdagrad: _rowwise, lazyadam.torch.PartialRowWiseAdam: _partial,
              lazyadam.torch.Lion: _lion}

FAMILY_OPTIONS = [
    (lazyadam.torch.RowWiseAdagrad, dict(lr=0.1)),
    (lazyadam.torch.RowWiseAdagrad, dict(lr=0.1, eps=1e-6, weight_decay=0.02,
                                         initial_accumulator_value=0.1, maximize=True)),
    (lazyadam.torch.RowWiseAdagrad, dict(lr=0.1, weight_decay=0.02, decoupled_weight_decay=True)),
    (lazyadam.torch.PartialRowWiseAdam, dict(lr=0.05)),
    (lazyadam.torch.PartialRowWiseAdam, dict(lr=0.05, betas=(0.8, 0.99), weight_decay=0.01,
                                             amsgrad=True, nesterov=True, maximize=True)),
    (lazyadam.torch.PartialRowWiseAdam, dict(lr=0.05, weight_decay=0.01,
                                             decoupled_weight_decay=True, eps_mode="mindspore")),
    (lazyadam.torch.Lion, dict(lr=0.01)),
    (lazyadam.torch.Lion, dict(lr=0.01, betas=(0.8, 0.9), weight_decay=0.1, maximize=True)),
]


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("cls, options", FAMILY_OPTIONS,
                         ids=[f"{c.__name__}-{i}" for i, (c, _) in enumerate(FAMILY_OPTIONS)])
def test_rules_torch_lacks_match_their_references(cls, options, sparse):
    opt, weight, state = reference_steps(cls, options, sparse)
    if cls is lazyadam.torch.PartialRowWiseAdam:
        assert opt.state[weight]["exp_avg_sq"].shape == (ROWS,)
        assert_close(opt.state[weight]["exp_avg_sq"].numpy(), state[1], "float64")
    if cls is lazyadam.torch.RowWiseAdagrad:
        assert_close(opt.state[weight]["sum"].numpy(), state, "float64")


@pytest.mark.parametrize("cls", [lazyadam.torch.RowWiseAdagrad,
                                 lazyadam.torch.PartialRowWiseAdam])
def test_per_row_state_refuses_a_scalar_parameter(cls):
    with pytest.raises(ValueError, match="is a scalar: .* per row, for parameters of rank >= 1"):
        cls([nn.Parameter(torch.ones(3)), nn.Parameter(torch.tensor(1.0))])
    opt = cls([nn.Parameter(torch.ones(3))])
    with pytest.raises(ValueError, match="is a scalar"):
        opt.add_param_group({"params": [nn.Parameter(torch.tensor(1.0))]})
    assert len(opt.param_groups) == 1


# -- every class: a saved state round trip (bad input: tests/test_bad_input.py) ---------------

CLASSES = [(lazyadam.torch.SGD, dict(lr=0.1, momentum=0.9, dampening=0.2)),
           (lazyadam.torch.Adagrad, dict(lr=0.1, lr_decay=0.01)),
           (lazyadam.torch.RowWiseAdagrad, dict(lr=0.1)),
           (lazyadam.torch.PartialRowWiseAdam, dict(lr=0.05, amsgrad=True)),
           (lazyadam.torch.Lion, dict(lr=0.01))]
CLASS_IDS = [cls.__name__ for cls, _ in CLASSES]


def model():
    torch.manual_seed(11)
    return nn.ModuleDict({"table": nn.Embedding(ROWS, DIM, sparse=True),
                          "dense": nn.Linear(DIM, 2)})


def backward_both(net, step):
    net.zero_grad(set_to_none=True)
    out = net["dense"](net["table"](lookup(step)))
    (out * gradient(out.shape, step, torch.float32)).sum().backward()


@pytest.mark.parametrize("cls, options", CLASSES, ids=CLASS_IDS)
def test_a_saved_state_resumes_bitwise(cls, options):
    straight, first = model(), model()
    straight_opt, first_opt = cls(straight.parameters(), **options), cls(first.parameters(),
                                                                         **options)
    for step in range(5):
        backward_both(straight, step)
        straight_opt.step()
        if step < 3:
            backward_both(first, step)
            first_opt.step()
    resumed = model()
    resumed.load_state_dict(first.state_dict())
    resumed_opt = cls(resumed.parameters(), **options)
    resumed_opt.load_state_dict(saved(first_opt))
    assert_same_state(resumed_opt.state_dict(), first_opt.state_dict())
    for step in range(3, 5):
        backward_both(resumed, step)
        resumed_opt.step()
    for p, q in zip(resumed.parameters(), straight.parameters()):
        assert torch.equal(p, q)
    assert_same_state(resumed_opt.state_dict(), straight_opt.state_dict())


@pytest.mark.parametrize("cls, options", CLASSES, ids=CLASS_IDS)
def test_nan_options_are_refused_at_construction(cls, options):
    with pytest.raises(ValueError, match="lr must be finite"):
        cls([nn.Parameter(torch.ones(2, 2))], **{**options, "lr": float("nan")})


# -- half precision ----------------------------------------------------------------------------------

STATE_DTYPES = {  # per class: each state key's dtype for a bfloat16 table, with state_dtype bfloat16
    lazyadam.torch.SGD: {"momentum_buffer": torch.bfloat16, "seen": torch.float32,
                         "step": torch.float32},
    lazyadam.torch.Adagrad: {"sum": torch.bfloat16, "step": torch.float32},
    lazyadam.torch.RowWiseAdagrad: {"sum": torch.float32, "step": torch.float32},
    lazyadam.torch.PartialRowWiseAdam: {"exp_avg": torch.bfloat16, "exp_avg_sq": torch.float32,
                                        "max_exp_avg_sq": torch.float32, "step": torch.float32},
    lazyadam.torch.Lion: {"exp_avg": torch.bfloat16, "step": torch.float32},
}


@pytest.mark.parametrize("cls, options", CLASSES, ids=CLASS_IDS)
def test_a_half_precision_table_resumes_bitwise_with_stochastic_rounding(cls, options):
    """bfloat16 tables, bfloat16 state where the rule keeps it by the state dtype (per-row state
    is float32, the arithmetic's), stochastic rounding: a resume from a saved state gives the
    straight run's bits (SGD keeps a `step` count for the rounding's bits)."""
    options = {**options, "state_dtype": "bfloat16", "rounding": "stochastic", "seed": 7}

    def make():
        net = model().to(torch.bfloat16)
        return net, cls(net.parameters(), **options)

    straight, straight_opt = make()
    first, first_opt = make()
    for step in range(5):
        backward_both(straight, step)
        straight_opt.step()
        if step < 3:
            backward_both(first, step)
            first_opt.step()
    table = straight["table"].weight
    assert set(straight_opt.state[table]) == set(STATE_DTYPES[cls])
    for key, value in straight_opt.state[table].items():
        assert value.dtype == STATE_DTYPES[cls][key], key
    resumed, resumed_opt = make()
    resumed.load_state_dict(first.state_dict())
    resumed_opt.load_state_dict(saved(first_opt))
    for step in range(3, 5):
        backward_both(resumed, step)
        resumed_opt.step()
    for p, q in zip(resumed.parameters(), straight.parameters()):
        assert torch.equal(p, q)
    assert_same_state(resumed_opt.state_dict(), straight_opt.state_dict())
