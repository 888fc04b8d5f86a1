"""The C sparse kernels on teams of 2, 3 and 4 threads, on batches whose chunks of SUM_CHUNK
occurrences cross every cut a team could make: of the positions (`np.array_split(range(nnz), T)`:
a split of the gradient's reading by position, tried and not kept, benchmarks/README.md) and of the
sorted pairs (the segments of SEGMENT pairs that a team takes today, docs/kernels.md):

- `pair`: rows seen twice: on both sides of the middle (2 threads), across the second cut of 3
  threads, and across cuts of every team;
- `hot`: a row seen 501 times (two chunks) at every even position, a row seen 300 times at the odd
  positions below 600: their chunks cross every cut of the positions on 2, 3 and 4 threads, one
  chunk of the first row two cuts of 4 threads, and the first segment's end (512) falls inside
  the second row's run;
- `few`: one, two and three occurrences (threads with nothing to do);
- `zipf`: 3,001 Zipf(1.2) indices over 200 rows, an odd count.

A chunk summed twice, an occurrence dropped or one added out of its order changes bits: every
array must equal the one-thread result bitwise, the rows' sums must follow the documented order
(LazyAdam's m against tests/test_summation_order.py's float32 model; each family rule against its
emulated CUDA kernel, whose warps sum in that order), and each family rule must match
tests/reference_family.py (float64) at float32's tolerance. The gradients span six decades, so
that another order gives other bits (checked, so that the tests can fail).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import cuda_emulation as emulation
import lazyadam
import openmp
import product
from lazyadam import HParams, Spec
from lazyadam.codegen import SUM_CHUNK
from lazyadam.rules import ADAGRAD, LION, PARTIAL_ROWWISE_ADAM, ROWWISE_ADAGRAD, SGD
from lazyadam.targets.base import hparams_of
from test_summation_order import HYPER, ROW_SIZE, chunked_sum, expected_m

THREADS = (2, 3, 4)
#: Each rule's sparse float32 kernel (SGD with momentum: its buffer is the summed gradient after
#: the first step).
FAMILY = [SGD.spec(sparse=True, momentum=True), ADAGRAD.spec(sparse=True),
          ROWWISE_ADAGRAD.spec(sparse=True), PARTIAL_ROWWISE_ADAM.spec(sparse=True),
          LION.spec(sparse=True)]
ROWS = 1_100
#: The sorted pairs a segment holds (SEGMENT in lazyadam/templates/c_sparse.c.j2).
SEGMENT = 512


def pair() -> np.ndarray:
    """Rows 0-3 once, row 9 at positions 4 and 5 (the middle of 10), row 8 at 6 and 7 (the second
    cut of 3 threads is at 7), row 7 at 2 and 8."""
    return np.array([0, 1, 7, 2, 9, 9, 8, 8, 7, 3], np.int64)


def hot() -> np.ndarray:
    """1,001 occurrences: row 1 at the even positions, row 2 at the odd ones below 600, then rows
    100 and up once each, but row 3 at 601 and 999."""
    indices = np.empty(1_001, np.int64)
    indices[0::2] = 1
    odd = np.arange(1, 1_001, 2)
    indices[odd[odd < 600]] = 2
    late = odd[odd > 600]
    indices[late] = 100 + np.arange(late.size)
    indices[[601, 999]] = 3
    return indices


def zipf(rng: np.random.Generator) -> np.ndarray:
    """3,001 row ids, p(row k) ~ 1 / (k + 1)^1.2 over rows 0-199."""
    p = np.arange(1, 201, dtype=np.float64) ** -1.2
    return rng.choice(200, 3_001, p=p / p.sum()).astype(np.int64)


BATCHES = {"pair": lambda rng: [pair()], "hot": lambda rng: [hot()],
           "few": lambda rng: [np.array(i, np.int64) for i in
                               ([4], [4, 4], [4, 4, 4], [4, 5, 4], [5, 4, 4])],
           "zipf": lambda rng: [zipf(rng)]}


def values_for(indices: np.ndarray, rng: np.random.Generator, row_size: int) -> np.ndarray:
    magnitudes = 10.0 ** rng.uniform(-3, 3, (indices.size, row_size))
    return (rng.standard_normal((indices.size, row_size)) * magnitudes).astype(np.float32)


def shares(nnz: int, threads: int) -> np.ndarray:
    """The thread whose share holds each position."""
    share = np.empty(nnz, np.int64)
    for t, positions in enumerate(np.array_split(np.arange(nnz), threads)):
        share[positions] = t
    return share


def crossing_chunks(indices: np.ndarray, threads: int) -> int:
    """How many chunks of SUM_CHUNK occurrences of a row have occurrences in two shares."""
    share = shares(indices.size, threads)
    crossing = 0
    for row in np.unique(indices):
        at = np.flatnonzero(indices == row)
        crossing += sum(share[c[0]] != share[c[-1]] for c in
                        (at[k:k + SUM_CHUNK] for k in range(0, at.size, SUM_CHUNK)))
    return crossing


def test_the_batches_cut_chunks_at_every_share():
    """The cases the module names are there."""
    assert [crossing_chunks(pair(), t) for t in THREADS] == [2, 2, 1]
    assert [crossing_chunks(hot(), t) for t in THREADS] == [2, 4, 4]
    assert crossing_chunks(np.array([4, 4], np.int64), 2) == 1
    assert min(crossing_chunks(zipf(np.random.default_rng(0)), t) for t in THREADS) > 10
    first_chunk = np.flatnonzero(hot() == 1)[:SUM_CHUNK]  # of row 1: across two cuts of 4 threads
    assert shares(1_001, 4)[first_chunk[[0, -1]]].tolist() == [0, 2]
    assert np.sort(hot())[SEGMENT - 1:SEGMENT + 1].tolist() == [2, 2]  # a segment's end in a run


#: LazyAdam plain, and with L2 decay: its effective gradient reads var (`g + wd*w` per occurrence)
#: while the shares are summed (var is 0 at the first step, so m is still the model's).
LAZYADAM = {"plain": (Spec(sparse=True, parallel_min=0), HYPER),  # small steps, yet on every thread
            "l2": (Spec(sparse=True, decay="l2", parallel_min=0), HYPER | {"weight_decay": 0.5})}


@pytest.mark.parametrize("way", LAZYADAM)
@pytest.mark.parametrize("batch", BATCHES)
def test_lazyadam_sums_each_row_in_the_documented_order_on_every_team(batch, way, rng):
    """Two steps: m after the first against the float32 model of the order, every array after
    both bitwise as on one thread."""
    spec, hyper = LAZYADAM[way]
    kernel = lazyadam.compile(spec)
    for indices in BATCHES[batch](rng):
        grads = [values_for(indices, rng, ROW_SIZE) for _ in range(2)]
        results, first_m = {}, None
        for threads in (1, *THREADS):
            arrays = [np.zeros((ROWS, ROW_SIZE), np.float32) for _ in range(3)]
            with openmp.threads(threads):
                for t, grad in enumerate(grads, 1):
                    kernel(*arrays, (indices, grad), HParams.at_step(t, **hyper))
                    if t == 1 and threads == 1:
                        first_m = arrays[1].copy()
            results[threads] = arrays
        for row in np.unique(indices):
            np.testing.assert_array_equal(first_m[row], expected_m(grads[0][indices == row]),
                                          err_msg=f"row {row}, seen {np.sum(indices == row)} times")
        assert not np.delete(first_m, np.unique(indices), axis=0).any()
        for threads in THREADS:
            for name, mine, one in zip(("var", "m", "v"), results[threads], results[1]):
                np.testing.assert_array_equal(mine, one, err_msg=f"{name} on {threads} threads")


@pytest.mark.parametrize("spec", [Spec(sparse=True, parallel_min=0),
                                  Spec(sparse=True, use_locking=True, decay="l2", parallel_min=0)],
                         ids=("blocks", "segments"))
@pytest.mark.parametrize("bad", [-1, ROWS])
@pytest.mark.parametrize("where", [0, 600, 1000])
def test_an_index_outside_the_table_in_any_share_refuses_the_step(spec, bad, where, rng):
    """The team checks the indices as it sorts them (the sort's first pass, each thread its share):
    one outside the table, in the first, a middle or the last thread's share, refuses the step on
    every team, naming it, before any row is written."""
    kernel = lazyadam.compile(spec)
    indices = hot()
    indices[where] = bad
    grad = values_for(indices, rng, ROW_SIZE)
    for threads in (1, *THREADS):
        arrays = [np.full((ROWS, ROW_SIZE), 0.5, np.float32) for _ in range(3)]
        with openmp.threads(threads), pytest.raises(
                IndexError, match=rf"indices\[{where}\] = {bad} is outside \[0, {ROWS}\)"):
            kernel(*arrays, (indices, grad), HParams.at_step(1, **HYPER))
        for name, array in zip(("var", "m", "v"), arrays):
            assert (array == 0.5).all(), f"{name} written on {threads} threads"


def test_the_data_tells_the_orders_apart(rng):
    """Row 1 of `hot`, its first chunk summed as 2 threads would without waiting (each share's
    occurrences apart, then added) differs from the documented order: a wrong order shows."""
    indices = hot()
    values = values_for(indices, rng, ROW_SIZE)[indices == 1]
    first, second = values[:251], values[251:SUM_CHUNK]  # positions below 501, and the rest
    apart = chunked_sum(first) + chunked_sum(second)
    assert not np.array_equal(apart, chunked_sum(values[:SUM_CHUNK]))


def family_state(kernel, var: np.ndarray) -> list[np.ndarray]:
    """var and the kernel's state arrays, zeros, in its order."""
    per = {s.name: s.per for s in kernel.spec.RULE.state}
    return [var.copy()] + [np.zeros(var.shape if per[name] == "element" else var.shape[:1],
                                    var.dtype) for name in kernel.arrays[1:]]


def call(kernel, arrays: list, grad: tuple, hp) -> None:
    """`kernel(var, <state always kept>, grad, hp, <state kept by a flag>)`, on arrays in the
    kernel's order."""
    state = dict(zip(kernel.arrays, arrays))
    always = [s.name for s in kernel.spec.RULE.state if s.when is None]
    kernel(state.pop("var"), *(state.pop(name) for name in always), grad, hp, **state)


@pytest.mark.parametrize("spec", FAMILY, ids=lambda s: s.RULE.name)
def test_each_family_rule_keeps_its_bits_on_every_team(spec, emulated_variants, rng):
    """Two steps of each batch: one thread, 2-4 threads and emulated CUDA bitwise; the float64
    reference at float32's tolerance."""
    rule = spec.RULE
    kernels = {"c": lazyadam.compile(dataclasses.replace(spec, parallel_min=0)),
               "cuda": emulated_variants([spec])[spec]}
    hp = hparams_of(rule)
    for batch in BATCHES:
        for indices in BATCHES[batch](rng):
            var = rng.standard_normal((ROWS, 5)).astype(np.float32)
            grads = [values_for(indices, rng, 5) for _ in range(2)]
            results = {}
            for way in ("c", *THREADS, "cuda"):
                kernel = kernels["cuda" if way == "cuda" else "c"]
                put = emulation.Emulated if way == "cuda" else np.asarray
                arrays = family_state(kernels["c"], var)
                with openmp.threads(1 if way in ("c", "cuda") else way):
                    for t, grad in enumerate(grads, 1):
                        call(kernel, [put(a) for a in arrays], (put(indices), put(grad)),
                             hp.at_step(t, **product.FAMILY_HYPER[rule.name]))
                results[way] = arrays
            for way in (*THREADS, "cuda"):
                for name, mine, one in zip(kernels["c"].arrays, results[way], results["c"]):
                    np.testing.assert_array_equal(mine, one, err_msg=f"{batch}: {name}, {way}")
            expected = {name: a.astype(np.float64) for name, a in
                        zip(kernels["c"].arrays, family_state(kernels["c"], var))}
            for t, grad in enumerate(grads, 1):
                expected = product.family_step(spec, expected, grad, indices, t)
            for name, mine in zip(kernels["c"].arrays, results["c"]):
                np.testing.assert_allclose(mine, expected[name], rtol=2e-4, atol=1e-5,
                                           err_msg=f"{batch}: {name} against the reference")
