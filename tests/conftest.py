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
