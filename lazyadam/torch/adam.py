"""`lazyadam.torch.LazyAdam`: Adam (and AdamW, SparseAdam) as a `torch.optim.Optimizer` over the
generated kernels of the "adam" rule.

    import lazyadam.torch
    opt = lazyadam.torch.LazyAdam(model.parameters(), lr=1e-3)
    loss.backward(); opt.step(); opt.zero_grad()
"""

from __future__ import annotations

from typing import Any, Iterable

from ..rules.adam import ADAM
from ..runtime import options as check
from .groups import COMMON, read_betas
from .optimizer import RuleOptimizer

#: Where eps goes: "pytorch" as `torch.optim.Adam`/`AdamW` (`sqrt(v_hat) + eps`), "mindspore" as
#: `torch.optim.SparseAdam` (`sqrt(v) + eps`, the bias correction folded into the step size).
EPS_MODES = ("pytorch", "mindspore")


class LazyAdam(RuleOptimizer):
    """Adam that updates only the rows a sparse gradient touches, as a `torch.optim.Optimizer`.

    For a parameter `w` with gradient `g` at its step `t` (counted per parameter, as
    `torch.optim.Adam` counts it: steps in which it had a gradient), with this step's options of
    its group:

        g = -g (maximize);  g = g + wd*w (weight decay, unless decoupled)
        m = beta1*m + (1-beta1)*g
        v = beta2*v + (1-beta2)*g*g          (amsgrad: vmax = max(vmax, v), used below for v)
        w = w * (1 - lr*wd)                  (decoupled_weight_decay, AdamW)
        pytorch:    w = w - lr/(1-beta1^t) * m / (sqrt(v)/sqrt(1-beta2^t) + eps)
        mindspore:  w = w - lr*sqrt(1-beta2^t)/(1-beta1^t) * m / (sqrt(v) + eps)

    (nesterov: `beta1*m + (1-beta1)*g` in place of `m`). A dense gradient updates every element;
    a sparse COO gradient only the rows in its indices, each row's duplicate occurrences summed
    (with L2 weight decay, a row looked up k times is decayed k times, as in MindSpore).

    Every option can be set per parameter group, and may change between steps (schedulers change
    `lr`; `OneCycleLR` changes `betas`). State, per parameter, in torch's names: `step` (a 0-d
    float tensor, as `torch.optim.Adam` keeps it), `exp_avg`, `exp_avg_sq` and, with amsgrad,
    `max_exp_avg_sq`; `state_dict()` holds only tensors, numbers, strings and bools, so
    `torch.load(..., weights_only=True)` reads it.

    `step()` runs eagerly under `torch.compile` (it is marked `torch.compiler.disable`): a compiled
    model trains with it, and a compiled function that calls `step()` breaks its graph there.

    Args:
        params: an iterable of tensors, of `(name, tensor)` pairs, or of param-group dicts.
        lr: learning rate, >= 0.
        betas: `(beta1, beta2)`, each in [0, 1).
        eps: > 0; where it goes is `eps_mode`'s.
        weight_decay: >= 0; L2 (added to the gradient), or AdamW's with `decoupled_weight_decay`.
        nesterov: Nesterov momentum (MindSpore's form, above).
        amsgrad: divide by `sqrt(max(v))` over the steps.
        maximize: ascend instead of descend.
        decoupled_weight_decay: AdamW's decay `w *= 1 - lr*wd` in place of L2.
        eps_mode: "pytorch" (default: `torch.optim.Adam`'s and `AdamW`'s results, for sparse and
            dense gradients alike) or "mindspore" (`torch.optim.SparseAdam`'s); set it per group
            to reproduce SparseAdam on the embedding tables and Adam on the rest.
        use_locking: kernels take a lock per row (per 4096-element chunk, dense), and one lock
            is held over a whole step, so that threads stepping this optimizer at once give what
            the same steps one after another give.
        state_dtype: the dtype of the state of bfloat16 and float16 parameters: None or "float32"
            (the default), or "bfloat16"; float32 and float64 parameters keep their own dtype.
        rounding: how every write to a bfloat16 or float16 tensor rounds: "nearest" (even) or
            "stochastic" (unbiased; docs/semantics.md "Half precision").
        seed: the seed of stochastic rounding, an int in [0, 2**64), saved with the group's
            options; parameter number i (in the order of the groups) rounds with
            `seed + i * 0x9E3779B97F4A7C15` (mod 2**64) at its step t.
        capturable: steps that can be captured in a CUDA graph (every group alike; CUDA tensors
            only): they read their hyperparameters from device memory and never wait (sparse
            indices are checked on the device: see `check_indices`). A step made while
            `torch.cuda.graph` captures records its launches; call `prepare_replay()` before each
            `graph.replay()`. Capture after one eager step, which makes the state.

        foreach, fused: torch's keywords, accepted (None or a bool) and saved with the group;
            the kernels are fused and take many tensors either way.
        differentiable: torch's keyword; True is refused (the kernels update in place, outside
            autograd).

    Half precision: bfloat16 and float16 parameters (CPU or CUDA) are updated in place, each step
    computed in float32; their gradients come in their own dtype or in float32.

    A parameter that is not contiguous (a transposed or sliced view) or is a negative view
    (`torch._neg_view`) steps as torch's Adam steps it, through a contiguous working copy: each
    step copies it in and writes it back (two copies of the parameter a step, and the memory of
    one). A parameter may be listed once: torch warns and steps a repeated one twice; here it is
    refused.

    Raises:
        TypeError: an option of the wrong type; a parameter that is not a float32, float64,
            bfloat16 or float16 tensor.
        ValueError: an option out of range; a complex, sparse or ZeroTensor parameter; a parameter
            listed twice; as `torch.optim.Optimizer` for params.
    """

    RULE = ADAM

    def __init__(self, params: Iterable[Any], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, *, nesterov: bool = False, amsgrad: bool = False,
                 maximize: bool = False, decoupled_weight_decay: bool = False,
                 eps_mode: str = "pytorch", use_locking: bool = False,
                 state_dtype: str | None = None, rounding: str = "nearest", seed: int = 0,
                 capturable: bool = False, foreach: bool | None = None,
                 fused: bool | None = None, differentiable: bool = False):
        super().__init__(params, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, nesterov=nesterov,
            amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=decoupled_weight_decay,
            eps_mode=eps_mode, **{**COMMON, **dict(
                use_locking=use_locking, state_dtype=state_dtype, rounding=rounding, seed=seed,
                capturable=capturable, foreach=foreach, fused=fused,
                differentiable=differentiable)}))

    def _values(self, group: dict[str, Any], where: str) -> dict[str, float]:
        return read_betas(self.RULE, group, where)

    def _choices(self, group: dict[str, Any], where: str, values: dict[str, float]) -> tuple:
        return adam_choices(group, where, values)


def adam_choices(group: dict[str, Any], where: str, values: dict[str, float]) -> tuple:
    """The options of Adam's rules from torch's keywords: decay from weight_decay > 0 and
    decoupled_weight_decay; nesterov, amsgrad, maximize; eps_mode.

    Raises:
        TypeError: a flag that is not a bool. ValueError: an unknown eps_mode.
    """
    flags = {name: check.flag(group[name], where, name)
             for name in ("nesterov", "amsgrad", "maximize", "decoupled_weight_decay")}
    decoupled = flags.pop("decoupled_weight_decay")
    decay = ("decoupled" if decoupled else "l2") if values["weight_decay"] > 0.0 else "none"
    return (("nesterov", flags["nesterov"]), ("decay", decay), ("amsgrad", flags["amsgrad"]),
            ("maximize", flags["maximize"]),
            ("eps_mode", check.choice(group["eps_mode"], EPS_MODES, where, "eps_mode")))
