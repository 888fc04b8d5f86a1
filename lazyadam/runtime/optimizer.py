"""`LazyAdam`: MindSpore's `nn.LazyAdam` API over the generated kernels (docs/semantics.md).

A call `optimizer(gradients)` works in two phases, so that a failed call changes nothing:

    check    gradients, indices, learning rate and weight decay of step k; compile missing kernels
    apply    k += 1, beta powers *= beta, every parameter's kernels with this step's `HParams`
             (on CUDA: one multi-tensor launch per kernel for the dense parameters)

Each parameter gets a `Spec` from its dtype and the optimizer's flags; the gradient picks the dense
or the lazy sparse kernel (and the index dtype). Kernels are compiled once (`lazyadam.targets`) and
kept per parameter; hyperparameters travel as runtime arguments, so no value of lr or weight decay
ever recompiles.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np

from ..codegen.spec import ROUNDINGS, STATE_DTYPES
from ..interop.arrays import dtype_of, is_device_array, to_host
from ..rules.adam import ADAM
from .checks import check_phase
from .groups import parse_params
from .engine import Engine, Prepared
from .launcher import Launcher, capturing
from .layout import entry
from .parameter import Parameter
from .rates import Group, Rate, is_float, is_number, parse_rate, parse_weight_decay
from .slot import Slot
from .state import allocate
from .specs import SEED_STRIDE, check_seed, spec_for, target_for


def decays_by_default(param: Parameter) -> bool:
    """MindSpore's default weight-decay filter: names without `beta` or `gamma` (norm layers)."""
    return "beta" not in param.name and "gamma" not in param.name


class LazyAdam:
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

    def __init__(self, params: Any, learning_rate: Any = 1e-3, beta1: float = 0.9,
                 beta2: float = 0.999, eps: float = 1e-8, use_locking: bool = False,
                 use_nesterov: bool = False, weight_decay: Any = 0.0, loss_scale: float = 1.0, *,
                 amsgrad: bool = False, decoupled_weight_decay: bool = False,
                 maximize: bool = False, eps_mode: str = "mindspore",
                 state_dtype: str | None = None, rounding: str = "nearest", seed: int = 0,
                 capturable: bool = False):
        for name, value in (("beta1", beta1), ("beta2", beta2), ("eps", eps)):
            if not is_float(value):
                raise TypeError(f"{name} must be a Python float, got {type(value).__name__}: "
                                f"{value!r}")
        for name, value in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must lie in the open interval (0, 1), got {value!r}")
        if not (math.isfinite(eps) and eps > 0.0):
            raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
        if not (is_float(loss_scale) or isinstance(loss_scale, int)):
            raise TypeError(f"loss_scale must be a float or an int, got "
                            f"{type(loss_scale).__name__}: {loss_scale!r}")
        if not (math.isfinite(loss_scale) and loss_scale > 0):
            raise ValueError(f"loss_scale must be a finite number > 0, got {loss_scale!r}")
        for name, value in (("use_locking", use_locking), ("use_nesterov", use_nesterov),
                            ("amsgrad", amsgrad), ("decoupled_weight_decay", decoupled_weight_decay),
                            ("maximize", maximize), ("capturable", capturable)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be a bool, got {type(value).__name__}: {value!r}")
        if eps_mode not in ("mindspore", "pytorch"):
            raise ValueError(f"eps_mode must be 'mindspore' or 'pytorch', got {eps_mode!r}")

        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.use_locking, self.use_nesterov = use_locking, use_nesterov
        self.loss_scale = float(loss_scale)
        self.amsgrad, self.decoupled_weight_decay = amsgrad, decoupled_weight_decay
        self.maximize, self.eps_mode = maximize, eps_mode
        self.capturable = capturable
        if state_dtype not in (None, *STATE_DTYPES):
            raise ValueError(f"state_dtype must be None or one of {', '.join(STATE_DTYPES)}, got "
                             f"{state_dtype!r}")
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
        self.state_dtype, self.rounding = state_dtype, rounding
        self.seed = check_seed(seed)

        default_lr = parse_rate(learning_rate, "learning_rate")
        default_wd = parse_weight_decay(weight_decay, "weight_decay")
        self.learning_rate, self.weight_decay = default_lr.source, default_wd.source
        groups, order = parse_params(params)
        self.is_group = groups is not None
        if groups is None:
            groups = [{"params": order}]
        self._groups: list[Group] = []
        slots: dict[int, Slot] = {}
        positions = {id(p): i for i, p in enumerate(order)}
        with check_phase():
            self._make_slots(groups, slots, positions, default_lr, default_wd)
        self._slots: tuple[Slot, ...] = tuple(slots[id(p)] for p in order)
        self._on_device = any(slot.on_device for slot in self._slots)
        if capturable:
            host = next((s.param for s in self._slots if not s.on_device), None)
            if host is not None:
                raise TypeError(f"capturable=True: parameter {host.name!r} is in host memory; "
                                "capturable steps update device arrays (CUDA graphs capture "
                                "device work only)")
        self._engine = Engine()
        self.is_group_lr = len({id(g.lr) for g in self._groups}) > 1
        self.dynamic_lr = any(g.lr.dynamic for g in self._groups)

        self._step = 0
        self._beta1_power = 1.0
        self._beta2_power = 1.0

    def _make_slots(self, groups: list[dict], slots: dict[int, Slot], positions: dict[int, int],
                    default_lr: Rate, default_wd: Rate) -> None:
        """Parses each group's options into `self._groups` and makes its parameters' slots."""
        for number, group in enumerate(groups):
            where = f"group {number}" if self.is_group else "params"
            lr = parse_rate(group["lr"], f"{where} lr") if "lr" in group else default_lr
            wd = (parse_weight_decay(group["weight_decay"], f"{where} weight_decay")
                  if "weight_decay" in group else default_wd)
            centralize = group.get("grad_centralization", False)
            if not isinstance(centralize, bool):
                raise TypeError(f"{where} grad_centralization must be a bool, got "
                                f"{type(centralize).__name__}: {centralize!r}")
            self._groups.append(Group(lr, wd))
            for param in group["params"]:
                decayed = wd.dynamic or wd.value > 0.0
                if not self.is_group:
                    decayed = decayed and decays_by_default(param)
                slots[id(param)] = self._slot(param, number, decayed, centralize,
                                              positions[id(param)])

    def _slot(self, param: Parameter, group: int, decayed: bool, centralize: bool,
              position: int) -> Slot:
        decay = ("decoupled" if self.decoupled_weight_decay else "l2") if decayed else "none"
        options = dict(nesterov=self.use_nesterov, decay=decay, amsgrad=self.amsgrad,
                       maximize=self.maximize, eps_mode=self.eps_mode)
        spec = spec_for(param, ADAM, options, use_locking=self.use_locking,
                        state_dtype=self.state_dtype, rounding=self.rounding)
        return Slot(param, group, centralize, spec, target_for(param.data),
                    allocate(param, spec, "mindspore"),
                    seed_offset=position * SEED_STRIDE % 2**64)

    # -- state -----------------------------------------------------------------------------------

    @property
    def parameters(self) -> tuple[Parameter, ...]:
        """The parameters, in the order gradients are expected."""
        return tuple(s.param for s in self._slots)

    @property
    def moment1(self) -> tuple[Parameter, ...]:
        """First moments, named `moment1.<parameter name>`."""
        return tuple(s.state("m") for s in self._slots)

    @property
    def moment2(self) -> tuple[Parameter, ...]:
        """Second moments, named `moment2.<parameter name>`."""
        return tuple(s.state("v") for s in self._slots)

    @property
    def vmax(self) -> tuple[Parameter, ...]:
        """Running maxima of the second moments (amsgrad), named `vmax.<parameter name>`; else ()."""
        return tuple(s.state("vmax") for s in self._slots) if self.amsgrad else ()

    @property
    def beta1_power(self) -> float:
        """beta1^t after t calls (1.0 before the first)."""
        return self._beta1_power

    @property
    def beta2_power(self) -> float:
        """beta2^t after t calls (1.0 before the first)."""
        return self._beta2_power

    @property
    def global_step(self) -> int:
        """How many calls succeeded; the next call uses `lr_at(global_step)`."""
        return self._step

    def get_lr(self) -> float | tuple[float, ...]:
        """The learning rate the next call will use: one float, or one per parameter with groups.

        Raises:
            IndexError: a learning-rate sequence has no value for the next step.
        """
        step = self._step
        if not self.is_group_lr:
            return self._groups[0].lr.at(step)
        return tuple(self._groups[s.group].lr.at(step) for s in self._slots)

    def get_lr_parameter(self, param: Parameter) -> float:
        """The learning rate the next call will use for `param`.

        Raises:
            ValueError: `param` is not optimized here.
        """
        for slot in self._slots:
            if slot.param is param:
                return self._groups[slot.group].lr.at(self._step)
        raise ValueError(f"parameter {param.name!r} is not optimized by this LazyAdam")

    def state_dict(self) -> dict[str, Any]:
        """A copy of the whole training state: parameters, moments, beta powers, step, seed.

        A consistent snapshot whatever `use_locking`: it waits for the steps applying their
        kernels, and steps that begin meanwhile wait for it.

        Returns:
            `{"global_step", "beta1_power", "beta2_power", "beta1", "beta2", "amsgrad", "seed",
            "parameters": {name: array}, "moment1": {...}, "moment2": {...}[, "vmax": {...}]}`,
            arrays as numpy copies in host memory (device arrays are copied to the host), keyed
            by parameter name, in parameter order.
        """
        with self._engine.quiescent():
            state: dict[str, Any] = {
                "global_step": self._step, "beta1_power": self._beta1_power,
                "beta2_power": self._beta2_power, "beta1": self.beta1, "beta2": self.beta2,
                "amsgrad": self.amsgrad, "seed": self.seed,
            }
            for key, attr in _STATE_ARRAYS[: 4 if self.amsgrad else 3]:
                state[key] = {s.param.name: _array(s, attr).asnumpy() for s in self._slots}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores a `state_dict()`, in place; checks all of it before writing anything.

        Parameters and moments keep their array objects: device arrays receive the saved values
        through host memory (`Parameter.set_data`) and stay on their device.

        A state without a seed (a checkpoint of format 2) keeps this optimizer's seed.

        Raises:
            ValueError: a missing entry, other parameter names, shapes or dtypes (moments of
                another dtype than this optimizer's state), other betas, amsgrad state present or
                absent where this optimizer differs, a seed that is not an int in [0, 2**64), a
                global_step that is not an int in [0, 2**64 - 1) (the next step must fit the
                kernels' 64-bit count); the message says what differs.
        """
        missing = [k for k in ("global_step", "beta1_power", "beta2_power") if k not in state]
        if missing:
            raise ValueError(f"state has no {', '.join(missing)}")
        for name in ("beta1", "beta2"):
            if name in state and state[name] != getattr(self, name):
                raise ValueError(f"state was saved with {name}={state[name]!r}, this optimizer "
                                 f"has {name}={getattr(self, name)!r}")
        step = state["global_step"]
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not (
                0 <= step < 2**64 - 1):
            raise ValueError(f"global_step must be an int in [0, 2**64 - 1): the next step, "
                             f"global_step + 1, is counted in 64 bits; got {step!r}")
        try:
            seed = check_seed(state["seed"]) if "seed" in state else self.seed
        except (TypeError, ValueError) as error:
            raise ValueError(f"state {error}") from None
        powers = [state["beta1_power"], state["beta2_power"]]
        if not all(is_number(p) and 0.0 <= p <= 1.0 for p in powers):  # beta^t underflows to 0
            raise ValueError(f"beta powers must lie in [0, 1], got {powers}")
        wanted = _STATE_ARRAYS[: 4 if self.amsgrad else 3]
        if "vmax" in state and not self.amsgrad:
            raise ValueError("state holds amsgrad's vmax, this optimizer has amsgrad=False")
        names = [s.param.name for s in self._slots]
        arrays = []
        for key, attr in wanted:
            saved = state.get(key)
            if saved is None:
                raise ValueError(f"state has no {key!r}" + (" (saved with amsgrad=False?)"
                                                            if key == "vmax" else ""))
            extra = [n for n in saved if n not in names]
            absent = [n for n in names if n not in saved]
            if extra or absent:
                raise ValueError(f"state {key!r} does not match the parameters: not in this "
                                 f"optimizer: {extra}, missing from the state: {absent}")
            for slot in self._slots:
                value, target = saved[slot.param.name], _array(slot, attr)
                if not is_device_array(value):
                    value = to_host(value)
                value_shape, value_dtype = tuple(value.shape), dtype_of(value)
                if value_shape != target.shape or value_dtype != target.dtype:
                    raise ValueError(f"state {key}[{slot.param.name!r}] has shape {value_shape} "
                                     f"and dtype {value_dtype}, the optimizer has {target.shape} "
                                     f"and {target.dtype}")
                arrays.append((target, value))
        with self._engine.quiescent():
            for target, value in arrays:
                target.set_data(value)
            self._step = int(step)
            self._beta1_power, self._beta2_power = (float(p) for p in powers)
            self.seed = seed

    def save(self, path: Any) -> None:
        """Writes `state_dict()` to `path` atomically (see `lazyadam.runtime.checkpoint.save`)."""
        from .checkpoint import save
        save(self, path)

    def load(self, path: Any) -> None:
        """Restores the state saved at `path` (see `lazyadam.runtime.checkpoint.load`)."""
        from .checkpoint import load
        load(self, path)

    # -- a step ------------------------------------------------------------------------------------

    def __call__(self, gradients: Sequence[Any]) -> bool:
        """One step over all parameters; returns True.

        Args:
            gradients: a tuple or list with one gradient per parameter, in parameter order: an
                array (dense) or a `RowTensor` (lazy sparse).

        Raises:
            TypeError: gradients not a tuple or list; a gradient of the wrong type or dtype, or
                not where its parameter lives (host memory or a CUDA device); indices that are not
                integers; grad_centralization of a device array whose library has no mean().
            ValueError: the wrong number of gradients; a shape that does not fit its parameter;
                a device gradient on another GPU than its parameter; a gradient that shares
                memory with its parameter or moments; a schedule that fails (overflows) or gives
                a negative or non-finite value, or such a value of a learning-rate iterator.
            IndexError: an index outside its parameter's rows (the first one is named); a
                learning-rate sequence that has no value for this step.
            CompilationError: a kernel failed to build.
            Nothing was changed when any of these is raised.
        """
        capture = self._on_device and capturing(self._slots)
        if capture and not self.capturable:
            raise RuntimeError("this step is being captured into a CUDA graph, and the optimizer "
                               "was made with capturable=False: its steps wait for their index "
                               "checks and carry their hyperparameters; make it with "
                               "capturable=True")
        self._engine.step(lambda capture: self._check(gradients, capture), capture=capture,
                          locking=lambda: self.use_locking)
        return True

    def _count(self) -> list[tuple]:
        """Counts the step (under the engine's lock): the step and the beta powers move on;
        returns the step's hparams entries, by group."""
        hparams, powers = self._next_hparams()
        self._step += 1
        self._beta1_power, self._beta2_power = powers
        return hparams

    def _next_hparams(self) -> tuple[list[tuple], tuple[float, float]]:
        """The `HParams` fields of each group for the next step, and its beta powers.

        Raises:
            IndexError, TypeError, ValueError: as `__call__`, for the learning rate or weight decay.
        """
        step = self._step
        powers = {"beta1_power": self._beta1_power * self.beta1,
                  "beta2_power": self._beta2_power * self.beta2}
        values = dict(beta1=self.beta1, beta2=self.beta2, eps=self.eps, loss_scale=self.loss_scale)
        return ([entry(ADAM, {**values, "lr": g.lr.at(step), "weight_decay": g.wd.at(step)},
                       step + 1, self.seed, powers) for g in self._groups],
                (powers["beta1_power"], powers["beta2_power"]))

    def prepare_replay(self) -> None:
        """Counts one replay of the captured step as a step, and stores its hyperparameters
        (learning rate and weight decay of the step, beta powers, step) in the device memory that
        the captured kernels read; call it before each `graph.replay()`, on the stream that
        replays (PyTorch's current stream). Nothing waits.

        Raises:
            RuntimeError: no step was captured, or its arrays moved since.
            IndexError, TypeError, ValueError: as `__call__`, for the learning rate or weight
                decay of the step. Nothing was changed when any of these is raised.
        """
        self._engine.replay(lambda: (self._next_hparams()[0], self._count))

    def check_indices(self) -> None:
        """Waits for the queued steps and raises what a capturable step's index check found.

        A capturable step checks its sparse gradients' indices on the device and never waits: an
        index outside its table makes that parameter's step, and its later ones, write nothing,
        and is reported here (then cleared).

        Raises:
            IndexError: naming the parameter, the first bad position and its value.
        """
        Launcher.check_indices(self._slots)

    def _check(self, gradients: Sequence[Any], capture: bool = False) -> Prepared:
        """Checks every gradient and prepares one kernel call per parameter; writes nothing."""
        if not isinstance(gradients, (tuple, list)):
            raise TypeError(f"gradients must be a tuple or list with one gradient per parameter, "
                            f"got {type(gradients).__name__}")
        slots = self._slots
        if len(gradients) != len(slots):
            raise ValueError(f"got {len(gradients)} gradients for {len(slots)} parameters")
        capturable = self.capturable
        work = [slot.prepare(i, grad, capturable, capture)
                for i, (slot, grad) in enumerate(zip(slots, gradients))]
        return Prepared(work, capturable, self._count,
                        hparams=self._next_hparams()[0] if capture else None)

    def __repr__(self) -> str:
        return (f"LazyAdam({len(self._slots)} parameters, {len(self._groups)} groups, "
                f"beta1={self.beta1}, beta2={self.beta2}, eps={self.eps}, "
                f"global_step={self._step})")


_STATE_ARRAYS = (("parameters", None), ("moment1", "m"), ("moment2", "v"), ("vmax", "vmax"))


def _array(slot: Slot, name: str | None) -> Parameter:
    """The parameter (`name` None) or the state array `name` of a slot."""
    return slot.param if name is None else slot.state(name)
