"""Printers: IR expressions and statements to C (and, by subclassing, CUDA) text.

Two contexts: element code, in the arithmetic dtype (`float` uses `sqrtf` and `f`-suffixed
literals), and scalar code, evaluated once per call in double from the `lazyadam_hparams` fields.
Loads and stores convert between the arithmetic dtype and each array's storage dtype: half-precision
values are `lazyadam_bfloat16` / `lazyadam_float16` (16-bit storage: `uint16_t` in C, the
toolkit's `__nv_bfloat16` / `__half` in CUDA), converted by the helpers of templates/half.j2 in C
and by the toolkit's intrinsics in CUDA.
"""

from __future__ import annotations

import copy
import math

import numpy as np

from .ir import (Assign, Binary, Bits, Call, Compare, Const, Elem, Expr, Let, Load, Named, Param,
                 Round, Row, RowSize, Scalar, Select, StepKey, Unary)

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_UNARY = 3
_ATOM = 4

C_TYPES = {"float32": "float", "float64": "double"}
#: The C type of each storage dtype (the half-precision ones are typedefs of the generated header).
STORAGE_TYPES = {**C_TYPES, "bfloat16": "lazyadam_bfloat16", "float16": "lazyadam_float16"}
C_INDEX_TYPES = {"int32": "int32_t", "int64": "int64_t"}
#: The C type of the per-step key of stochastic rounding (a `StepKey` scalar).
KEY_TYPE = "uint64_t"
_SHORT = {"bfloat16": "bf16", "float16": "f16"}


class CPrinter:
    """Prints IR as C99.

    Conversions from and to 16-bit storage are calls of the helpers that `WIDEN` and `NARROW`
    name (templates/half.j2's in C; the toolkit's intrinsics in CUDA).

    Args:
        dtype: the arithmetic dtype ("float32" or "float64"; float32 for half-precision storage);
            sets the element type, `sqrtf`/`sqrt` and literal suffixes.
        hparams: how scalar code reads a hyperparameter field, e.g. `hp->lr`.

    Attributes:
        position: the text of the element's position, which stochastic rounding hashes (set by
            `store`).
    """

    #: Storage dtype -> the function that widens a stored value to float32 (exactly).
    WIDEN = {"bfloat16": "lazyadam_bf16_to_f32", "float16": "lazyadam_f16_to_f32"}
    #: Storage dtype -> the function that rounds a float32 to it, to nearest even.
    NARROW = {"bfloat16": "lazyadam_f32_to_bf16", "float16": "lazyadam_f32_to_f16"}
    #: Storage dtype -> a function that rounds a float32 to it stochastically in one step.
    STOCHASTIC = {"bfloat16": "lazyadam_f32_to_bf16_stochastic"}

    def __init__(self, dtype: str, hparams: str = "hp->{}"):
        self.dtype = dtype
        self.ctype = C_TYPES[dtype]
        self.hparams = hparams
        self.position = "position"

    # --- statements -------------------------------------------------------------------------
    def assign(self, stmt: Assign) -> str:
        """`target_i = expr;` in element code."""
        return f"{self.elem(stmt.target)} = {self.expr(stmt.expr)};"

    def row_assign(self, stmt: Assign) -> str:
        """`target_r = expr;` in per-row code."""
        return f"{self.row(stmt.target)} = {self.expr(stmt.expr)};"

    def let(self, stmt: Let) -> str:
        """`const T name = (T)(expr);`: computed in double, stored in the element type (a key of
        stochastic rounding: `const uint64_t name = ...;`)."""
        value = self.expr(stmt.expr, scalar=True)
        if self.scalar_type(stmt) == KEY_TYPE:
            return f"const {KEY_TYPE} {stmt.name} = {value};"
        return f"const {self.ctype} {stmt.name} = ({self.ctype})({value});"

    def scalar_type(self, stmt: Let) -> str:
        """The C type of a hoisted scalar: the element type, or `uint64_t` for a rounding key."""
        return KEY_TYPE if isinstance(stmt.expr, StepKey) else self.ctype

    def storage_type(self, dtype: str) -> str:
        """The C type in which an array of storage dtype `dtype` is passed."""
        return STORAGE_TYPES[dtype]

    def load(self, stmt: Assign, access: str) -> str:
        """`name_i = <the element at access, widened>` (no `;`: loads are declarators too)."""
        load = stmt.expr
        assert isinstance(load, Load), stmt
        return f"{self.elem(stmt.target)} = {self.widen(load.dtype, access)}"

    def store(self, stmt: Assign, access: str, position: str = "position") -> str:
        """`access = <name_i, rounded to its storage>;`, with `position` the text of the element's
        position (what stochastic rounding hashes)."""
        printer = copy.copy(self)
        printer.position = position
        return f"{access} = {printer.expr(stmt.expr)};"

    def widen(self, dtype: str, value: str) -> str:
        """A stored value of dtype `dtype` in the arithmetic dtype (exact)."""
        if dtype == self.dtype:
            return value
        if dtype in C_TYPES:
            return f"({self.ctype})({value})"
        return f"{self.WIDEN[dtype]}({value})"

    def narrow(self, dtype: str, value: str) -> str:
        """A value rounded to the nearest even value of storage dtype `dtype` (a half-precision
        one from float32, or float32 from double)."""
        if dtype in C_TYPES:
            return f"({C_TYPES[dtype]})({value})"
        return f"{self.NARROW[dtype]}({value})"

    def narrow_stochastic(self, dtype: str, value: str, bits: str) -> str:
        """A float32 value rounded stochastically to storage dtype `dtype` with 32 random `bits`:
        the stochastic choice is a float32 that the storage holds exactly, which the nearest
        conversion then only changes in type (or one of `STOCHASTIC` does both)."""
        if dtype in self.STOCHASTIC:
            return f"{self.STOCHASTIC[dtype]}({value}, {bits})"
        return self.narrow(dtype, f"lazyadam_{_SHORT[dtype]}_stochastic({value}, {bits})")

    def block(self, stmts, indent: int) -> str:
        pad = " " * indent
        return "\n".join(pad + self.assign(s) for s in stmts)

    # --- expressions ------------------------------------------------------------------------
    def elem(self, name: str) -> str:
        """The C local that holds the current element of `name` (`position`: its position)."""
        return self.position if name == "position" else f"{name}_i"

    def row(self, name: str) -> str:
        """The C local that holds the current row's value of `name` (`position`: the row's
        position, as `store` sets it)."""
        return self.position if name == "position" else f"{name}_r"

    def row_load(self, stmt: Assign, access: str) -> str:
        """`name_r = <the per-row value at access, widened>` (a declarator, as `load`)."""
        load = stmt.expr
        assert isinstance(load, Load), stmt
        return f"{self.row(stmt.target)} = {self.widen(load.dtype, access)}"

    def row_block(self, stmts, indent: int) -> str:
        pad = " " * indent
        return "\n".join(pad + self.row_assign(s) for s in stmts)

    #: The C local that holds the row's length in the arithmetic type (`ir.RowSize`).
    ROW_SIZE = "row_length"

    def expr(self, e: Expr, scalar: bool = False) -> str:
        return self._print(e, scalar)[0]

    def _print(self, e: Expr, scalar: bool) -> tuple[str, int]:
        if isinstance(e, Const):
            return self.literal(e.value, scalar), _ATOM
        if isinstance(e, Param):
            if not scalar:
                raise ValueError(f"hyperparameter {e.name} left in element code: run hoist_invariants")
            return self.hparams.format(e.name), _ATOM
        if isinstance(e, Elem):
            return self.elem(e.name), _ATOM
        if isinstance(e, Scalar):
            return e.name, _ATOM
        if isinstance(e, Row):
            return self.row(e.name), _ATOM
        if isinstance(e, RowSize):
            return self.ROW_SIZE, _ATOM
        if isinstance(e, Named):
            return self._print(e.x, scalar)
        if isinstance(e, Unary):
            text, prec = self._print(e.x, scalar)
            return f"-{text if prec >= _UNARY else f'({text})'}", _UNARY
        if isinstance(e, Binary):
            prec = _PRECEDENCE[e.op]
            a, pa = self._print(e.a, scalar)
            b, pb = self._print(e.b, scalar)
            a = a if pa >= prec else f"({a})"
            # Right operands of the same precedence need parentheses: a - (b - c), a / (b * c).
            b = b if pb > prec else f"({b})"
            return f"{a} {e.op} {b}", prec
        if isinstance(e, Call):
            args = [self._print(a, scalar)[0] for a in e.args]
            return self.call(e.fn, args, scalar), _ATOM
        if isinstance(e, Compare):
            return f"({self.expr(e.a, scalar)} {e.op} {self.expr(e.b, scalar)})", _ATOM
        if isinstance(e, Select):
            c, a, b = (self.expr(k, scalar) for k in (e.c, e.a, e.b))
            return f"({c} ? {a} : {b})", _ATOM
        if isinstance(e, Round):
            value = self._print(e.x, scalar)[0]
            if e.bits is None:
                return self.narrow(e.dtype, value), _ATOM
            return self.narrow_stochastic(e.dtype, value, self._print(e.bits, scalar)[0]), _ATOM
        if isinstance(e, Bits):
            key, position = (self._print(k, scalar)[0] for k in (e.key, e.position))
            bits = f"lazyadam_random_bits({key}, {position})"
            return (f"({bits} << 16)" if e.half else bits), _ATOM
        if isinstance(e, StepKey):
            seed, step = (self.hparams.format(name) for name in ("seed", "step"))
            return f"lazyadam_step_key({seed}, {step}, {e.stream}u)", _ATOM
        raise TypeError(f"cannot print {e!r}")

    def call(self, fn: str, args: list[str], scalar: bool) -> str:
        """`fn` of `ir.FUNCTIONS` applied to the printed `args`, with the semantics that
        `ir`'s docstring gives: min and max are ternaries (a NaN in the second operand
        propagates, one in the first does not), not fmin/fmax, and sign passes ±0 and NaN through."""
        if fn == "sqrt":
            return f"{self.math_fn('sqrt', scalar)}({args[0]})"
        if fn == "abs":
            return f"{self.math_fn('fabs', scalar)}({args[0]})"
        if fn == "sign":
            x = args[0]
            zero, one, minus_one = (self.literal(value, scalar) for value in (0.0, 1.0, -1.0))
            return f"({x} > {zero} ? {one} : ({x} < {zero} ? {minus_one} : {x}))"
        if fn in ("max", "min"):
            a, b = args
            return f"({a} {'>' if fn == 'max' else '<'} {b} ? {a} : {b})"
        raise ValueError(f"unknown function {fn}")

    def math_fn(self, name: str, scalar: bool) -> str:
        return name if scalar or self.dtype == "float64" else f"{name}f"

    def literal(self, value: float, scalar: bool) -> str:
        """An exact literal: double in scalar code; in float element code the float32 value.
        Infinities, and in float code the values that round to one, are C99's `INFINITY`.

        Raises:
            ValueError: a NaN, which no C literal spells with its sign and payload, so that the
                printed code could differ from what `fold_constants` computed.
        """
        if math.isnan(value):
            raise ValueError(f"cannot print the constant {value!r}: C has no exact literal for "
                             "a NaN")
        if scalar or self.dtype == "float64":
            text = repr(float(value))
            suffix = ""
        else:
            # The shortest text that reads back as this float32 (C rounds `0.9f` straight to float).
            with np.errstate(over="ignore"):
                text = str(np.float32(value))
            suffix = "f"
        if text in ("inf", "-inf"):
            return text.replace("inf", "INFINITY")
        return f"{text if any(c in text for c in '.en') else text + '.0'}{suffix}"


class CudaPrinter(CPrinter):
    """Prints IR as CUDA C++: the same element math as C, with per-step scalars carried by a struct,
    and the toolkit's conversions of `__nv_bfloat16` and `__half`.

    The kernels compute each scalar from `lazyadam_hparams` in double, exactly as the C prologue
    does, and store it in a struct field of the element type (`s.lr_t = (float)(...);`); the
    rule's device functions read it back (`const float lr_t = s.lr_t;`).
    """

    WIDEN = {"bfloat16": "__bfloat162float", "float16": "__half2float"}
    NARROW = {"bfloat16": "__float2bfloat16_rn", "float16": "__float2half_rn"}
    STOCHASTIC: dict[str, str] = {}

    def field(self, stmt: Let) -> str:
        """The struct member of a scalar: `T name;`."""
        return f"{self.scalar_type(stmt)} {stmt.name};"

    def set_field(self, stmt: Let, struct: str = "s") -> str:
        """Prologue code: `s.name = (T)(expr);`, the expression evaluated in double."""
        value = self.expr(stmt.expr, scalar=True)
        if self.scalar_type(stmt) == KEY_TYPE:
            return f"{struct}.{stmt.name} = {value};"
        return f"{struct}.{stmt.name} = ({self.ctype})({value});"

    def unpack(self, stmt: Let, struct: str = "s") -> str:
        """Device code: `const T name = s.name;`."""
        return f"const {self.scalar_type(stmt)} {stmt.name} = {struct}.{stmt.name};"


