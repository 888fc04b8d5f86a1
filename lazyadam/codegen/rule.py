"""Update rules as data: what an optimizer declares, and the registry of the rules there are.

A `Rule` names its options (the flags of a kernel), its hyperparameters (the fields of the
per-call struct, with their domains and defaults, which may be baked in as static values, which are
derived each step), its state arrays (per element, their dtype policy and initial value, and their
names in each front end) and its lowering to the IR: the effective gradient of one occurrence and
the update of one element. Everything else (the loads and stores, `Kernel.arrays`, the
hyperparameter struct) is made from that by `ir.assemble` and `hparams_struct`.

Rules live in `lazyadam/rules/<name>.py` and register themselves when `lazyadam.rules` is imported
(importing `lazyadam` does). This module imports no rule: codegen knows rules only through the
registry.
"""

from __future__ import annotations

import functools
import importlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .spec import spec_class

#: The identifiers that the templates declare in a kernel's body (loop counters, sizes, pointers,
#: scratch): no state array of a rule may take one of these names, and no hoisted scalar does
#: (`passes.hoist_invariants` numbers it instead), so that nothing a rule names is shadowed by a
#: template's local.
RESERVED = frozenset("""
    a a_bytes aligned at b bad base begin biased bits block blocks bytes c c0 chunks col count
    counts cub_bytes current cursor d e each elements end end_bit entry first first_chunk
    first_element found from grad h held hi high hp hp_on_device hparams_on_device i indices items
    j j0 k key l lane last last_run lo magnitude mantissa mask max_chunks max_long mid mine n next
    nlong nnz o p pad part pass passes pos_bits position positions_in previous r record rounded
    row row_size rows run run_blocks run_chunks runs s seed segments shift shifted sign skew slot
    sort_bytes sorted source state_row status step stop stream stride sums t team threads
    threads_needed to total u value values var wanted warp_per_item warps which width workspace
    workspace_bytes x""".split())

#: The uint64 fields that end every rule's hyperparameter struct: the seed and the step t that
#: stochastic rounding hashes.
ROUNDING_FIELDS = ("seed", "step")


@dataclass(frozen=True)
class Interval:
    """The numbers from `low` to `high`; `closed` says which ends belong: "[)", "()", "[]", "(]"."""
    low: float
    high: float = math.inf
    closed: str = "[)"

    def __contains__(self, value: float) -> bool:
        above = value >= self.low if self.closed[0] == "[" else value > self.low
        below = value <= self.high if self.closed[1] == "]" else value < self.high
        return math.isfinite(value) and above and below

    def __str__(self) -> str:
        return f"{self.closed[0]}{self.low}, {self.high}{self.closed[1]}"


@dataclass(frozen=True)
class Option:
    """A flag of the kernel: its `values` (the first is `default`); `symbol` maps a value to its
    part of the kernel symbol (a bool flag is named by its name when true; a missing value adds
    nothing); `doc` says what it does (the spec class's docstring)."""
    name: str
    values: tuple
    default: Any
    symbol: Mapping[Any, str] | None = None
    doc: str = ""


@dataclass(frozen=True)
class HParam:
    """A double field of the hyperparameter struct.

    Attributes:
        name: the field's name (in C and Python).
        default: the value a front end uses when none is given (for a derived field, its value
            on the first step).
        domain: the values a call may pass.
        static: whether a spec may bake it in as a literal (`Spec.static`).
        static_domain: the values it may be baked in as, where narrower than `domain`.
        derived: how a front end computes it each step from other fields: "power:beta1" for
            beta1^t, "step" for t itself; None for a field the caller sets.
    """
    name: str
    default: float
    domain: Interval
    static: bool = True
    static_domain: Interval | None = None
    derived: str | None = None


@dataclass(frozen=True)
class State:
    """A state array of the rule.

    Attributes:
        name: its name in the IR and in the generated C (`m`).
        per: "element" (the shape of the parameter) or "row" (one value per row: shape
            `(rows,)`).
        dtype: "state" (`Spec.storage` of state: the state dtype, by default the arithmetic's).
        init: its value before the first step.
        when: the spec switch (`Spec.flag`) that makes the kernel keep it; None for always.
        names: its name in each front end, by front end ("mindspore", "torch"), and "plural" for
            the lists of it that multi-tensor calls take.
        init_beside: (another state array, a value): its value before the first step where that
            array is kept already, as when a switch turns it on after steps without it or a
            front end loads a state without it (SGD's `seen` is 1 beside a momentum buffer).
    """
    name: str
    per: str = "element"
    dtype: str = "state"
    init: float = 0.0
    when: str | None = None
    names: Mapping[str, str] = field(default_factory=dict)
    init_beside: tuple[str, float] | None = None


@dataclass(frozen=True)
class Lowering:
    """What a rule lowers to, before loads and stores: the effective gradient of one occurrence
    (`Assign`s to `g`), the update of one element (`Assign`s to the per-element state arrays and
    `var`) and, for a rule with per-row state or sums, the row's sums (`ir.Reduce`s) and its
    per-row statements (`Assign`s to per-row state and locals, read as `ir.Row`)."""
    grad: tuple
    update: tuple
    reduce: tuple = ()
    row: tuple = ()


@dataclass(frozen=True)
class Rule:
    """An update rule.

    Attributes:
        name: the registry's name ("adam").
        prefix: the prefix of every C name of its kernels ("lazyadam").
        options: the flags of its kernels.
        hparams: the double fields of its hyperparameter struct, in ABI order; the fields that
            `derived` names come after the plain ones.
        state: its state arrays, in ABI order (after `var`).
        symbol_order: the options, and the common "use_locking", in the order the kernel symbol
            names them.
        lower: [Spec] -> [Lowering], every option behind a `Switch` or an `Assign.when`.
        flag_order: the options and "use_locking" in the order of the spec's fields (after
            `sparse`) and of the product `variants` takes; empty for "use_locking", then the
            options.
        check: the rule's own checks of a spec, after the common ones (`SpecBase.validate`):
            raises `SpecError`; None for none.
        derived_comment: the struct's comment on the derived fields.
        frontends: per front end ("mindspore", "torch", "cli"), the names of its arguments that
            differ from the field's or option's own, by field or option name.
        doc: one line on what the rule computes.
        readme: Markdown list items on its kernels' arrays and hyperparameters, for the README
            that `lazyadam generate` writes beside them.
    """
    name: str
    prefix: str
    options: tuple[Option, ...]
    hparams: tuple[HParam, ...]
    state: tuple[State, ...]
    symbol_order: tuple[str, ...]
    lower: Callable[[Any], Lowering]
    flag_order: tuple[str, ...] = ()
    check: Callable[[Any], None] | None = None
    derived_comment: str = ""
    frontends: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    doc: str = ""
    readme: str = ""

    def __post_init__(self) -> None:
        """Raises ValueError for a state array named like a template's local (`RESERVED`), or an
        option named as a settable hyperparameter that is not a flag off by default (see
        `hparam_options`)."""
        clash = sorted(s.name for s in self.state if s.name in RESERVED | {"var", "grad", "g"})
        if clash:
            raise ValueError(f"rule {self.name!r}: state array {clash[0]!r} takes a name the "
                             "templates use; choose another")
        for option in self.options:
            if option.name in self.hparam_options and option.values != (False, True):
                raise ValueError(f"rule {self.name!r}: option {option.name!r} is named as a "
                                 "hyperparameter, so it must be a flag, off by default, that the "
                                 "hyperparameter's value switches on; name it otherwise")

    @property
    def flags(self) -> tuple[str, ...]:
        """The spec's flags in field order (`flag_order`, or "use_locking" and the options)."""
        return self.flag_order or ("use_locking", *(o.name for o in self.options))

    @functools.cached_property
    def spec(self) -> type:
        """The class of this rule's specs (`spec.spec_class`); `lazyadam.Spec` is Adam's."""
        return spec_class(self)

    @property
    def fields(self) -> tuple[str, ...]:
        """The fields of the hyperparameter struct in ABI order: the doubles, then the uint64
        `ROUNDING_FIELDS`."""
        return tuple(h.name for h in self.hparams) + ROUNDING_FIELDS

    @property
    def static_hparams(self) -> tuple[str, ...]:
        """The hyperparameters a spec may bake in."""
        return tuple(h.name for h in self.hparams if h.static)

    @property
    def hparams_type(self) -> str:
        """The C name of the hyperparameter struct."""
        return f"{self.prefix}_hparams"

    @functools.cached_property
    def hparam_options(self) -> tuple[str, ...]:
        """The options named as a settable hyperparameter (SGD's `dampening`, which switches on
        the `(1 - dampening)` factor). Such an option is a flag, off by default (checked when the
        rule is made), that means "the hyperparameter is not its default": a front end takes the
        hyperparameter alone and derives the flag from its value (torch's `dampening > 0`)."""
        settable = {h.name for h in self.hparams if h.derived is None}
        return tuple(o.name for o in self.options if o.name in settable)

    def hparam(self, name: str) -> HParam:
        """The hyperparameter `name`.

        Raises:
            KeyError: the rule has none of that name.
        """
        for h in self.hparams:
            if h.name == name:
                return h
        raise KeyError(f"rule {self.name!r} has no hyperparameter {name!r}; choose from "
                       f"{', '.join(h.name for h in self.hparams)}")

    def arrays(self, spec: Any) -> tuple[str, ...]:
        """The per-element arrays a kernel of `spec` reads and writes, in ABI order: var, then the
        per-element state arrays its switches keep."""
        return ("var",) + self._kept(spec, "element")

    def row_arrays(self, spec: Any) -> tuple[str, ...]:
        """The per-row state arrays a kernel of `spec` reads and writes, in ABI order (after
        `arrays`)."""
        return self._kept(spec, "row")

    def _kept(self, spec: Any, per: str) -> tuple[str, ...]:
        return tuple(s.name for s in self.state
                     if s.per == per and (s.when is None or spec.flag(s.when)))


def hparams_struct(rule: Rule) -> str:
    """The C declaration of `rule`'s hyperparameter struct: a line of the doubles a caller sets,
    a line of the derived ones with the rule's comment, a line of the rounding fields."""
    plain = ", ".join(h.name for h in rule.hparams if h.derived is None)
    derived = ", ".join(h.name for h in rule.hparams if h.derived is not None)
    lines = [f"typedef struct {rule.hparams_type} {{", f"    double {plain};"]
    if derived:
        comment = f"  /* {rule.derived_comment} */" if rule.derived_comment else ""
        lines.append(f"    double {derived};{comment}")
    rounding = ", ".join(ROUNDING_FIELDS)
    lines += [f"    uint64_t {rounding};  /* stochastic rounding hashes them (and each element's "
              "position) */", f"}} {rule.hparams_type};"]
    return "\n".join(lines) + "\n"


#: The registered rules, by name.
_RULES: dict[str, Rule] = {}


def register(rule: Rule) -> Rule:
    """Adds `rule` to the registry and returns it.

    Raises:
        ValueError: another rule of that name is registered.
    """
    known = _RULES.get(rule.name)
    if known is not None and known is not rule:
        raise ValueError(f"a rule named {rule.name!r} is already registered")
    spec_class(rule)  # made now, so that `SpecBase.from_json` finds the rule's specs
    _RULES[rule.name] = rule
    return rule


def get(name: str) -> Rule:
    """The rule registered as `name`, or the `Rule` at "module:attribute" (imported).

    Raises:
        KeyError: no such rule.
    """
    if ":" in name:
        module, _, attribute = name.partition(":")
        rule = getattr(importlib.import_module(module), attribute, None)
        if not isinstance(rule, Rule):
            raise KeyError(f"{name!r} is not a Rule")
        return rule
    if name not in _RULES:
        raise KeyError(f"unknown rule {name!r}; registered: {', '.join(sorted(_RULES)) or 'none'}")
    return _RULES[name]


def names() -> tuple[str, ...]:
    """The names of the registered rules, sorted."""
    return tuple(sorted(_RULES))
