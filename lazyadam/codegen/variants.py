"""Many specs at once: the product of the flags, and specs read from JSON.

    [fixed fields] --variants--> [Spec, ...]        [JSON text] --specs_from_json--> [Spec, ...]

Used to build every variant ahead of time (`lazyadam build --all`) and by tests that cover them all.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Any

from .spec import DECAYS, DTYPES, EPS_MODES, INDEX_DTYPES, Spec, SpecError

#: Every value of every field that selects a variant, in `Spec` field order (`static` never varies).
CHOICES: dict[str, tuple[Any, ...]] = {
    "sparse": (True, False),
    "nesterov": (False, True),
    "use_locking": (False, True),
    "decay": DECAYS,
    "amsgrad": (False, True),
    "maximize": (False, True),
    "eps_mode": EPS_MODES,
    "dtype": tuple(DTYPES),
    "index_dtype": tuple(INDEX_DTYPES),
}


def variants(**fixed: Any) -> list[Spec]:
    """Every legal spec whose fields equal `fixed`, the other fields taking each of their values.

    A dense kernel has no index array, so `index_dtype` varies for sparse kernels only (dense ones
    keep the fixed or default value). Combinations that `Spec.validate` rejects are left out, e.g.
    `decay="none"` when `static` holds a weight decay.

    Args:
        **fixed: `Spec` fields held constant, e.g. `dtype="float32"`, `static={"beta1": 0.9}`.

    Returns:
        The specs in a deterministic order (the product of `CHOICES`, first field slowest).

    Raises:
        SpecError: an unknown field, or no legal spec at all (the message is the first rejection).
    """
    unknown = sorted(set(fixed) - {f.name for f in dataclasses.fields(Spec)})
    if unknown:
        raise SpecError(f"unknown spec field(s) {', '.join(unknown)}; "
                        f"choose from {', '.join(f.name for f in dataclasses.fields(Spec))}")
    varied = [name for name in CHOICES if name not in fixed]
    specs: list[Spec] = []
    first_error: SpecError | None = None
    for values in itertools.product(*(CHOICES[name] for name in varied)):
        fields = {**fixed, **dict(zip(varied, values))}
        dense_index_variant = "index_dtype" in varied and not fields.get("sparse", Spec.sparse) \
            and fields["index_dtype"] != Spec.index_dtype
        if dense_index_variant:  # the same kernel as the default index dtype's
            continue
        try:
            specs.append(Spec(**fields).validate())
        except SpecError as err:
            first_error = first_error or err
    if not specs:
        raise first_error or SpecError("no spec matches")
    return specs


def specs_from_json(text: str) -> list[Spec]:
    """The specs in `text`: one JSON object as `Spec.to_json()` writes it, or a list of them.

    Missing fields take their defaults; `static` may be a list of pairs or an object.

    Raises:
        SpecError: the text is not such JSON, an object has an unknown field, or a spec is illegal.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise SpecError(f"not JSON: {err}") from None
    items = data if isinstance(data, list) else [data]
    specs = []
    fields = {f.name for f in dataclasses.fields(Spec)}
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise SpecError(f"spec {n} must be a JSON object, got {item!r}")
        unknown = sorted(set(item) - fields)
        if unknown:
            raise SpecError(f"spec {n} has unknown field(s) {', '.join(unknown)}; "
                            f"choose from {', '.join(sorted(fields))}")
        if isinstance(item.get("static"), dict):
            item = {**item, "static": sorted(item["static"].items())}
        specs.append(Spec.from_json(json.dumps(item)))
    return specs
