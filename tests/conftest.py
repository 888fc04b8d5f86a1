"""Shared test setup: one kernel cache for the whole session, every variant of tests/product.py
built into it in batches (with a line on the terminal per batch; most C variants at -O0, see
tests/quick_c.py), the emulated CUDA target, and random data."""

from __future__ import annotations

import os
import sys
import tempfile
import threading

import numpy as np
import pytest

import cuda_emulation as emulation
import product
import quick_c
import warm_python
from lazyadam import targets
from lazyadam.targets import batch

# Kernels built by the tests go to a cache of their own, reused across runs on one machine so that a
# second run is fast; tests that exercise the cache itself point LAZYADAM_CACHE_DIR elsewhere.
os.environ.setdefault("LAZYADAM_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"lazyadam-test-cache-{os.getuid()}"))


def pytest_collection_modifyitems(items):
    """A test over every C variant (it needs `c_variants`) is `slow`: `-m "not slow"` leaves the
    hundreds of kernels of a cold cache unbuilt."""
    for item in items:
        if "c_variants" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def rng():
    return np.random.default_rng(20261124)


@pytest.fixture(scope="module")
def gpu():
    """PyTorch's CUDA device, where the CUDA target and torch both have a GPU; else a skip that
    says what is missing."""
    from lazyadam.targets import nvcc
    problem = nvcc.unavailable()
    if problem:
        pytest.skip(f"CUDA target unavailable: {problem}")
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    if not torch.cuda.is_available():
        pytest.skip("this torch build sees no CUDA GPU")
    return torch.device("cuda")


@pytest.fixture(scope="session")
def pulse(pytestconfig):
    """`pulse(line)` shows `line` on the terminal at once, also under capture, from threads and
    from pytest-xdist's workers: what a cold run is building, so that it never sits silent for
    minutes. A worker's stdout goes nowhere and its stderr is the terminal's, so a worker writes
    `[lazyadam gw0] line` there, on a line of its own."""
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    worker = getattr(pytestconfig, "workerinput", {}).get("workerid")
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock, capture.global_and_fixture_disabled():
            if worker:
                sys.stderr.write(f"\n[lazyadam {worker}] {line}\n")
                sys.stderr.flush()
                return
            reporter.ensure_newline()
            reporter.write_line(f"[lazyadam] {line}")
            reporter.flush()

    return say


def c_product(specs: list, sample: list, report):
    """`load(spec)`, the C kernel of a spec of `specs`: the C target's own build for those of
    `sample`, tests/quick_c.py's (-O0) for the others; a cold cache builds them all here, 48 to a
    compiler call, one call per core at a time, each batch by one of the workers that ask
    (`batch.build`)."""
    chosen = set(sample)
    batch.build(sample, targets.get("c"), report=report)
    batch.build([spec for spec in specs if spec not in chosen], quick_c.TARGET, report=report)
    return lambda spec: (targets.get("c") if spec in chosen else quick_c.TARGET).load(spec)


@pytest.fixture(scope="session")
def warm(request):
    """A `warm_python.WarmPython`, for runs that import torch first: started on first use in this
    process, stopped at the session's end. Tests that take it are in the xdist group
    "warm_python" (`pytest.mark.xdist_group`), so one worker starts it."""
    pytest.importorskip("torch", reason="the warm Python server preloads PyTorch")
    server = warm_python.WarmPython()
    request.addfinalizer(server.close)
    return server


@pytest.fixture(scope="session")
def c_variants(pulse):
    """`load(spec)`, the C kernel of a spec of LazyAdam's `product.ALL` (864; `product.SAMPLE`
    by the C target's own build)."""
    return c_product(product.ALL, product.SAMPLE, pulse)


@pytest.fixture(scope="session")
def family_c(pulse):
    """`load(spec)`, the C kernel of a spec of `product.FAMILY` (1515; `product.FAMILY_SAMPLE`
    by the C target's own build)."""
    return c_product(product.FAMILY, product.FAMILY_SAMPLE, pulse)


@pytest.fixture(scope="session")
def family_emulated(emulated_variants):
    """`load(spec)`, the emulated CUDA kernel of a spec of `product.FAMILY` (built at -O0, see
    `cuda_emulation.target`, loaded when first asked for); a skip that quotes the CUDA target's
    SpecError where it refuses the spec (today it renders them all)."""
    rendered = [spec for spec in product.FAMILY if product.cuda_refusal(spec) is None]
    kernels = emulated_variants(rendered)

    def load(spec):
        if spec not in kernels:
            pytest.skip(f"the CUDA target refuses this spec: {product.cuda_refusal(spec)}")
        return kernels[spec]
    return load


@pytest.fixture(scope="session")
def emulated_variants(pulse):
    """`emulation.build(specs)`, with the kernels the cache lacks built in batches that report."""
    if emulation.host_compiler() is None:
        pytest.skip("no host C++ compiler (c++ or g++) to build the CUDA emulation")
    return lambda specs, defines=None: emulation.build(specs, defines, report=pulse)


@pytest.fixture
def quick_results(monkeypatch):
    """Whether each call of `runtime.quick.quick` (the one check of a gradient like the last,
    which both front ends take) confirmed the gradient, in order."""
    from lazyadam.runtime import quick, slot
    from lazyadam.torch import fast
    real, results = quick.quick, []

    def counted(*args):
        work = real(*args)
        results.append(work is not None)
        return work

    monkeypatch.setattr(slot, "quick", counted)
    monkeypatch.setattr(fast, "quick", counted)
    return results


@pytest.fixture
def emulated_cuda(monkeypatch, emulated_variants):
    """`targets.compile(spec, "cuda")`, the optimizers' way to their kernels, gives the emulated
    CUDA kernel (tests/cuda_emulation) on the CPU. Returns the specs it was asked for, in order."""
    asked = []
    real = targets.compile

    def compile_emulated(spec, target="c"):
        if target != "cuda":
            return real(spec, target)
        asked.append(spec)
        return emulated_variants([spec])[spec]

    monkeypatch.setattr(targets, "compile", compile_emulated)
    return asked
