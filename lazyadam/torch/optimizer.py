"""`RuleOptimizer`: a `torch.optim.Optimizer` over the kernels of any `Rule`, stepping on the
`runtime.engine.Engine` that `lazyadam.LazyAdam` steps on.

A subclass names its rule (`RULE`) and says how a group's keywords give the rule's
hyperparameters (`_values`) and options (`_choices`); everything else is here:

    check    every group's options, every parameter (dtype, layout), its state and its gradient
             (dtype, shape, device, index range); kernels compiled and bound; nothing written
    count    (under the engine's lock) state created or converted, each parameter's `step` += 1
    apply    one kernel per gradient (CUDA: multi-tensor launches per kernel for the dense ones)

so a step that raises leaves every parameter and all state as they were. Each step reads where
every parameter and state tensor lives now (data pointer, dtype, shape, strides, negative bit,
device): after `model.to(torch.float64)`, `.cuda()`, `p.data = p.data.t()` or `load_state_dict`
the kernels are bound again, and state is moved to the parameter's device and dtype
(`binding.bind`). A step like the last one (the same groups, flags, parameters and state tensors;
dense CUDA gradients of the same dtype, shape and device) confirms the last step's checks in a
microsecond or two a parameter (`fast.recheck`).
"""

from __future__ import annotations

import operator
from typing import Any, Callable, Iterable

import torch

from ..codegen.rule import Rule
from ..codegen.spec import SpecBase
from ..runtime.engine import Engine, Prepared
from ..runtime.parameter import Parameter
from ..runtime.specs import spec_for
from . import binding as binder
from . import check, fast, groups, tensors
from .binding import Binding
from .capture import Graphs
from .fast import Captured, Checked
from .groups import Flags, Options


class RuleOptimizer(Graphs, torch.optim.Optimizer):
    """A `torch.optim.Optimizer` over the kernels of `RULE` (see the module).

    Subclasses set `RULE`, pass their keywords (with `groups.COMMON`) as `defaults`, and may
    override `_values`, `_choices`, `_inits` and `_counted`. State, per parameter, under the
    rule's torch names (`State.names["torch"]`) and `step` (a 0-d float tensor, as torch's Adam
    keeps it); `state_dict()` holds only tensors, numbers, strings and bools.
    """

    RULE: Rule

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        #: The kernel spec of each parameter dtype and group flags bound so far.
        cls._specs: dict[tuple[torch.dtype, Flags], SpecBase] = {}
        #: Every state key of the rule (whatever the options), in the rule's order.
        cls._keys = tuple(binder.torch_name(state) for state in cls.RULE.state)
        cls._valid: set[Flags] = set()

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]):
        self._reset()
        self._read(defaults, type(self).__name__)
        #: Holds the lock of every step and snapshot; made once: a load keeps it, so that it
        #: goes on excluding.
        self._engine = Engine()
        super().__init__(params, defaults)

    def _reset(self) -> None:
        """What a fresh, loaded or unpickled optimizer holds besides torch's state and its
        engine: no bindings yet."""
        self._bindings: dict[torch.Tensor, Binding] = {}
        #: The parameters of the captured step.
        self._captured: list[Captured] = []
        #: What the last full check of an all-CUDA dense step found, for `fast.recheck`.
        self._memo: fast.Memo | None = None
        #: The last reading of each group (`_read`), by its id: (group, its values, `Options`).
        self._readings: dict[int, tuple[dict, tuple, Options]] = {}

    # -- a subclass's options ----------------------------------------------------------------

    def _values(self, group: dict[str, Any], where: str) -> dict[str, float]:
        """The rule's settable hyperparameters from a group (`groups.read_values`)."""
        return groups.read_values(self.RULE, group, where)

    def _choices(self, group: dict[str, Any], where: str, values: dict[str, float]) -> tuple:
        """The rule's options from a group, as (name, value) pairs: each option a keyword, but
        one named as a hyperparameter, on where that is not its default."""
        rule = self.RULE
        return tuple((option.name, values[option.name] != rule.hparam(option.name).default
                      if option.name in rule.hparam_options
                      else groups.read_option(option, group[option.name], where))
                     for option in rule.options)

    def _inits(self, group: dict[str, Any], state: dict[str, Any]) -> dict[str, float] | None:
        """First values of state arrays, by rule name, where not the rule's (None: the rule's):
        a state array's `init_beside` value where the array it names is in `state` already."""
        beside = {}
        for array in self.RULE.state:
            if array.init_beside is not None:
                other, value = array.init_beside
                named = next(s for s in self.RULE.state if s.name == other)
                if state.get(named.names.get("torch", other)) is not None:
                    beside[array.name] = value
        return beside or None

    def _counted(self, spec: SpecBase) -> bool:
        """Whether a parameter of `spec` keeps a `step` count in its state."""
        return True

    def _read(self, group: dict[str, Any], where: str) -> Options:
        """Reads and checks a group's options (`where` names the group in errors), every step:
        the last reading again while the group holds the same objects (and they are numbers,
        strings, None or tuples of them, which nobody changes in place), in a microsecond.

        Raises:
            TypeError, ValueError: a bad option, or options the rule refuses together (the
                rule's `SpecError`, a ValueError, with `where`).
        """
        held = tuple(group.values())
        last = self._readings.get(id(group))
        if (last is not None and last[0] is group and len(last[1]) == len(held)
                and all(map(operator.is_, held, last[1]))):
            return last[2]
        options = self._read_anew(group, where)
        if groups.immutable(group):
            self._readings[id(group)] = (group, held, options)
        return options

    def _read_anew(self, group: dict[str, Any], where: str) -> Options:
        values = self._values(group, where)
        choices = self._choices(group, where, values)
        seed, flags, capturable = groups.read_common(group, where, choices)
        if flags not in self._valid:
            try:
                self.RULE.spec(**dict(choices), use_locking=flags.use_locking).validate()
            except ValueError as error:
                raise type(error)(f"{where}: {error}") from None
            self._valid.add(flags)
        return Options(values, seed, flags, capturable)

    def _spec(self, home: Parameter, dtype: torch.dtype, flags: Flags) -> SpecBase:
        """`spec_for` a parameter of `dtype` (`home`, its array) in a group of `flags`, made once
        for each (3 us a parameter otherwise, a tenth of binding one)."""
        found = self._specs.get((dtype, flags))
        if found is None:
            found = self._specs[dtype, flags] = spec_for(
                home, self.RULE, dict(flags.options), use_locking=flags.use_locking,
                state_dtype=flags.state_dtype, rounding=flags.rounding)
        return found

    def _bind(self, param: torch.Tensor, state: dict[str, Any] | None, group: dict[str, Any],
              flags: Flags, name: str, position: int) -> tuple[Binding, dict[str, Any]]:
        return binder.bind(param, state, flags, name, position, spec_of=self._spec,
                           keys=self._keys, counted=self._counted, who=self._who(),
                           inits=self._inits(group, state or {}))

    def _who(self) -> str:
        return f"lazyadam.torch.{type(self).__name__}"

    # -- torch's books ---------------------------------------------------------------------------

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickling and `load_state_dict` end here: groups saved without an option get the
        default, and every parameter is bound again at its next step."""
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        if "_engine" not in self.__dict__:  # unpickled; a load keeps the engine and its lock
            self._engine = Engine()
        self._reset()

    def state_dict(self) -> dict[str, Any]:
        """torch's `state_dict`, taken once no step is running its kernels (`Engine.quiescent`):
        with use_locking=False a step runs them after releasing the lock, and a snapshot then
        would record its count with the state of the step before."""
        with self._engine.quiescent():
            return super().state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a state (see `torch.optim.Optimizer.load_state_dict`), once no step is running
        its kernels, under the step lock.

        Two differences from torch's: the state is checked before anything is loaded (after the
        load pre-hooks), and floating-point state keeps its dtype, moved to the parameter's
        device. (torch casts it to the parameter's dtype: the float32 state of a float16
        parameter would lose its small values and overflow its large ones, that of a bfloat16
        parameter its precision.) A step converts state of another dtype, as it converts any
        state (see `binding.bind`).

        Raises:
            ValueError: a `step` that is not a count (None, negative, not an integer, 2**64 - 1 or
                more, more than one element), a state array that is not a dense real
                floating-point tensor; naming the parameter and the field. Nothing is loaded.
                Otherwise as torch's.
        """
        loaded = []

        def check(optimizer: RuleOptimizer, state_dict: dict[str, Any]) -> None:
            saved_groups = state_dict.get("param_groups", ())
            saved_state = state_dict.get("state", {})
            for number, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
                names = group.get("param_names")
                for i, index in enumerate(saved.get("params", ())):
                    found = saved_state.get(index)
                    if isinstance(found, dict):
                        binder.check_state(found, names[i] if names else
                                           f"group {number} param {i}", self._keys)
            loaded.append(state_dict)

        with self._engine.quiescent():
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
                SparseAdam), or a scalar where the rule keeps state per row; the group is not
                added.
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
            self._read({**self.defaults, **param_group}, where)
            per_row = [s.name for s in self.RULE.state if s.per == "row" and s.when is None]
            listed_as = {id(p): f"param {i} of param group {number}"
                         for number, group in enumerate(self.param_groups)
                         for i, p in enumerate(group["params"])}
            for i, param in enumerate(listed):
                name, tensor = param if isinstance(param, tuple) and len(param) == 2 else (
                    f"{where} param {i}", param)
                if isinstance(tensor, torch.Tensor):
                    tensors.check_parameter(tensor, name, self._who())
                    if per_row and tensor.dim() == 0:
                        raise ValueError(f"parameter {name!r} is a scalar: {self._who()} keeps "
                                         f"{', '.join(per_row)} per row, for parameters of rank "
                                         ">= 1 (rows first)")
                    if id(tensor) in listed_as:
                        raise ValueError(f"parameter {name!r} is {listed_as[id(tensor)]}: list "
                                         "each parameter once (torch.optim warns and steps it "
                                         "twice, and says this will become an error)")
                    listed_as[id(tensor)] = f"param {i} of {where}"
        super().add_param_group(param_group)

    def _make_state(self) -> None:
        """Makes every parameter's state now, as torch's Adagrad does at construction (so that
        a saved state of either loads into the other)."""
        position = 0
        for number, group in enumerate(self.param_groups):
            flags = self._read(group, f"param group {number}").flags
            names = group.get("param_names")
            for i, param in enumerate(group["params"]):
                name = names[i] if names else f"group {number} param {i}"
                found, created = self._bind(param, self.state.get(param), group, flags, name,
                                            position)
                self.state[param].update(created)
                self._bindings[param] = found
                position += 1

    # -- a step ----------------------------------------------------------------------------------

    @torch.compiler.disable
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step for every parameter that has a gradient; parameters with `grad` None are
        skipped (their `step` does not count), and the options of a group without gradients are
        not read (as torch's optimizers: a scheduler may move them out of range meanwhile).

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
        self._engine.step(self._prepare, capture=self._capturing(),
                          locking=lambda: any(g["use_locking"] for g in self.param_groups))
        return loss

    def _prepare(self, capture: bool) -> Prepared:
        """The check phase (`Engine.step`'s `check`): the fast recheck, or the full one."""
        checked = None if capture else fast.recheck(self)
        full = checked is None
        if full:
            self._memo = None
            checked = self._check(capture)
        copies = [binding.copy for binding in checked.bindings if binding.copy is not None]

        def store() -> None:
            for param, binding, created in checked.pending:
                if created:
                    self.state[param].update(created)
                self._bindings[param] = binding

        def commit() -> dict:
            store()
            if full:
                self._memo = fast.Memo.of(self, checked)
            for binding, t in zip(checked.bindings, checked.ts):
                binding.step.fill(t)
            return checked.hparams

        if capture:  # recorded, not run: prepare_replay counts each replay
            store()
            self._captured = checked.captured
        return Prepared(checked.work, checked.capturable, commit, hparams=checked.hparams,
                        around=(lambda: _copy_in(copies), lambda: _copy_back(copies))
                        if copies else None)

    def _check(self, capture: bool = False) -> Checked:
        """The full check phase (`check.full`)."""
        return check.full(self, capture)


def _copy_in(copies: list) -> None:
    """Before the kernels: each parameter stepped through a working copy copied into it."""
    for param, working in copies:
        working.copy_(param)


def _copy_back(copies: list) -> None:
    """After the kernels: each working copy written back to its parameter."""
    for param, working in copies:
        param.copy_(working)
