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
CODEGEN_VERSION = "5"

DTYPES = {"float32": "f32", "float64": "f64", "bfloat16": "bf16", "float16": "f16"}
#: Parameter dtypes stored in 16 bits: their steps compute in float32 and round every write.
HALF_DTYPES = ("bfloat16", "float16")
#: State dtypes (of m, v and vmax) that half-precision parameters may take; float32 is the default.
STATE_DTYPES = ("float32", "bfloat16")
#: Gradient dtypes that half-precision parameters may take besides their own.
GRAD_DTYPES = ("float32",)
#: How a half-precision write rounds: to nearest even, or stochastically (see `Spec`).
ROUNDINGS = ("nearest", "stochastic")
INDEX_DTYPES = {"int32": "i32", "int64": "i64"}
DECAYS = ("none", "l2", "decoupled")
EPS_MODES = ("mindspore", "pytorch")
#: Hyperparameters that may be baked in as static values (the rest of `lazyadam_hparams` -- lr and the
#: beta powers -- change every step and are always runtime arguments).
STATIC_HPARAMS = ("beta1", "beta2", "eps", "loss_scale", "weight_decay")
#: Elements (dense: n; sparse: indices x row size) below which a C step runs on one thread, when
#: neither the spec nor LAZYADAM_PARALLEL_MIN says otherwise: below them, waking a second thread cost
#: more than it saved on 2 cores (benchmarks/bench_busy.py --sweep; docs/threads.md).
PARALLEL_MIN = {"dense": 1 << 19, "sparse": 1 << 20}


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
        dtype: parameter dtype: "float32", "float64", or a half-precision one, "bfloat16" or
            "float16", whose steps compute in float32 and round what they store.
        index_dtype: index dtype of sparse kernels, "int32" or "int64".
        state_dtype: dtype of m, v (and vmax): None for the default, which is float32 for
            half-precision parameters and the parameter's dtype otherwise; "bfloat16"
            (half-precision parameters only) halves the state again.
        grad_dtype: dtype of the gradient: None for the parameter's; "float32" for half-precision
            parameters whose gradients come in float32.
        rounding: how every half-precision write rounds: "nearest" (to nearest even) or
            "stochastic" (up or down with probabilities that make the rounding unbiased, from
            random bits that hash the seed, the step and the element's position: the same bits on
            any thread count, in C and CUDA).
        static: hyperparameters baked into the code, e.g. `{"beta1": 0.9}`; stored as a sorted
            tuple of pairs so that the spec stays hashable.
        parallel_min: C kernels: a step of fewer elements than this (dense: the parameter's size;
            sparse: indices x row size) runs on one thread. None: the environment variable
            LAZYADAM_PARALLEL_MIN when the kernel is built, else `PARALLEL_MIN` of the kernel's
            kind; 0: every step may use every thread. The results are the same bits either way.
            A spec without it has the JSON (and symbol) it had before the field existed.
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
    state_dtype: str | None = None
    grad_dtype: str | None = None
    rounding: str = "nearest"
    static: tuple[tuple[str, float], ...] = field(default=())
    parallel_min: int | None = None

    def __post_init__(self) -> None:
        static = self.static.items() if isinstance(self.static, Mapping) else self.static
        object.__setattr__(self, "static", tuple(sorted((str(k), v) for k, v in static)))
        # One spelling per kernel: a dtype equal to its default is stored as None (the state's
        # default is the arithmetic's dtype).
        if self.state_dtype is not None and self.state_dtype == self.compute_dtype:
            object.__setattr__(self, "state_dtype", None)
        if self.grad_dtype is not None and self.grad_dtype == self.dtype:
            object.__setattr__(self, "grad_dtype", None)

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
            _check_static(name, value, self.compute_dtype)
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

    @property
    def compute_dtype(self) -> str:
        """The dtype of a step's arithmetic: float32 for half-precision parameters, else `dtype`."""
        return "float32" if self.dtype in HALF_DTYPES else self.dtype

    def storage(self, array: str) -> str:
        """The dtype in which `array` ("var", "m", "v", "vmax" or "grad") is stored.

        Raises:
            KeyError: no such array.
        """
        if array == "var":
            return self.dtype
        if array in ("m", "v", "vmax"):
            return self.state_dtype or self.compute_dtype
        if array == "grad":
            return self.grad_dtype or self.dtype
        raise KeyError(f"no array {array!r}; choose from var, m, v, vmax, grad")

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
        """Canonical JSON: sorted keys, no whitespace; the input of `key()`. `parallel_min` is
        left out when None, so that specs keep the JSON they had before it existed."""
        data = dataclasses.asdict(self)
        if self.parallel_min is None:
            del data["parallel_min"]
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
        """A readable, deterministic C symbol, e.g. `lazyadam_sparse_nesterov_f32_i64`.

        Half-precision kernels name what differs from the default storage: `mbf16` (bfloat16
        state), `gf32` (float32 gradients), `sr` (stochastic rounding), e.g.
        `lazyadam_dense_bf16_mbf16_sr`.
        """
        parts = ["lazyadam", "sparse" if self.sparse else "dense"]
        parts += [flag for flag in ("nesterov", "amsgrad", "maximize") if getattr(self, flag)]
        if self.use_locking:
            parts.append("locking")
        if self.decay != "none":
            parts.append({"l2": "l2", "decoupled": "adamw"}[self.decay])
        if self.eps_mode == "pytorch":
            parts.append("pteps")
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
