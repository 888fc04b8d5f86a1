"""`LazyAdam`: MindSpore's `nn.LazyAdam` API over the kernels of the rule `adam`
(docs/semantics.md), a thin subclass of the MindSpore-style `Optimizer`: its arguments and their
MindSpore checks, its properties, its repr."""

from __future__ import annotations

import math
from typing import Any

from ..codegen.spec import ROUNDINGS, STATE_DTYPES
from ..rules.adam import ADAM
from .optimizer import Optimizer
from .parameter import Parameter
from .rates import check_loss_scale, is_float


class LazyAdam(Optimizer):
    """Adam that updates only the rows a sparse gradient touches (MindSpore's `nn.LazyAdam`).

    Each call `optimizer(gradients)` takes one gradient per parameter, in parameter order: an array
    of the parameter's shape and dtype (dense update) or a `RowTensor` (lazy sparse update: rows
    not in `indices` keep their value and moments). It returns True. With step `k` counted from 0,
    learning rate `lr = lr_at(k)`, `beta^t` the running products after this step's multiply:

        g   = g/loss_scale + wd*w              (sparse: per occurrence, duplicates then summed)
        lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t)
        m   = beta1*m + (1-beta1)*g
        v   = beta2*v + (1-beta2)*g*g
        w   = w - lr_t * m / (sqrt(v) + eps)  (nesterov: beta1*m + (1-beta1)*g in the numerator)

    Every gradient is checked before anything is written: a call that raises leaves parameters,
    moments, beta powers and the step exactly as they were.

    Gradient centralization (a group's `grad_centralization`) subtracts from each dense gradient
    of rank >= 2 its mean over every axis but the first, on a copy, before the kernel adds the
    `wd*w` term. (MindSpore's `Optimizer` centralizes after adding the decay term: where a
    parameter is both decayed and centralized, the two differ by the mean of `wd*w`.)

    Devices: a parameter whose array lives on a CUDA device (`__cuda_array_interface__`: PyTorch,
    CuPy, pycuda) is updated by the CUDA target's kernels, and its moments are allocated on the same
    device by the array's own library. Its gradients must be on that device too. Every gradient
    check, the index range included (a min/max reduced on the device), runs before the first
    kernel of the call, so a bad device gradient changes nothing either; only a failure of the CUDA
    runtime itself (a `KernelError`, or device memory running out) can stop a call half applied.
    `state_dict()` and checkpoints hold host copies; loading copies them back into the device
    arrays in place.

    CUDA graphs: with `capturable=True`, a call on PyTorch CUDA tensors made while PyTorch
    captures its current stream into a graph records the step's launches and counts nothing (CuPy
    and pycuda arrays are stepped on the legacy default stream, which cannot be captured); before
    each
    `graph.replay()`, `prepare_replay()` counts the step and stores its hyperparameters where the
    captured kernels read them. The gradients' arrays are the graph's: replays read the same
    memory. Capturable steps, captured or not, check the indices of sparse gradients on the
    device and never wait: a bad index makes that parameter's step, and its later ones, write
    nothing, and `check_indices()` raises it (every other check still runs first).

    Threads: kernels run without the GIL, so several threads may call one optimizer at once. With
    `use_locking=True` the optimizer holds one lock over the step bookkeeping and all kernels of a
    call, so calls are atomic: k threads give bitwise what k sequential calls give (the kernels
    also take striped row locks, which exclude concurrent calls of the same compiled kernel, e.g.
    from C code sharing the arrays). With `use_locking=False`
    the bookkeeping (step, beta powers) is still taken under the lock, but kernels of different
    calls may interleave on the same rows (Hogwild); memory is never corrupted. Either way,
    `state_dict()`/`save()` and `load_state_dict()`/`load()` wait for the calls applying their
    kernels (and calls that begin meanwhile wait for them): a checkpoint is a consistent snapshot.

    Args:
        params: a list of `Parameter`s, or of group dicts with keys `params` (required), `lr`,
            `weight_decay`, `grad_centralization`; one more dict holding only `order_params` fixes
            the order of parameters (and of gradients) to exactly the grouped parameters.
        learning_rate: float or int (fixed; np.float64, a subclass of float, is one, other numpy
            scalars are not); 0-d array (fixed); 1-d array or sequence, read
            once here, or an iterator (a generator, `itertools.repeat`), read as the steps need
            it (step k uses `lr[k]`); or a `LearningRateSchedule` (step k uses `schedule(k)`).
        beta1, beta2: moment decay rates, Python floats in (0, 1) (np.float64, a subclass of
            float, is one; np.float32 is not).
        eps: Python float > 0, added to `sqrt(v)`.
        use_locking: make concurrent calls atomic (see Threads).
        use_nesterov: Nesterov momentum.
        weight_decay: float or int >= 0, or a `LearningRateSchedule` (dynamic, `wd_at(k)`).
            Without groups it applies to parameters whose names contain neither `beta` nor `gamma`.
        loss_scale: gradients are divided by it (float or int > 0).
        amsgrad: keep `vmax = max(vmax, v)` and divide by `sqrt(vmax) + eps`.
        decoupled_weight_decay: AdamW, `w -= lr*wd*w`, instead of adding `wd*w` to the gradient.
        maximize: ascend instead of descend.
        eps_mode: "mindspore" (eps added to `sqrt(v)`) or "pytorch" (eps added to the
            bias-corrected `sqrt(v_hat)`, as `torch.optim.Adam`).
        state_dtype: the dtype of the moments of bfloat16 and float16 parameters: None or
            "float32" (the default), or "bfloat16". float32 and float64 parameters keep their
            moments in their own dtype.
        rounding: how every write to a bfloat16 or float16 array rounds: "nearest" (even) or
            "stochastic" (unbiased; see docs/semantics.md "Half precision").
        seed: the seed of stochastic rounding, an int in [0, 2**64): with the step and each
            element's position it makes the random bits, so a seed reproduces a run bit for bit.
            Part of `state_dict()` and checkpoints.
        capturable: steps that can be captured in a CUDA graph (every parameter on a device):
            their kernels read the hyperparameters from device memory, and they never wait (see
            CUDA graphs).

    Half precision: a bfloat16 or float16 parameter (numpy through ml_dtypes, or a torch tensor)
    takes gradients in its own dtype or in float32; a step computes in float32 and rounds what it
    stores. Parameter number i (in the order of gradients) rounds stochastically with seed
    `seed + i * SEED_STRIDE` (mod 2**64).

    Raises:
        TypeError, ValueError, KeyError, RuntimeError: as the table of bad input in
            docs/semantics.md.
    """

    RULE = ADAM

    def __init__(self, params: Any, learning_rate: Any = 1e-3, beta1: float = 0.9,
                 beta2: float = 0.999, eps: float = 1e-8, use_locking: bool = False,
                 use_nesterov: bool = False, weight_decay: Any = 0.0, loss_scale: float = 1.0, *,
                 amsgrad: bool = False, decoupled_weight_decay: bool = False,
                 maximize: bool = False, eps_mode: str = "mindspore",
                 state_dtype: str | None = None, rounding: str = "nearest", seed: int = 0,
                 capturable: bool = False):
        # MindSpore's checks, stricter than the rule's domains: Python floats, open intervals.
        for name, value in (("beta1", beta1), ("beta2", beta2), ("eps", eps)):
            if not is_float(value):
                raise TypeError(f"{name} must be a Python float, got {type(value).__name__}: "
                                f"{value!r}")
        for name, value in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must lie in the open interval (0, 1), got {value!r}")
        if not (math.isfinite(eps) and eps > 0.0):
            raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
        loss_scale = check_loss_scale(loss_scale)
        for name, value in (("use_locking", use_locking), ("use_nesterov", use_nesterov),
                            ("amsgrad", amsgrad), ("decoupled_weight_decay", decoupled_weight_decay),
                            ("maximize", maximize), ("capturable", capturable)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be a bool, got {type(value).__name__}: {value!r}")
        if eps_mode not in ("mindspore", "pytorch"):
            raise ValueError(f"eps_mode must be 'mindspore' or 'pytorch', got {eps_mode!r}")
        if state_dtype not in (None, *STATE_DTYPES):
            raise ValueError(f"state_dtype must be None or one of {', '.join(STATE_DTYPES)}, got "
                             f"{state_dtype!r}")
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
        self.decoupled_weight_decay = decoupled_weight_decay
        super().__init__(
            params, learning_rate, weight_decay,
            hparams=dict(beta1=float(beta1), beta2=float(beta2), eps=float(eps),
                         loss_scale=loss_scale),
            options=dict(nesterov=use_nesterov, amsgrad=amsgrad, maximize=maximize,
                         eps_mode=eps_mode,
                         decay="decoupled" if decoupled_weight_decay else "l2"),
            use_locking=use_locking, state_dtype=state_dtype, rounding=rounding, seed=seed,
            capturable=capturable)

    @property
    def moment1(self) -> tuple[Parameter, ...]:
        """First moments, named `moment1.<parameter name>`."""
        return self.states("m")

    @property
    def moment2(self) -> tuple[Parameter, ...]:
        """Second moments, named `moment2.<parameter name>`."""
        return self.states("v")

    @property
    def vmax(self) -> tuple[Parameter, ...]:
        """Running maxima of the second moments (amsgrad), named `vmax.<parameter name>`; else ()."""
        return self.states("vmax")

    @property
    def beta1_power(self) -> float:
        """beta1^t after t calls (1.0 before the first)."""
        return self._powers["beta1_power"]

    @property
    def beta2_power(self) -> float:
        """beta2^t after t calls (1.0 before the first)."""
        return self._powers["beta2_power"]

    def state_dict(self) -> dict[str, Any]:
        """A copy of the whole training state: parameters, moments, beta powers, step, seed.

        A consistent snapshot whatever `use_locking`: it waits for the steps applying their
        kernels, and steps that begin meanwhile wait for it.

        Returns:
            `{"rule": "adam", "global_step", "beta1_power", "beta2_power", "beta1", "beta2",
            "amsgrad", "seed", "parameters": {name: array}, "moment1": {...}, "moment2": {...}[,
            "vmax": {...}]}`, arrays as numpy copies in host memory (device arrays are copied to
            the host), keyed by parameter name, in parameter order.
        """
        return super().state_dict()

    def __repr__(self) -> str:
        return (f"LazyAdam({len(self._slots)} parameters, {len(self._groups)} groups, "
                f"beta1={self.beta1}, beta2={self.beta2}, eps={self.eps}, "
                f"global_step={self._step})")
