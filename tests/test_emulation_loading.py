"""`cuda_emulation.build` builds every kernel it is given, in batches, and loads each at its first
lookup: a test worker that runs a few of the family's thousand emulated kernels loads those."""

from __future__ import annotations

import pytest

import cuda_emulation as emulation
from lazyadam import Spec
from lazyadam.targets import batch

SPECS = [Spec(sparse=sparse, static={"eps": 4.5e-7}) for sparse in (False, True)]


def test_kernels_are_built_together_and_loaded_when_first_looked_up(monkeypatch):
    if emulation.host_compiler() is None:
        pytest.skip("no host C++ compiler (c++ or g++) to build the CUDA emulation")
    opened = []
    target = emulation.target()
    real = type(target).kernel
    monkeypatch.setattr(type(target), "kernel",
                        lambda self, spec, source, path: opened.append(spec) or real(
                            self, spec, source, path))
    built = []
    real_build = batch.build
    monkeypatch.setattr(batch, "build", lambda specs, *a, **k: built.extend(specs) or real_build(
        specs, *a, **k))
    kernels = emulation.build(SPECS)
    assert built == SPECS and opened == []
    assert list(kernels) == SPECS and len(kernels) == 2 and SPECS[1] in kernels
    assert kernels[SPECS[1]].spec == SPECS[1] and opened == [SPECS[1]]
    assert kernels[SPECS[1]] is kernels[SPECS[1]] and opened == [SPECS[1]]  # loaded once
    with pytest.raises(KeyError):
        kernels[Spec(sparse=False)]
