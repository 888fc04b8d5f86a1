"""`lazyadam.torch.LazyAdam` against torch.optim, step by step, on CPU.

The independent checks are PyTorch's own optimizers: `Adam` and `AdamW` for dense gradients
(eps_mode="pytorch"), `SparseAdam` for sparse ones (eps_mode="mindspore": torch 2.13's SparseAdam
adds eps to sqrt(v)), and Adam on the dense form of a sparse gradient that touches every row. What
torch has no optimizer for (Nesterov, L2 decay of sparse rows) is checked against the numpy
reference (tests/reference.py). Twin models start from the same weights and see the same batches.
"""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest

from lazyadam.interop.arrays import to_host
from reference import lazyadam_step
from runtime_reference import simulate
from tolerance import assert_close
from unchanged import assert_unchanged, snapshot

torch = pytest.importorskip("torch", reason="lazyadam.torch needs torch")
import lazyadam.torch  # noqa: E402  (after the skip: it imports torch)
from lazyadam.torch import LazyAdam  # noqa: E402

nn = torch.nn
DTYPES = [torch.float32, torch.float64]


# -- a small recommender and its batches ---------------------------------------------------------


class Recommender(nn.Module):
    """Two sparse tables (an nn.Embedding and an nn.EmbeddingBag) and an MLP."""

    def __init__(self, dtype=torch.float32, users=30, items=20):
        super().__init__()
        torch.manual_seed(3)
        self.users = nn.Embedding(users, 4, sparse=True)
        self.items = nn.EmbeddingBag(items, 4, mode="sum", sparse=True)
        self.mlp = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 1))
        self.to(dtype)

    def tables(self):
        return [self.users.weight, self.items.weight]

    def dense(self):
        return list(self.mlp.parameters())

    def loss(self, step: int, batch: int = 24) -> torch.Tensor:
        """Mean squared error on batch `step`: users repeat, bags of 3 items."""
        generator = torch.Generator().manual_seed(step)
        users = torch.randint(0, self.users.num_embeddings, (batch,), generator=generator)
        items = torch.randint(0, self.items.num_embeddings, (batch, 3), generator=generator)
        target = torch.randn(batch, generator=generator)
        weight = self.users.weight
        users, items, target = (users.to(weight.device), items.to(weight.device),
                                target.to(weight.device, weight.dtype))
        features = torch.cat([self.users(users), self.items(items)], dim=1)
        return ((self.mlp(features).squeeze(1) - target) ** 2).mean()


def backward(model: Recommender, step: int) -> torch.Tensor:
    loss = model.loss(step)
    loss.backward()
    return loss


def step_both(ours, opt, theirs, torch_opts, step, edit=None):
    """One step of our model and optimizer and of torch's on batch `step`; `edit(model)` may
    change the gradients before the step."""
    for model, opts in ((ours, [opt]), (theirs, torch_opts)):
        for o in opts:
            o.zero_grad()
        backward(model, step)
        if edit is not None:
            edit(model)
        for o in opts:
            o.step()


def train_both(ours, opt, theirs, torch_opts, steps, *, dtype=torch.float32, first=0, edit=None):
    """Steps both models on the same batches, comparing parameters and state after each step."""
    for step in range(first, first + steps):
        step_both(ours, opt, theirs, torch_opts, step, edit and (lambda model: edit(model, step)))
        assert_models_close(ours, theirs, dtype, f"step {step}")
        assert_state_close(opt, torch_opts, ours, theirs, dtype)


def assert_models_close(ours, theirs, dtype, what=""):
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        assert_close(a.detach().cpu().numpy(), b.detach().cpu().double().numpy(),
                     str(dtype).removeprefix("torch."), f"{what}: {name}")


def assert_state_close(opt, torch_opts, ours, theirs, dtype):
    """Torch's names and values: `step` as torch counts it, the moments (and their max)."""
    torch_state = {}
    for o in torch_opts:
        torch_state.update(o.state)
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        mine, reference = opt.state.get(a, {}), torch_state.get(b, {})
        assert set(mine) == set(reference), name
        for key, value in reference.items():
            if key == "step":
                assert float(mine[key]) == float(value), f"{name} step"
            else:
                assert_close(mine[key].cpu().numpy(), value.to_dense().cpu().double().numpy(),
                             str(dtype).removeprefix("torch."), f"{name} {key}")


def twins(dtype=torch.float32, **sizes):
    return Recommender(dtype, **sizes), Recommender(dtype, **sizes)


# -- against torch.optim -------------------------------------------------------------------------

DENSE_CASES = {
    "adam": (torch.optim.Adam, {}),
    "amsgrad": (torch.optim.Adam, dict(amsgrad=True)),
    "maximize": (torch.optim.Adam, dict(maximize=True, weight_decay=0.05)),
    "l2": (torch.optim.Adam, dict(weight_decay=0.1)),
    "adamw": (torch.optim.AdamW, dict(weight_decay=0.1)),
    "adamw-amsgrad": (torch.optim.AdamW, dict(weight_decay=0.1, amsgrad=True)),
    "locking": (torch.optim.Adam, dict(use_locking=True)),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", DENSE_CASES)
def test_dense_parameters_match_adam_and_adamw(case, dtype):
    cls, options = DENSE_CASES[case]
    ours, theirs = twins(dtype)
    opt = LazyAdam(ours.dense(), lr=0.01, decoupled_weight_decay=cls is torch.optim.AdamW,
                   **options)
    torch_options = {k: v for k, v in options.items() if k != "use_locking"}
    train_both(ours, opt, theirs, [cls(theirs.dense(), lr=0.01, **torch_options)], 5,
               dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("maximize", [False, True], ids=["min", "max"])
def test_sparse_tables_match_sparse_adam(dtype, maximize):
    """Uncoalesced gradients with duplicate rows, untouched rows left alone, as SparseAdam."""
    ours, theirs = twins(dtype)
    opt = LazyAdam(ours.tables(), lr=0.02, eps_mode="mindspore", maximize=maximize)
    sparse_adam = torch.optim.SparseAdam(theirs.tables(), lr=0.02, maximize=maximize)
    backward(ours, 0)
    grad = ours.users.weight.grad
    assert grad.is_sparse and not grad.is_coalesced()
    assert len(set(grad._indices()[0].tolist())) < grad._nnz()  # duplicates
    ours.zero_grad()
    train_both(ours, opt, theirs, [sparse_adam], 5, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sparse_rows_in_pytorch_mode_match_adam_when_every_row_is_touched(dtype):
    """Adam on the dense form of the same gradient: the lazy kernel sums duplicates and places
    eps as Adam does."""
    table = nn.Parameter(torch.randn(5, 3, dtype=dtype))
    dense = nn.Parameter(table.detach().clone())
    opt = LazyAdam([table], lr=0.05)
    adam = torch.optim.Adam([dense], lr=0.05)
    generator = torch.Generator().manual_seed(0)
    for step in range(5):
        indices = torch.cat([torch.randperm(5, generator=generator),
                             torch.randint(0, 5, (4,), generator=generator)])
        values = torch.randn(9, 3, generator=generator, dtype=dtype)
        table.grad = torch.sparse_coo_tensor(indices[None], values, (5, 3),
                                             check_invariants=True)
        dense.grad = table.grad.to_dense()
        opt.step()
        adam.step()
        assert_close(table.detach().numpy(), dense.detach().double().numpy(),
                     str(dtype).removeprefix("torch."), f"step {step}")


def test_mixed_groups_match_torch_and_count_steps_per_parameter():
    """Tables as SparseAdam; one dense layer as Adam with L2 and amsgrad, the other as AdamW at
    another lr. A parameter without a gradient is skipped and its `step` does not count."""
    ours, theirs = twins()
    opt = LazyAdam([{"params": ours.tables(), "eps_mode": "mindspore", "lr": 0.03},
                    {"params": list(ours.mlp[0].parameters()), "weight_decay": 0.05,
                     "amsgrad": True},
                    {"params": list(ours.mlp[2].parameters()), "lr": 0.002, "weight_decay": 0.1,
                     "decoupled_weight_decay": True}], lr=0.01)
    torch_opts = [torch.optim.SparseAdam(theirs.tables(), lr=0.03),
                  torch.optim.Adam(theirs.mlp[0].parameters(), lr=0.01, weight_decay=0.05,
                                   amsgrad=True),
                  torch.optim.AdamW(theirs.mlp[2].parameters(), lr=0.002, weight_decay=0.1)]

    def skip(model, step):
        if step in (1, 2):
            model.mlp[2].bias.grad = None
        if step == 3:
            model.users.weight.grad = None

    train_both(ours, opt, theirs, torch_opts, 6, edit=skip)
    assert [float(opt.state[p]["step"]) for p in ours.parameters()] == [5, 6, 6, 6, 6, 4]


def per_parameter_reference(params, grads_per_step, **options):
    """The numpy reference stepping each parameter with its own count t (beta^t per parameter)."""
    state = [[p.astype(np.float64), np.zeros(p.shape), np.zeros(p.shape)] for p in params]
    counts = [0] * len(params)
    for grads in grads_per_step:
        for i, grad in enumerate(grads):
            if grad is None:
                continue
            counts[i] += 1
            t = counts[i]
            indices, values = grad if isinstance(grad, tuple) else (None, grad)
            state[i][:3] = lazyadam_step(*state[i], values, indices=indices, lr=0.01, beta1=0.9,
                                         beta2=0.999, eps=1e-8, beta1_power=0.9 ** t,
                                         beta2_power=0.999 ** t, **options)[:3]
    return [s[0] for s in state]


@pytest.mark.parametrize("options", [dict(nesterov=True), dict(weight_decay=0.1),
                                     dict(weight_decay=0.1, nesterov=True, eps_mode="mindspore")],
                         ids=["nesterov", "l2", "nesterov-l2-mindspore"])
def test_what_torch_lacks_matches_the_reference(options, rng):
    """Nesterov, and L2 decay of sparse rows: each occurrence of a row adds wd*w (so a row looked
    up twice is decayed twice), as docs/semantics.md says."""
    table0 = rng.standard_normal((6, 3))
    dense0 = rng.standard_normal((2, 3))
    table, dense = (nn.Parameter(torch.tensor(a)) for a in (table0, dense0))
    opt = LazyAdam([table, dense], lr=0.01, **options)
    steps = []
    for step in range(4):
        indices = np.array([4, 1, 4, 0])
        values = rng.standard_normal((4, 3))
        dense_grad = rng.standard_normal((2, 3)) if step != 2 else None
        table.grad = torch.sparse_coo_tensor(torch.tensor(indices)[None], torch.tensor(values),
                                             (6, 3), check_invariants=True)
        dense.grad = None if dense_grad is None else torch.tensor(dense_grad)
        opt.step()
        steps.append([(indices, values), dense_grad])
    wd = options.get("weight_decay", 0.0)
    expected = per_parameter_reference(
        [table0, dense0], steps, nesterov=options.get("nesterov", False),
        eps_mode=options.get("eps_mode", "pytorch"), weight_decay=wd,
        decay="l2" if wd else "none")
    for ours, theirs in zip((table, dense), expected):
        assert_close(ours.detach().numpy(), theirs, "float64")
    np.testing.assert_array_equal(table.detach().numpy()[[2, 3, 5]], table0[[2, 3, 5]])


# -- schedulers, GradScaler, closures, groups added later ----------------------------------------

SCHEDULERS = {
    "StepLR": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
    "LambdaLR": lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda k: 1.0 / (1 + k)),
    "OneCycleLR": lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=8),
    "CosineAnnealingLR": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=4),
}


@pytest.mark.parametrize("name", SCHEDULERS)
def test_lr_schedulers_drive_it_as_they_drive_adam(name):
    """OneCycleLR also cycles beta1 (`betas[0]`), which each step reads."""
    ours, theirs = twins()
    opt = LazyAdam(ours.dense(), lr=0.02)
    adam = torch.optim.Adam(theirs.dense(), lr=0.02)
    schedules = [SCHEDULERS[name](opt), SCHEDULERS[name](adam)]
    rates = set()
    for step in range(8):
        for model, o, schedule in ((ours, opt, schedules[0]), (theirs, adam, schedules[1])):
            o.zero_grad()
            backward(model, step)
            o.step()
            schedule.step()
        assert opt.param_groups[0]["lr"] == adam.param_groups[0]["lr"]
        assert opt.param_groups[0]["betas"] == adam.param_groups[0]["betas"]
        rates.add(opt.param_groups[0]["lr"])
        assert_models_close(ours, theirs, torch.float32, f"{name} step {step}")
    assert len(rates) > 2


def test_grad_scaler_skips_inf_steps_and_otherwise_matches_torch():
    ours, theirs = twins()
    opt = LazyAdam([{"params": ours.tables(), "eps_mode": "mindspore"},
                    {"params": ours.dense()}], lr=0.01)
    torch_opts = [torch.optim.SparseAdam(theirs.tables(), lr=0.01),
                  torch.optim.Adam(theirs.dense(), lr=0.01)]
    scalers = [torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=100)
               for _ in range(2)]
    for step in range(5):
        for model, opts, scaler in ((ours, [opt], scalers[0]), (theirs, torch_opts, scalers[1])):
            for o in opts:
                o.zero_grad()
            scaler.scale(model.loss(step)).backward()
            if step == 2:  # in both of torch's optimizers, for they skip one by one
                model.items.weight.grad._values()[0, 0] = float("inf")
                model.mlp[0].bias.grad[1] = float("nan")
            if model is ours and step == 2:
                before = snapshot(opt)
            for o in opts:
                scaler.step(o)
            scaler.update()
            if model is ours and step == 2:
                assert_unchanged(opt, before)
        assert scalers[0].get_scale() == scalers[1].get_scale()
        assert_models_close(ours, theirs, torch.float32, f"step {step}")
        assert_state_close(opt, torch_opts, ours, theirs, torch.float32)
    assert scalers[0].get_scale() == 512.0


def test_step_with_closure_and_zero_grad():
    ours, theirs = twins()
    opt = LazyAdam(ours.dense(), lr=0.01)
    adam = torch.optim.Adam(theirs.dense(), lr=0.01)
    for step in range(3):
        losses = []
        for model, o in ((ours, opt), (theirs, adam)):
            def closure(model=model, o=o):
                o.zero_grad()
                return backward(model, step)
            losses.append(o.step(closure))
        assert losses[0].item() == losses[1].item()
        assert_models_close(ours, theirs, torch.float32)
    opt.zero_grad()
    assert all(p.grad is None for p in ours.dense())
    backward(ours, 0)
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in ours.dense())


def test_add_param_group_later_counts_its_own_steps():
    ours, theirs = twins()
    opt = LazyAdam(ours.dense(), lr=0.01)
    adam = torch.optim.Adam(theirs.dense(), lr=0.01)
    sparse_adam = None
    for step in range(5):
        if step == 2:
            opt.add_param_group({"params": ours.tables(), "eps_mode": "mindspore", "lr": 0.03})
            sparse_adam = torch.optim.SparseAdam(theirs.tables(), lr=0.03)
        for model, opts in ((ours, [opt]), (theirs, [adam] + ([sparse_adam] if sparse_adam
                                                                else []))):
            model.zero_grad()
            backward(model, step)
            if step < 2:
                for p in model.tables():
                    p.grad = None
            for o in opts:
                o.step()
        assert_models_close(ours, theirs, torch.float32, f"step {step}")
    assert float(opt.state[ours.users.weight]["step"]) == 3


def test_optimizer_hooks_run():
    model = Recommender()
    opt = LazyAdam(model.parameters())
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    opt.register_state_dict_post_hook(lambda o, sd: calls.append("state_dict"))
    opt.register_load_state_dict_pre_hook(lambda o, sd: calls.append("load"))
    backward(model, 0)
    opt.step()
    opt.load_state_dict(opt.state_dict())
    assert calls == ["pre", "post", "state_dict", "load"]


# -- state: torch's conventions, save and load ---------------------------------------------------


@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
def test_state_dict_round_trip_resumes_bitwise(amsgrad, tmp_path):
    def make():
        model = Recommender()
        return model, LazyAdam([{"params": model.tables(), "eps_mode": "mindspore"},
                                {"params": model.dense(), "weight_decay": 0.01}], lr=0.02,
                               amsgrad=amsgrad)

    straight, straight_opt = make()
    first, first_opt = make()
    for step in range(6):
        for model, o in ((straight, straight_opt),) + (((first, first_opt),) if step < 3 else ()):
            o.zero_grad()
            backward(model, step)
            o.step()
    torch.save({"model": first.state_dict(), "opt": first_opt.state_dict()}, tmp_path / "ckpt.pt")
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    state = saved["opt"]["state"]
    assert set(state) == set(range(6))
    assert set(state[0]) == {"step", "exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if amsgrad
                                                                  else set())
    assert state[0]["step"].dtype == torch.float32 and float(state[0]["step"]) == 3
    assert saved["opt"]["param_groups"][0]["eps_mode"] == "mindspore"

    resumed, resumed_opt = make()
    resumed.load_state_dict(saved["model"])
    resumed_opt.load_state_dict(saved["opt"])
    for step in range(3, 6):
        resumed_opt.zero_grad()
        backward(resumed, step)
        resumed_opt.step()
    for a, b in zip(resumed.parameters(), straight.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(resumed.parameters(), straight.parameters()):
        for key, value in straight_opt.state[b].items():
            assert torch.equal(resumed_opt.state[a][key], value), key


def test_a_saved_adam_state_resumes_here():
    """torch.optim.Adam's state has the same names and meaning: training moves over."""
    ours, theirs = twins()
    adam = torch.optim.Adam(theirs.dense(), lr=0.01)
    for step in range(2):
        adam.zero_grad()
        backward(theirs, step)
        adam.step()
    ours.load_state_dict(theirs.state_dict())
    opt = LazyAdam(ours.dense(), lr=0.01)
    buffer = io.BytesIO()
    torch.save(adam.state_dict(), buffer)
    buffer.seek(0)
    opt.load_state_dict(torch.load(buffer, weights_only=True))
    assert opt.param_groups[0]["eps_mode"] == "pytorch"  # a key Adam does not save
    train_both(ours, opt, theirs, [adam], 3, first=2)


def test_parameters_and_moments_are_updated_in_place_without_copies():
    model = Recommender()
    opt = LazyAdam(model.parameters(), lr=0.1)
    pointers = [p.data_ptr() for p in model.parameters()]
    backward(model, 0)
    grad = model.users.weight.grad
    row = lazyadam.torch.tensors.gradient(grad, "users")
    assert np.shares_memory(row.indices, grad._indices().numpy())
    assert np.shares_memory(row.values, grad._values().numpy())
    before = model.users.weight.detach().clone()
    opt.step()
    moments = {k: v for k, v in opt.state[model.users.weight].items()}
    backward(model, 1)
    opt.step()
    assert [p.data_ptr() for p in model.parameters()] == pointers
    assert all(opt.state[model.users.weight][k] is v for k, v in moments.items())
    assert not torch.equal(model.users.weight, before)


def test_a_dtype_change_is_followed():
    """After model.to(float64), steps update the new float64 tensors, with the moments
    converted as torch's load_state_dict converts them."""
    ours, theirs = twins()
    opt = LazyAdam(ours.dense(), lr=0.01)
    adam = torch.optim.Adam(theirs.dense(), lr=0.01)
    train_both(ours, opt, theirs, [adam], 2)
    ours.to(torch.float64)
    theirs.to(torch.float64)
    adam.load_state_dict(adam.state_dict())  # torch's own cast of the moments
    before = [p.detach().clone() for p in ours.dense()]
    train_both(ours, opt, theirs, [adam], 2, first=2)  # float32 noise from the first steps
    ours.float()
    opt.zero_grad()
    opt.step()  # no gradients: bindings to the float64 memory are let go
    assert not opt._bindings
    assert all(not torch.equal(p, b) for p, b in zip(ours.dense(), before))
    assert all(opt.state[p]["exp_avg"].dtype == torch.float64 for p in ours.dense())


# -- bad options (bad input at a step, changing nothing: tests/test_bad_input.py) ---------------


@pytest.mark.parametrize("options, error, match", [
    (dict(lr=-1.0), ValueError, "lr must be finite and >= 0, got -1.0"),
    (dict(lr="0.1"), TypeError, "lr must be a real number, got str"),
    (dict(betas=(0.9,)), TypeError, "betas must be a pair"),
    (dict(betas=(0.9, 1.0)), ValueError, r"beta2 must lie in \[0, 1\)"),
    (dict(eps=0.0), ValueError, "eps must be finite and > 0"),
    (dict(weight_decay=float("nan")), ValueError, "weight_decay must be finite"),
    (dict(nesterov=1), TypeError, "nesterov must be a bool, got int"),
    (dict(eps_mode="MindSpore"), ValueError, "eps_mode must be one of"),
])
def test_bad_options_are_refused(options, error, match):
    model = Recommender()
    with pytest.raises(error, match=match):
        LazyAdam(model.parameters(), **options)
    opt = LazyAdam(model.dense())
    with pytest.raises(error, match=match):
        opt.add_param_group({"params": model.tables(), **options})
    assert len(opt.param_groups) == 1


def test_parameters_of_other_dtypes_are_refused_when_added():
    with pytest.raises(ValueError, match="'param group 0 param 0' has dtype torch.complex64"):
        LazyAdam([nn.Parameter(torch.ones(2, dtype=torch.complex64))])
    named = [("w", nn.Parameter(torch.ones(2, dtype=torch.int32), requires_grad=False))]
    with pytest.raises(TypeError, match="'w' has dtype torch.int32"):
        LazyAdam(named)
    with pytest.raises(ValueError, match="rounding must be one of nearest, stochastic"):
        LazyAdam([nn.Parameter(torch.ones(2))], rounding="down")
    with pytest.raises(ValueError, match=r"seed must lie in \[0, 2\*\*64\)"):
        LazyAdam([nn.Parameter(torch.ones(2))], seed=-1)


@pytest.mark.parametrize("dtype, state_dtype, rounding", [
    ("bfloat16", None, "nearest"), ("bfloat16", "bfloat16", "stochastic"),
    ("float16", None, "stochastic")])
def test_half_precision_parameters_match_the_reference(dtype, state_dtype, rounding):
    """bfloat16 and float16 tensors (an embedding table with sparse gradients, a dense matrix),
    updated in place, state in its dtype, against the reference that rounds what it stores."""
    torch_dtype = getattr(torch, dtype)
    rng = np.random.default_rng(4)
    table = nn.Parameter(torch.from_numpy(rng.standard_normal((20, 4))).to(torch_dtype))
    dense = nn.Parameter(torch.from_numpy(rng.standard_normal((3, 4))).to(torch_dtype))
    initial = [p.detach().double().numpy() for p in (table, dense)]
    opt = LazyAdam([table, dense], lr=0.01, state_dtype=state_dtype, rounding=rounding, seed=11)
    steps = []
    for _ in range(3):
        rows = rng.integers(0, 20, 6)
        values = torch.from_numpy(rng.standard_normal((6, 4))).to(torch_dtype)
        grad = torch.from_numpy(rng.standard_normal((3, 4))).to(torch_dtype)
        table.grad = torch.sparse_coo_tensor(torch.from_numpy(rows)[None], values, (20, 4),
                                             check_invariants=True)
        dense.grad = grad
        opt.step()
        steps.append([(rows, values.double().numpy()), grad.double().numpy()])
    state = state_dtype or "float32"
    assert opt.state[table]["exp_avg"].dtype == getattr(torch, state)
    expected = simulate(initial, steps, lr_at=lambda k, i: 0.01, beta1=0.9, beta2=0.999,
                        eps=1e-8, eps_mode="pytorch", seed=11, dtype=dtype,
                        state_dtype=state_dtype, rounding=rounding)
    for i, param in enumerate((table, dense)):
        arrays = {"param": (param, dtype), "exp_avg": (opt.state[param]["exp_avg"], state),
                  "exp_avg_sq": (opt.state[param]["exp_avg_sq"], state)}
        for k, (name, (tensor, storage)) in enumerate(arrays.items()):
            assert_close(to_host(tensor), expected[k][i], storage, f"{name} of parameter {i}")


def test_lr_as_a_tensor_and_named_parameters():
    model = Recommender()
    opt = LazyAdam(model.named_parameters(), lr=torch.tensor(0.01))
    assert opt.param_groups[0]["param_names"][0] == "users.weight"
    backward(model, 0)
    opt.step()
    model.mlp[2].weight.grad_dtype = None
    model.mlp[2].weight.grad = model.mlp[2].weight.grad.double()
    with pytest.raises(TypeError, match=r"\(parameter 'mlp.2.weight'\) has dtype float64"):
        opt.step()


def test_deepcopy_gives_an_optimizer_of_its_own():
    model = Recommender()
    opt = LazyAdam(model.dense(), lr=0.01)
    backward(model, 0)
    opt.step()
    twin = copy.deepcopy(opt)
    copies = twin.param_groups[0]["params"]
    assert all(p is not q for p, q in zip(copies, model.dense()))
    for p in copies:
        p.grad = torch.ones_like(p)
    before = [p.detach().clone() for p in model.dense()]
    twin.step()
    assert [float(twin.state[p]["step"]) for p in copies] == [2.0] * 4
    assert [float(opt.state[p]["step"]) for p in model.dense()] == [1.0] * 4
    assert all(torch.equal(p, b) for p, b in zip(model.dense(), before))
    assert all(not torch.equal(p, b) for p, b in zip(copies, before))


# -- torch.compile ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_compiled_model_trains_and_a_compiled_step_falls_back():
    """The compiled model's sparse gradients reach the kernels as eager ones do; `step` is marked
    torch.compiler.disable, so compiling it, or a function calling it, runs it eagerly."""
    ours, eager = twins()
    compiled = torch.compile(ours)
    opt = LazyAdam([{"params": ours.tables(), "eps_mode": "mindspore"},
                    {"params": ours.dense()}], lr=0.01)
    eager_opt = LazyAdam([{"params": eager.tables(), "eps_mode": "mindspore"},
                          {"params": eager.dense()}], lr=0.01)
    for step in range(3):
        for model, o in ((compiled, opt), (eager, eager_opt)):
            o.zero_grad()
            model.loss(step).backward()
            o.step()
        assert_models_close(ours, eager, torch.float32, f"step {step}")
    for step in range(3, 5):
        eager_opt.zero_grad()
        backward(eager, step)
        eager_opt.step()
    compiled_step = torch.compile(opt.step)
    opt.zero_grad()
    backward(ours, 3)
    compiled_step()

    @torch.compile
    def train_step(step):
        opt.zero_grad()
        loss = ours.loss(step)
        loss.backward()
        opt.step()
        return loss

    train_step(4)
    assert_models_close(ours, eager, torch.float32, "compiled steps")
    assert float(opt.state[ours.users.weight]["step"]) == 5
