"""What a rule's state costs in memory, computed from its declarations (`Rule.state`, and the dtype
each array is stored in, `Spec.storage`).

Counted: the optimizer's state arrays that a kernel of the spec keeps (per element: the parameter's
shape; per row: one value per row, so 1/D of a value per element for rows of D elements), in
their storage dtypes. Not counted: the parameter itself (`footprint` adds it), the gradient, and
the scratch of a sparse step (O(nnz), and on the CPU chunk sums of at most half the gradient's
elements; freed after the step).
"""

from __future__ import annotations

from typing import Any

from ..codegen.spec import ITEMSIZE
from .adagrad import ADAGRAD
from .adam import ADAM
from .lion import LION
from .partial_rowwise_adam import PARTIAL_ROWWISE_ADAM
from .rowwise_adagrad import ROWWISE_ADAGRAD
from .sgd import SGD

#: The rows of `state_table`: (label, rule, options), each rule with the options that change which
#: state it keeps.
CHOICES = (
    ("adam", ADAM, {}),
    ("adam, amsgrad", ADAM, {"amsgrad": True}),
    ("sgd", SGD, {}),
    ("sgd, momentum", SGD, {"momentum": True}),
    ("sgd, momentum + dampening", SGD, {"momentum": True, "dampening": True}),
    ("adagrad", ADAGRAD, {}),
    ("rowwise_adagrad", ROWWISE_ADAGRAD, {}),
    ("partial_rowwise_adam", PARTIAL_ROWWISE_ADAM, {}),
    ("partial_rowwise_adam, amsgrad", PARTIAL_ROWWISE_ADAM, {"amsgrad": True}),
    ("lion", LION, {}),
)

#: The storages of `state_table`: (label, spec fields).
STORAGES = (
    ("float32", {"dtype": "float32"}),
    ("bfloat16, float32 state", {"dtype": "bfloat16"}),
    ("bfloat16, bfloat16 state", {"dtype": "bfloat16", "state_dtype": "bfloat16"}),
)


def state_bytes(spec: Any, row_size: int) -> float:
    """Bytes of state per element of the parameter: each kept per-element array's item size, plus
    each per-row array's item size / row_size.

    Raises:
        ValueError: row_size < 1.
    """
    if row_size < 1:
        raise ValueError(f"row_size must be >= 1, got {row_size}")
    rule = spec.RULE
    return (sum(ITEMSIZE[spec.storage(a)] for a in rule.arrays(spec)[1:])
            + sum(ITEMSIZE[spec.storage(a)] for a in rule.row_arrays(spec)) / row_size)


def footprint(spec: Any, row_size: int) -> float:
    """The parameter and its state, in units of the parameter: 1 + state_bytes / item size (Adam
    in float32: 3; rowwise Adagrad in float32: 1 + 1/row_size)."""
    return 1 + state_bytes(spec, row_size) / ITEMSIZE[spec.dtype]


def state_table(row_size: int = 64) -> list[str]:
    """A markdown table: for each rule (and option that keeps other state) and storage, the state
    bytes per parameter element and the footprint, for rows of `row_size` elements."""
    head = " | ".join(label for label, _ in STORAGES)
    lines = [f"| rule (D = {row_size}) | {head} |", "|---" * (len(STORAGES) + 1) + "|"]
    for label, rule, options in CHOICES:
        cells = []
        for _, fields in STORAGES:
            spec = rule.spec(sparse=True, **fields, **options).validate()
            cells.append(f"{state_bytes(spec, row_size):.4g} B ({footprint(spec, row_size):.4g}x)")
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return lines
