"""Kernel libraries share their parsed declarations by signature (lazyadam/targets/library.py):
what each kernel calls is still its own library's function, with the declared types."""

import numpy as np
import pytest

import reference
from lazyadam import HParams, Spec, targets
from lazyadam.codegen import generate
from lazyadam.rules import ADAGRAD
from lazyadam.targets import library


def test_a_signature_declares_the_kernels_functions_as_types_without_its_symbol():
    source = generate(Spec(sparse=True), "c")
    text = library.signature(source.cdef, source.symbol)
    assert source.symbol not in text and "/*" not in text
    for declared in ("typedef int lazyadam_kernel_fn(float *var,",
                     "typedef int lazyadam_kernel_with_workspace_fn(float *var,",
                     "typedef size_t lazyadam_kernel_workspace_size_fn(int64_t rows,"):
        assert declared in text
    cuda = generate(Spec(sparse=True), "cuda")
    assert "typedef const char *lazyadam_kernel_error_fn(" in library.signature(cuda.cdef,
                                                                               cuda.symbol)


def test_kernels_of_one_signature_share_an_ffi_and_call_their_own_function(rng):
    """Nesterov's kernel and plain Adam's have one signature: one FFI, two functions, each
    giving its own rule's numbers (the reference's)."""
    c = targets.get("c")
    specs = [Spec(sparse=False, nesterov=nesterov) for nesterov in (False, True)]
    kernels = [c.load(spec) for spec in specs]
    assert kernels[0].ffi is kernels[1].ffi
    assert kernels[0].fn != kernels[1].fn
    var0 = rng.standard_normal(300).astype(np.float32)
    grad = rng.standard_normal(300).astype(np.float32)
    hp = HParams.at_step(1, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8)
    zeros = np.zeros_like(var0)
    for spec, kernel in zip(specs, kernels):
        var, m, v = var0.copy(), zeros.copy(), zeros.copy()
        kernel(var, m, v, grad, hp)
        want = reference.lazyadam_step(var0, zeros, zeros, grad, lr=hp.lr, beta1=hp.beta1,
                                       beta2=hp.beta2, eps=hp.eps, beta1_power=hp.beta1_power,
                                       beta2_power=hp.beta2_power, nesterov=spec.nesterov)
        np.testing.assert_allclose(var, want[0], rtol=1e-6, atol=1e-7)


def test_another_signature_gets_an_ffi_of_its_own():
    c = targets.get("c")
    plain = c.load(Spec(sparse=False)).ffi
    assert c.load(Spec(sparse=False, dtype="float64")).ffi is not plain
    assert c.load(Spec(sparse=True)).ffi is not plain
    assert c.load(ADAGRAD.spec(sparse=False)).ffi is not plain  # another rule's struct


def test_a_library_gives_its_constants_and_refuses_what_it_lacks():
    kernel = targets.get("c").load(Spec(sparse=True))
    assert (kernel.lib.LAZYADAM_OK, kernel.lib.LAZYADAM_EINDEX) == (0, -3)
    with pytest.raises(AttributeError):
        getattr(kernel.lib, f"{kernel.source.symbol}_multi")  # declared by CUDA kernels only
    with pytest.raises(AttributeError):
        kernel.lib.LAZYADAM_NO_SUCH_CONSTANT
