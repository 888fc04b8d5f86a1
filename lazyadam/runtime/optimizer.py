"""`Optimizer`: MindSpore's optimizer API over the generated kernels of any `Rule`
(docs/mindspore.md); `lazyadam.LazyAdam`, `lazyadam.Momentum`, `lazyadam.Adagrad` and the classes
`lazyadam.optimizer(rule)` makes are its subclasses.

A call `optimizer(gradients)` works in two phases (`Engine.step`), so that a failed call changes
nothing:

    check    gradients, indices, learning rate and weight decay of step k; compile missing kernels
    apply    k += 1, the rule's running powers *= their base (MindSpore's beta powers), every
             parameter's kernels with this step's hyperparameters (`layout.entry`)

Each parameter gets a spec of the rule from its dtype and the optimizer's options; the gradient
picks the dense or the lazy sparse kernel (and the index dtype). Kernels are compiled once
(`lazyadam.targets`) and kept per parameter; hyperparameters travel as runtime arguments, so no
value of lr or weight decay ever recompiles.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, Sequence

from ..codegen.rule import Rule
from .arguments import fixed_hparams, rule_options
from .checks import check_phase
from .engine import Engine, Prepared
from .groups import parse_params
from .launcher import Launcher, capturing
from .layout import entry, powered, settable
from .options import flag, rounding_options
from .parameter import Parameter
from .rates import Group, Rate, parse_rate, parse_weight_decay
from .slot import Slot
from .state import allocate
from .specs import SEED_STRIDE, spec_for, state_names, target_for
from . import snapshot

__all__ = ["Optimizer", "decays_by_default", "target_for"]


def decays_by_default(param: Parameter) -> bool:
    """MindSpore's default weight-decay filter: names without `beta` or `gamma` (norm layers)."""
    return "beta" not in param.name and "gamma" not in param.name


class Optimizer:
    """MindSpore's optimizer conventions over the kernels of the rule `RULE`.

    Each call `optimizer(gradients)` takes one gradient per parameter, in parameter order: an
    array of the parameter's shape and dtype (dense update) or a `RowTensor` (lazy sparse update:
    rows not in `indices` keep their value and state). It returns True. Every gradient is
    checked before anything is written: a call that raises leaves parameters, state, running
    powers and the step exactly as they were.

    A subclass sets `RULE` (and `NAMES`, the front end's names of the rule's hyperparameters and
    options, by default the rule's `frontends["mindspore"]` with `lr` as `learning_rate`) and
    translates its own arguments into the keywords of `__init__`. The state arrays of each
    parameter are the rule's (`State`), named `<MindSpore name>.<parameter name>`; a subclass
    gets a property per state array under its MindSpore name (a tuple, one array per parameter)
    and one per "power:" hyperparameter (its running product, 1.0 before the first step).

    Args:
        params: a list of `Parameter`s, or of group dicts with keys `params` (required), `lr`,
            `weight_decay`, `grad_centralization`; one more dict holding only `order_params`
            fixes the order of parameters (and of gradients) to exactly the grouped parameters.
        learning_rate: as `lazyadam.LazyAdam`'s: a number, an array or sequence, an iterator or
            a `LearningRateSchedule`.
        weight_decay: a number >= 0 or a schedule; without groups it applies to parameters whose
            names contain neither `beta` nor `gamma` (`decays`).
        hparams: the rule's other settable hyperparameters by the rule's names, checked against
            their domains; a missing one takes the rule's default.
        options: the rule's options by the rule's names; a missing one takes its default. The
            option "decay" names the form of weight decay of a decayed parameter ("l2" or
            "decoupled"); a parameter that is not decayed takes "none".
        use_locking, state_dtype, rounding, seed, capturable: as `lazyadam.LazyAdam`'s.
        inits: first values of state arrays, by the rule's names (Adagrad's accumulator).

    Raises:
        TypeError, ValueError, KeyError, RuntimeError: bad parameters or arguments, naming them.
        SpecError: options the rule refuses together.
    """

    RULE: ClassVar[Rule]
    NAMES: ClassVar[Mapping[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        rule = cls.__dict__.get("RULE")
        if rule is None:
            return
        if "lr" not in settable(rule):
            raise TypeError(f"rule {rule.name!r} has no hyperparameter 'lr': a MindSpore-style "
                            "optimizer needs its learning rate")
        if "NAMES" not in cls.__dict__:
            cls.NAMES = {"lr": "learning_rate", **rule.frontends.get("mindspore", {})}
        for state in rule.state:
            name = state.names.get("mindspore", state.name)
            if not hasattr(cls, name):
                setattr(cls, name, property(
                    lambda self, s=state.name: self.states(s),
                    doc=f"The {state.name} state arrays, one per parameter, named "
                        f"`{name}.<parameter name>`; () where the options keep none."))
        for power in powered(rule):
            if not hasattr(cls, power):
                setattr(cls, power, property(lambda self, p=power: self._powers[p],
                                             doc=f"{power} after t calls (1.0 before the first)."))

    def __init__(self, params: Any, learning_rate: Any = 1e-3, weight_decay: Any = 0.0, *,
                 hparams: Mapping[str, Any] | None = None,
                 options: Mapping[str, Any] | None = None, use_locking: bool = False,
                 state_dtype: str | None = None, rounding: str = "nearest", seed: int = 0,
                 capturable: bool = False, inits: Mapping[str, float] | None = None):
        rule = getattr(type(self), "RULE", None)
        if rule is None:
            raise TypeError("Optimizer is the base of the MindSpore-style classes and has no "
                            "rule: make one with lazyadam.optimizer(rule), or take a class such "
                            "as lazyadam.LazyAdam")
        self.use_locking = flag(use_locking, "", "use_locking")
        self.capturable = flag(capturable, "", "capturable")
        self.state_dtype, self.rounding, self.seed = rounding_options(state_dtype, rounding,
                                                                      seed, "")
        self._fixed = fixed_hparams(rule, hparams or {}, self.name_of)
        self._options, self._decay = rule_options(rule, options or {}, self.name_of)
        for name, value in (*self._fixed.items(), *self._options.items()):
            if not hasattr(self, self.name_of(name)):  # a hyperparameter first, as Momentum's
                setattr(self, self.name_of(name), value)
        self._inits = dict(inits) if inits else None
        self._powered = tuple(powered(rule).items())
        self._powers = {name: 1.0 for name, _ in self._powered}
        # The rule refuses some options together: before any parameter is looked at.
        rule.spec(**self._spec_options(True)).validate()

        default_lr = parse_rate(learning_rate, self.name_of("lr"))
        default_wd = parse_weight_decay(weight_decay, self.name_of("weight_decay"))
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

    # -- arguments -------------------------------------------------------------------------------

    def name_of(self, name: str) -> str:
        """The front end's name of the rule's hyperparameter or option `name`."""
        return self.NAMES.get(name, name)

    def _spec_options(self, decayed: bool) -> dict[str, Any]:
        """The rule's options of a parameter's spec, decayed or not."""
        if self._decay is None:
            return self._options
        return {**self._options, "decay": self._decay if decayed else "none"}

    def decays(self, param: Parameter) -> bool:
        """Whether weight decay applies to `param` when parameters are not grouped
        (`decays_by_default`)."""
        return decays_by_default(param)

    def _make_slots(self, groups: list[dict], slots: dict[int, Slot], positions: dict[int, int],
                    default_lr: Rate, default_wd: Rate) -> None:
        """Parses each group's options into `self._groups` and makes its parameters' slots."""
        for number_, group in enumerate(groups):
            where = f"group {number_}" if self.is_group else "params"
            lr = parse_rate(group["lr"], f"{where} lr") if "lr" in group else default_lr
            wd = (parse_weight_decay(group["weight_decay"], f"{where} weight_decay")
                  if "weight_decay" in group else default_wd)
            centralize = group.get("grad_centralization", False)
            if not isinstance(centralize, bool):
                raise TypeError(f"{where} grad_centralization must be a bool, got "
                                f"{type(centralize).__name__}: {centralize!r}")
            if (wd.dynamic or wd.value > 0.0) and "weight_decay" not in settable(self.RULE):
                raise ValueError(f"{where} weight_decay: the rule {self.RULE.name!r} has no "
                                 "weight decay")
            self._groups.append(Group(lr, wd))
            for param in group["params"]:
                decayed = wd.dynamic or wd.value > 0.0
                if not self.is_group:
                    decayed = decayed and self.decays(param)
                slots[id(param)] = self._slot(param, number_, decayed, centralize,
                                              positions[id(param)])

    def _slot(self, param: Parameter, group: int, decayed: bool, centralize: bool,
              position: int) -> Slot:
        spec = spec_for(param, self.RULE, self._spec_options(decayed),
                        use_locking=self.use_locking, state_dtype=self.state_dtype,
                        rounding=self.rounding)
        return Slot(param, group, centralize, spec, target_for(param.data),
                    allocate(param, spec, "mindspore", self._inits),
                    seed_offset=position * SEED_STRIDE % 2**64)

    # -- state -----------------------------------------------------------------------------------

    @property
    def parameters(self) -> tuple[Parameter, ...]:
        """The parameters, in the order gradients are expected."""
        return tuple(s.param for s in self._slots)

    def states(self, name: str) -> tuple[Parameter, ...]:
        """The state arrays the rule names `name`, one per parameter (in parameter order), named
        `<MindSpore name>.<parameter name>`; () where the options keep none.

        Raises:
            KeyError: the rule has no state array `name`.
        """
        if name not in {s.name for s in self.RULE.state}:
            raise KeyError(f"rule {self.RULE.name!r} keeps no state {name!r}; it keeps "
                           f"{', '.join(s.name for s in self.RULE.state)}")
        if name not in state_names(self._slots[0].spec):
            return ()
        return tuple(s.state(name) for s in self._slots)

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
        raise ValueError(f"parameter {param.name!r} is not optimized by this "
                         f"{type(self).__name__}")

    def state_dict(self) -> dict[str, Any]:
        """A copy of the whole training state (`snapshot.state_dict`): the rule's name, step,
        running powers and their bases, the options that keep state, the seed, and the
        parameters and state arrays by MindSpore name, as host numpy copies.

        A consistent snapshot whatever `use_locking`: it waits for the steps applying their
        kernels, and steps that begin meanwhile wait for it.
        """
        with self._engine.quiescent():
            return snapshot.state_dict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores a `state_dict()` in place (`snapshot.load_state_dict`); checks all of it
        before writing anything.

        Raises:
            ValueError: another rule, a missing entry, other names, shapes or dtypes, other bases
                of the running powers, state kept or not where this optimizer differs; the
                message says what differs.
        """
        snapshot.load_state_dict(self, state)

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
            TypeError, ValueError, IndexError, CompilationError: as `lazyadam.LazyAdam.__call__`.
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
        """Counts the step (under the engine's lock): the step and the running powers move on;
        returns the step's hparams entries, by group."""
        hparams, powers = self._next_hparams()
        self._step += 1
        self._powers = powers
        return hparams

    def _next_hparams(self) -> tuple[list[tuple], dict[str, float]]:
        """The hyperparameters of each group for the next step, and its running powers.

        Raises:
            IndexError, TypeError, ValueError: as `__call__`, for the learning rate or weight decay.
        """
        step, fixed, last = self._step, self._fixed, self._powers
        powers = {}
        for name, base in self._powered:  # a loop: a comprehension is a call of its own (3.11)
            powers[name] = last[name] * fixed[base]
        return ([entry(self.RULE, {**fixed, "lr": g.lr.at(step), "weight_decay": g.wd.at(step)},
                       step + 1, self.seed, powers) for g in self._groups], powers)

    def prepare_replay(self) -> None:
        """Counts one replay of the captured step as a step, and stores its hyperparameters
        (learning rate and weight decay of the step, running powers, step) in the device memory
        that the captured kernels read; call it before each `graph.replay()`, on the stream that
        replays (PyTorch's current stream). Nothing waits.

        Raises:
            RuntimeError: no step was captured, or its arrays moved since.
            IndexError, TypeError, ValueError: as `__call__`, for the learning rate or weight
                decay of the step. Nothing was changed when any of these is raised.
        """
        self._engine.replay(lambda: (self._next_hparams()[0], self._count))

    def check_indices(self) -> None:
        """Waits for the queued steps and raises what a capturable step's index check found.

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
        fixed = ", ".join(f"{self.name_of(k)}={v}" for k, v in self._fixed.items())
        return (f"{type(self).__name__}({len(self._slots)} parameters, {len(self._groups)} "
                f"groups, {fixed}, global_step={self._step})")
