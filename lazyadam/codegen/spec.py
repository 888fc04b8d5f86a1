"""The kernel spec: which kernel of a rule to generate.

Every rule has a spec class (`Rule.spec`, made by `spec_class`): a frozen, hashable dataclass with
the fields every kernel has (`SpecBase`: sparse or dense, locking, how it stores its arrays, static
hyperparameters) and the rule's own options. Every flag changes the generated code; every
hyperparameter is either a runtime argument (read from the rule's hyperparameter struct on each
call, so a sweep never recompiles) or a static value baked into the source. `lazyadam.Spec` is
LazyAdam's (`lazyadam.rules.adam`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import textwrap
from dataclasses import field
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import numpy as np

if TYPE_CHECKING:
    from .rule import Rule

#: Bumped whenever lowering, passes, printers or templates change what a spec generates.
CODEGEN_VERSION = "5"
#: The rule of a spec whose JSON names none (LazyAdam's specs never do).
DEFAULT_RULE = "adam"

DTYPES = {"float32": "f32", "float64": "f64", "bfloat16": "bf16", "float16": "f16"}
#: Parameter dtypes stored in 16 bits: their steps compute in float32 and round every write.
HALF_DTYPES = ("bfloat16", "float16")
#: Bytes of one element of each storage dtype.
ITEMSIZE = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}
#: State dtypes (of a rule's "state" arrays) that half-precision parameters may take; float32 is
#: the default.
STATE_DTYPES = ("float32", "bfloat16")
#: Gradient dtypes that half-precision parameters may take besides their own.
GRAD_DTYPES = ("float32",)
#: How a half-precision write rounds: to nearest even, or stochastically (see `SpecBase`).
ROUNDINGS = ("nearest", "stochastic")
INDEX_DTYPES = {"int32": "i32", "int64": "i64"}
#: Elements (dense: n; sparse: indices x row size) below which a C step runs on one thread, when
#: neither the spec nor LAZYADAM_PARALLEL_MIN says otherwise: below them, waking a second thread
#: never paid on 2 cores (benchmarks/bench_busy.py --sweep; docs/threads.md). Above them a kernel
#: learns from its own step times whether its team pays (c_parallel.j2).
PARALLEL_MIN = {"dense": 1 << 16, "sparse": 1 << 16}

class SpecError(ValueError):
    """An illegal spec: the message says what to change."""


class UnknownOptionError(SpecError, TypeError):
    """A keyword that a rule's specs do not take (another rule's option, say): a SpecError naming
    the fields they do take, and the TypeError Python raises for any unexpected keyword."""


#: The fields of every spec, (name, type, default), as they come before the rule's flags
#: (`HEAD_FIELDS`), among them (`use_locking`, placed by `Rule.flag_order`) and after them.
HEAD_FIELDS = (("sparse", bool, True),)
LOCKING_FIELD = ("use_locking", bool, False)
TAIL_FIELDS = (
    ("dtype", str, "float32"),
    ("index_dtype", str, "int64"),
    ("state_dtype", "str | None", None),
    ("grad_dtype", "str | None", None),
    ("rounding", str, "nearest"),
    ("static", "tuple[tuple[str, float], ...]", field(default=())),
    ("parallel_min", "int | None", None),
)
#: What each common field means, for the docstring of every spec class.
COMMON_DOCS = {
    "sparse": "lazy sparse kernel (rows given by an index array) instead of dense.",
    "use_locking": "row updates take a striped lock so concurrent calls are safe.",
    "dtype": 'parameter dtype: "float32", "float64", or a half-precision one, "bfloat16" or '
             '"float16", whose steps compute in float32 and round what they store.',
    "index_dtype": 'index dtype of sparse kernels, "int32" or "int64".',
    "state_dtype": "dtype of the rule's state arrays: None for the default, which is float32 for "
                   'half-precision parameters and the parameter\'s dtype otherwise; "bfloat16" '
                   "(half-precision parameters only) halves the state again.",
    "grad_dtype": "dtype of the gradient: None for the parameter's; \"float32\" for "
                  "half-precision parameters whose gradients come in float32.",
    "rounding": 'how every half-precision write rounds: "nearest" (to nearest even) or '
                '"stochastic" (up or down with probabilities that make the rounding unbiased, '
                "from random bits that hash the seed, the step and the element's position: the "
                "same bits on any thread count, in C and CUDA).",
    "static": "hyperparameters baked into the code, e.g. `{\"beta1\": 0.9}`; stored as a sorted "
              "tuple of pairs so that the spec stays hashable.",
    "parallel_min": "C kernels: a step of fewer elements than this (dense: the parameter's size; "
                    "sparse: indices x row size) runs on one thread. None: the environment "
                    "variable LAZYADAM_PARALLEL_MIN when the kernel is built, else `PARALLEL_MIN` "
                    "of the kernel's kind; 0: every step may use every thread. The results are "
                    "the same bits either way. A spec without it has the JSON (and symbol) it had "
                    "before the field existed.",
}
#: The spec class of each rule that has one, by rule name (`spec_class`).
_SPECS: dict[str, type] = {}


class SpecBase:
    """What every rule's spec does (its fields: `HEAD_FIELDS`, the rule's flags, `TAIL_FIELDS`).

    `RULE` is the rule whose kernels the spec class describes.
    """

    RULE: ClassVar[Rule]

    def __post_init__(self) -> None:
        static = self.static.items() if isinstance(self.static, Mapping) else self.static
        object.__setattr__(self, "static", tuple(sorted((str(k), v) for k, v in static)))
        # One spelling per kernel: a dtype equal to its default is stored as None (the state's
        # default is the arithmetic's dtype).
        if self.state_dtype is not None and self.state_dtype == self.compute_dtype:
            object.__setattr__(self, "state_dtype", None)
        if self.grad_dtype is not None and self.grad_dtype == self.dtype:
            object.__setattr__(self, "grad_dtype", None)

    def __reduce__(self) -> tuple:
        """Pickled as its JSON, which names its rule (the class is made, not importable)."""
        return spec_from_json, (self.to_json(),)

    def validate(self) -> SpecBase:
        """Checks the spec and returns it.

        Raises:
            SpecError: an unknown option, an illegal combination, or a static value that is illegal
                or would overflow (or vanish) as a literal of the kernel's dtype; the message says
                what to change.
        """
        options = {o.name: o for o in self.RULE.options}
        bools = ["sparse"] + [name for name in self.RULE.flags
                              if name == "use_locking" or isinstance(options[name].default, bool)]
        for name in bools:
            if not isinstance(getattr(self, name), bool):
                raise SpecError(f"{name} must be a bool, got {getattr(self, name)!r}")
        for name in self.RULE.flags:
            if name != "use_locking" and name not in bools:
                _choice(name, getattr(self, name), options[name].values)
        _choice("dtype", self.dtype, tuple(DTYPES))
        _choice("index_dtype", self.index_dtype, tuple(INDEX_DTYPES))
        _choice("rounding", self.rounding, ROUNDINGS)
        half = self.dtype in HALF_DTYPES
        if self.state_dtype is not None:
            _choice("state_dtype", self.state_dtype, STATE_DTYPES)
            if not half:
                raise SpecError(f"state_dtype={self.state_dtype!r} needs a bfloat16 or float16 "
                                f"parameter; {self.dtype} parameters keep their state in "
                                f"{self.dtype}")
        if self.grad_dtype is not None:
            _choice("grad_dtype", self.grad_dtype, GRAD_DTYPES + (self.dtype,))
            if not half:
                raise SpecError(f"grad_dtype={self.grad_dtype!r} needs a bfloat16 or float16 "
                                f"parameter; {self.dtype} parameters take {self.dtype} gradients")
        if self.rounding == "stochastic" and not half:
            raise SpecError(f"rounding='stochastic' needs a bfloat16 or float16 parameter; "
                            f"{self.dtype} kernels round nothing they store")
        if self.parallel_min is not None and (
                not isinstance(self.parallel_min, int) or isinstance(self.parallel_min, bool)
                or not 0 <= self.parallel_min < 2 ** 62):
            raise SpecError(f"parallel_min must be None or an int in [0, 2**62), got "
                            f"{self.parallel_min!r}")
        names = [k for k, _ in self.static]
        if len(set(names)) != len(names):
            raise SpecError(f"static hyperparameter given twice: {names}")
        for name, value in self.static:
            _check_static(self.RULE, name, value, self.compute_dtype)
        if self.RULE.check is not None:
            self.RULE.check(self)
        return self

    @property
    def statics(self) -> dict[str, float]:
        """The baked hyperparameters as a dict."""
        return dict(self.static)

    @property
    def compute_dtype(self) -> str:
        """The dtype of a step's arithmetic: float32 for half-precision parameters, else `dtype`."""
        return "float32" if self.dtype in HALF_DTYPES else self.dtype

    def storage(self, array: str) -> str:
        """The dtype in which `array` ("var", "grad" or a state array of the rule) is stored: a
        state array's by its `State.dtype` ("state": `state_dtype`, else the arithmetic's).

        Raises:
            KeyError: no such array.
        """
        if array == "var":
            return self.dtype
        if array == "grad":
            return self.grad_dtype or self.dtype
        for state in self.RULE.state:
            if state.name == array:
                if state.dtype == "state":
                    return self.state_dtype or self.compute_dtype
                return self.compute_dtype if state.dtype == "compute" else state.dtype
        names = ", ".join(("var", *(s.name for s in self.RULE.state), "grad"))
        raise KeyError(f"no array {array!r}; choose from {names}")

    def flag(self, name: str) -> bool:
        """The value of a feature switch used by the IR: a bool field, or `field=value`.

        Raises:
            KeyError: no such switch.
        """
        key, _, value = name.partition("=")
        if key not in {f.name for f in dataclasses.fields(self)}:
            raise KeyError(f"unknown spec switch {name!r}")
        actual = getattr(self, key)
        return actual == value if value else bool(actual)

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no whitespace; the input of `key()`. It names the rule
        (`"rule"`) unless that is `DEFAULT_RULE`, so LazyAdam's JSON, keys and static symbols are
        those of the specs before there were rules."""
        data = dataclasses.asdict(self)
        if self.parallel_min is None:  # specs keep the JSON they had before the field existed
            del data["parallel_min"]
        data["static"] = [[k, float(v)] for k, v in self.static]
        if self.RULE.name != DEFAULT_RULE:
            data["rule"] = self.RULE.name
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> SpecBase:
        """The spec that `to_json` wrote, of the rule its `"rule"` names (`DEFAULT_RULE` when
        none), validated.

        Raises:
            SpecError: a rule without a spec class, or an illegal spec.
        """
        return spec_from_json(text)

    def key(self) -> str:
        """A stable id: sha256 of the canonical JSON and the codegen version."""
        return hashlib.sha256(f"{CODEGEN_VERSION}:{self.to_json()}".encode()).hexdigest()

    def symbol(self) -> str:
        """A readable, deterministic C symbol, e.g. `lazyadam_sparse_nesterov_f32_i64`: the
        rule's prefix, sparse or dense, the flags in the rule's `symbol_order` (a bool flag by its
        name when true, "locking"; other options by their `Option.symbol`), the dtype.

        Half-precision kernels name what differs from the default storage: `mbf16` (bfloat16
        state), `gf32` (float32 gradients), `sr` (stochastic rounding), e.g.
        `lazyadam_dense_bf16_mbf16_sr`.
        """
        parts = [self.RULE.prefix, "sparse" if self.sparse else "dense"]
        options = {o.name: o for o in self.RULE.options}
        for name in self.RULE.symbol_order:
            value = getattr(self, name)
            if name == "use_locking":
                parts += ["locking"] if value else []
            elif options[name].symbol is not None:
                parts += [options[name].symbol[value]] if value in options[name].symbol else []
            elif value is True:
                parts.append(name)
        parts.append(DTYPES[self.dtype])
        if self.state_dtype is not None:
            parts.append("m" + DTYPES[self.state_dtype])
        if self.grad_dtype is not None:
            parts.append("g" + DTYPES[self.grad_dtype])
        if self.rounding == "stochastic":
            parts.append("sr")
        if self.sparse:
            parts.append(INDEX_DTYPES[self.index_dtype])
        if self.parallel_min is not None:
            parts.append(f"p{self.parallel_min}")
        if self.static:
            parts.append("s" + self.key()[:8])
        return "_".join(parts)


def spec_class(rule: Rule) -> type:
    """The frozen dataclass of `rule`'s specs (`Rule.spec` makes it once): `HEAD_FIELDS`, the
    flags in `rule.flags` (the rule's options and `use_locking`), `TAIL_FIELDS`; its
    methods are `SpecBase`'s.

    Raises:
        ValueError: another rule of that name already has a spec class.
    """
    known = _SPECS.get(rule.name)
    if known is not None:
        if known.RULE is not rule:
            raise ValueError(f"a rule named {rule.name!r} already has a spec class")
        return known
    options = {o.name: o for o in rule.options}
    flags = [LOCKING_FIELD if name == "use_locking" else
             (name, type(options[name].default), options[name].default)
             for name in rule.flags]
    docs = {**COMMON_DOCS, **{o.name: o.doc for o in rule.options}}
    fields = [*HEAD_FIELDS, *flags, *TAIL_FIELDS]
    attributes = "\n".join(textwrap.fill(f"{name}: {docs[name]}", 96, initial_indent=" " * 8,
                                         subsequent_indent=" " * 12) for name, _, _ in fields)
    doc = (f"What kernel of the {rule.name} rule to make ({rule.doc}).\n\n"
           f"    Attributes:\n{attributes}\n    ")
    cls = dataclasses.make_dataclass(
        "Spec" if rule.name == DEFAULT_RULE else f"{rule.name.title().replace('_', '')}Spec",
        [(name, kind, value if isinstance(value, dataclasses.Field) else field(default=value))
         for name, kind, value in fields],
        bases=(SpecBase,), frozen=True,
        namespace={"RULE": rule, "__doc__": doc, "__module__": __name__})
    cls.__init__ = _naming_unknown_options(cls.__init__, rule.name, [name for name, _, _ in fields])
    _SPECS[rule.name] = cls
    return cls


def _naming_unknown_options(init: Any, rule_name: str, names: list[str]) -> Any:
    """The dataclass's `init`, raising `UnknownOptionError` for a keyword outside `names`."""
    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except TypeError:
            unknown = [name for name in kwargs if name not in names]
            if not unknown:
                raise
            raise UnknownOptionError(f"the {rule_name} rule's specs have no option {unknown[0]!r}; "
                                     f"they take {', '.join(names)}") from None
    return __init__


def spec_from_json(text: str) -> SpecBase:
    """The spec of `SpecBase.from_json`."""
    data = json.loads(text)
    name = data.pop("rule", DEFAULT_RULE)
    if name not in _SPECS:
        raise SpecError(f"unknown rule {name!r}; rules with specs: {', '.join(sorted(_SPECS))}")
    data["static"] = tuple((k, v) for k, v in data.get("static", ()))
    return _SPECS[name](**data).validate()


def __getattr__(name: str) -> Any:
    """`Spec`: LazyAdam's spec class (`lazyadam.Spec`), for code that imports it from here."""
    if name == "Spec" and DEFAULT_RULE in _SPECS:
        return _SPECS[DEFAULT_RULE]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise SpecError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _check_static(rule: Rule, name: str, value: object, dtype: str) -> None:
    """Raises SpecError unless `value` is legal for `rule`'s hyperparameter `name` (a finite
    number in its `static_domain`, else its `domain`) and stays so as a literal of `dtype`: it
    must neither overflow to inf nor underflow to 0.
    """
    statics = rule.static_hparams
    if name not in statics:
        raise SpecError(f"{name!r} cannot be static; choose from {', '.join(statics)}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
        raise SpecError(f"static {name} must be a finite number, got {value!r}")
    hparam = rule.hparam(name)
    domain = hparam.static_domain or hparam.domain
    if value not in domain:
        if domain.high == math.inf:
            where = f"be {'>' if domain.closed[0] == '(' else '>='} {domain.low:g}"
        else:
            where = f"lie in {domain.closed[0]}{domain.low:g}, {domain.high:g}{domain.closed[1]}"
        raise SpecError(f"static {name} must {where}, got {value!r}")
    with np.errstate(over="ignore", under="ignore"):
        literal = np.dtype(dtype).type(value)
    if not np.isfinite(literal):
        raise SpecError(f"static {name} = {value!r} overflows {dtype} (largest "
                        f"{np.finfo(dtype).max:.8g}); choose a smaller value or a float64 kernel")
    if literal == 0 and value != 0:
        raise SpecError(f"static {name} = {value!r} underflows to 0 in {dtype} (smallest "
                        f"{np.finfo(dtype).smallest_subnormal:.8g}); choose a larger value or a "
                        "float64 kernel")


def _finite(value: int | float) -> bool:
    """True for a finite float, or an int that a double can hold."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
