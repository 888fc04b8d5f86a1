"""LazyAdam's numbers stay bitwise: every C kernel of `product.ALL` and both front ends, against
the digests that `tests/golden/record.py` recorded (see its docstring for the inputs)."""

from __future__ import annotations

import dataclasses
import json

import pytest

import cuda_emulation as emulation
import product
from golden import record

GOLDEN = json.loads(record.GOLDEN.read_text())


def test_goldens_cover_every_variant_of_the_product():
    assert set(GOLDEN["kernels"]) == {spec.to_json() for spec in product.ALL}


#: The variants run again on two threads: float32 ones of every loop shape (sparse and dense, each
#: decay, locking, amsgrad, nesterov); the hot row's chunks are summed by two threads (unless locked
#: with L2 decay). maximize and eps_mode change only the arithmetic, which one thread checks.
TWO_THREADS = [spec for spec in product.FULL
               if spec.dtype == "float32" and spec.index_dtype == "int64" and not spec.maximize
               and spec.eps_mode == "mindspore"]


def assert_golden(specs, threads, load):
    got = record.kernel_digests(specs, threads, load)
    changed = [key for key, value in got.items() if GOLDEN["kernels"][key] != value]
    assert not changed, (f"{len(changed)} of {len(got)} kernels changed their outputs on "
                         f"{threads} thread(s), e.g. {changed[:3]}")


def test_every_c_kernel_gives_its_golden_bits(c_variants):
    """On one thread: OpenMP's waits make 2600 parallel calls slow on a busy machine, and the
    numbers do not depend on the thread count (recorded on two, the next test checks some).
    `product.SAMPLE` by the C target's own build (-O3), the others at -O0 (tests/quick_c.py):
    the goldens were recorded from -O3 builds of every variant, and no level may change a bit."""
    assert_golden(product.ALL, threads=1, load=c_variants)


def test_c_kernels_on_two_threads_give_their_golden_bits(c_variants, monkeypatch):
    monkeypatch.setenv("LAZYADAM_PARALLEL_MIN", "0")  # these small steps in parallel too
    assert_golden(TWO_THREADS, threads=2, load=c_variants)


def test_emulated_cuda_kernels_give_the_c_kernels_golden_bits(emulated_variants):
    """The CUDA kernels of `record.EMULATED`, built for the host (tests/cuda_emulation), against
    the C goldens: the same inputs give the same bits on both targets."""
    library = emulated_variants(record.EMULATED)
    changed = [spec.symbol() for spec in record.EMULATED
               if record.digest(record.kernel_state(spec, library[spec], emulation.Emulated))
               != GOLDEN["kernels"][spec.to_json()]]
    assert not changed, f"emulated CUDA kernels differ from the C goldens: {changed}"


def test_the_golden_inputs_tell_the_variants_apart():
    """Variants that differ only in index dtype or locking give the same bits; any other two
    differ, so a kernel that ignored a flag or a storage dtype would not match its golden."""
    by_numbers: dict[tuple, set[str]] = {}
    for spec in product.ALL:
        numbers = dataclasses.replace(spec, index_dtype="int64", use_locking=False)
        by_numbers.setdefault(numbers, set()).add(GOLDEN["kernels"][spec.to_json()])
    assert all(len(digests) == 1 for digests in by_numbers.values())
    assert len({d for digests in by_numbers.values() for d in digests}) == len(by_numbers)


@pytest.mark.parametrize("name", sorted(record.FRONTENDS))
def test_front_end_state_gives_its_golden_bits(name):
    if name.startswith("torch"):
        pytest.importorskip("torch", reason="the torch front end needs torch")
    assert record.digest(record.FRONTENDS[name]()) == GOLDEN["frontends"][name]
