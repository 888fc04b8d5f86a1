"""What every target shares: the per-call hyperparameters and the checks a kernel call makes.

A target (`c.py`, `cuda.py`, each a `target.Target`) says whether it can run here, names its
compiler (for the cache key), renders, builds and loads. A loaded kernel takes var, then its
rule's state arrays, the gradient and the hyperparameters; a state array that a switch keeps
(`State.when`) may also come by name. For LazyAdam:

    kernel(var, m, v, grad, hp)                      # dense
    kernel(var, m, v, (indices, values), hp)         # lazy sparse
    kernel(var, m, v, ..., hp, vmax=vmax)            # amsgrad

and checks every argument before the kernel runs: on an error nothing is written.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import cffi
import numpy as np

from ..codegen.rule import ROUNDING_FIELDS, Rule
from ..codegen.pipeline import optimize
from ..codegen.render import Source
from ..codegen.spec import SpecBase
from ..dtypes import storage_name
from ..rules.adam import ADAM
from .library import Library


class RuleHParams:
    """What the hyperparameters of every rule's calls have besides their fields (`hparams_class`):
    checks of the rule's domains, `at_step` and `as_tuple`."""

    RULE: ClassVar[Rule]

    def __post_init__(self) -> None:
        """Rejects values that would make a kernel write NaN (e.g. beta powers of step 0).

        Raises:
            ValueError: naming the field and its value.
        """
        for hparam in self.RULE.hparams:
            value = getattr(self, hparam.name)
            if value not in hparam.domain:
                domain = hparam.domain
                where = (f"> {domain.low:g}" if domain.closed == "()" and domain.high == math.inf
                         else f"in {domain}")
                raise ValueError(f"{type(self).__name__}.{hparam.name} = {value!r} must be finite "
                                 f"and {where}")
        for name in ROUNDING_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not (
                    0 <= value < 2 ** 64):
                raise ValueError(f"{type(self).__name__}.{name} = {value!r} must be an int in "
                                 "[0, 2**64)")

    @classmethod
    def at_step(cls, t: int, *, seed: int = 0, **values: float) -> Any:
        """Hyperparameters for step `t` (1 on the first step): `values` by name, the rule's
        defaults for the others, the derived fields computed here (beta^t for Adam's beta powers)
        and `step = t`.

        Raises:
            ValueError: t < 1 (step 0 has no bias correction: 1 - beta^0 = 0), or a bad value.
            TypeError: a name that is no hyperparameter the caller sets.
        """
        if isinstance(t, bool) or not isinstance(t, int) or t < 1:
            raise ValueError(f"step t = {t!r} must be an int >= 1 (the first step is 1)")
        plain = [h for h in cls.RULE.hparams if h.derived is None]
        unknown = sorted(set(values) - {h.name for h in plain})
        if unknown:
            raise TypeError(f"at_step() got an unexpected keyword argument {unknown[0]!r}")
        fields = {h.name: values.get(h.name, h.default) for h in plain}
        for h in cls.RULE.hparams:
            if h.derived == "step":
                fields[h.name] = float(t)
            elif h.derived is not None:
                fields[h.name] = fields[h.derived.partition(":")[2]] ** t
        return cls(**fields, seed=seed, step=t)

    def as_tuple(self) -> tuple[float | int, ...]:
        """The fields in ABI order (what a kernel's `bind` step takes)."""
        return tuple(getattr(self, h.name) for h in self.RULE.hparams) + tuple(
            int(getattr(self, name)) for name in ROUNDING_FIELDS)


def hparams_class(rule: Rule, doc: str) -> type:
    """The frozen dataclass of the hyperparameters of one call of `rule`'s kernels: its fields
    are the struct's (`Rule.fields`), in ABI order, with the methods of `RuleHParams`.

    Raises:
        ValueError: a derived field of another kind than "power:<field>" (<field>^t) or "step"
            (t itself, as a double).
    """
    for h in rule.hparams:
        kind, _, base = (h.derived or "power:").partition(":")
        if h.derived != "step" and (kind != "power" or (h.derived and base not in rule.fields)):
            raise ValueError(f"{rule.name}: cannot derive {h.name} from {h.derived!r}")
    fields = [(h.name, float) for h in rule.hparams]
    fields += [(name, int, dataclasses.field(default=0)) for name in ROUNDING_FIELDS]
    return dataclasses.make_dataclass(
        "HParams", fields, bases=(RuleHParams,), frozen=True,
        namespace={"RULE": rule, "__doc__": doc, "__module__": __name__})


def hparams_of(rule: Rule) -> type:
    """The hyperparameter class of `rule`'s calls (`hparams_class`, made once per rule;
    LazyAdam's is `HParams`)."""
    if rule.name not in _HPARAMS or _HPARAMS[rule.name].RULE is not rule:
        _HPARAMS[rule.name] = hparams_class(
            rule, doc=f"The fields of `{rule.hparams_type}` for one call (`{rule.name}` rule).")
    return _HPARAMS[rule.name]


#: LazyAdam's, made from its rule.
HParams = hparams_class(ADAM, doc="""The fields of `lazyadam_hparams` for one call.

    lr, beta1, beta2, eps, weight_decay, loss_scale, beta1_power and beta2_power (beta^t of this
    step), seed and step (`ADAM.fields`). `at_step(t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
    weight_decay=0.0, loss_scale=1.0, seed=0)` fills in the beta powers and the step.

    `seed` and `step` (unsigned 64-bit integers) are read only by stochastic rounding, whose random
    bits hash them with each element's position: give every step its own `step` (`at_step` passes
    t), and keep `seed` to reproduce a run bit for bit.
    """)

#: The hyperparameter class of each rule, by name (`hparams_of`).
_HPARAMS: dict[str, type] = {ADAM.name: HParams}

#: The C type of each storage dtype, as cffi names it (16-bit storage travels as its bits).
CFFI_TYPES = {"float32": "float", "float64": "double", "bfloat16": "uint16_t",
              "float16": "uint16_t"}


SCALAR_SPARSE = "a sparse kernel needs var of rank >= 1 (rows first)"


def call_arguments(spec: SpecBase, args: Sequence[Any],
                   named: Mapping[str, Any]) -> tuple[dict[str, Any], Any, Any]:
    """The parts of a call `kernel(var, *args, **named)`: args are the rule's state arrays that
    are always kept, the gradient, the hyperparameters, then (optionally) the switched ones;
    `named` gives switched arrays by name.

    Returns:
        (the state arrays by name, as `state_arrays`; the gradient; the hyperparameters).

    Raises:
        TypeError: too few or too many arguments, or an unknown name.
    """
    required = [s.name for s in spec.RULE.state if s.when is None]
    switched = [s.name for s in spec.RULE.state if s.when is not None]
    count = len(required)
    if not count + 2 <= len(args) <= count + 2 + len(switched):
        raise TypeError(f"a {spec.RULE.name} kernel takes var, {', '.join(required)}, grad and hp"
                        f"{' (and ' + ', '.join(switched) + ')' if switched else ''}; got "
                        f"{len(args) + 1} positional arguments")
    grad, hp = args[count], args[count + 1]
    return state_arrays(spec, (*args[:count], *args[count + 2:]), named), grad, hp


def state_arrays(spec: SpecBase, arrays: Sequence[Any], named: Mapping[str, Any]) -> dict[str, Any]:
    """Every state array of `spec`'s rule by name, in the rule's order (None where not given):
    `arrays` in that order, then `named` by name.

    Raises:
        TypeError: more arrays than the rule has, an unknown name, or a name given twice.
    """
    names = [s.name for s in spec.RULE.state]
    if len(arrays) > len(names):
        raise TypeError(f"a {spec.RULE.name} kernel takes the state arrays {', '.join(names)}; "
                        f"got {len(arrays)}")
    given = dict(zip(names, arrays))
    for name, array in named.items():
        if name not in names:
            raise TypeError(f"unexpected keyword argument {name!r}; the state arrays are "
                            f"{', '.join(names)}")
        if name in given and given[name] is not None:
            raise TypeError(f"{name} given twice")
        given[name] = array
    return {name: given.get(name) for name in names}


def check_arrays(spec: SpecBase, var: Any, states: Mapping[str, Any], grad: Any) -> None:
    """Raises TypeError/ValueError naming the offending argument if a call would be wrong.

    Works on anything with `shape` and `dtype` (numpy arrays, and device arrays wrapped by the CUDA
    target); contiguity and writability are checked where the array exposes numpy-style `flags`.
    Each array must have its storage dtype (`SpecBase.storage`): var the parameter's, the rule's
    state arrays (`states`, by name, as `state_arrays`) theirs, the gradient (or sparse values)
    the gradient's.
    """
    spans = _check_state(spec, var, states)
    if not spec.sparse:
        start = check_array("grad", grad, spec.storage("grad"))
        if grad.shape != var.shape:
            raise ValueError(f"grad has shape {grad.shape}, var has {var.shape}")
        _check_disjoint(spans | {"grad": _span(grad, start)})
        return
    if not (isinstance(grad, tuple) and len(grad) == 2):
        raise TypeError("a sparse kernel takes its gradient as an (indices, values) pair")
    indices, values = grad
    if var.ndim < 1:
        raise ValueError(SCALAR_SPARSE)
    start = check_array("indices", indices, spec.index_dtype)
    if indices.ndim != 1:
        raise ValueError(f"indices must be 1-d, got shape {indices.shape}")
    spans["indices"] = _span(indices, start)
    start = check_array("values", values, spec.storage("grad"))
    expected = (indices.shape[0],) + tuple(var.shape[1:])
    if values.shape != expected:
        raise ValueError(f"values has shape {values.shape}, expected {expected} "
                         f"(len(indices),) + var.shape[1:]")
    _check_disjoint(spans | {"values": _span(values, start)})


def check_state(spec: SpecBase, var: Any,
                states: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """The state arrays' part of `check_arrays` (what a bound call checks once).

    Returns:
        The byte span `(first, past the last)` of var and each state array the kernel keeps, by
        name, in ABI order (`Rule.arrays`, then `Rule.row_arrays`): where a bound call points.

    Raises:
        TypeError, ValueError: naming the offending array.
    """
    spans = _check_state(spec, var, states)
    _check_disjoint(spans)
    return spans


def _check_state(spec: SpecBase, var: Any,
                 states: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """`check_state` but for the overlap, which `check_arrays` checks with the gradient's."""
    for s in spec.RULE.state:
        given = states.get(s.name) is not None
        if s.when is None and not given:
            raise TypeError(f"missing the state array {s.name}")
        if s.when is not None and given != spec.flag(s.when):
            raise TypeError(f"{s.name} is required by {s.when} kernels and only by them")
    state = {"var": var} | {name: array for name, array in states.items() if array is not None}
    per_row = {s.name for s in spec.RULE.state if s.per == "row"}
    if per_row & set(state) and getattr(var, "ndim", 1) < 1:
        raise ValueError(f"a {spec.RULE.name} kernel keeps state per row: var needs rank >= 1 "
                         "(rows first)")
    spans = {}
    for name in spec.RULE.arrays(spec) + spec.RULE.row_arrays(spec):
        arr = state[name]
        start = check_array(name, arr, spec.storage(name), writable=True)
        expected = tuple(var.shape[:1]) if name in per_row else tuple(var.shape)
        if arr.shape != expected:
            whose = "var's rows" if name in per_row else "var"
            raise ValueError(f"{name} has shape {arr.shape}, expected {expected} ({whose})")
        spans[name] = _span(arr, start)
    return spans


def check_array(name: str, arr: Any, dtype: str, writable: bool = False) -> int:
    """An input or state array a kernel can take: `dtype` storage, C-contiguous (and writable),
    aligned to its elements.

    Returns:
        The address of its first byte (`address`).

    Raises:
        TypeError: not an array, another dtype, or the other byte order; ValueError: layout or
            alignment.
    """
    if not hasattr(arr, "dtype") or not hasattr(arr, "shape"):
        raise TypeError(f"{name} must be an array, got {type(arr).__name__}")
    try:
        found = storage_name(arr.dtype)
    except TypeError as error:  # the other byte order
        raise TypeError(f"{name}: {error}") from None
    if found != dtype:
        raise TypeError(f"{name} has dtype {found}, this kernel takes {dtype}")
    flags = getattr(arr, "flags", None)
    if flags is not None:
        if not flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous (use np.ascontiguousarray)")
        if writable and not flags.writeable:
            raise ValueError(f"{name} is read-only")
    itemsize = arr.dtype.itemsize
    start = address(arr)
    if start % itemsize:
        raise ValueError(f"{name} is not aligned to its {itemsize}-byte elements")
    return start


def address(arr: Any) -> int:
    """The address of the first byte of a contiguous array: a device array's `ptr`, a host
    array's through the buffer protocol (0.8 us; a numpy array's `__array_interface__`, a dict
    made anew at each reading, takes 2 us, and binding a parameter reads three)."""
    if hasattr(arr, "ptr"):
        return arr.ptr
    try:
        return int(_FFI.cast(_ADDRESS, _FFI.from_buffer(arr)))
    except (TypeError, BufferError):  # no buffer protocol
        return arr.__array_interface__["data"][0]


#: What `address` reads host arrays with.
_FFI = cffi.FFI()
_ADDRESS = _FFI.typeof("uintptr_t")


def _span(arr: Any, start: int) -> tuple[int, int]:
    """[first byte, past the last byte) of a contiguous array, host or device, that starts at
    `start` (`check_array`'s answer)."""
    return start, start + arr.size * arr.dtype.itemsize


def _check_disjoint(spans: dict[str, tuple[int, int]]) -> None:
    """The kernels take every pointer as `restrict`: no array (its byte span, by name; in the
    order of the kernel's arguments) may overlap another."""
    named = [(name, span) for name, span in spans.items() if span[0] != span[1]]
    for i, (a, (a0, a1)) in enumerate(named):
        for b, (b0, b1) in named[i + 1:]:
            if a0 < b1 and b0 < a1:
                raise ValueError(f"{a} and {b} share memory; each must be an array of its own")


def check_sizes(rows: int, row_size: int, nnz: int) -> None:
    """The sizes of a sparse step: ints >= 0.

    Raises:
        ValueError: naming the first that is not (as the kernel call refuses it).
    """
    for name, value in (("rows", rows), ("row_size", row_size), ("nnz", nnz)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} = {value!r} must be an int >= 0")


def first_bad_index(indices: np.ndarray, rows: int) -> tuple[int, int] | None:
    """(position, value) of the first index outside [0, rows), or None."""
    bad = np.flatnonzero((indices < 0) | (indices >= rows))
    return (int(bad[0]), int(indices[bad[0]])) if bad.size else None


def index_error(indices: np.ndarray, rows: int) -> IndexError:
    pos, value = first_bad_index(indices, rows)
    return IndexError(f"indices[{pos}] = {value} is outside [0, {rows})")


class LoadedKernel:
    """A built kernel library opened with cffi: what every target's kernel object starts from.

    Attributes:
        spec, source, path: what was built, from what, and where the library lies.
        ffi, lib: the FFI of the kernel's declarations (`source.cdef`; shared by the kernels of
            one signature) and the opened library's exports (`library.Library`).
        fn: the exported kernel function.
        arrays, hparams_type, hparams_bytes: var and the kept state arrays; the hyperparameter
            struct's C name and size.
    """

    def __init__(self, spec: SpecBase, source: Source, path: Path):
        self.spec = spec
        self.source = source
        self.path = path
        self.lib = Library(source.cdef, source.symbol, path)
        self.ffi = self.lib.ffi
        self.fn = getattr(self.lib, source.symbol)
        #: var and the state arrays the kernel takes, in ABI order (`Rule.arrays`, then
        #: `Rule.row_arrays`: one value per row).
        self.arrays = spec.RULE.arrays(spec) + spec.RULE.row_arrays(spec)
        #: Whether the kernel runs a row at a time (per-row state or row sums): its dense form
        #: takes (rows, row_size) instead of n.
        self.per_row = optimize(spec).per_row
        #: The C name of the rule's hyperparameter struct, and its size in bytes.
        self.hparams_type = spec.RULE.hparams_type
        self.hparams_bytes = self.ffi.sizeof(self.hparams_type)
