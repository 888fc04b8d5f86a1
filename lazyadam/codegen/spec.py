"""The kernel spec: which LazyAdam kernel to generate.

A `Spec` is a frozen, hashable value. Every flag changes the generated code; every hyperparameter is
either a runtime argument (read from `lazyadam_hparams` on each call, so a sweep never recompiles) or a
static value baked into the source.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

#: Bumped whenever lowering, passes, printers or templates change what a spec generates.
CODEGEN_VERSION = "2"

DTYPES = {"float32": "f32", "float64": "f64"}
INDEX_DTYPES = {"int32": "i32", "int64": "i64"}
DECAYS = ("none", "l2", "decoupled")
EPS_MODES = ("mindspore", "pytorch")
#: Hyperparameters that may be baked in as static values (the rest of `lazyadam_hparams` -- lr and the
#: beta powers -- change every step and are always runtime arguments).
STATIC_HPARAMS = ("beta1", "beta2", "eps", "loss_scale", "weight_decay")


class SpecError(ValueError):
    """An illegal spec: the message says what to change."""


@dataclass(frozen=True)
class Spec:
    """What kernel to make.

    Attributes:
        sparse: lazy sparse kernel (rows given by an index array) instead of dense.
        nesterov: Nesterov momentum in the numerator.
        use_locking: row updates take a striped lock so concurrent calls are safe.
        decay: "none", "l2" (coupled: `g += wd*w`) or "decoupled" (AdamW: `w -= lr*wd*w`).
        amsgrad: keep `vmax = max(vmax, v)` and divide by `sqrt(vmax) + eps`.
        maximize: ascend instead of descend (`g = -g`).
        eps_mode: "mindspore" (eps added to `sqrt(v)`, bias correction folded into `lr_t`) or
            "pytorch" (eps added to `sqrt(v_hat)`).
        dtype: parameter dtype, "float32" or "float64".
        index_dtype: index dtype of sparse kernels, "int32" or "int64".
        static: hyperparameters baked into the code, e.g. `{"beta1": 0.9}`; stored as a sorted
            tuple of pairs so that the spec stays hashable.
    """

    sparse: bool = True
    nesterov: bool = False
    use_locking: bool = False
    decay: str = "none"
    amsgrad: bool = False
    maximize: bool = False
    eps_mode: str = "mindspore"
    dtype: str = "float32"
    index_dtype: str = "int64"
    static: tuple[tuple[str, float], ...] = field(default=())

    def __post_init__(self) -> None:
        static = self.static.items() if isinstance(self.static, Mapping) else self.static
        object.__setattr__(self, "static", tuple(sorted((str(k), v) for k, v in static)))

    def validate(self) -> Spec:
        """Checks the spec and returns it.

        Raises:
            SpecError: an unknown option, an illegal combination, or a static value that is illegal
                or would overflow (or vanish) as a literal of the kernel's dtype; the message says
                what to change.
        """
        for name in ("sparse", "nesterov", "use_locking", "amsgrad", "maximize"):
            if not isinstance(getattr(self, name), bool):
                raise SpecError(f"{name} must be a bool, got {getattr(self, name)!r}")
        _choice("decay", self.decay, DECAYS)
        _choice("eps_mode", self.eps_mode, EPS_MODES)
        _choice("dtype", self.dtype, tuple(DTYPES))
        _choice("index_dtype", self.index_dtype, tuple(INDEX_DTYPES))
        names = [k for k, _ in self.static]
        if len(set(names)) != len(names):
            raise SpecError(f"static hyperparameter given twice: {names}")
        for name, value in self.static:
            _check_static(name, value, self.dtype)
        if "weight_decay" in self.statics and self.decay == "none":
            raise SpecError("a static weight_decay needs decay='l2' or 'decoupled'; "
                            "drop it or choose a decay")
        if self.statics.get("weight_decay") == 0.0:
            raise SpecError("static weight_decay=0 makes the decay a no-op; use decay='none'")
        return self

    @property
    def statics(self) -> dict[str, float]:
        """The baked hyperparameters as a dict."""
        return dict(self.static)

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
        """Canonical JSON: sorted keys, no whitespace; the input of `key()`."""
        data = dataclasses.asdict(self)
        data["static"] = [[k, float(v)] for k, v in self.static]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Spec:
        data = json.loads(text)
        data["static"] = tuple((k, v) for k, v in data.get("static", ()))
        return cls(**data).validate()

    def key(self) -> str:
        """A stable id: sha256 of the canonical JSON and the codegen version."""
        return hashlib.sha256(f"{CODEGEN_VERSION}:{self.to_json()}".encode()).hexdigest()

    def symbol(self) -> str:
        """A readable, deterministic C symbol, e.g. `lazyadam_sparse_nesterov_f32_i64`."""
        parts = ["lazyadam", "sparse" if self.sparse else "dense"]
        parts += [flag for flag in ("nesterov", "amsgrad", "maximize") if getattr(self, flag)]
        if self.use_locking:
            parts.append("locking")
        if self.decay != "none":
            parts.append({"l2": "l2", "decoupled": "adamw"}[self.decay])
        if self.eps_mode == "pytorch":
            parts.append("pteps")
        parts.append(DTYPES[self.dtype])
        if self.sparse:
            parts.append(INDEX_DTYPES[self.index_dtype])
        if self.static:
            parts.append("s" + self.key()[:8])
        return "_".join(parts)


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise SpecError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _check_static(name: str, value: object, dtype: str) -> None:
    """Raises SpecError unless `value` is legal for `name` and stays so as a literal of `dtype`.

    Every legal static value is finite and > 0 (a weight decay of 0 is refused by `validate`), so
    its literal in the kernel's dtype must neither overflow to inf nor underflow to 0.
    """
    if name not in STATIC_HPARAMS:
        raise SpecError(f"{name!r} cannot be static; choose from {', '.join(STATIC_HPARAMS)}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
        raise SpecError(f"static {name} must be a finite number, got {value!r}")
    if name in ("beta1", "beta2") and not 0.0 < value < 1.0:
        raise SpecError(f"static {name} must lie in (0, 1), got {value!r}")
    if name in ("eps", "loss_scale") and value <= 0.0:
        raise SpecError(f"static {name} must be > 0, got {value!r}")
    if name == "weight_decay" and value < 0.0:
        raise SpecError(f"static weight_decay must be >= 0, got {value!r}")
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
