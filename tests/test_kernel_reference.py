"""Every kernel variant of every rule against its numpy reference, on every target, by one driver.

    c          the C kernels: LazyAdam's whole product of tests/product.py (576 in float32 and
               float64, and the half-precision sample of 288), built in batches (`c_variants`);
               the family's (`product.FAMILY`, 1515 of SGD, Adagrad, rowwise Adagrad,
               partial-rowwise Adam and Lion by the same scheme: `family_c`)
    emulated   the CUDA kernels and launchers built for the CPU (tests/cuda_emulation), on guarded
               host arrays presented as device arrays: test_cuda_emulation.SPECS, and the family's
               product wherever the CUDA target renders it (`family_emulated`: the others skip,
               quoting the target's SpecError, until the CUDA templates print them)
    gpu        the CUDA kernels on a GPU (marked cuda: skipped, saying why, without one):
               test_cuda_gpu.SPECS, on arrays of PyTorch, CuPy or pycuda

A few steps from the same random start go through the kernel and the reference (sparse: unsorted
with duplicates, one row only, empty, and a longer draw): tests/reference.py for LazyAdam,
tests/reference_family.py for the family. Every state array must hold its storage dtype and match
the reference within its dtype's tolerance (LazyAdam's reference rounds 16-bit storage as the
kernels do; the family's computes in float64, so a 16-bit kernel is compared after each step,
within a unit in the last place, and goes on from what it stored); a sparse step leaves the rows
it never names untouched, bit for bit; an emulated kernel writes nothing outside its arrays. The shapes are
each target's loop edges: C dense rows cross two chunks of 4096 in half precision; emulated, five
chunks of 64 over three blocks, and sparse rows of 70 (two or three columns a lane); GPU, tails
of 70001 and sparse rows of 135.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest

import cuda_emulation as emulation
import lazyadam
import product
import test_cuda_emulation
import test_cuda_gpu
from lazyadam import HParams, Spec
from lazyadam.rules import ADAM
from lazyadam.targets.base import hparams_of
from reference import lazyadam_step
from test_cuda_gpu import device  # noqa: F401  (a fixture)
from tolerance import EPSILON, assert_close

HYPER = dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.05, loss_scale=4.0)
SEED = 20261124
FIXED_STEPS = [[5, 1, 5, 0, 9, 1, 5], [3, 3, 3], []]


@dataclass
class Memory:
    """Where a target's arrays live: `zeros(shape, dtype)` makes a state array, `put` a copy of a
    host array as the kernel takes it, `get` the host copy of an array, `check` what else must hold
    of a state array after the steps."""

    zeros: Callable[[tuple, Any], Any]
    put: Callable[[np.ndarray], Any]
    get: Callable[[Any], np.ndarray]
    check: Callable[[np.ndarray], None] = lambda array: None


def c_shape(spec: Spec) -> tuple:
    if spec.dtype in ("bfloat16", "float16"):
        return (11, 4, 6) if spec.sparse else (3, 3001)
    return (11, 2, 3) if spec.sparse else (3, 37)


def c_steps(spec: Spec, rng, rows: int) -> list:
    return FIXED_STEPS + [[2, 10, 2, 2]]


def emulated_steps(spec: Spec, rng, rows: int) -> list:
    return FIXED_STEPS + [list(rng.integers(0, rows, 300))]  # many draws over few rows: a long sort


def gpu_steps(spec: Spec, rng, rows: int) -> list:
    return FIXED_STEPS + [list(rng.zipf(1.2, 5000) % rows) for _ in range(2)]  # hot rows


@dataclass(frozen=True)
class Target:
    """How the driver runs a variant on one target."""

    name: str
    specs: list
    mark: Any
    kernels: Callable[[pytest.FixtureRequest], Callable[[Spec], Any]]
    memory: Callable[[pytest.FixtureRequest], Memory]
    shape: Callable[[Spec], tuple]
    sparse_steps: Callable[[Spec, Any, int], list]


def c_kernels(request) -> Callable[[Spec], Any]:
    return request.getfixturevalue("c_variants")


def emulated_kernels_of(request) -> Callable[[Spec], Any]:
    return request.getfixturevalue("emulated_kernels").__getitem__


def family_c_kernels(request) -> Callable[[Spec], Any]:
    return request.getfixturevalue("family_c")


def family_emulated_kernels(request) -> Callable[[Spec], Any]:
    return request.getfixturevalue("family_emulated")


def gpu_kernels(request) -> Callable[[Spec], Any]:
    request.getfixturevalue("device")  # a skip that says what is missing, without a GPU
    return lambda spec: lazyadam.compile(spec, "cuda")


def host(request) -> Memory:
    return Memory(lambda shape, dtype: np.zeros(shape, dtype), np.array, np.asarray)


def emulated_memory(request) -> Memory:
    def put(array):
        copy = test_cuda_emulation.aligned(array.shape, array.dtype)
        copy[...] = array
        return emulation.Emulated(copy)
    return Memory(lambda shape, dtype: emulation.Emulated(test_cuda_emulation.aligned(shape, dtype)),
                  put, lambda d: d.array, test_cuda_emulation.assert_in_bounds)


def gpu_memory(request) -> Memory:
    arrays = request.getfixturevalue("device")
    return Memory(lambda shape, dtype: arrays.put(np.zeros(shape, dtype)), arrays.put, arrays.get)


def emulated_shape(spec: Spec) -> tuple:
    return (12, 2, 35) if spec.sparse else (3, 101)


TARGETS = [
    Target("c", product.ALL, pytest.mark.slow, c_kernels, host, c_shape, c_steps),
    Target("emulated", test_cuda_emulation.SPECS, (), emulated_kernels_of, emulated_memory,
           emulated_shape, emulated_steps),
    Target("c", product.FAMILY, pytest.mark.slow, family_c_kernels, host, c_shape, c_steps),
    Target("emulated", product.FAMILY, pytest.mark.slow, family_emulated_kernels,
           emulated_memory, emulated_shape, emulated_steps),
    Target("gpu", test_cuda_gpu.SPECS, pytest.mark.cuda, gpu_kernels, gpu_memory,
           lambda spec: (300, 3, 45) if spec.sparse else (7, 70001), gpu_steps),
]


@pytest.fixture(scope="module")
def emulated_kernels(emulated_variants) -> dict:
    return emulated_variants(test_cuda_emulation.SPECS)


def hparams(spec: Spec, t: int):
    """The hyperparameters of step t (`at_step`: the beta powers, Adagrad's t, the step)."""
    if spec.RULE is ADAM:
        return HParams.at_step(t, seed=SEED, **{**HYPER, **spec.statics})  # statics: the kernel's
    return hparams_of(spec.RULE).at_step(t, seed=SEED, **product.FAMILY_HYPER[spec.RULE.name])


def reference_step(spec: Spec, ref: dict, grad, hp, t: int) -> dict:
    """One step of the reference of the spec's rule, on the float64 state `ref` (by name)."""
    indices, values = grad if spec.sparse else (None, grad)
    if spec.RULE is not ADAM:
        return product.family_step(spec, ref, values.astype(np.float64), indices, t)
    new = lazyadam_step(ref["var"], ref["m"], ref["v"], values, indices=indices,
                        vmax=ref.get("vmax"), lr=hp.lr, beta1=hp.beta1, beta2=hp.beta2,
                        eps=hp.eps, beta1_power=hp.beta1_power, beta2_power=hp.beta2_power,
                        weight_decay=hp.weight_decay, loss_scale=hp.loss_scale,
                        **product.reference_flags(spec, seed=hp.seed, step=hp.step))
    return dict(zip(("var", "m", "v", "vmax"), new))


def rounds(spec: Spec) -> bool:
    """Whether the reference rounds what it stores as the kernel does: LazyAdam's does; the
    family's computes in float64, so a 16-bit kernel is checked step by step from what it stored."""
    return spec.RULE is ADAM or spec.dtype not in ("bfloat16", "float16")


def assert_matches(spec: Spec, got: dict, expected: dict, what: str) -> None:
    for name, actual in got.items():
        assert actual.dtype == product.dtype(spec, name), name
        storage = spec.storage(name)
        if rounds(spec) or storage not in EPSILON:
            assert_close(actual, expected[name], storage, f"{what}{name}")
        else:  # at most a unit in the last place apart: stochastic rounding's, or a tie's
            eps = EPSILON[storage]
            largest = float(np.abs(expected[name]).max(initial=0.0))
            np.testing.assert_allclose(actual.astype(np.float64), expected[name], rtol=2 * eps,
                                       atol=eps * largest, err_msg=f"{what}{name}")


@pytest.mark.parametrize("target, spec", [
    pytest.param(target, spec, marks=target.mark, id=f"{target.name}-{spec.symbol()}")
    for target in TARGETS for spec in target.specs])
def test_kernel_matches_reference(request, target, spec, rng):
    kernel, memory = target.kernels(request)(spec), target.memory(request)
    shape = target.shape(spec)
    rule = spec.RULE
    names = rule.arrays(spec) + rule.row_arrays(spec)
    var0 = rng.standard_normal(shape).astype(product.dtype(spec, "var"))
    ref = {name: np.zeros(shape if name in rule.arrays(spec) else shape[:1]) for name in names}
    ref["var"] = var0.astype(np.float64)
    state = {name: memory.put(var0) if name == "var" else
             memory.zeros(ref[name].shape, product.dtype(spec, name)) for name in names}
    required = [s.name for s in rule.state if s.when is None]
    grad_dtype = product.dtype(spec, "grad")
    if spec.sparse:
        grads = [(np.array(rows, spec.index_dtype),
                  rng.standard_normal((len(rows),) + shape[1:]).astype(grad_dtype))
                 for rows in target.sparse_steps(spec, rng, shape[0])]
    else:
        grads = [rng.standard_normal(shape).astype(grad_dtype) for _ in range(3)]
    for t, grad in enumerate(grads, start=1):
        hp = hparams(spec, t)
        on_target = tuple(map(memory.put, grad)) if spec.sparse else memory.put(grad)
        kernel(state["var"], *(state[name] for name in required), on_target, hp,
               **{name: state[name] for name in names[1:] if name not in required})
        ref = reference_step(spec, ref, grad, hp, t)
        if not rounds(spec):
            got = {name: memory.get(state[name]) for name in names}
            assert_matches(spec, got, ref, f"step {t}: ")
            ref.update((name, array.astype(np.float64)) for name, array in got.items())
    got = {name: memory.get(state[name]) for name in names}
    assert_matches(spec, got, ref, "")
    for array in got.values():
        memory.check(array)
    if spec.sparse:  # rows never named are untouched, bit for bit
        touched = set().union(*(set(indices.tolist()) for indices, _ in grads))
        untouched = [r for r in range(shape[0]) if r not in touched]
        np.testing.assert_array_equal(got["var"][untouched], var0[untouched])
        for name in names[1:]:
            assert not got[name][untouched].astype(np.float64).any(), name
