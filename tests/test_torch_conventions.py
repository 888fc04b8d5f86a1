"""torch's optimizer conventions, checked for every `lazyadam.torch` optimizer.

A drop-in for `torch.optim.Adam`, `AdamW`, `SparseAdam`, `SGD` and `Adagrad` must behave as they do
where a torch user relies on it: `state_dict()` the same after a resume, a deepcopy or pickling;
parameters that are not contiguous (a transposed or sliced view, a negative-bit view), and changes
of their strides between steps; sparse COO gradients of every sparse_dim; torch's error types; a
half-precision model resumed bitwise; the step lock held across a load. The references are torch's
own optimizers run on the same inputs (and the numpy references where torch has no optimizer for
the case).

`OPTIMIZERS` lists every optimizer class of `lazyadam.torch` (an `Entry` each: the class and what
it is checked against). A new optimizer joins the list.
"""

from __future__ import annotations

import copy
import inspect
import io
import pickle
import threading
from typing import NamedTuple

import numpy as np
import pytest

from reference import lazyadam_step
from reference_family import (adagrad_step, lion_step, partial_rowwise_adam_step,
                              rowwise_adagrad_step, sgd_step)
from tolerance import assert_close

torch = pytest.importorskip("torch", reason="lazyadam.torch needs torch")
import lazyadam.torch  # noqa: E402  (after the skip: it imports torch)
from lazyadam.runtime.launcher import Launcher  # noqa: E402

nn = torch.nn


class Entry(NamedTuple):
    """An optimizer class and what it is checked against.

    `twin` is torch's optimizer that gives the class's numbers on dense gradients with `options`
    (options that make state to carry: momentum, amsgrad, a decay); where torch has none (None),
    the class itself stepping a contiguous, positive copy of the same values stands in: its dense
    path is checked against the numpy references in tests/test_torch_family.py. On sparse
    gradients whose touched rows are whole, the class with `sparse` gives the numbers of
    `sparse_twin` with `sparse_twin_options` (None: the class itself given the same gradient as
    coalesced rows, `to_sparse(1)`). `second` is a second param group's options, `element_state`
    a state key kept per element (None: all per row), and `bad` an option out of range with the
    message that names it: (key, value, regex).
    """

    cls: type
    options: dict
    twin: type | None
    sparse: dict
    sparse_twin: type | None
    sparse_twin_options: dict
    second: dict
    element_state: str | None
    bad: tuple

    @property
    def betas(self) -> bool:
        return "betas" in inspect.signature(self.cls).parameters


BETA1 = r"beta1 must lie in \[0, 1\)"

OPTIMIZERS = [
    Entry(lazyadam.torch.LazyAdam, options=dict(lr=0.05, amsgrad=True), twin=torch.optim.Adam,
          sparse=dict(lr=0.05, eps_mode="mindspore"), sparse_twin=torch.optim.SparseAdam,
          sparse_twin_options=dict(lr=0.05), second=dict(amsgrad=True), element_state="exp_avg",
          bad=("betas", (1.5, 0.999), BETA1)),
    Entry(lazyadam.torch.SGD,
          options=dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
          twin=torch.optim.SGD, sparse=dict(lr=0.05, maximize=True), sparse_twin=torch.optim.SGD,
          sparse_twin_options=dict(lr=0.05, maximize=True),
          second=dict(momentum=0.9, dampening=0.3), element_state="momentum_buffer",
          bad=("weight_decay", -0.5, r"weight_decay must be finite and >= 0, got -0\.5")),
    Entry(lazyadam.torch.Adagrad,
          options=dict(lr=0.05, lr_decay=0.01, initial_accumulator_value=0.1, weight_decay=0.01),
          twin=torch.optim.Adagrad,
          sparse=dict(lr=0.05, lr_decay=0.01, initial_accumulator_value=0.1),
          sparse_twin=torch.optim.Adagrad,
          sparse_twin_options=dict(lr=0.05, lr_decay=0.01, initial_accumulator_value=0.1),
          second=dict(lr_decay=0.01), element_state="sum",
          bad=("lr_decay", -0.5, r"lr_decay must be finite and >= 0, got -0\.5")),
    Entry(lazyadam.torch.RowWiseAdagrad, options=dict(lr=0.05, weight_decay=0.01), twin=None,
          sparse=dict(lr=0.05, weight_decay=0.01), sparse_twin=None, sparse_twin_options={},
          second=dict(initial_accumulator_value=0.1), element_state=None,
          bad=("eps", -1.0, r"eps must be finite and > 0, got -1\.0")),
    Entry(lazyadam.torch.PartialRowWiseAdam, options=dict(lr=0.05, amsgrad=True), twin=None,
          sparse=dict(lr=0.05, amsgrad=True), sparse_twin=None, sparse_twin_options={},
          second=dict(amsgrad=True), element_state="exp_avg",
          bad=("betas", (1.5, 0.999), BETA1)),
    Entry(lazyadam.torch.Lion, options=dict(lr=0.01, weight_decay=0.1), twin=None,
          sparse=dict(lr=0.01, weight_decay=0.1), sparse_twin=None, sparse_twin_options={},
          second=dict(betas=(0.8, 0.9)), element_state="exp_avg",
          bad=("betas", (1.5, 0.99), BETA1)),
]


@pytest.fixture(params=OPTIMIZERS, ids=lambda entry: entry.cls.__name__)
def optimizer(request):
    return request.param


@pytest.fixture(params=OPTIMIZERS[:1], ids=lambda entry: entry.cls.__name__)
def family(request):
    """LazyAdam's entry alone (its class is `family[0]`): tests/test_bad_input.py imports
    this fixture, and its cases name Adam's state (`exp_avg`, `exp_avg_sq`) and expect no state
    before a step (Adagrad makes it at construction, SGD without momentum never)."""
    return request.param


def plain(tensor):
    """A contiguous tensor of `tensor`'s values, without a negative bit."""
    return tensor.detach().resolve_neg().contiguous()


def gradient(shape, step, dtype=torch.float64):
    generator = torch.Generator().manual_seed(1000 + step)
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)


def assert_same_state_dict(a, b, what=""):
    """Equal keys everywhere, tensors equal bitwise and of one dtype."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, what
        assert torch.equal(a, b), what
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (what, set(a) ^ set(b))
        for key in a:
            assert_same_state_dict(a[key], b[key], f"{what}.{key}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state_dict(x, y, f"{what}[{i}]")
    else:
        assert a == b, what


def two_groups(optimizer, params):
    return optimizer.cls([{"params": params[:1], "lr": 0.02},
                          {"params": params[1:], **optimizer.second}], lr=0.01)


def step_with_gradients(opt, params, step):
    for p in params:
        p.grad = gradient(p.shape, step, p.dtype)
    opt.step()


# -- state_dict: the same after a resume, a deepcopy, pickling -----------------------------------


def copied(optimizer, opt, params, how):
    """`opt` carried over by `how`, with the parameters it steps."""
    if how == "load_state_dict":
        twins = [nn.Parameter(p.detach().clone()) for p in params]
        other = two_groups(optimizer, twins)
        buffer = io.BytesIO()
        torch.save(opt.state_dict(), buffer)
        buffer.seek(0)
        other.load_state_dict(torch.load(buffer, weights_only=True))
        return other, twins
    other = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    return other, [p for group in other.param_groups for p in group["params"]]


@pytest.mark.parametrize("how", ["load_state_dict", "deepcopy", "pickle"])
def test_state_dict_is_the_same_after_a_resume(optimizer, how):
    params = [nn.Parameter(gradient((3, 2), k)) for k in range(3)]
    opt = two_groups(optimizer, params)
    for step in range(2):
        step_with_gradients(opt, params, step)
    other, twins = copied(optimizer, opt, params, how)
    assert_same_state_dict(other.state_dict(), opt.state_dict(), how)
    step_with_gradients(opt, params, 2)
    step_with_gradients(other, twins, 2)
    assert_same_state_dict(other.state_dict(), opt.state_dict(), f"{how}, a step later")
    for p, q in zip(params, twins):
        assert torch.equal(p, q)


# -- half precision: a resume is bitwise --------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_a_half_precision_resume_is_bitwise(optimizer, dtype, tmp_path):
    """torch's `Optimizer.load_state_dict` casts floating state to the parameter's dtype; the
    float32 state of a half-precision parameter must come back as it was saved."""

    def make():
        table = nn.Parameter(gradient((8, 4), 99).to(dtype))
        dense = nn.Parameter(gradient((3, 4), 98).to(dtype))
        return [table, dense], optimizer.cls([table, dense], **optimizer.options)

    def step(params, opt, k):
        rows = torch.tensor([k % 8, 3, (5 * k) % 8, 3])
        params[0].grad = torch.sparse_coo_tensor(rows[None], gradient((4, 4), k, dtype), (8, 4),
                                                    check_invariants=True)
        params[1].grad = gradient((3, 4), k, dtype)
        opt.step()

    straight, straight_opt = make()
    first, first_opt = make()
    for k in range(10):
        step(straight, straight_opt, k)
        if k < 5:
            step(first, first_opt, k)
    torch.save({"params": [p.detach() for p in first], "opt": first_opt.state_dict()},
               tmp_path / "ckpt.pt")
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed, resumed_opt = make()
    with torch.no_grad():
        for p, value in zip(resumed, saved["params"]):
            p.copy_(value)
    resumed_opt.load_state_dict(saved["opt"])
    for p, q in zip(resumed, first):
        for key, value in first_opt.state[q].items():
            loaded = resumed_opt.state[p][key]
            assert loaded.dtype == value.dtype and torch.equal(loaded, value), key
    for k in range(5, 10):
        step(resumed, resumed_opt, k)
    for p, q in zip(resumed, straight):
        assert torch.equal(p, q)
        for key, value in straight_opt.state[q].items():
            assert torch.equal(resumed_opt.state[p][key], value), key


# -- parameters that are not contiguous, and strides that change ----------------------------------


def not_contiguous(kind):
    """A parameter over a view that is not contiguous, and the storage it lives in."""
    base = gradient((4, 6), 50)
    if kind == "transposed":
        return base, base.t()
    if kind == "every other column":
        return base, base[:, ::2]
    return base, torch._neg_view(base)  # contiguous, but numpy cannot read a negative bit


def reference(optimizer, param, options):
    """The reference for `optimizer.cls` on `param`: torch's twin on `param` itself, or (torch has
    none) the class on a contiguous, positive copy of it. Returns (optimizer, its parameter)."""
    if optimizer.twin is not None:
        return optimizer.twin([param], **options), param
    copied = nn.Parameter(plain(param))
    return optimizer.cls([copied], **options), copied


@pytest.mark.parametrize("kind", ["transposed", "every other column", "negative view"])
def test_parameters_that_are_not_contiguous_step_as_torch_steps_them(optimizer, kind):
    """Stepped through a contiguous working copy written back: the view's elements move as
    torch's optimizer moves them, the rest of its storage stays, the tensor keeps its storage
    and strides."""
    base, view = not_contiguous(kind)
    theirs_base, theirs_view = not_contiguous(kind)
    ours = nn.Parameter(view)
    opt = optimizer.cls([ours], **optimizer.options)
    other, theirs = reference(optimizer, nn.Parameter(theirs_view), optimizer.options)
    strides, pointer, untouched = ours.stride(), ours.data_ptr(), base.clone()
    for step in range(4):
        ours.grad = None
        if step % 2:
            ours.grad = gradient(ours.shape, step)
        else:  # autograd's layout: the parameter's strides, where it is dense
            (ours * gradient(ours.shape, step)).sum().backward()
        theirs.grad = ours.grad.clone()
        opt.step()
        other.step()
        assert_close(ours.detach().resolve_neg().numpy(), theirs.detach().resolve_neg().numpy(),
                     "float64", f"step {step}")
    negative = kind == "negative view"
    assert (ours.stride(), ours.data_ptr(), ours.is_neg()) == (strides, pointer, negative)
    if kind == "every other column":
        assert torch.equal(base[:, 1::2], untouched[:, 1::2])
    with torch.no_grad():
        theirs_view.copy_(theirs)  # a no-op where torch stepped the view itself
    assert_close(base.numpy(), theirs_base.numpy(), "float64", "the storage")


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_a_transposed_parameter_steps_as_its_contiguous_twin_bitwise(optimizer, dtype, sparse):
    """The same values, the same gradients, half precision and row-sparse gradients included:
    the working copy gives the contiguous parameter's bits."""
    base = gradient((4, 6), 90, dtype)
    ours, twin = nn.Parameter(base.t()), nn.Parameter(base.t().contiguous())
    opts = [optimizer.cls([p], **optimizer.options) for p in (ours, twin)]
    for step in range(3):
        if sparse:
            rows = torch.tensor([5, 0, 5, 2])
            grad = torch.sparse_coo_tensor(rows[None], gradient((4, 4), step, dtype), (6, 4),
                                           check_invariants=True)
        else:
            grad = gradient((6, 4), step, dtype)
        for p, opt in zip((ours, twin), opts):
            p.grad = grad
            opt.step()
        assert torch.equal(ours, twin), f"step {step}"
    assert not ours.is_contiguous() and ours.data_ptr() == base.data_ptr()


def assert_same_state(optimizer, opt, ours, other, theirs, what):
    """Every state tensor of the reference but `step`, the same values in `opt`'s."""
    kept = set(other.state[theirs]) - {"step"}
    assert kept, "the options make no state to compare"
    for key in kept:
        assert_close(opt.state[ours][key].resolve_neg().numpy(),
                     other.state[theirs][key].resolve_neg().numpy(), "float64", f"{what}: {key}")


def test_a_change_of_strides_is_followed(optimizer):
    """`p.data = p.data.t()` (same memory, dtype and shape) and a state tensor replaced by its
    own transpose: the next steps land on the elements the tensors now name (where torch has no
    twin, the reference sees the same values, contiguous)."""
    ours = nn.Parameter(gradient((3, 3), 7))
    opt = optimizer.cls([ours], **optimizer.options)
    other, theirs = reference(optimizer, nn.Parameter(gradient((3, 3), 7)), optimizer.options)
    contiguous = optimizer.twin is None

    def both(step, change=None):
        for p, o, reference_side in ((ours, opt, False), (theirs, other, True)):
            if change:
                change(p, o, contiguous and reference_side)
            p.grad = gradient((3, 3), step)
            o.step()
        assert_close(ours.detach().numpy(), theirs.detach().numpy(), "float64", f"step {step}")
        assert_same_state(optimizer, opt, ours, other, theirs, f"step {step}")

    def transposed(tensor, contiguous):
        return tensor.t().contiguous() if contiguous else tensor.t()

    key = optimizer.element_state
    both(0)
    both(1, lambda p, o, c: setattr(p, "data", transposed(p.data, c)))
    if key is not None:
        both(2, lambda p, o, c: o.state[p].__setitem__(key, transposed(o.state[p][key], c)))
    both(3, lambda p, o, c: setattr(p, "data", p.data.t().contiguous()))


# -- sparse COO gradients of every sparse_dim -----------------------------------------------------


def sparse_gradient(shape, step, sparse_dim, duplicated):
    """A COO gradient whose touched rows are complete (SparseAdam then updates what rows do):
    rows 1 and 3 left out; twice over, uncoalesced, when `duplicated`."""
    dense = gradient(shape, step)
    dense[[1, 3]] = 0.0
    grad = dense.to_sparse(sparse_dim)
    if duplicated:
        grad = torch.sparse_coo_tensor(torch.cat([grad._indices()] * 2, 1),
                                       torch.cat([grad._values() * 0.5] * 2), shape,
                                       check_invariants=True)
    return grad


@pytest.mark.parametrize("shape, sparse_dim", [((6, 3), 1), ((6, 3), 2), ((5, 3, 2), 2),
                                                ((5, 3, 2), 3)],
                         ids=["rows", "fully-sparse", "sparse_dim-2-of-3", "fully-sparse-3d"])
@pytest.mark.parametrize("duplicated", [False, True], ids=["coalesced", "duplicates"])
def test_sparse_gradients_of_every_sparse_dim_match_torch(optimizer, shape, sparse_dim,
                                                          duplicated):
    """torch's SparseAdam, SGD or Adagrad on the same gradient; where torch has no twin, the
    class on the same gradient as coalesced rows (checked against the numpy references in
    tests/test_torch_family.py)."""
    ours, theirs = nn.Parameter(gradient(shape, 60)), nn.Parameter(gradient(shape, 60))
    opt = optimizer.cls([ours], **optimizer.sparse)
    if optimizer.sparse_twin is not None:
        other = optimizer.sparse_twin([theirs], **optimizer.sparse_twin_options)
    else:
        other = optimizer.cls([theirs], **optimizer.sparse)
    untouched = ours.detach()[[1, 3]].clone()
    for step in range(4):
        ours.grad = sparse_gradient(shape, step, sparse_dim, duplicated)
        assert ours.grad.sparse_dim() == sparse_dim
        theirs.grad = ours.grad.clone() if optimizer.sparse_twin is not None else \
            ours.grad.to_dense().to_sparse(1)
        opt.step()
        other.step()
        assert_close(ours.detach().numpy(), theirs.detach().numpy(), "float64", f"step {step}")
    assert torch.equal(ours.detach()[[1, 3]], untouched)


def _adam(w, rows, g):
    return lazyadam_step(w, np.zeros_like(w), np.zeros_like(w), g, indices=rows, lr=0.05,
                         beta1=0.9, beta2=0.999, eps=1e-8, beta1_power=0.9, beta2_power=0.999,
                         eps_mode="mindspore")[0]


def _sgd(w, rows, g):
    return sgd_step(w, np.zeros_like(w), np.zeros(len(w), bool), g, lr=0.05, momentum=0.9,
                    nesterov=True, weight_decay=0.01, indices=rows)[0]


def _adagrad(w, rows, g):
    return adagrad_step(w, np.full_like(w, 0.1), g, lr=0.05, step=1, weight_decay=0.01,
                        indices=rows)[0]


def _rowwise_adagrad(w, rows, g):
    return rowwise_adagrad_step(w, np.zeros(len(w)), g, lr=0.05, eps=1e-10, weight_decay=0.01,
                                decay="l2", indices=rows)[0]


def _partial_rowwise_adam(w, rows, g):
    return partial_rowwise_adam_step(w, np.zeros_like(w), np.zeros(len(w)), g, lr=0.05,
                                     beta1=0.9, beta2=0.999, eps=1e-8, beta1_power=0.9,
                                     beta2_power=0.999, weight_decay=0.01, decay="l2",
                                     indices=rows)[0]


def _lion(w, rows, g):
    return lion_step(w, np.zeros_like(w), g, lr=0.01, weight_decay=0.1, indices=rows)[0]


#: Per class: options, and the numpy reference's first step with them from fresh state, on the
#: given rows (`first_step(w, rows, values)`).
FIRST_STEPS = {
    lazyadam.torch.LazyAdam: (dict(lr=0.05, eps_mode="mindspore"), _adam),
    lazyadam.torch.SGD: (dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01), _sgd),
    lazyadam.torch.Adagrad: (dict(lr=0.05, initial_accumulator_value=0.1, weight_decay=0.01),
                             _adagrad),
    lazyadam.torch.RowWiseAdagrad: (dict(lr=0.05, weight_decay=0.01), _rowwise_adagrad),
    lazyadam.torch.PartialRowWiseAdam: (dict(lr=0.05, weight_decay=0.01), _partial_rowwise_adam),
    lazyadam.torch.Lion: (dict(lr=0.01, weight_decay=0.1), _lion),
}


def test_a_fully_sparse_gradient_updates_the_rows_it_touches(optimizer):
    """An element the gradient leaves out of a row it touches is that row's zero gradient (the
    lazy update is by rows; SparseAdam's by element): the numpy reference on those rows. Where
    the options make a zero gradient move (a decay), the element moves: a step by elements would
    leave it."""
    options, first_step = FIRST_STEPS[optimizer.cls]
    start = gradient((4, 3), 70)
    param = nn.Parameter(start.clone())
    opt = optimizer.cls([param], **options)
    dense = gradient((4, 3), 71)
    dense[0] = 0.0
    dense[2, 1] = 0.0  # row 2 is touched, its element 1 is not
    param.grad = dense.to_sparse()
    opt.step()
    rows = np.array([1, 2, 3])
    expected = first_step(start.numpy(), rows, dense.numpy()[rows])
    if optimizer.cls is not lazyadam.torch.LazyAdam:  # Adam's first step: m = 0 there, no move
        assert expected[2, 1] != start[2, 1]
    assert_close(param.detach().numpy(), expected, "float64")


# -- torch's error types and keywords -------------------------------------------------------------


def complex_parameter():
    return nn.Parameter(torch.ones(2, dtype=torch.complex64))


def sparse_parameter():
    return nn.Parameter(torch.ones(3, 2).to_sparse())


@pytest.mark.parametrize("make, options, match, twin_refuses", [
    (None, dict(lr=torch.tensor([0.1, 0.2])), "lr must be a one-element tensor", True),
    (None, dict(betas=(torch.tensor(0.9), 0.999)), "betas must be both floats or both tensors",
     True),
    (None, dict(differentiable=True), "differentiable=True", False),
    (complex_parameter, {}, "complex", False),
    (sparse_parameter, {}, "layout torch.sparse_coo", False),
], ids=["tensor-lr", "mixed-betas", "differentiable", "complex", "sparse"])
def test_value_errors_where_torch_raises_them(optimizer, make, options, match, twin_refuses):
    """torch's ValueErrors: the dense twin's (a tensor lr of two elements, mixed betas), and
    SparseAdam's for complex and sparse parameters. Where the dense twin takes the value (Adam,
    SGD and Adagrad take complex parameters and differentiable=True), the refusal is one that
    docs/pytorch.md states."""
    if "betas" in options and not optimizer.betas:
        pytest.skip(f"{optimizer.cls.__name__} takes no betas")
    param = make() if make else nn.Parameter(torch.ones(2))
    if twin_refuses and optimizer.twin is not None:
        with pytest.raises(ValueError):
            optimizer.twin([param], **options)
    with pytest.raises(ValueError, match=match):
        optimizer.cls([param], **options)


def test_torch_keywords_foreach_and_fused_are_accepted(optimizer):
    """The kernels are fused either way: the numbers are the same."""
    cls = optimizer.cls
    params = [nn.Parameter(torch.ones(3, dtype=torch.float64)) for _ in range(3)]
    opts = [cls([params[0]]), cls([params[1]], foreach=True), cls([params[2]], fused=False)]
    for p, opt in zip(params, opts):
        p.grad = gradient((3,), 0)
        opt.step()
    assert torch.equal(params[0], params[1]) and torch.equal(params[0], params[2])
    with pytest.raises(TypeError, match="foreach must be None or a bool"):
        cls(params, foreach="yes")
    assert opts[1].state_dict()["param_groups"][0]["foreach"] is True


def test_a_one_element_tensor_lr_is_read_at_every_step(optimizer):
    """torch's optimizers take a tensor lr, which a scheduler may change in place: each step
    takes its value then, as the reference takes the same value as a float."""
    lr = torch.tensor(optimizer.options["lr"])
    ours = nn.Parameter(gradient((4, 3), 40))
    opt = optimizer.cls([ours], **{**optimizer.options, "lr": lr})
    other, theirs = reference(optimizer, nn.Parameter(gradient((4, 3), 40)),
                              {**optimizer.options, "lr": float(lr)})
    for step in range(4):
        if step == 2:
            lr.mul_(0.25)
            other.param_groups[0]["lr"] = float(lr)
        ours.grad = gradient((4, 3), step)
        theirs.grad = ours.grad.clone()
        opt.step()
        other.step()
        assert_close(ours.detach().numpy(), theirs.detach().numpy(), "float64", f"step {step}")


def test_options_are_not_checked_in_a_step_without_gradients(optimizer):
    """As torch's: a scheduler may move an option out of range while nothing has a gradient."""
    key, value, message = optimizer.bad
    params = [nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))]
    opt = optimizer.cls([{"params": params[:1]}, {"params": params[1:]}])
    others = [] if optimizer.twin is None else [optimizer.twin([nn.Parameter(torch.ones(2))])]
    for o in [opt, *others]:
        o.param_groups[-1][key] = value
        o.step()
    params[0].grad = torch.ones(2)
    opt.step()  # group 1 still has no gradient
    stepped = params[0].detach().clone()
    assert not torch.equal(stepped, torch.ones(2))
    params[1].grad = torch.ones(2)
    with pytest.raises(ValueError, match=f"param group 1: {message}"):
        opt.step()
    assert torch.equal(params[0], stepped) and torch.equal(params[1], torch.ones(2))


# -- use_locking across a load ---------------------------------------------------------------------


def stepped(optimizer, times):
    """A parameter of ones after `times` steps of `optimizer.cls` with gradients of ones: what a
    parameter that took that many steps holds (SGD keeps no step count)."""
    param = nn.Parameter(torch.ones(3))
    opt = optimizer.cls([param], use_locking=True)
    for _ in range(times):
        param.grad = torch.ones(3)
        opt.step()
    return param.detach()


@pytest.mark.parametrize("optimizer", OPTIMIZERS[:2], ids=lambda entry: entry.cls.__name__)
def test_the_step_lock_survives_a_load(optimizer, monkeypatch):
    """A step that starts after another thread's `load_state_dict` waits for the step in flight
    (held inside its kernels here) to finish. The lock is `RuleOptimizer`'s, which every class
    inherits: LazyAdam and SGD stand for them, as each case waits half a second for nothing."""
    param = nn.Parameter(torch.ones(3))
    opt = optimizer.cls([param], use_locking=True)
    param.grad = torch.ones(3)
    opt.step()
    entered, release, second = threading.Event(), threading.Event(), threading.Event()
    run = Launcher.run

    def held(self, *args, **kwargs):
        if not entered.is_set():
            entered.set()
            assert release.wait(10)
        else:
            second.set()
        return run(self, *args, **kwargs)

    monkeypatch.setattr(Launcher, "run", held)
    first = threading.Thread(target=opt.step)
    first.start()
    assert entered.wait(10)

    def load_then_step():
        opt.load_state_dict(opt.state_dict())
        opt.step()

    later = threading.Thread(target=load_then_step)
    later.start()
    assert not second.wait(0.5), "a step ran its kernels while another held the lock"
    release.set()
    first.join(10)
    later.join(10)
    assert second.is_set() and torch.equal(param, stepped(optimizer, 3))
    assert not torch.equal(param, stepped(optimizer, 2))


def test_a_load_hook_may_step(optimizer):
    """The lock held over a load is the step's own: a load post-hook that steps (in this
    thread) does not wait for itself."""
    param = nn.Parameter(torch.ones(3))
    opt = optimizer.cls([param], use_locking=True)
    param.grad = torch.ones(3)
    opt.step()
    opt.register_load_state_dict_post_hook(lambda loaded: loaded.step())
    loading = threading.Thread(target=opt.load_state_dict, args=(opt.state_dict(),), daemon=True)
    loading.start()
    loading.join(10)
    assert not loading.is_alive(), "the load's hook waits for the lock the load holds"
    assert torch.equal(param, stepped(optimizer, 2))
    assert not torch.equal(param, stepped(optimizer, 1))


# -- negative-bit views and ZeroTensors -----------------------------------------------------------


def test_negative_views_and_zero_tensors_step_as_torch_steps_them(optimizer):
    """A negative-bit parameter, gradient and state tensor, and a ZeroTensor gradient (where
    torch has no twin, the reference gets the same values as plain tensors)."""
    start = gradient((3, 2), 80)
    ours = nn.Parameter(torch._neg_view(start.clone()))
    opt = optimizer.cls([ours], **optimizer.options)
    other, theirs = reference(optimizer, nn.Parameter(torch._neg_view(start.clone())),
                              optimizer.options)
    grads = [torch._neg_view(gradient((3, 2), 81)), torch._efficientzerotensor(
        (3, 2), dtype=torch.float64), gradient((3, 2), 82)]
    key = optimizer.element_state
    for step, grad in enumerate(grads):
        ours.grad = grad
        theirs.grad = grad if optimizer.twin is not None else plain(grad)
        if step == 2 and key is not None:
            for o, p in ((opt, ours), (other, theirs)):
                if o is opt or optimizer.twin is not None:
                    o.state[p][key] = torch._neg_view(o.state[p][key].neg())
        opt.step()
        other.step()
        assert_close(ours.detach().resolve_neg().numpy(), theirs.detach().resolve_neg().numpy(),
                     "float64", f"step {step}")
        assert_same_state(optimizer, opt, ours, other, theirs, f"step {step}")
    assert ours.is_neg()


def test_a_zero_tensor_parameter_is_refused_naming_it(optimizer):
    """ZeroTensors are immutable: torch's step fails on one too."""
    with pytest.raises(ValueError, match="parameter 'param group 0 param 0' is a ZeroTensor"):
        optimizer.cls([torch._efficientzerotensor((2,))])
