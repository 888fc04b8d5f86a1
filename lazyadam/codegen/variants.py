"""Many specs at once: the product of the flags, and specs read from JSON.

    [fixed fields] --variants--> [Spec, ...]        [JSON text] --specs_from_json--> [Spec, ...]
    [fixed fields] --half_variants--> [Spec, ...]   (every flag combination once, in 16 bits)

Used to build every variant ahead of time (`lazyadam build --all`) and by tests that cover them all.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Any

from .rule import Rule
from .rule import get as rule_named
from .spec import (DEFAULT_RULE, DTYPES, GRAD_DTYPES, HALF_DTYPES, INDEX_DTYPES, ROUNDINGS,
                   SpecBase, SpecError)

#: The fields that say how a kernel stores its arrays; the others are its flags.
STORAGE_FIELDS = ("dtype", "state_dtype", "grad_dtype", "rounding")


def choices(rule: Rule) -> dict[str, tuple[Any, ...]]:
    """Every value of every field of `rule`'s specs that selects a variant, in field order
    (`static` never varies): sparse, the rule's flags (`Rule.flags`), then storage. `None` is a
    dtype's default (float32 state for half-precision parameters, the parameter's own gradients).
    """
    options = {o.name: o.values for o in rule.options}
    return {"sparse": (True, False),
            **{name: options.get(name, (False, True)) for name in rule.flags},
            "dtype": tuple(DTYPES),
            "index_dtype": tuple(INDEX_DTYPES),
            "state_dtype": (None, "bfloat16"),
            "grad_dtype": (None, *GRAD_DTYPES),
            "rounding": ROUNDINGS}


def variants(rule: str | Rule = DEFAULT_RULE, **fixed: Any) -> list[SpecBase]:
    """Every legal spec of `rule` whose fields equal `fixed`, the other fields taking each of
    their values.

    A dense kernel has no index array, so `index_dtype` varies for sparse kernels only (dense ones
    keep the fixed or default value). Combinations that `Spec.validate` rejects are left out, e.g.
    `decay="none"` when `static` holds a weight decay, or a bfloat16 state for float32 parameters;
    so are repeats (a float32 gradient of a float32 parameter is its default). Nothing fixed, that
    is 288 flag combinations times 18 ways of storing them: 576 float32 and float64 kernels, and
    4608 half-precision ones (see `half_variants` for a sample that meets every flag); those are
    LazyAdam's counts.

    Args:
        rule: the rule, or its name (`rule.get`); LazyAdam's by default.
        **fixed: spec fields held constant, e.g. `dtype="float32"`, `static={"beta1": 0.9}`.

    Returns:
        The specs in a deterministic order (the product of `choices(rule)`, first field slowest).

    Raises:
        SpecError: an unknown field, or no legal spec at all (the message is the first rejection).
    """
    rule = rule_named(rule) if isinstance(rule, str) else rule
    spec, options = rule.spec, choices(rule)
    unknown = sorted(set(fixed) - {f.name for f in dataclasses.fields(spec)})
    if unknown:
        raise SpecError(f"unknown spec field(s) {', '.join(unknown)}; "
                        f"choose from {', '.join(f.name for f in dataclasses.fields(spec))}")
    varied = [name for name in options if name not in fixed]
    specs: list[SpecBase] = []
    first_error: SpecError | None = None
    for values in itertools.product(*(options[name] for name in varied)):
        fields = {**fixed, **dict(zip(varied, values))}
        dense_index_variant = "index_dtype" in varied and not fields.get("sparse", spec.sparse) \
            and fields["index_dtype"] != spec.index_dtype
        if dense_index_variant:  # the same kernel as the default index dtype's
            continue
        try:
            specs.append(spec(**fields).validate())
        except SpecError as err:
            first_error = first_error or err
    if not specs:
        raise first_error or SpecError("no spec matches")
    return list(dict.fromkeys(specs))


def half_variants(rule: str | Rule = DEFAULT_RULE, **fixed: Any) -> list[SpecBase]:
    """Every flag combination once, with half-precision storage: a sample of the half-precision
    product (4608 kernels) that meets every flag value with every way of storing it.

    The storage combinations (bfloat16 or float16 parameters x float32 or bfloat16 state x own or
    float32 gradients x nearest or stochastic rounding: 16, fewer where `fixed` holds some) are
    dealt to the flag combinations in the order of `variants`, row by row as in a Latin square:
    flag combination k takes storage combination (k // n + k) % n of n. So every row of n
    consecutive flag combinations has every storage combination, and so has every column; every
    value of every flag meets each of them.

    Args:
        rule: as for `variants`.
        **fixed: spec fields held constant, as for `variants`; a `dtype` must be half-precision.

    Returns:
        One spec per flag combination (LazyAdam's 288 when nothing is fixed), in `variants` order.

    Raises:
        SpecError: as `variants`, or a fixed `dtype` that is not half-precision.
    """
    if fixed.get("dtype", HALF_DTYPES[0]) not in HALF_DTYPES:
        raise SpecError(f"half_variants takes a bfloat16 or float16 dtype, got {fixed['dtype']!r}")
    flags = {name: value for name, value in fixed.items() if name not in STORAGE_FIELDS}
    storage = {name: value for name, value in fixed.items() if name in STORAGE_FIELDS}
    rule = rule_named(rule) if isinstance(rule, str) else rule
    options = {**choices(rule), "dtype": HALF_DTYPES}
    options.update((name, (value,)) for name, value in storage.items())
    combinations = [dict(zip(STORAGE_FIELDS, values))
                    for values in itertools.product(*(options[name] for name in STORAGE_FIELDS))]
    n = len(combinations)
    layouts = variants(rule, **flags, dtype="float32")
    return [dataclasses.replace(spec, **combinations[(k // n + k) % n]).validate()
            for k, spec in enumerate(layouts)]


def specs_from_json(text: str) -> list[SpecBase]:
    """The specs in `text`: one JSON object as `to_json()` writes it, or a list of them.

    Missing fields take their defaults; `static` may be a list of pairs or an object; `"rule"`
    names a registered rule (LazyAdam's when missing).

    Raises:
        SpecError: the text is not such JSON, an object has an unknown field, or a spec is illegal.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise SpecError(f"not JSON: {err}") from None
    items = data if isinstance(data, list) else [data]
    specs = []
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise SpecError(f"spec {n} must be a JSON object, got {item!r}")
        try:
            rule = rule_named(item.get("rule", DEFAULT_RULE))
        except KeyError as err:
            raise SpecError(f"spec {n}: {err.args[0]}") from None
        fields = {f.name for f in dataclasses.fields(rule.spec)}
        unknown = sorted(set(item) - fields - {"rule"})
        if unknown:
            raise SpecError(f"spec {n} has unknown field(s) {', '.join(unknown)}; "
                            f"choose from {', '.join(sorted(fields))}")
        fields = {name: value for name, value in item.items() if name != "rule"}
        specs.append(rule.spec(**fields).validate())
    return specs
