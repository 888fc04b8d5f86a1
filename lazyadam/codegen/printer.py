"""Printers: IR expressions and statements to C (and, by subclassing, CUDA) text.

Two contexts: element code, in the parameter dtype (`float` uses `sqrtf` and `f`-suffixed literals),
and scalar code, evaluated once per call in double from the `lazyadam_hparams` fields.
"""

from __future__ import annotations

import numpy as np

from .ir import Assign, Binary, Call, Const, Elem, Expr, Let, Named, Param, Scalar, Unary

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_UNARY = 3
_ATOM = 4

C_TYPES = {"float32": "float", "float64": "double"}
C_INDEX_TYPES = {"int32": "int32_t", "int64": "int64_t"}


class CPrinter:
    """Prints IR as C99.

    Args:
        dtype: the parameter dtype ("float32" or "float64"); sets the element type, `sqrtf`/`sqrt` and
            literal suffixes.
        hparams: how scalar code reads a hyperparameter field, e.g. `hp->lr`.
    """

    def __init__(self, dtype: str, hparams: str = "hp->{}"):
        self.dtype = dtype
        self.ctype = C_TYPES[dtype]
        self.hparams = hparams

    # --- statements -------------------------------------------------------------------------
    def assign(self, stmt: Assign) -> str:
        """`target_i = expr;` in element code."""
        return f"{self.elem(stmt.target)} = {self.expr(stmt.expr)};"

    def let(self, stmt: Let) -> str:
        """`const T name = (T)(expr);`: computed in double, stored in the element type."""
        value = self.expr(stmt.expr, scalar=True)
        return f"const {self.ctype} {stmt.name} = ({self.ctype})({value});"

    def block(self, stmts, indent: int) -> str:
        pad = " " * indent
        return "\n".join(pad + self.assign(s) for s in stmts)

    # --- expressions ------------------------------------------------------------------------
    def elem(self, name: str) -> str:
        """The C local that holds the current element of `name`."""
        return f"{name}_i"

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
        raise TypeError(f"cannot print {e!r}")

    def call(self, fn: str, args: list[str], scalar: bool) -> str:
        if fn == "sqrt":
            return f"{self.math_fn('sqrt', scalar)}({args[0]})"
        if fn == "max":
            a, b = args
            # maxps semantics: NaN in v propagates, as np.maximum and torch.maximum do.
            return f"({a} > {b} ? {a} : {b})"
        raise ValueError(f"unknown function {fn}")

    def math_fn(self, name: str, scalar: bool) -> str:
        return name if scalar or self.dtype == "float64" else f"{name}f"

    def literal(self, value: float, scalar: bool) -> str:
        """An exact literal: double in scalar code; in float element code the float32 value."""
        if scalar or self.dtype == "float64":
            text = repr(float(value))
            return text if any(c in text for c in ".en") else f"{text}.0"
        # The shortest text that reads back as this float32 (C rounds `0.9f` straight to float).
        text = str(np.float32(value))
        return f"{text if any(c in text for c in '.en') else text + '.0'}f"


class CudaPrinter(CPrinter):
    """Prints IR as CUDA C++: the same element math as C, with per-step scalars carried by a struct.

    The host launcher computes each scalar from `lazyadam_hparams` in double, exactly as the C
    prologue does, stores it in a struct field of the element type (`s.lr_t = (float)(...);`), and
    passes the struct to the kernels by value; device code reads it back (`const float lr_t = s.lr_t;`).
    """

    def field(self, stmt: Let) -> str:
        """The struct member of a scalar: `T name;`."""
        return f"{self.ctype} {stmt.name};"

    def set_field(self, stmt: Let, struct: str = "s") -> str:
        """Host code: `s.name = (T)(expr);`, the expression evaluated in double."""
        return f"{struct}.{stmt.name} = ({self.ctype})({self.expr(stmt.expr, scalar=True)});"

    def unpack(self, name: str, struct: str = "s") -> str:
        """Device code: `const T name = s.name;`."""
        return f"const {self.ctype} {name} = {struct}.{name};"
