"""The family of lazy rules as `torch.optim.Optimizer`s (issue 17): `SGD` and `Adagrad` with
torch's arguments, defaults and state names (a saved torch state loads, and theirs into torch's),
`RowWiseAdagrad` with TorchRec's, `PartialRowWiseAdam` with Adam's, and `Lion`.

Each takes, besides its own keywords, the common ones of every `lazyadam.torch` optimizer
(keyword-only): `use_locking`, `state_dtype`, `rounding`, `seed`, `capturable` (as
`LazyAdam`'s), and torch's `foreach`, `fused` (accepted, saved) and `differentiable` (False).
A dense gradient updates every element; a sparse COO gradient only the rows in its indices, a
row's duplicates summed in input order (docs/semantics.md, "Other rules").
"""

from __future__ import annotations

from typing import Any, Iterable

from ..codegen.spec import SpecBase
from ..rules.adagrad import ADAGRAD
from ..rules.family import NONNEGATIVE
from ..rules.lion import LION
from ..rules.partial_rowwise_adam import PARTIAL_ROWWISE_ADAM
from ..rules.rowwise_adagrad import ROWWISE_ADAGRAD
from ..rules.sgd import SGD as SGD_RULE
from ..runtime import options as check
from .adam import adam_choices
from .groups import COMMON, read_betas, read_values
from .optimizer import RuleOptimizer


def _common(**given: Any) -> dict[str, Any]:
    return {**COMMON, **given}


class SGD(RuleOptimizer):
    """`torch.optim.SGD` over the "sgd" rule: the same arguments, defaults and numbers (dense).

        g = -g (maximize);  g = g + wd*w
        b = mu*b + (1-dampening)*g    (b = g on a row's first step)
        g = g + mu*b (nesterov), else g = b
        w = w - lr*g

    State: `momentum_buffer` with momentum > 0, made at the first step (none before it, and none
    without momentum, as torch's). Differences from torch's:
    - a sparse gradient is lazy: only its rows' buffers decay and move (torch keeps a sparse
      buffer that goes on moving every row it has seen);
    - with dampening > 0, a row's first step is kept per row, as `seen` (1.0 once the row was
      stepped), so that a row first touched by a later sparse gradient starts its buffer as
      dense SGD does; torch has no such key (it ignores it on a load, and a torch state with
      buffers loads here as every row seen);
    - with `rounding="stochastic"` the state keeps a `step` count, which draws the rounding's
      bits (torch's SGD keeps none).

    Raises:
        TypeError, ValueError: as `LazyAdam`'s; ValueError for a negative lr, momentum or
            weight_decay, dampening outside [0, 1], and, as torch, "Nesterov momentum requires a
            momentum and zero dampening".
    """

    RULE = SGD_RULE

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False, *,
                 maximize: bool = False, foreach: bool | None = None,
                 differentiable: bool = False, fused: bool | None = None,
                 use_locking: bool = False, state_dtype: str | None = None,
                 rounding: str = "nearest", seed: int = 0, capturable: bool = False):
        super().__init__(params, dict(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
            nesterov=nesterov, maximize=maximize, **_common(
                foreach=foreach, differentiable=differentiable, fused=fused,
                use_locking=use_locking, state_dtype=state_dtype, rounding=rounding, seed=seed,
                capturable=capturable)))

    def _values(self, group: dict[str, Any], where: str) -> dict[str, float]:
        return read_values(self.RULE, group, where, {"mu": group["momentum"]},
                           {"mu": "momentum"})

    def _choices(self, group: dict[str, Any], where: str, values: dict[str, float]) -> tuple:
        nesterov = check.flag(group["nesterov"], where, "nesterov")
        momentum = values["mu"] > 0.0
        if nesterov and (not momentum or values["dampening"] != 0.0):
            raise ValueError(f"{where}: Nesterov momentum requires a momentum and zero dampening")
        return (("momentum", momentum), ("dampening", momentum and values["dampening"] > 0.0),
                ("nesterov", nesterov),
                ("decay", "l2" if values["weight_decay"] > 0.0 else "none"),
                ("maximize", check.flag(group["maximize"], where, "maximize")))

    def _counted(self, spec: SpecBase) -> bool:
        return spec.rounding == "stochastic"


class Adagrad(RuleOptimizer):
    """`torch.optim.Adagrad` over the "adagrad" rule: the same arguments, defaults, state and
    numbers, dense and sparse (torch's sparse Adagrad is lazy too).

        g = -g (maximize);  g = g + wd*w;  clr = lr / (1 + (t-1)*lr_decay)
        sum = sum + g*g;  w = w - clr * g / (sqrt(sum) + eps)

    State: `sum` (starting at initial_accumulator_value) and `step`, made at construction as
    torch makes them, so that a saved torch Adagrad state loads here and ours into torch's. The
    `sum` of a bfloat16 or float16 parameter is float32 (or state_dtype), where torch keeps it in
    the parameter's dtype. Differences: eps must be > 0 (torch takes 0); L2 weight decay is
    taken with sparse gradients too, on their rows (torch refuses it).

    Raises:
        TypeError, ValueError: as `LazyAdam`'s; ValueError for a negative lr, lr_decay,
            weight_decay or initial_accumulator_value, eps <= 0.
    """

    RULE = ADAGRAD

    def __init__(self, params: Iterable[Any], lr: float = 1e-2, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 0.0,
                 eps: float = 1e-10, foreach: bool | None = None, *, maximize: bool = False,
                 differentiable: bool = False, fused: bool | None = None,
                 use_locking: bool = False, state_dtype: str | None = None,
                 rounding: str = "nearest", seed: int = 0, capturable: bool = False):
        super().__init__(params, dict(
            lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value, maximize=maximize, **_common(
                foreach=foreach, differentiable=differentiable, fused=fused,
                use_locking=use_locking, state_dtype=state_dtype, rounding=rounding, seed=seed,
                capturable=capturable)))
        self._make_state()

    def _values(self, group: dict[str, Any], where: str) -> dict[str, float]:
        check.number(group["initial_accumulator_value"], NONNEGATIVE, where,
                     "initial_accumulator_value")
        return read_values(self.RULE, group, where)

    def _choices(self, group: dict[str, Any], where: str, values: dict[str, float]) -> tuple:
        return (("decay", "l2" if values["weight_decay"] > 0.0 else "none"),
                ("maximize", check.flag(group["maximize"], where, "maximize")))

    def _inits(self, group: dict[str, Any], state: dict[str, Any]) -> dict[str, float] | None:
        return {"sum": float(group["initial_accumulator_value"])}


class RowWiseAdagrad(RuleOptimizer):
    """Rowwise Adagrad (TorchRec's `RowWiseAdagrad`, FBGEMM's `EXACT_ROWWISE_ADAGRAD`) over the
    "rowwise_adagrad" rule: one float32 accumulator per row (float64 for a float64 table), a
    D-th of the table.

        g = -g (maximize);  g = g + wd*w (L2)
        sum = sum + mean over the row of g*g
        w = w - lr * g / (sqrt(sum) + eps)       (decoupled: also - lr*wd*w)

    TorchRec's arguments and defaults (lr=1e-2, eps=1e-10, initial_accumulator_value, maximize),
    but no lr_decay; weight decay as `LazyAdam`'s (L2, or decoupled with
    decoupled_weight_decay=True). Unlike TorchRec's, sparse gradients are taken, lazily. State:
    `sum` of shape `(rows,)` and `step`, made at construction. Parameters need rank >= 1 (rows
    first): a scalar is refused.

    Raises:
        TypeError, ValueError: as `LazyAdam`'s; ValueError for a scalar parameter.
    """

    RULE = ROWWISE_ADAGRAD

    def __init__(self, params: Iterable[Any], lr: float = 1e-2, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10, *,
                 maximize: bool = False, decoupled_weight_decay: bool = False,
                 foreach: bool | None = None, differentiable: bool = False,
                 fused: bool | None = None, use_locking: bool = False,
                 state_dtype: str | None = None, rounding: str = "nearest", seed: int = 0,
                 capturable: bool = False):
        super().__init__(params, dict(
            lr=lr, eps=eps, weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value, maximize=maximize,
            decoupled_weight_decay=decoupled_weight_decay, **_common(
                foreach=foreach, differentiable=differentiable, fused=fused,
                use_locking=use_locking, state_dtype=state_dtype, rounding=rounding, seed=seed,
                capturable=capturable)))
        self._make_state()

    _values = Adagrad._values

    def _choices(self, group: dict[str, Any], where: str, values: dict[str, float]) -> tuple:
        decoupled = check.flag(group["decoupled_weight_decay"], where, "decoupled_weight_decay")
        decay = ("decoupled" if decoupled else "l2") if values["weight_decay"] > 0.0 else "none"
        return (("decay", decay), ("maximize", check.flag(group["maximize"], where, "maximize")))

    def _inits(self, group: dict[str, Any], state: dict[str, Any]) -> dict[str, float] | None:
        return {"acc": float(group["initial_accumulator_value"])}


class PartialRowWiseAdam(RuleOptimizer):
    """Partial-rowwise Adam (FBGEMM's `PARTIAL_ROWWISE_ADAM`) over the "partial_rowwise_adam"
    rule: `exp_avg` per element, `exp_avg_sq` (and amsgrad's `max_exp_avg_sq`) one per row, in
    float32 (float64 for a float64 table): state of (1 + 1/D) times the table, not Adam's 2.

        m = beta1*m + (1-beta1)*g;   v = beta2*v + (1-beta2) * mean over the row of g*g
        w = w - lr/(1-beta1^t) * m / (sqrt(v/(1-beta2^t)) + eps)      (eps_mode "pytorch")

    Adam's arguments and `LazyAdam`'s options (nesterov, amsgrad on the row's v, maximize,
    L2 or decoupled weight decay, eps_mode), with torch's Adam defaults. Parameters need rank
    >= 1 (rows first): a scalar is refused.

    Raises:
        TypeError, ValueError: as `LazyAdam`'s; ValueError for a scalar parameter.
    """

    RULE = PARTIAL_ROWWISE_ADAM

    def __init__(self, params: Iterable[Any], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, *, nesterov: bool = False, amsgrad: bool = False,
                 maximize: bool = False, decoupled_weight_decay: bool = False,
                 eps_mode: str = "pytorch", foreach: bool | None = None,
                 differentiable: bool = False, fused: bool | None = None,
                 use_locking: bool = False, state_dtype: str | None = None,
                 rounding: str = "nearest", seed: int = 0, capturable: bool = False):
        super().__init__(params, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, nesterov=nesterov,
            amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=decoupled_weight_decay,
            eps_mode=eps_mode, **_common(
                foreach=foreach, differentiable=differentiable, fused=fused,
                use_locking=use_locking, state_dtype=state_dtype, rounding=rounding, seed=seed,
                capturable=capturable)))

    def _values(self, group: dict[str, Any], where: str) -> dict[str, float]:
        return read_betas(self.RULE, group, where)

    def _choices(self, group: dict[str, Any], where: str, values: dict[str, float]) -> tuple:
        return adam_choices(group, where, values)


class Lion(RuleOptimizer):
    """Lion (its paper's algorithm; optax's `lion`) over the "lion" rule.

        c = beta1*m + (1-beta1)*g
        w = w - lr*(sign(c) + wd*w)       (decoupled weight decay, as the paper's)
        m = beta2*m + (1-beta2)*g

    sign(0) is 0: a zero direction takes no step. State: `exp_avg` and `step`. torch has no Lion;
    the arguments are those of the common PyTorch ports (lr=1e-4, betas=(0.9, 0.99),
    weight_decay=0.0).

    Raises:
        TypeError, ValueError: as `LazyAdam`'s.
    """

    RULE = LION

    def __init__(self, params: Iterable[Any], lr: float = 1e-4,
                 betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0, *,
                 maximize: bool = False, foreach: bool | None = None,
                 differentiable: bool = False, fused: bool | None = None,
                 use_locking: bool = False, state_dtype: str | None = None,
                 rounding: str = "nearest", seed: int = 0, capturable: bool = False):
        super().__init__(params, dict(
            lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize, **_common(
                foreach=foreach, differentiable=differentiable, fused=fused,
                use_locking=use_locking, state_dtype=state_dtype, rounding=rounding, seed=seed,
                capturable=capturable)))

    def _values(self, group: dict[str, Any], where: str) -> dict[str, float]:
        return read_betas(self.RULE, group, where)

    def _choices(self, group: dict[str, Any], where: str, values: dict[str, float]) -> tuple:
        return (("decay", "decoupled" if values["weight_decay"] > 0.0 else "none"),
                ("maximize", check.flag(group["maximize"], where, "maximize")))
