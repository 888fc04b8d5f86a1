"""`lazyadam.torch.LazyAdam` on CUDA tensors: emulated on the CPU, and on a GPU when there is one.

Emulated: `lazyadam.torch.tensors.view` (how kernels see a tensor) presents every tensor as a device
array (tests/test_runtime_device.py's `TorchOnDevice`, host memory behind
`__cuda_array_interface__`), and `targets.compile(spec, "cuda")` gives the host-emulation build of
the CUDA kernels (tests/cuda_emulation). So the optimizer's CUDA path runs here: the device checks,
the CUDA kernel wrapper, the sparse launcher and the multi-tensor launches of dense parameters,
against torch.optim on the same model; and a capturable step, captured and replayed.

Marked `cuda`: the same on real CUDA tensors, skipped, with the reason, without a GPU.
"""

from __future__ import annotations

import pytest

from tolerance import assert_close

torch = pytest.importorskip("torch", reason="lazyadam.torch needs torch")
import lazyadam.torch  # noqa: E402  (after the skip: it imports torch)
from lazyadam.targets import cuda_binding  # noqa: E402
from lazyadam.torch import LazyAdam  # noqa: E402
from test_runtime_device import TorchOnDevice  # noqa: E402
from test_torch import (Recommender, assert_models_close, backward, step_both,  # noqa: E402
                        train_both, twins)
from unchanged import assert_unchanged, snapshot  # noqa: E402


@pytest.fixture
def emulated(monkeypatch, emulated_cuda):
    """The CUDA path on the CPU. Returns `(launches, host)`: the tensor counts of multi-tensor
    plan launches, and a set of tensor ids that `_view` leaves in host memory."""
    real_launch = cuda_binding.MultiPlan.launch
    launches, host = [], set()

    def launch(plan, grads, *args, **kwargs):
        launches.append(len(grads))
        return real_launch(plan, grads, *args, **kwargs)

    def view(tensor, memory=None):
        if id(tensor) in host:
            return tensor.detach().numpy()
        return tensor.detach().as_subclass(TorchOnDevice)

    monkeypatch.setattr(cuda_binding.MultiPlan, "launch", launch)
    monkeypatch.setattr(lazyadam.torch.tensors, "view", view)
    return launches, host


def groups(model):
    """Tables as SparseAdam; mlp[0] as Adam with L2 and amsgrad; mlp[2] as AdamW."""
    return [{"params": model.tables(), "eps_mode": "mindspore"},
            {"params": list(model.mlp[0].parameters()), "weight_decay": 0.05, "amsgrad": True},
            {"params": list(model.mlp[2].parameters()), "weight_decay": 0.1,
             "decoupled_weight_decay": True}]


def torch_optimizers(model):
    return [torch.optim.SparseAdam(model.tables(), lr=0.01),
            torch.optim.Adam(model.mlp[0].parameters(), lr=0.01, weight_decay=0.05,
                             amsgrad=True),
            torch.optim.AdamW(model.mlp[2].parameters(), lr=0.01, weight_decay=0.1)]


def test_emulated_cuda_path_matches_torch_with_one_launch_per_dense_group(emulated):
    launches, _ = emulated
    ours, theirs = twins()
    opt = LazyAdam(groups(ours), lr=0.01)
    train_both(ours, opt, theirs, torch_optimizers(theirs), 3)
    assert launches == [2, 2] * 3  # mlp[0] and mlp[2]: weight and bias in one launch each
    slots = [binding.slot for binding in opt._bindings.values()]
    assert {slot.target for slot in slots} == {"cuda"}
    assert all(type(slot.param.data) is TorchOnDevice for slot in slots)


def test_emulated_steps_of_other_counts_share_a_launch(emulated):
    """Dense parameters whose `step` differs take different bias corrections: different
    hyperparameter entries of one launch."""
    launches, _ = emulated
    ours, theirs = twins()
    opt = LazyAdam(groups(ours), lr=0.01)

    def skip(model, step):
        if step == 0:
            model.mlp[2].bias.grad = None

    train_both(ours, opt, theirs, torch_optimizers(theirs), 3, edit=skip)
    assert launches == [2, 1, 2, 2, 2, 2]


def test_emulated_half_precision_matches_the_host_path_bitwise(emulated, monkeypatch):
    """A bfloat16 model, bfloat16 state, stochastic rounding: the CUDA path (emulated) gives the
    C kernels' bits. Each dense tensor rounds with its own seed: its own hyperparameter entry, in
    its group's launch."""
    launches, _ = emulated

    def run(target):
        model = Recommender(torch.bfloat16)
        opt = LazyAdam(groups(model), lr=0.01, state_dtype="bfloat16", rounding="stochastic",
                       seed=3)
        for step in range(3):
            opt.zero_grad()
            backward(model, step)
            opt.step()
        assert {binding.slot.target for binding in opt._bindings.values()} == {target}
        tensors = list(model.parameters()) + [s[k] for s in opt.state.values()
                                              for k in ("exp_avg", "exp_avg_sq")]
        return [t.detach().view(torch.int16).clone() for t in tensors]

    on_device = run("cuda")
    assert launches == [2, 2] * 3  # 4 dense tensors in two kernels, 3 steps
    monkeypatch.undo()
    for a, b in zip(on_device, run("c")):
        assert torch.equal(a, b)


def test_emulated_a_change_of_strides_or_negative_bit_is_followed(emulated):
    """A step like the last one is confirmed by `_recheck`; `p.data = p.data.t()` and a negative
    view of the same memory (same address, dtype and shape) are not like it: the full check
    binds again, and such a parameter steps through its working copy."""
    start = torch.randn(3, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ours, theirs = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    opt, adam = LazyAdam([ours], lr=0.05), torch.optim.Adam([theirs], lr=0.05)
    changes = {2: lambda p: setattr(p, "data", p.data.t()),
               4: lambda p: setattr(p, "data", p.data.t()),
               6: lambda p: setattr(p, "data", torch._neg_view(p.data))}
    for step in range(8):
        for p, o in ((ours, opt), (theirs, adam)):
            if step in changes:
                changes[step](p)
            p.grad = torch.randn(3, 3, generator=torch.Generator().manual_seed(step),
                                 dtype=torch.float64)
            o.step()
        if step in (1, 5):
            assert opt._memo is not None  # the next step is confirmed by _recheck
        assert_close(ours.detach().resolve_neg().numpy(), theirs.detach().resolve_neg().numpy(),
                     "float64", f"step {step}")
    assert ours.is_neg()


def test_emulated_confirmed_steps_give_each_parameter_the_entry_of_its_own_count(emulated):
    """Two parameters of one group at different counts (one had no gradient for a step): the
    steps that the memo confirms (`fast.recheck`) give each the bias corrections of its own
    `step`, as torch.optim.Adam does."""
    gen = torch.Generator().manual_seed(11)
    starts = [torch.randn(4, 3, generator=gen, dtype=torch.float64) for _ in range(2)]
    ours = [torch.nn.Parameter(s.clone()) for s in starts]
    theirs = [torch.nn.Parameter(s.clone()) for s in starts]
    opt, adam = LazyAdam(ours, lr=0.05), torch.optim.Adam(theirs, lr=0.05)
    for step in range(5):
        for k in range(2):
            grad = torch.randn(4, 3, generator=gen, dtype=torch.float64)
            ours[k].grad = None if step == 0 and k == 1 else grad
            theirs[k].grad = None if step == 0 and k == 1 else grad.clone()
        opt.step()
        adam.step()
        if step >= 2:
            assert opt._memo is not None  # this step was confirmed by the memo
        for k in range(2):
            assert_close(ours[k].detach().numpy(), theirs[k].detach().numpy(), "float64",
                         f"step {step} param {k}")
    assert [int(opt.state[p]["step"]) for p in ours] == [5, 4]



@pytest.mark.parametrize("change", ["not contiguous", "negative view", "zero tensor",
                                    "shares memory with exp_avg"])
def test_emulated_a_gradient_unlike_the_last_takes_the_full_check(emulated, quick_results,
                                                                  change):
    """Steps like the last one are confirmed by `quick` (a new gradient tensor each step); a
    gradient it cannot confirm takes the full check: a transposed view, a negative view and a
    ZeroTensor (which has no memory) are stepped as torch.optim.Adam steps them, and a gradient
    that is the parameter's own `exp_avg` is refused, naming the problem, with nothing changed."""
    gen = torch.Generator().manual_seed(3)
    start = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    ours, theirs = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    opt, adam = LazyAdam([ours], lr=0.05), torch.optim.Adam([theirs], lr=0.05)
    for step in range(3):
        grad = torch.randn(4, 5, generator=gen, dtype=torch.float64)
        ours.grad, theirs.grad = grad, grad.clone()
        opt.step()
        adam.step()
    assert quick_results == [True, True]  # steps 2 and 3, by the memo's recheck
    if change == "shares memory with exp_avg":
        ours.grad = opt.state[ours]["exp_avg"]
        before = snapshot((ours, opt.state[ours]))
        with pytest.raises(ValueError, match="shares memory with the exp_avg of parameter"):
            opt.step()
        assert_unchanged((ours, opt.state[ours]), before)
    else:
        grad = torch.randn(5, 4, generator=gen, dtype=torch.float64).t()
        if change == "negative view":
            grad = torch._neg_view(grad.contiguous())
        if change == "zero tensor":
            grad = torch._efficientzerotensor((4, 5), dtype=torch.float64)
        ours.grad, theirs.grad = grad, grad.clone()
        opt.step()
        adam.step()
        assert_close(ours.detach().numpy(), theirs.detach().numpy(), "float64", "after")
    # refused by the recheck; then the full check hands the slot a copy of a negative view, or
    # zeros for a ZeroTensor, which the slot's own check takes, and the others as they are
    resolved = change in ("negative view", "zero tensor")
    assert quick_results == [True, True, False, resolved]

# -- on a GPU ------------------------------------------------------------------------------------


@pytest.mark.cuda
def test_gpu_matches_torch_on_a_side_stream(gpu):
    """Kernels run on torch's current stream: a side stream, with no synchronisation of ours."""
    ours, theirs = (model.to(gpu) for model in twins())
    opt = LazyAdam(groups(ours), lr=0.01)
    torch_opts = torch_optimizers(theirs)
    stream = torch.cuda.Stream()
    for step in range(4):
        with torch.cuda.stream(stream):
            step_both(ours, opt, theirs, torch_opts, step)
        stream.synchronize()
        assert_models_close(ours, theirs, torch.float32, f"step {step}")


@pytest.mark.cuda
def test_gpu_follows_a_move_to_the_device(gpu):
    """Trained on the CPU, moved with model.to('cuda'): the state follows the parameters."""
    ours, theirs = twins()
    opt = LazyAdam(groups(ours), lr=0.01)
    torch_opts = torch_optimizers(theirs)
    train_both(ours, opt, theirs, torch_opts, 2)
    ours.to(gpu)
    theirs.to(gpu)
    for o in torch_opts:
        o.load_state_dict(o.state_dict())  # torch's own move of its state
    train_both(ours, opt, theirs, torch_opts, 2, first=2)
    assert all(s["exp_avg"].is_cuda for s in opt.state.values())


def test_emulated_later_steps_confirm_the_first_checks_and_notice_changes(emulated, monkeypatch):
    """Steps after the first of an all-dense CUDA model take the memo of the first's checks (no
    full check); each change below is noticed: the step binds again and still matches
    torch.optim.Adam, or raises, naming the problem, and changes nothing."""
    torch.manual_seed(7)
    ours = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
    theirs = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
    theirs.load_state_dict(ours.state_dict())
    opt = LazyAdam(ours.parameters(), lr=0.01, weight_decay=0.02)
    reference = torch.optim.Adam(theirs.parameters(), lr=0.01, weight_decay=0.02)
    full_checks = []
    check = LazyAdam._check

    def counted(self, *args, **kwargs):
        full_checks.append(1)
        return check(self, *args, **kwargs)

    monkeypatch.setattr(LazyAdam, "_check", counted)
    step = iter(range(100))

    def step_both(edit=lambda model: None):
        k = next(step)
        for model in (ours, theirs):
            generator = torch.Generator().manual_seed(k)
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=generator)
            edit(model)
        opt.step()
        reference.step()
        assert_models_close(ours, theirs, torch.float32, f"step {k}")

    def refused(edit, error, match):
        for p in ours.parameters():
            p.grad = torch.ones_like(p)
        edit()
        before = snapshot(opt)
        with pytest.raises(error, match=match):
            opt.step()
        assert_unchanged(opt, before)

    for _ in range(3):
        step_both()
    assert len(full_checks) == 1

    def moved(model):  # new storage, as model.to() or param.data = ... give
        model[0].weight.data = model[0].weight.data.clone()

    step_both(moved)
    assert len(full_checks) == 2
    weight = ours[2].weight
    opt.state[weight]["exp_avg"] = opt.state[weight]["exp_avg"].clone()
    step_both()
    assert len(full_checks) == 3
    opt.state[weight]["exp_avg_sq"].data = opt.state[weight]["exp_avg_sq"].clone()  # new storage
    step_both()
    assert len(full_checks) == 4
    step_both(lambda model: setattr(model[0].weight, "grad", model[0].weight.grad.t()
                                    .contiguous().t()))  # strided: taken through a copy
    step_both(lambda model: setattr(model[2].bias, "grad", None))
    step_both()
    opt.param_groups[0]["lr"] = reference.param_groups[0]["lr"] = 0.003
    step_both()
    checks = len(full_checks)
    step_both()
    assert len(full_checks) == checks
    bias = ours[2].bias
    refused(lambda: bias.grad.resize_(1), ValueError, r"shape \(1,\)")
    step_both()
    refused(lambda: setattr(bias, "grad", opt.state[bias]["exp_avg"]), ValueError,
            "shares memory with the exp_avg")
    step_both()


def test_emulated_plans_let_go_of_storage_the_parameters_left(emulated):
    """After `param.data = ...` the parameter is bound again; the multi-tensor plan over its old
    binding is dropped once a step has gone by without it, with the old storage it held."""
    model = torch.nn.Linear(16, 8)
    opt = LazyAdam(model.parameters(), lr=0.1)
    for p in model.parameters():
        p.grad = torch.randn(p.shape)
    opt.step()
    address = model.weight.data_ptr()
    model.weight.data = model.weight.data.clone()
    opt.step()
    opt.step()
    bound = [b.arrays[0].data_ptr() for plan in opt._engine.launcher.plans.values()
             for b in plan.bindings]
    assert model.weight.data_ptr() in bound and address not in bound
