"""`lazyadam.rules.memory`: the state bytes per parameter element and the footprint of each rule,
against numbers computed by hand from docs/semantics.md's state (m, v, buf, sum, acc, seen, vmax)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazyadam.rules import ADAGRAD, ADAM, LION, PARTIAL_ROWWISE_ADAM, ROWWISE_ADAGRAD, SGD
from lazyadam.rules.memory import footprint, state_bytes, state_table

D = 64
F32, BF16, BF16_STATE = {}, {"dtype": "bfloat16"}, {"dtype": "bfloat16", "state_dtype": "bfloat16"}


@pytest.mark.parametrize("rule, options, storage, state, times_table", [
    (ADAM, {}, F32, 8, 3),                                       # m, v
    (ADAM, {"amsgrad": True}, F32, 12, 4),                       # m, v, vmax
    (ADAM, {}, BF16_STATE, 4, 3),                                # bfloat16 m, v over a 2-byte table
    (SGD, {}, F32, 0, 1),                                        # plain SGD keeps nothing
    (SGD, {"momentum": True}, F32, 4, 2),                        # buf
    (SGD, {"momentum": True, "dampening": True}, F32, 4 + 4 / D, 2 + 1 / D),   # buf, seen per row
    (ADAGRAD, {}, F32, 4, 2),                                    # sum
    (ADAGRAD, {}, BF16_STATE, 2, 2),
    (ROWWISE_ADAGRAD, {}, F32, 4 / D, 1 + 1 / D),                # the bound: 1 + 1/D
    (ROWWISE_ADAGRAD, {}, BF16_STATE, 4 / D, 1 + 2 / D),         # acc stays float32
    (PARTIAL_ROWWISE_ADAM, {}, F32, 4 + 4 / D, 2 + 1 / D),       # the bound: 2 + 1/D
    (PARTIAL_ROWWISE_ADAM, {}, BF16_STATE, 2 + 4 / D, 2 + 2 / D),  # m bfloat16, v float32
    (PARTIAL_ROWWISE_ADAM, {"amsgrad": True}, F32, 4 + 8 / D, 2 + 2 / D),      # vmax per row
    (LION, {}, F32, 4, 2),                                       # m
    (LION, {}, BF16, 4, 3),                                      # float32 m over a 2-byte table
])
def test_state_bytes_and_footprint_match_hand_computed_numbers(rule, options, storage, state,
                                                               times_table):
    for sparse in (False, True):
        spec = rule.spec(sparse=sparse, **storage, **options).validate()
        assert state_bytes(spec, D) == pytest.approx(state, rel=1e-12)
        assert footprint(spec, D) == pytest.approx(times_table, rel=1e-12)


def test_the_table_has_every_rule_and_storage():
    lines = state_table(D)
    assert lines[0] == "| rule (D = 64) | float32 | bfloat16, float32 state | bfloat16, bfloat16 state |"
    rows = {line.split(" | ")[0][2:]: line for line in lines[2:]}
    assert {"adam", "sgd", "adagrad", "rowwise_adagrad", "partial_rowwise_adam", "lion"} <= set(rows)
    assert rows["rowwise_adagrad"] == (
        "| rowwise_adagrad | 0.0625 B (1.016x) | 0.0625 B (1.031x) | 0.0625 B (1.031x) |")


def test_a_row_size_below_one_is_refused():
    with pytest.raises(ValueError, match="row_size must be >= 1, got 0"):
        state_bytes(ROWWISE_ADAGRAD.spec().validate(), 0)


def test_docs_rules_shows_the_table():
    doc = (Path(__file__).parents[1] / "docs" / "rules.md").read_text()
    assert "\n".join(state_table(64)) in doc
