"""Shared test setup: one kernel cache for the whole session, and random data."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest

# Kernels built by the tests go to a cache of their own, reused across runs on one machine so that a
# second run is fast; tests that exercise the cache itself point LAZYADAM_CACHE_DIR elsewhere.
os.environ.setdefault("LAZYADAM_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"lazyadam-test-cache-{os.getuid()}"))


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
