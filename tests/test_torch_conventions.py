"""torch's optimizer conventions, checked for every `lazyadam.torch` optimizer.

A drop-in for `torch.optim.Adam`, `AdamW` and `SparseAdam` must behave as they do where a torch
user relies on it: `state_dict()` the same after a resume, a deepcopy or pickling; parameters that
are not contiguous (a transposed or sliced view, a negative-bit view), and changes of their strides
between steps; sparse COO gradients of every sparse_dim; torch's error types; a half-precision
model resumed bitwise; the step lock held across a load. The references are torch's own optimizers
run on the same inputs (and the numpy reference where torch has no optimizer for the case).

`OPTIMIZERS` lists every optimizer class of `lazyadam.torch`; each entry gives the class and the
torch optimizers its default options match (dense, sparse). A new optimizer joins the list.
"""

from __future__ import annotations

import copy
import io
import pickle
import threading

import numpy as np
import pytest

from reference import lazyadam_step
from tolerance import assert_close

torch = pytest.importorskip("torch", reason="lazyadam.torch needs torch")
import lazyadam.torch  # noqa: E402  (after the skip: it imports torch)
from lazyadam.runtime.launcher import Launcher  # noqa: E402

nn = torch.nn

#: (class, its torch twin for dense gradients, the options that make it SparseAdam's twin).
OPTIMIZERS = [(lazyadam.torch.LazyAdam, torch.optim.Adam, dict(eps_mode="mindspore"))]


@pytest.fixture(params=OPTIMIZERS, ids=lambda entry: entry[0].__name__)
def family(request):
    return request.param


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


def two_groups(cls, params):
    return cls([{"params": params[:1], "lr": 0.02}, {"params": params[1:], "amsgrad": True}],
               lr=0.01)


def step_with_gradients(opt, params, step):
    for p in params:
        p.grad = gradient(p.shape, step, p.dtype)
    opt.step()


# -- state_dict: the same after a resume, a deepcopy, pickling -----------------------------------


def copied(opt, params, how):
    """`opt` carried over by `how`, with the parameters it steps."""
    if how == "load_state_dict":
        twins = [nn.Parameter(p.detach().clone()) for p in params]
        other = two_groups(type(opt), twins)
        buffer = io.BytesIO()
        torch.save(opt.state_dict(), buffer)
        buffer.seek(0)
        other.load_state_dict(torch.load(buffer, weights_only=True))
        return other, twins
    other = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    return other, [p for group in other.param_groups for p in group["params"]]


@pytest.mark.parametrize("how", ["load_state_dict", "deepcopy", "pickle"])
def test_state_dict_is_the_same_after_a_resume(family, how):
    cls = family[0]
    params = [nn.Parameter(gradient((3, 2), k)) for k in range(3)]
    opt = two_groups(cls, params)
    for step in range(2):
        step_with_gradients(opt, params, step)
    other, twins = copied(opt, params, how)
    assert_same_state_dict(other.state_dict(), opt.state_dict(), how)
    step_with_gradients(opt, params, 2)
    step_with_gradients(other, twins, 2)
    assert_same_state_dict(other.state_dict(), opt.state_dict(), f"{how}, a step later")
    for p, q in zip(params, twins):
        assert torch.equal(p, q)


# -- half precision: a resume is bitwise --------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_a_half_precision_resume_is_bitwise(family, dtype, tmp_path):
    """torch's `Optimizer.load_state_dict` casts floating state to the parameter's dtype; the
    float32 state of a half-precision parameter must come back as it was saved."""
    cls = family[0]

    def make():
        table = nn.Parameter(gradient((8, 4), 99).to(dtype))
        dense = nn.Parameter(gradient((3, 4), 98).to(dtype))
        return [table, dense], cls([table, dense], lr=0.01)

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


@pytest.mark.parametrize("kind", ["transposed", "every other column", "negative view"])
def test_parameters_that_are_not_contiguous_step_as_adam_steps_them(family, kind):
    """Stepped through a contiguous working copy written back: the view's elements move as
    Adam's do, the rest of its storage stays, the tensor keeps its storage and strides."""
    cls, twin, _ = family
    base, view = not_contiguous(kind)
    theirs_base, theirs_view = not_contiguous(kind)
    ours, theirs = nn.Parameter(view), nn.Parameter(theirs_view)
    strides, pointer, untouched = ours.stride(), ours.data_ptr(), base.clone()
    opt, reference = cls([ours], lr=0.05, amsgrad=True), twin([theirs], lr=0.05, amsgrad=True)
    for step in range(4):
        ours.grad = None
        if step % 2:
            ours.grad = gradient(ours.shape, step)
        else:  # autograd's layout: the parameter's strides, where it is dense
            (ours * gradient(ours.shape, step)).sum().backward()
        theirs.grad = ours.grad.clone()
        opt.step()
        reference.step()
        assert_close(ours.detach().resolve_neg().numpy(), theirs.detach().resolve_neg().numpy(),
                     "float64", f"step {step}")
    negative = kind == "negative view"
    assert (ours.stride(), ours.data_ptr(), ours.is_neg()) == (strides, pointer, negative)
    if kind == "every other column":
        assert torch.equal(base[:, 1::2], untouched[:, 1::2])
    assert_close(base.numpy(), theirs_base.numpy(), "float64", "the storage")


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_a_transposed_parameter_steps_as_its_contiguous_twin_bitwise(family, dtype, sparse):
    """The same values, the same gradients, half precision and row-sparse gradients included:
    the working copy gives the contiguous parameter's bits."""
    cls = family[0]
    base = gradient((4, 6), 90, dtype)
    ours, twin = nn.Parameter(base.t()), nn.Parameter(base.t().contiguous())
    opts = [cls([ours], lr=0.05), cls([twin], lr=0.05)]
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


def test_a_change_of_strides_is_followed(family):
    """`p.data = p.data.t()` (same memory, dtype and shape) and a state tensor replaced by its
    own transpose: the next steps land on the elements the tensors now name."""
    cls, twin, _ = family
    ours, theirs = nn.Parameter(gradient((3, 3), 7)), nn.Parameter(gradient((3, 3), 7))
    opt, reference = cls([ours], lr=0.05), twin([theirs], lr=0.05)

    def both(step, change=None):
        for p, o in ((ours, opt), (theirs, reference)):
            if change:
                change(p, o)
            p.grad = gradient((3, 3), step)
            o.step()
        assert_close(ours.detach().numpy(), theirs.detach().numpy(), "float64", f"step {step}")
        for key in ("exp_avg", "exp_avg_sq"):
            assert_close(opt.state[ours][key].numpy(), reference.state[theirs][key].numpy(),
                         "float64", f"step {step}: {key}")

    both(0)
    both(1, lambda p, o: setattr(p, "data", p.data.t()))
    both(2, lambda p, o: o.state[p].__setitem__("exp_avg", o.state[p]["exp_avg"].t()))
    both(3, lambda p, o: setattr(p, "data", p.data.t().contiguous()))


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
def test_sparse_gradients_of_every_sparse_dim_match_sparse_adam(family, shape, sparse_dim,
                                                                duplicated):
    cls, _, sparse_options = family
    ours, theirs = nn.Parameter(gradient(shape, 60)), nn.Parameter(gradient(shape, 60))
    opt = cls([ours], lr=0.05, **sparse_options)
    reference = torch.optim.SparseAdam([theirs], lr=0.05)
    untouched = ours.detach()[[1, 3]].clone()
    for step in range(4):
        ours.grad = sparse_gradient(shape, step, sparse_dim, duplicated)
        theirs.grad = ours.grad.clone()
        assert ours.grad.sparse_dim() == sparse_dim
        opt.step()
        reference.step()
        assert_close(ours.detach().numpy(), theirs.detach().numpy(), "float64", f"step {step}")
    assert torch.equal(ours.detach()[[1, 3]], untouched)


def test_a_fully_sparse_gradient_updates_the_rows_it_touches(family):
    """An element the gradient leaves out of a row it touches is that row's zero gradient (the
    lazy update is by rows; SparseAdam's by element): the numpy reference on those rows."""
    cls = family[0]
    start = gradient((4, 3), 70)
    param = nn.Parameter(start.clone())
    opt = cls([param], lr=0.05, eps_mode="mindspore")
    dense = gradient((4, 3), 71)
    dense[0] = 0.0
    dense[2, 1] = 0.0  # row 2 is touched, its element 1 is not
    param.grad = dense.to_sparse()
    opt.step()
    rows = np.array([1, 2, 3])
    expected = lazyadam_step(start.numpy(), np.zeros((4, 3)), np.zeros((4, 3)),
                             dense.numpy()[rows], indices=rows, lr=0.05, beta1=0.9, beta2=0.999,
                             eps=1e-8, beta1_power=0.9, beta2_power=0.999, eps_mode="mindspore")
    assert_close(param.detach().numpy(), expected[0], "float64")


# -- torch's error types and keywords -------------------------------------------------------------


def complex_parameter():
    return nn.Parameter(torch.ones(2, dtype=torch.complex64))


def sparse_parameter():
    return nn.Parameter(torch.ones(3, 2).to_sparse())


@pytest.mark.parametrize("make, options, match", [
    (None, dict(lr=torch.tensor([0.1, 0.2])), "lr must be a one-element tensor"),
    (None, dict(betas=(torch.tensor(0.9), 0.999)), "betas must be both floats or both tensors"),
    (None, dict(differentiable=True), "differentiable=True"),
    (complex_parameter, {}, "complex"),
    (sparse_parameter, {}, "layout torch.sparse_coo"),
], ids=["tensor-lr", "mixed-betas", "differentiable", "complex", "sparse"])
def test_value_errors_where_torch_raises_them(family, make, options, match):
    cls = family[0]
    param = make() if make else nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match=match):
        cls([param], **options)


def test_torch_keywords_foreach_and_fused_are_accepted(family):
    """The kernels are fused either way: the numbers are the same."""
    cls = family[0]
    params = [nn.Parameter(torch.ones(3, dtype=torch.float64)) for _ in range(3)]
    opts = [cls([params[0]]), cls([params[1]], foreach=True), cls([params[2]], fused=False)]
    for p, opt in zip(params, opts):
        p.grad = gradient((3,), 0)
        opt.step()
    assert torch.equal(params[0], params[1]) and torch.equal(params[0], params[2])
    with pytest.raises(TypeError, match="foreach must be None or a bool"):
        cls(params, foreach="yes")
    assert opts[1].state_dict()["param_groups"][0]["foreach"] is True


def test_options_are_not_checked_in_a_step_without_gradients(family):
    """As Adam: a scheduler may move an option out of range while nothing has a gradient."""
    cls, twin, _ = family
    params = [nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))]
    opt = cls([{"params": params[:1]}, {"params": params[1:]}])
    adam = twin([nn.Parameter(torch.ones(2))])
    for o in (opt, adam):
        o.param_groups[-1]["betas"] = (1.5, 0.999)
        o.step()
    params[0].grad = torch.ones(2)
    opt.step()  # group 1 still has no gradient
    assert float(opt.state[params[0]]["step"]) == 1
    params[1].grad = torch.ones(2)
    with pytest.raises(ValueError, match=r"param group 1: beta1 must lie in \[0, 1\)"):
        opt.step()
    assert float(opt.state[params[0]]["step"]) == 1


# -- use_locking across a load ---------------------------------------------------------------------


def test_the_step_lock_survives_a_load(family, monkeypatch):
    """A step that starts after another thread's `load_state_dict` waits for the step in flight
    (held inside its kernels here) to finish."""
    cls = family[0]
    param = nn.Parameter(torch.ones(3))
    opt = cls([param], use_locking=True)
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
    assert second.is_set() and float(opt.state[param]["step"]) == 3


def test_a_load_hook_may_step(family):
    """The lock held over a load is the step's own: a load post-hook that steps (in this
    thread) does not wait for itself."""
    cls = family[0]
    param = nn.Parameter(torch.ones(3))
    opt = cls([param], use_locking=True)
    param.grad = torch.ones(3)
    opt.step()
    opt.register_load_state_dict_post_hook(lambda optimizer: optimizer.step())
    loading = threading.Thread(target=opt.load_state_dict, args=(opt.state_dict(),), daemon=True)
    loading.start()
    loading.join(10)
    assert not loading.is_alive(), "the load's hook waits for the lock the load holds"
    assert float(opt.state[param]["step"]) == 2


# -- negative-bit views and ZeroTensors -----------------------------------------------------------


def test_negative_views_and_zero_tensors_step_as_adam_steps_them(family):
    """A negative-bit parameter, gradient and moment, and a ZeroTensor gradient."""
    cls, twin, _ = family
    start = gradient((3, 2), 80)
    ours, theirs = (nn.Parameter(torch._neg_view(start.clone())) for _ in range(2))
    opt, reference = cls([ours], lr=0.05), twin([theirs], lr=0.05)
    grads = [torch._neg_view(gradient((3, 2), 81)), torch._efficientzerotensor(
        (3, 2), dtype=torch.float64), gradient((3, 2), 82)]
    for step, grad in enumerate(grads):
        ours.grad, theirs.grad = grad, grad
        if step == 2:
            for o, p in ((opt, ours), (reference, theirs)):
                o.state[p]["exp_avg"] = torch._neg_view(o.state[p]["exp_avg"].neg())
        opt.step()
        reference.step()
        assert_close(ours.detach().resolve_neg().numpy(), theirs.detach().resolve_neg().numpy(),
                     "float64", f"step {step}")
    assert ours.is_neg()


def test_a_zero_tensor_parameter_is_refused_naming_it(family):
    """ZeroTensors are immutable: Adam's step fails on one too."""
    cls = family[0]
    with pytest.raises(ValueError, match="parameter 'param group 0 param 0' is a ZeroTensor"):
        cls([torch._efficientzerotensor((2,))])

