"""Many kernels per compiler call (`lazyadam.targets.batch`): one call and one library per batch, each
kernel then in the cache on its own, the same numbers as a kernel built alone."""

from __future__ import annotations

import stat

import numpy as np
import pytest

import lazyadam
from lazyadam import HParams, Spec, generate
from lazyadam.targets import batch, cache, get
from test_cache import counting_cc  # noqa: F401  (a fixture)

#: Cheap kernels that no other test builds (their static values are their own).
SPECS = [Spec(sparse=False, static={"eps": 2.5e-7}),
         Spec(sparse=False, amsgrad=True, static={"eps": 2.5e-7}),
         Spec(sparse=True, decay="l2", static={"eps": 2.5e-7})]


def step(kernel, spec: Spec) -> list[np.ndarray]:
    """One step of `kernel` from fixed data; returns var, m, v (and vmax)."""
    data = np.random.default_rng(3)
    var = data.standard_normal((6, 4)).astype(np.float32)
    state = [var, np.zeros_like(var), np.zeros_like(var)]
    vmax = np.zeros_like(var) if spec.amsgrad else None
    grad = ((np.array([4, 1, 4]), data.standard_normal((3, 4)).astype(np.float32)) if spec.sparse
            else data.standard_normal(var.shape).astype(np.float32))
    kernel(*state, grad, HParams.at_step(1, weight_decay=0.1), vmax=vmax)
    return state + ([vmax] if spec.amsgrad else [])


def test_a_batch_is_one_compiler_call_and_fills_each_kernels_entry(counting_cc, monkeypatch):
    lines = []
    assert batch.build(SPECS, get("c"), report=lines.append) == []
    assert counting_cc() == 1 and lines == ["building 3 c kernels (batch 1/1)"]
    kernels = [lazyadam.compile(spec) for spec in SPECS]
    assert counting_cc() == 1, "compile() built again what the batch had built"
    assert len({kernel.path for kernel in kernels}) == 3
    assert all(kernel.path.samefile(kernels[0].path) for kernel in kernels)  # one library
    for spec, kernel in zip(SPECS, kernels):
        source = generate(spec)
        assert kernel.path.parent == cache.entry(get("c").cache_key(source))
        assert kernel.path.with_name(source.filename).read_text() == source.text
        assert kernel.path.with_name(f"{source.symbol}.h").read_text() == source.header
    # The same bits as each kernel built alone (cache disabled: a single build, loaded afresh).
    monkeypatch.setattr(cache, "_loaded", {})
    monkeypatch.setenv("LAZYADAM_DISABLE_CACHE", "1")
    for spec, kernel in zip(SPECS, kernels):
        alone = get("c").load(spec)
        assert alone.path != kernel.path
        for a, b in zip(step(kernel, spec), step(alone, spec)):
            np.testing.assert_array_equal(a, b)


def test_what_the_cache_has_is_not_built_again(counting_cc):
    lazyadam.compile(SPECS[0])
    lines = []
    assert batch.build(SPECS + SPECS, get("c"), report=lines.append) == []
    assert counting_cc() == 2 and lines == ["building 2 c kernels (batch 1/1)"]
    assert batch.build(SPECS, get("c"), report=lines.append) == []
    assert counting_cc() == 2 and len(lines) == 1


def test_batches_are_split_and_each_reported(counting_cc):
    lines = []
    assert batch.build(SPECS, get("c"), batch_size=2, jobs=2, report=lines.append) == []
    assert counting_cc() == 2
    assert sorted(lines) == ["building 1 c kernels (batch 2/2)", "building 2 c kernels (batch 1/2)"]


def test_a_failing_batch_is_reported_and_its_kernels_build_alone(counting_cc, tmp_path, monkeypatch):
    """A compiler that refuses more than one source at a time: the batch fails, says so, and each
    kernel builds on its own when loaded."""
    wrapper = tmp_path / "one-at-a-time"
    wrapper.write_text('#!/bin/sh\nn=0; for a in "$@"; do case "$a" in *.c) n=$((n+1));; esac; done\n'
                       f'[ $n -gt 1 ] && exit 1\nexec {tmp_path / "cc"} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("LAZYADAM_CC", str(wrapper))
    lines = []
    assert batch.build(SPECS[:2], get("c"), report=lines.append) == SPECS[:2]
    assert lines[0] == "building 2 c kernels (batch 1/1)"
    assert lines[1].startswith("batch 1/1 failed (") and lines[1].endswith(
        "its kernels build one by one when loaded")
    kernels = [lazyadam.compile(spec) for spec in SPECS[:2]]
    assert counting_cc() == 2 and not kernels[0].path.samefile(kernels[1].path)


def test_nothing_is_built_ahead_with_the_cache_disabled(counting_cc, monkeypatch):
    monkeypatch.setenv("LAZYADAM_DISABLE_CACHE", "1")
    assert batch.build(SPECS, get("c")) == [] and counting_cc() == 0


def test_illegal_specs_are_refused_before_anything_is_built(counting_cc):
    with pytest.raises(lazyadam.SpecError):
        batch.build([SPECS[0], Spec(dtype="float32", rounding="stochastic")], get("c"))
    assert counting_cc() == 0
