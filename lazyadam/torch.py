"""`lazyadam.torch.LazyAdam`: a `torch.optim.Optimizer` over the generated kernels.

    import lazyadam.torch
    opt = lazyadam.torch.LazyAdam(model.parameters(), lr=1e-3)
    loss.backward(); opt.step(); opt.zero_grad()

Sparse gradients (`nn.Embedding(..., sparse=True)`, `nn.EmbeddingBag(..., sparse=True)`) get the
lazy update: only the rows the gradient touches change. Their COO indices and values go to the
kernel as torch made them: uncoalesced, duplicates included (the kernel sums a row's occurrences in
input order), never copied when contiguous. A COO gradient sparse in more dimensions
(`dense.to_sparse()`) is coalesced and read as rows. Dense gradients get the dense kernel. CPU
tensors are updated in place by the C kernels through numpy arrays over their memory; CUDA tensors
by the CUDA kernels on torch's current stream, the dense parameters that share a kernel in
multi-tensor launches (each tensor with its own hyperparameters). A step like the last one (the
same groups, flags, parameters and state tensors; dense CUDA gradients of the same dtype, shape and
device) confirms the last step's checks in a microsecond or two a parameter (`_recheck`).

A step works in the two phases of `lazyadam.runtime.slot` and `.launcher`, shared with
`lazyadam.LazyAdam`:

    check    every group's options, every parameter (dtype, layout), its state and its gradient
             (dtype, shape, device, index range); kernels compiled and bound; nothing written
    apply    state created or converted, each parameter's `step` += 1, one kernel per gradient
             (CUDA: multi-tensor launches per kernel for the dense ones)

so a step that raises leaves every parameter and all state as they were. Each step reads where
every parameter and state tensor lives now (data pointer, dtype, shape, strides, negative bit,
device): after `model.to(torch.float64)`, `.cuda()`, `p.data = p.data.t()` or `load_state_dict`
the kernels are bound again, and state is moved to the parameter's device and dtype. A parameter
that is not contiguous, or a negative view, is stepped through a contiguous working copy (`_bind`).
`load_state_dict` keeps the state's own dtype (torch's would cast it to the parameter's).
"""

from __future__ import annotations

import math
import numbers
import threading
from typing import Any, Callable, Iterable, NamedTuple

import numpy as np
import torch

from .codegen.spec import ROUNDINGS, STATE_DTYPES, Spec
from .interop.arrays import index_bounds, to_host
from .rules.adam import ADAM
from .runtime.checks import check_device_state, check_phase
from .runtime.launcher import Launcher
from .runtime.parameter import Parameter, RowTensor
from .runtime.slot import Slot
from .runtime.specs import SEED_STRIDE, check_seed, shared, spec_for, target_for
from .targets.base import index_error

__all__ = ["LazyAdam", "EPS_MODES"]

#: Where eps goes: "pytorch" as `torch.optim.Adam`/`AdamW` (`sqrt(v_hat) + eps`), "mindspore" as
#: `torch.optim.SparseAdam` (`sqrt(v) + eps`, the bias correction folded into the step size).
EPS_MODES = ("pytorch", "mindspore")
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
#: Parameter dtypes whose steps compute in float32 and round what they store.
HALF = (torch.bfloat16, torch.float16)
#: The dtypes of the `step` state tensor.
STEP_DTYPES = (torch.float32, torch.float64)
FLAGS = ("nesterov", "amsgrad", "maximize", "decoupled_weight_decay", "use_locking")
STATE_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


class LazyAdam(torch.optim.Optimizer):
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

    def __init__(self, params: Iterable[Any], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, *, nesterov: bool = False, amsgrad: bool = False,
                 maximize: bool = False, decoupled_weight_decay: bool = False,
                 eps_mode: str = "pytorch", use_locking: bool = False,
                 state_dtype: str | None = None, rounding: str = "nearest", seed: int = 0,
                 capturable: bool = False, foreach: bool | None = None,
                 fused: bool | None = None, differentiable: bool = False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, nesterov=nesterov,
                        amsgrad=amsgrad, maximize=maximize,
                        decoupled_weight_decay=decoupled_weight_decay, eps_mode=eps_mode,
                        use_locking=use_locking, state_dtype=state_dtype, rounding=rounding,
                        seed=seed, capturable=capturable, foreach=foreach, fused=fused,
                        differentiable=differentiable)
        _options(defaults, "LazyAdam")
        #: Held over every step's check phase (and its apply phase, with use_locking) and over
        #: `load_state_dict`; made once: a load keeps it, so that it goes on excluding. Reentrant:
        #: a load hook may step.
        self._lock = threading.RLock()
        self._reset()
        super().__init__(params, defaults)

    def _reset(self) -> None:
        """What a fresh, loaded or unpickled optimizer holds besides torch's state and its lock:
        no bindings yet."""
        self._bindings: dict[torch.Tensor, _Binding] = {}
        self._launcher = Launcher()
        #: The parameters of the captured step: (binding, param group number, parameter, the
        #: address of the gradient the graph reads).
        self._captured: list[tuple] = []
        #: What the last full check of an all-CUDA dense step found, for `_recheck`.
        self._memo: _Memo | None = None

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickling and `load_state_dict` end here: groups saved without an option get the
        default, and every parameter is bound again at its next step."""
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        if "_lock" not in self.__dict__:  # unpickled; a load keeps the lock it holds
            self._lock = threading.RLock()
        self._reset()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a state (see `torch.optim.Optimizer.load_state_dict`), under the step lock.

        Two differences from torch's: the state is checked before anything is loaded (after the
        load pre-hooks), and floating-point state keeps its dtype, moved to the parameter's
        device. (torch casts it to the parameter's dtype: the float32 moments of a float16
        parameter would lose their small values and overflow their large ones, those of a
        bfloat16 parameter their precision.) A step converts state of another dtype, as it
        converts any state (see `_bind`).

        Raises:
            ValueError: a `step` that is not a count (None, negative, not an integer, 2**64 - 1 or
                more, more than one element), a moment that is not a dense real floating-point
                tensor; naming the parameter and the field. Nothing is loaded. Otherwise as
                torch's.
        """
        loaded = []

        def check(optimizer: LazyAdam, state_dict: dict[str, Any]) -> None:
            saved_groups = state_dict.get("param_groups", ())
            saved_state = state_dict.get("state", {})
            for number, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
                names = group.get("param_names")
                for i, index in enumerate(saved.get("params", ())):
                    entry = saved_state.get(index)
                    if isinstance(entry, dict):
                        _check_state(entry, names[i] if names else f"group {number} param {i}")
            loaded.append(state_dict)

        with self._lock:
            handle = self.register_load_state_dict_pre_hook(check)
            try:
                super().load_state_dict(state_dict)
            finally:
                handle.remove()
            saved = loaded[0]
            indices = (index for group in saved["param_groups"] for index in group["params"])
            params = (param for group in self.param_groups for param in group["params"])
            for index, param in zip(indices, params):
                for key, value in saved["state"].get(index, {}).items():
                    if (key != "step" and isinstance(value, torch.Tensor)
                            and value.is_floating_point()):
                        self.state[param][key] = value.to(device=param.device)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Adds a group (see `torch.optim.Optimizer.add_param_group`), checked first.

        Raises:
            TypeError, ValueError: a bad option, or a parameter that is not float32, float64,
                bfloat16 or float16 (ValueError for a complex or sparse one, as torch's
                SparseAdam); the group is not added.
            ValueError: a parameter listed twice, in this group or in another.
        """
        if isinstance(param_group, dict):
            params = param_group.get("params")
            if isinstance(params, torch.Tensor):
                listed = [params]
            elif params is None or isinstance(params, set):
                listed = []  # torch's add_param_group says what is wrong
            else:
                param_group["params"] = listed = list(params)
            where = f"param group {len(self.param_groups)}"
            _options({**self.defaults, **param_group}, where)
            listed_as = {id(p): f"param {i} of param group {number}"
                         for number, group in enumerate(self.param_groups)
                         for i, p in enumerate(group["params"])}
            for i, param in enumerate(listed):
                name, tensor = param if isinstance(param, tuple) and len(param) == 2 else (
                    f"{where} param {i}", param)
                if isinstance(tensor, torch.Tensor):
                    _check_parameter(tensor, name)
                    if id(tensor) in listed_as:
                        raise ValueError(f"parameter {name!r} is {listed_as[id(tensor)]}: list "
                                         "each parameter once (torch.optim warns and steps it "
                                         "twice, and says this will become an error)")
                    listed_as[id(tensor)] = f"param {i} of {where}"
        super().add_param_group(param_group)

    @torch.compiler.disable
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step for every parameter that has a gradient; parameters with `grad` None are
        skipped (their `step` does not count), and the options of a group without gradients are
        not read (as torch's Adam: a scheduler may move them out of range meanwhile).

        Args:
            closure: re-evaluates the model and returns the loss; called with grad enabled.

        Returns:
            The closure's loss, or None.

        Raises:
            TypeError: a gradient of another dtype than its parameter, or not on its device; a
                parameter that is not float32, float64, bfloat16 or float16; an option of the
                wrong type.
            ValueError: a gradient of another shape; a sparse gradient that is not COO, or has
                no sparse dimension; an option out of range; state of another shape than its
                parameter, or corrupt (see `load_state_dict`); a parameter listed twice (also
                by hand, in a group's params).
            IndexError: a sparse gradient's index outside the parameter's rows (the first named).
            Nothing was changed when any of these is raised.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with self._lock, check_phase():
            capture = self._capturing()
            found = None if capture else self._recheck()
            if found is None:
                self._memo = None
                work, hparams, pending, counts, capturable = self._check(capture)
            else:
                (work, hparams, counts, capturable), pending = found, ()
            tables = self._launcher.tables(work) if capturable else None
            for param, binding, created in pending:
                self.state[param].update(created)
                self._bindings[param] = binding
            if found is None and not capture:
                self._memo = _Memo.of(self, work, counts, capturable)
            if capture:  # recorded, not run: prepare_replay counts each replay
                self._launcher.run(work, hparams, tables, True)
                self._captured = [(binding, number, param, grad[0])
                                  for (_, _, grad, _, _), (binding, number, param, _)
                                  in zip(work, counts)]
                return loss
            for binding, _, _, t in counts:
                binding.step.fill(t)
            copies = [binding.copy for binding, _, _, _ in counts if binding.copy is not None]
            if any(group["use_locking"] for group in self.param_groups):
                self._run(work, hparams, tables, copies)
                return loss
        self._run(work, hparams, tables, copies)
        return loss

    def _run(self, work: list, hparams: dict, tables: Any, copies: list) -> None:
        """The apply phase's kernels, between the copies of the parameters that are stepped
        through a working copy (see `_bind`): each copied in before, and written back after."""
        for param, working in copies:
            working.copy_(param)
        self._launcher.run(work, hparams, tables)
        for param, working in copies:
            param.copy_(working)

    def _capturing(self) -> bool:
        """Whether this step is being captured into a CUDA graph: PyTorch's current stream is
        capturing (asked of PyTorch even before any parameter is bound, so that a first step is
        not run eagerly inside a capture).

        Raises:
            RuntimeError: captured, with a group whose `capturable` is False.
        """
        if not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()):
            return False
        for number, group in enumerate(self.param_groups):
            if not group["capturable"]:
                raise RuntimeError(f"this step is being captured into a CUDA graph, and param "
                                   f"group {number} has capturable=False: its steps wait for "
                                   "their index checks and carry their hyperparameters; set "
                                   "capturable=True")
        return True

    @torch.compiler.disable
    def prepare_replay(self) -> None:
        """Counts one replay of the captured step: the `step` of each parameter it updates + 1,
        and stores each one's hyperparameters (its group's options as they are now, so that a
        scheduler's learning rate takes effect, and its bias corrections) in the device memory
        that the captured kernels read. Call it before each `graph.replay()`, on the stream that
        replays (the current one). Nothing waits.

        Raises:
            RuntimeError: no step was captured; since the capture, a parameter or its state got
                new storage, its group's options changed the kernel (weight decay on or off,
                nesterov, amsgrad, eps_mode, ...), or its gradient is another tensor than the one
                the graph reads (capture again, or keep the gradients: `zero_grad(set_to_none=
                False)`). Nothing was changed when it is raised.
            TypeError, ValueError: a group's options.
        """
        with self._lock:
            hparams = {}
            counts = []
            for binding, number, param, grad_address in self._captured:
                options = _options(self.param_groups[number], f"param group {number}")
                name = binding.slot.param.name
                if not binding.matches(param, self.state.get(param), options.flags,
                                       binding.key[-1]):
                    raise RuntimeError(f"parameter {name!r} or its state has new storage, or its "
                                       "group's options change its kernel, since the step was "
                                       "captured: capture the step again")
                grad = param.grad
                if (grad is None or grad.layout != torch.strided
                        or grad.data_ptr() != grad_address):
                    raise RuntimeError(f"the gradient of parameter {name!r} is not the tensor the "
                                       "captured step reads: keep it (zero_grad(set_to_none="
                                       "False) zeroes it in place) or capture the step again")
                t = int(binding.step) + 1
                hparams[id(param)] = _hparams(options, t)
                counts.append((binding, t))
            self._launcher.prepare_replay(hparams)
            for binding, t in counts:
                binding.step.fill(t)

    def check_indices(self) -> None:
        """Waits for the queued steps and raises what a capturable step's index check found.

        Capturable steps check sparse gradients' indices on the device and never wait: an index
        outside its table makes that parameter's step, and its later ones, write nothing, and is
        reported here (then cleared).

        Raises:
            IndexError: naming the parameter, the first bad position and its value.
        """
        Launcher.check_indices(binding.slot for binding in self._bindings.values())

    def _recheck(self) -> tuple[list, dict, list, bool] | None:
        """The check phase of a step like the last one, in a microsecond a parameter: the result
        of `_check` when the memo of the last full check still holds (the same groups, options
        flags, parameters, state tensors, and dense contiguous gradients of the same dtype, shape
        and device that share no memory with the state); None where anything differs, and the
        full check runs (and says what is wrong).

        Raises:
            TypeError, ValueError: a group's options (as `_check`).
        """
        memo = self._memo
        groups = self.param_groups
        if memo is None or len(groups) != len(memo.groups):
            return None
        states, strided = self.state, torch.strided
        work, hparams, counts, entries = [], {}, [], {}
        for number, (group, (known, params, flags, records)) in enumerate(zip(groups, memo.groups)):
            members = group["params"]
            if group is not known or members is not params or len(members) != len(records):
                return None
            if flags is None:  # no gradients then: none now, and the options are not read
                if any(param.grad is not None for param in members):
                    return None
                continue
            options = _options(group, f"param group {number}")
            if options.flags != flags or options.capturable != memo.capturable:
                return None
            for param, record in zip(members, records):
                grad = param.grad
                if record is None:
                    if grad is not None:
                        return None
                    continue
                (bound, ptr, strides, shape, dtype, device, state, tensors, binding, slot, call,
                 spans, nbytes) = record
                if (param is not bound or grad is None or grad.layout is not strided
                        or grad.dtype is not dtype or grad.shape != shape
                        or not grad.is_contiguous() or grad.get_device() != device
                        or param.data_ptr() != ptr or param.stride() != strides
                        or param.shape != shape or param.is_neg()
                        or states.get(param) is not state):
                    return None
                for key, tensor, address in tensors:
                    if state.get(key) is not tensor or tensor.data_ptr() != address:
                        return None
                start = grad.data_ptr()
                for first, last in spans:
                    if start < last and first < start + nbytes:
                        return None
                t = int(binding.step) + 1
                hp = entries.get((number, t))
                if hp is None:  # `_shared_hparams`, inline: this loop's microsecond a parameter
                    hp = entries[number, t] = _hparams(options, t)
                hparams[id(param)] = hp
                work.append((slot, call, (start, grad), id(param), None))
                counts.append((binding, number, param, t))
        return work, hparams, counts, memo.capturable

    def _check(self, capture: bool = False) -> tuple[list, dict, list, list, bool]:
        """The check phase: every parameter with a gradient prepared; nothing written (bindings
        that no longer match a parameter without a gradient are dropped: they are a cache).

        Args:
            capture: the step is being captured: a parameter without state is refused.

        Returns:
            `(work, hparams, pending, counts, capturable)`: the prepared kernel calls,
            `HParams` fields by slot key, the `(param, binding, new state entries)` to store, the
            `(binding, group number, param, t)` whose step counts become t, and whether the step
            is capturable.

        Raises:
            ValueError: groups with a gradient disagree on capturable.
            RuntimeError: captured, with a parameter that has no state yet.
        """
        work, hparams, pending, counts, entries = [], {}, [], [], {}
        bindings, states = self._bindings, self.state
        position = 0
        capturable = None
        listed_as: dict[int, tuple[int, int]] = {}
        for number, group in enumerate(self.param_groups):
            options = None  # read at the first gradient: a group without any is not checked
            names = group.get("param_names")
            for i, param in enumerate(group["params"]):
                first = listed_as.setdefault(id(param), (number, i))
                if first != (number, i):
                    label = "group {} param {}".format(*first)
                    raise ValueError(f"parameter {names[i] if names else label!r} is listed "
                                     f"twice: as {label} and as group {number} param {i}; list "
                                     "each parameter once (torch.optim steps it twice)")
                grad = param.grad
                binding = bindings.get(param)
                state = states.get(param)
                if grad is None:
                    if binding is not None and not binding.matches(param, state, None, position):
                        del bindings[param]  # it would keep memory the param has left
                    position += 1
                    continue
                if options is None:
                    options = _options(group, f"param group {number}")
                name = names[i] if names else f"group {number} param {i}"
                if capturable is None:
                    capturable = options.capturable
                elif capturable != options.capturable:
                    raise ValueError(f"param group {number} has capturable="
                                     f"{options.capturable}, an earlier group with gradients "
                                     f"{capturable}: a step is capturable or not as a whole")
                if capture and grad.layout != torch.strided:
                    raise RuntimeError(f"parameter {name!r} has a sparse gradient, whose tensors "
                                       "are new every step: a CUDA graph cannot replay it (capture "
                                       "dense gradients, or step lazyadam.LazyAdam with RowTensors "
                                       "over buffers of a fixed size)")
                if binding is None or not binding.matches(param, state, options.flags, position):
                    if capture and not state:
                        raise RuntimeError(f"parameter {name!r} has no state yet: run an eager "
                                           "step before capturing one (torch.cuda.graph's own "
                                           "advice: warm up on a side stream), so that the "
                                           "graph does not allocate the optimizer's state")
                    binding, created = _bind(param, state, options, name, position)
                    pending.append((param, binding, created))
                if options.capturable and not binding.slot.on_device:
                    raise TypeError(f"parameter {name!r} is on {param.device}: capturable steps "
                                    "update CUDA tensors (CUDA graphs capture device work only)")
                if options.capturable and binding.copy is not None:
                    raise ValueError(f"parameter {name!r} is not contiguous, or a negative view: "
                                     "capturable steps update parameters in place, with no "
                                     "working copy; make it contiguous first (param.data = "
                                     "param.data.contiguous())")
                t = int(binding.step) + 1
                work.append(binding.slot.prepare(position, _gradient(grad, name),
                                                 options.capturable, capture))
                hparams[id(param)] = _shared_hparams(entries, number, options, t)
                counts.append((binding, number, param, t))
                position += 1
        return work, hparams, pending, counts, bool(capturable)


class _Flags(NamedTuple):
    """What picks a group's kernel spec (with the parameter's dtype)."""

    decayed: bool
    eps_mode: str
    nesterov: bool
    amsgrad: bool
    maximize: bool
    decoupled_weight_decay: bool
    use_locking: bool
    state_dtype: str | None
    rounding: str


class _Options(NamedTuple):
    """A group's options for one step, checked."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    seed: int
    flags: _Flags
    capturable: bool


def _hparams(options: _Options, t: int) -> tuple:
    """The `HParams` fields of a parameter's step t with its group's options (`beta^t` of its
    own step count, as `torch.optim.Adam` corrects the bias; the group's seed, which a
    stochastically rounding slot moves on by its own offset)."""
    return (options.lr, options.beta1, options.beta2, options.eps, options.weight_decay, 1.0,
            options.beta1 ** t, options.beta2 ** t, options.seed, t)


def _shared_hparams(entries: dict[tuple[int, int], tuple], number: int, options: _Options,
                    t: int) -> tuple:
    """`_hparams(options, t)` for group `number`, made once a step for each (group, t) in
    `entries`: 100,000 parameters at their first step share one tuple, not one each (about 170
    bytes a parameter while the step runs, which its memory keeps)."""
    found = entries.get((number, t))
    if found is None:
        found = entries[number, t] = _hparams(options, t)
    return found


def _options(group: dict[str, Any], where: str) -> _Options:
    """Reads and checks a group's options (`where` names the group in errors).

    Raises:
        TypeError: a number that is not a real number (or a one-element tensor), a flag that is
            not a bool (foreach and fused: None or a bool), betas that are not a pair.
        ValueError: lr or weight_decay < 0, eps <= 0, a beta outside [0, 1), a value that is not
            finite, an unknown eps_mode, state_dtype or rounding; a seed outside [0, 2**64);
            as torch.optim.Adam: a tensor of more than one element, one beta a tensor and the
            other not; differentiable=True.
    """
    betas = group["betas"]
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise TypeError(f"{where}: betas must be a pair (beta1, beta2), got {betas!r}")
    if isinstance(betas[0], torch.Tensor) != isinstance(betas[1], torch.Tensor):
        raise ValueError(f"{where}: betas must be both floats or both tensors (as in "
                         f"torch.optim.Adam), got {betas!r}")
    lr, beta1, beta2, eps, wd = (_real(group["lr"], where, "lr"), _real(betas[0], where, "beta1"),
                                 _real(betas[1], where, "beta2"), _real(group["eps"], where, "eps"),
                                 _real(group["weight_decay"], where, "weight_decay"))
    for name, value in (("lr", lr), ("weight_decay", wd)):
        if not (math.isfinite(value) and value >= 0.0):
            raise ValueError(f"{where}: {name} must be finite and >= 0, got {value!r}")
    for name, value in (("beta1", beta1), ("beta2", beta2)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{where}: {name} must lie in [0, 1), got {value!r}")
    if not (math.isfinite(eps) and eps > 0.0):
        raise ValueError(f"{where}: eps must be finite and > 0, got {eps!r}")
    for name in FLAGS + ("capturable", "differentiable"):
        if not isinstance(group[name], bool):
            raise TypeError(f"{where}: {name} must be a bool, got {type(group[name]).__name__}: "
                            f"{group[name]!r}")
    for name in ("foreach", "fused"):
        if not (group[name] is None or isinstance(group[name], bool)):
            raise TypeError(f"{where}: {name} must be None or a bool, got "
                            f"{type(group[name]).__name__}: {group[name]!r}")
    if group["differentiable"]:
        raise ValueError(f"{where}: differentiable=True is not supported: the kernels update "
                         "parameters in place, outside autograd")
    if group["eps_mode"] not in EPS_MODES:
        raise ValueError(f"{where}: eps_mode must be one of {EPS_MODES}, got "
                         f"{group['eps_mode']!r}")
    if group["state_dtype"] not in (None, *STATE_DTYPES):
        raise ValueError(f"{where}: state_dtype must be None or one of {', '.join(STATE_DTYPES)}, "
                         f"got {group['state_dtype']!r}")
    if group["rounding"] not in ROUNDINGS:
        raise ValueError(f"{where}: rounding must be one of {', '.join(ROUNDINGS)}, got "
                         f"{group['rounding']!r}")
    try:
        seed = check_seed(group["seed"])
    except (TypeError, ValueError) as error:
        raise type(error)(f"{where}: {error}") from None
    flags = _Flags(wd > 0.0, group["eps_mode"], *(group[name] for name in FLAGS),
                   group["state_dtype"], group["rounding"])
    return _Options(lr, beta1, beta2, eps, wd, seed, flags, group["capturable"])


def _real(value: Any, where: str, name: str) -> float:
    """`value` as a float: a real number (not a bool) or a one-element tensor (ValueError for a
    tensor of another size, as torch.optim.Adam)."""
    if type(value) is float:  # what groups hold, every step: the cheap test first
        return value
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{where}: {name} must be a one-element tensor, got shape "
                             f"{tuple(value.shape)}")
        return float(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"{where}: {name} must be a real number, got {type(value).__name__}: "
                    f"{value!r}")


def _check_parameter(param: torch.Tensor, name: str) -> None:
    """A parameter the kernels can update: a float32, float64, bfloat16 or float16 dense
    tensor in CPU or CUDA memory (one that is not contiguous, or a negative view, is stepped
    through a working copy: see `_bind`).

    Raises:
        ValueError: a complex or sparse parameter (as torch's SparseAdam), a ZeroTensor (which
            torch cannot write either).
        TypeError: another dtype, layout or device type.
    """
    if param.dtype not in DTYPES:
        error = ValueError if param.is_complex() else TypeError
        raise error(f"parameter {name!r} has dtype {param.dtype}; lazyadam.torch.LazyAdam "
                    "updates float32, float64, bfloat16 and float16 parameters (not complex ones)")
    if param.layout != torch.strided:
        raise ValueError(f"parameter {name!r} has layout {param.layout}; the kernels update "
                         "dense (strided) tensors")
    if param.device.type not in ("cpu", "cuda"):
        raise TypeError(f"parameter {name!r} is on device {param.device}; lazyadam.torch.LazyAdam "
                        "updates CPU and CUDA tensors")
    if param._is_zerotensor():
        raise ValueError(f"parameter {name!r} is a ZeroTensor, which is immutable (torch's Adam "
                         "cannot step it either); pass a tensor of its own (.clone())")


#: numpy's type string of each dtype whose CPU tensors `_Memory.view` takes (numpy has no bfloat16).
_TYPESTRS = {dtype: np.dtype(str(dtype).rpartition(".")[2]).str
             for dtype in (torch.float32, torch.float64, torch.float16)}


class _Memory:
    """What a binding's numpy views keep alive, as their `base` (one object for all of them).

    A view made by `Tensor.numpy()` costs about 390 bytes (RSS, 100,000 parameters): the array
    and, as its base, a tensor object of its own (for a parameter that requires grad, the
    `detach()` it needs first). These are made from the tensors' addresses, about 100 bytes each
    and one `_Memory`; `kept` holds the parameter's storage (which outlives a `param.data = ...`,
    as a detached alias would) or its working copy, and the binding's state tensors.
    """

    __slots__ = ("kept", "__array_interface__")

    def __init__(self, kept: tuple):
        self.kept = kept

    def view(self, tensor: torch.Tensor) -> np.ndarray:
        """A numpy array over a contiguous CPU tensor of a dtype in `_TYPESTRS`."""
        self.__array_interface__ = {"data": (tensor.data_ptr(), False),
                                    "shape": tuple(tensor.shape),
                                    "typestr": _TYPESTRS[tensor.dtype], "version": 3}
        try:
            return np.asarray(self)
        finally:
            del self.__array_interface__


class _Moment(Parameter):
    """A moment of a parameter (`key` one of `STATE_KEYS`), named `<key>.<the parameter's name>`
    when its name is asked for, in an error: made for each binding, such names took about 90
    bytes each."""

    __slots__ = ("_of",)

    def __init__(self, data: Any, key: str, of: Parameter):
        # Not `Parameter.__init__`: `data` is already what it would keep (`_view` of a state
        # tensor: a writable C-contiguous numpy array, or a CUDA tensor that requires no grad),
        # and its checks took a microsecond, for each moment of each parameter.
        self._data, self._name, self._of = data, key, of

    @property
    def name(self) -> str:
        return f"{self._name}.{self._of.name}"


def _view(tensor: torch.Tensor, memory: _Memory | None = None) -> Any:
    """The array a kernel takes for `tensor`, sharing its memory: a numpy array over a CPU tensor,
    the (detached) tensor itself for a CUDA tensor, which the CUDA target reads through
    `__cuda_array_interface__`. (The only place that decides how kernels see a tensor.)

    `memory`, for the tensors a binding keeps (contiguous): a CPU tensor's array is `memory`'s
    view of it, the smaller kind (a gradient's, made every step, is `Tensor.numpy()`'s, which
    takes less time)."""
    if memory is not None and not tensor.is_cuda and tensor.dtype in _TYPESTRS:
        return memory.view(tensor)
    if tensor.requires_grad:
        tensor = tensor.detach()
    if tensor.is_cuda:
        return tensor
    return to_host(tensor) if tensor.dtype == torch.bfloat16 else tensor.numpy()  # ml_dtypes


def _gradient(grad: torch.Tensor, name: str) -> Any:
    """A parameter's gradient as the slot takes it: an array (dense), or a `RowTensor` of rows.

    A COO gradient sparse in its first dimension only (sparse_dim 1, as `nn.Embedding` and
    `nn.EmbeddingBag` make them) gives its row indices and values, uncoalesced, as they are; one
    sparse in more dimensions (`dense.to_sparse()`) is read as rows by `_rows`. A negative view
    (`torch._neg_view`) is resolved and a ZeroTensor made into zeros (copies: numpy reads neither).

    Raises:
        ValueError: a sparse gradient that is not COO, or has no sparse dimension.
        IndexError: an index outside the parameter, in a sparse dimension after the first.
    """
    if grad.layout == torch.strided:
        if grad._is_zerotensor():
            grad = torch.zeros_like(grad)
        return _view(grad.resolve_neg())
    if grad.layout != torch.sparse_coo or grad.sparse_dim() == 0:
        sparse_dim = grad.sparse_dim() if grad.layout == torch.sparse_coo else "-"
        raise ValueError(f"the gradient of parameter {name!r} is {grad.layout} with sparse_dim "
                         f"{sparse_dim}; lazy updates take sparse COO gradients sparse in their "
                         "first dimension at least (as nn.Embedding, nn.EmbeddingBag and "
                         "Tensor.to_sparse make them)")
    if grad.sparse_dim() > 1:
        indices, values = _rows(grad, name)
    else:
        indices, values = grad._indices()[0], grad._values()
    return RowTensor(_view(indices), _view(values.resolve_neg()), grad.shape)


def _rows(grad: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The row indices and values of a COO gradient sparse in more than its first dimension:
    coalesced (duplicates summed), each row it touches whole, the elements of such a row that it
    leaves out zero. (So the lazy update is by rows, as for every sparse gradient: such an
    element gets a zero-gradient step with its row, where SparseAdam leaves it alone.)

    Raises:
        IndexError: an index outside the parameter in a sparse dimension after the first
            (checked before coalescing, which would fold it into another element; the first
            dimension is the slot's to check).
    """
    raw = grad._indices()
    for dim in range(1, grad.sparse_dim()):
        size = grad.shape[dim]
        low, high = index_bounds(raw[dim]) if raw.shape[1] else (0, 0)
        if low < 0 or high >= size:
            raise IndexError(f"the gradient of parameter {name!r}, sparse dimension {dim}: "
                             f"{index_error(to_host(raw[dim]), size)}")
    grad = grad.coalesce()
    indices, values = grad.indices(), grad.values()
    rows, inverse = torch.unique(indices[0], return_inverse=True)
    dense = values.new_zeros((rows.shape[0],) + tuple(grad.shape[1:]))
    dense[(inverse, *indices[1:])] = values
    return rows, dense


def _scalar_dtype() -> torch.dtype:
    """The dtype of `step`, as `torch.optim.Adam` chooses it: float64 under a float64 default."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _bind(param: torch.Tensor, state: dict[str, Any] | None, options: _Options,
          name: str, position: int) -> tuple[_Binding, dict[str, Any]]:
    """A parameter's slot over its tensors as they are now, and the state entries to store.

    A parameter that is not contiguous (a transposed or sliced view), or a negative view, is
    stepped through a contiguous working copy of it that the binding keeps (`_Binding.copy`):
    each step copies the parameter in before the kernels and writes it back after them (two
    copies of the parameter a step, and the memory of one). Missing state is created (zeros in
    the state's dtype: the parameter's, or for a half-precision parameter float32 or the group's
    state_dtype; `step` 0); moments of another dtype or device are converted; a `step` that is not a
    0-d CPU tensor (SparseAdam keeps an int) becomes one; moments that are not contiguous, or
    are negative views or ZeroTensors, are copied. Nothing is stored here: the caller stores the
    returned entries once every gradient of the step has been checked.

    Raises:
        TypeError, ValueError: the parameter as `_check_parameter`.
        ValueError: state as `_check_state`, or of another shape than the parameter.
    """
    _check_parameter(param, name)
    state = state or {}
    _check_state(state, name)
    flags = options.flags
    keys = STATE_KEYS[: 3 if flags.amsgrad else 2]
    dtype, shape, device = param.dtype, param.shape, param.device
    moments = getattr(torch, flags.state_dtype or "float32") if dtype in HALF else dtype
    created: dict[str, Any] = {}
    for key in keys:
        tensor = state.get(key)
        if tensor is None:
            created[key] = torch.zeros(shape, dtype=moments, device=device)
            continue
        if tensor.shape != shape:
            raise ValueError(f"state {key!r} of parameter {name!r} is {tuple(tensor.shape)}, the "
                             f"parameter has shape {tuple(shape)}")
        if ((tensor.dtype, tensor.device) != (moments, device) or not tensor.is_contiguous()
                or tensor.is_neg() or tensor._is_zerotensor()):
            created[key] = tensor.detach().to(device=device, dtype=moments,
                                              memory_format=torch.contiguous_format, copy=True)
    step = state.get("step", 0)
    if not (isinstance(step, torch.Tensor) and step.device.type == "cpu" and step.dim() == 0
            and step.dtype in STEP_DTYPES):
        # `full`: the 0-d tensor `torch.tensor(count)` makes, in half its 5 us
        created["step"] = torch.full((), _count(step, name), dtype=_scalar_dtype())
    tensors = {**state, **created}
    copy = None
    if not param.is_contiguous() or param.is_neg():
        copy = (param.detach(), torch.empty(shape, dtype=dtype, device=device))
    bound = tuple(tensors.get(key) for key in STATE_KEYS + ("step",))
    arrays = [param if copy is None else copy[1], *(tensors[key] for key in keys)]
    memory = _Memory((param.untyped_storage() if copy is None else copy[1], bound))
    views = [_view(tensor, memory) for tensor in arrays]
    view = views[0]
    home = Parameter(view, name=name)
    moments = [_Moment(array, key, home) for key, array in zip(keys, views[1:])]
    if home.on_device:
        check_device_state(home, moments)
    spec = _spec(home, dtype, flags)
    slot = Slot(home, id(param), False, spec, target_for(view), moments,
                seed_offset=position * SEED_STRIDE % 2**64)
    key = _key(param, bound, position)
    key = key[:2] + (shared(key[2]), shared(key[3])) + key[4:]  # shape, strides
    return _Binding(slot, memory.view(tensors["step"]), key, flags, copy, bound), created


def _spec(home: Parameter, dtype: torch.dtype, flags: _Flags) -> Spec:
    """`spec_for` a parameter of `dtype` (`home`, its array) in a group of `flags`, made once
    for each (3 us a parameter otherwise, a tenth of binding one)."""
    found = _SPECS.get((dtype, flags))
    if found is None:
        decay = ("decoupled" if flags.decoupled_weight_decay else "l2") if flags.decayed else "none"
        options = dict(nesterov=flags.nesterov, decay=decay, amsgrad=flags.amsgrad,
                       maximize=flags.maximize, eps_mode=flags.eps_mode)
        found = _SPECS[dtype, flags] = spec_for(home, ADAM, options,
                                                use_locking=flags.use_locking,
                                                state_dtype=flags.state_dtype,
                                                rounding=flags.rounding)
    return found


#: The spec of each parameter dtype and group flags bound so far.
_SPECS: dict[tuple[torch.dtype, _Flags], Spec] = {}


def _check_state(state: dict[str, Any], name: str) -> None:
    """A parameter's state, as a step reads it (its shapes are `_bind`'s to check): moments
    that are dense real floating-point tensors, a `step` that is a count (`_count`).

    Raises:
        ValueError: naming the parameter and the field.
    """
    for key in STATE_KEYS:
        tensor = state.get(key)
        if tensor is None:
            continue
        where = f"state {key!r} of parameter {name!r}"
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{where} is a {type(tensor).__name__}, not a tensor")
        if tensor.layout != torch.strided:
            raise ValueError(f"{where} has layout {tensor.layout}; moments are dense (strided) "
                             "tensors")
        if not tensor.is_floating_point():
            raise ValueError(f"{where} has dtype {tensor.dtype}; moments are real floating-point "
                             "tensors")
    if "step" in state:
        _count(state["step"], name)


def _count(step: Any, name: str) -> float:
    """The count a `step` state holds (a number, or a tensor of one element; SparseAdam keeps an
    int): an integer in [0, 2**64 - 1), so that the next step's count is one the kernels take.

    Raises:
        ValueError: anything else, naming the parameter.
    """
    where = f"state 'step' of parameter {name!r}"
    if isinstance(step, torch.Tensor):
        if step.numel() != 1:
            raise ValueError(f"{where} has {step.numel()} elements; a step count is one number")
        if step.is_complex():
            raise ValueError(f"{where} has dtype {step.dtype}; a step count is a real number")
        count = float(step)
    elif isinstance(step, numbers.Real) and not isinstance(step, bool):
        count = float(step)
    else:
        what = "None" if step is None else f"a {type(step).__name__}"
        raise ValueError(f"{where} is {what}, not a count")
    if not (0 <= count < 2**64 - 1 and count.is_integer()):
        raise ValueError(f"{where} is {count!r}, not a count (an integer in [0, 2**64 - 1))")
    return count


def _key(param: torch.Tensor, tensors: tuple, position: int) -> tuple:
    """What a binding depends on besides the identity of the state tensors (`tensors`: exp_avg,
    exp_avg_sq, max_exp_avg_sq or None, step): where the parameter's elements are (its memory,
    dtype, shape, strides, negative bit, device type), the state tensors' memory, and, last,
    the parameter's position (which moves its seed)."""
    exp_avg, exp_avg_sq, vmax, step = tensors
    return (param.data_ptr(), param.dtype, param.shape, param.stride(), param.is_neg(),
            param.is_cuda, exp_avg.data_ptr(), exp_avg_sq.data_ptr(),
            0 if vmax is None else vmax.data_ptr(), step.data_ptr(), position)


class _Memo(NamedTuple):
    """What a full check of a step found, for `LazyAdam._recheck` to confirm on the next steps.

    Made only for steps whose every gradient went to a dense CUDA kernel bound to PyTorch tensors
    and was taken as it is (contiguous, not copied), each parameter updated in place (no working
    copy). Per group: the group dict, its params list, its options' flags (None: no gradients),
    and per parameter None (no gradient) or `(param, its data_ptr, strides, shape,
    gradient dtype, device index, state dict, ((key, state tensor, its data_ptr), ...), _Binding,
    the slot and its call, the state's byte spans, the gradient's bytes)`.
    """

    groups: tuple
    capturable: bool

    @staticmethod
    def of(optimizer: LazyAdam, work: list, counts: list, capturable: bool) -> _Memo | None:
        """The memo of a step that `_check` prepared (`work`, `counts`), or None where it does
        not qualify."""
        prepared = {id(param): (item, binding) for item, (binding, _, param, _) in zip(work, counts)}
        groups = []
        for group in optimizer.param_groups:
            flags = None  # a group without gradients is not checked (as in `_check`)
            records = []
            for param in group["params"]:
                found = prepared.get(id(param))
                if found is None:
                    if param.grad is not None:
                        return None
                    records.append(None)
                    continue
                (slot, call, grad, _, scratch), binding = found
                if (slot.target != "cuda" or scratch is not None or not call.torch
                        or binding.copy is not None or grad[0] != param.grad.data_ptr()):
                    return None
                flags = binding.flags
                state = optimizer.state[param]
                tensors = tuple((key, state[key], state[key].data_ptr()) for key in
                                ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step") if key in state)
                records.append((param, param.data_ptr(), param.stride(), param.shape,
                                param.grad.dtype,
                                param.grad.get_device(), state, tensors, binding, slot, call,
                                call.spans, param.grad.numel() * param.grad.element_size()))
            groups.append((group, group["params"], flags, tuple(records)))
        return _Memo(tuple(groups), capturable)


class _Binding:
    """A parameter's `Slot`, bound to the memory its tensors had when it was made.

    The slot's arrays share the tensors' memory and keep it alive; `step` is a numpy view of the
    `step` state tensor; `tensors` are the state tensors bound (exp_avg, exp_avg_sq,
    max_exp_avg_sq or None, step), which the state must still hold (the same objects: another
    view of their memory, a `.t()`, may place its elements elsewhere); `key` is what `matches`
    compares with the tensors as they are now, with the group's `flags`; `copy` is None, or
    `(parameter, working copy)` for a parameter that is stepped through a contiguous copy (see
    `_bind`).
    """

    __slots__ = ("slot", "step", "key", "flags", "copy", "tensors")

    def __init__(self, slot: Slot, step: Any, key: tuple, flags: _Flags,
                 copy: tuple[torch.Tensor, torch.Tensor] | None, tensors: tuple):
        self.slot, self.step, self.key, self.flags, self.copy = slot, step, key, flags, copy
        self.tensors = tensors

    def matches(self, param: torch.Tensor, state: dict[str, Any] | None, flags: _Flags | None,
                position: int) -> bool:
        """True while the parameter and its state live where they did when this was made (and,
        `flags` given, the group's flags are the same)."""
        if (flags is not None and flags != self.flags) or state is None:
            return False
        exp_avg, exp_avg_sq, vmax, step = tensors = self.tensors
        get = state.get
        return (get("exp_avg") is exp_avg and get("exp_avg_sq") is exp_avg_sq
                and get("max_exp_avg_sq") is vmax and get("step") is step
                and self.key == _key(param, tensors, position))
