"""Issue 16's proof that adding an optimizer means writing its rule: sign-SGD with momentum,
defined here and nowhere else (not even registered), gets with no other change

- C and emulated CUDA kernels, dense and lazy sparse, checked against `numpy_step` below;
- an nvcc build to PTX (skipped, visibly, without nvcc);
- sources from `lazyadam generate --rule test_rule_api:SIGN_SGD` that build with plain
  `cc -std=c99 -Wall -Werror`;
- a MindSpore-style optimizer, `lazyadam.optimizer(SIGN_SGD)`, stepped 3 times against the model,
  with a checkpoint round trip; and a torch optimizer, `lazyadam.torch.optimizer(SIGN_SGD)`,
  stepped dense and sparse against the model, with a checkpoint round trip.

The rule, per element: `m = beta*m + (1-beta)*g;  w -= lr*sign(m)` (sign(0) = 0). docs/rules.md
walks through it as the tutorial.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lazyadam
from lazyadam.codegen.ir import Assign, Elem, Param, sign
from lazyadam.codegen.rule import HParam, Interval, Lowering, Rule, State
from lazyadam.targets.base import hparams_of
from reference_family import touched


def lower(spec) -> Lowering:
    """g = grad;  m = beta*m + (1-beta)*g;  var = var - lr*sign(m)"""
    beta, m = Param("beta"), Elem("m")
    return Lowering(
        grad=(Assign("g", Elem("grad")),),
        update=(Assign("m", beta * m + (1 - beta) * Elem("g")),
                Assign("var", Elem("var") - Param("lr") * sign(m))))


SIGN_SGD = Rule(
    name="sign_sgd",
    prefix="lazyadam_sign_sgd",
    options=(),
    hparams=(HParam("lr", 0.01, Interval(0.0), static=False),
             HParam("beta", 0.9, Interval(0.0, 1.0))),
    state=(State("m", names={"mindspore": "moments", "torch": "momentum_buffer",
                             "plural": "ms"}),),
    symbol_order=("use_locking",),
    lower=lower,
    doc="sign-SGD with momentum",
)

TESTS = Path(__file__).resolve().parent
ROWS, DIM, NNZ = 6, 33, 8
LR, BETA = 0.05, 0.8
NUMPY = {"float32": np.float32, "float64": np.float64}


def numpy_step(w, m, grad, *, lr, beta, indices=None):
    """One step of the rule in float64 on copies: on a sparse step only the rows in `indices`,
    each row's occurrences summed first."""
    w, m = np.array(w, dtype=np.float64), np.array(m, dtype=np.float64)
    rows, g = touched(w, grad, indices, loss_scale=1.0, maximize=False)
    m[rows] = beta * m[rows] + (1 - beta) * g
    w[rows] -= lr * np.sign(m[rows])
    return w, m


def batches(dtype, sparse, seed=0, steps=3):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        if sparse:
            indices = rng.integers(0, ROWS - 2, NNZ)     # the last two rows untouched
            out.append((indices, rng.standard_normal((NNZ, DIM)).astype(dtype)))
        else:
            out.append((None, rng.standard_normal((ROWS, DIM)).astype(dtype)))
    return out


# --- kernels -------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["c", "cuda"], ids=["c", "emulated-cuda"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_kernels_match_the_numpy_model(request, target, sparse, dtype):
    from lazyadam import targets
    wrap = np.asarray                      # the C kernels take numpy arrays
    if target == "cuda":                   # the emulated CUDA kernels, device arrays
        request.getfixturevalue("emulated_cuda")
        import cuda_emulation
        wrap = cuda_emulation.Emulated
    spec = SIGN_SGD.spec(sparse=sparse, dtype=dtype).validate()
    kernel = targets.compile(spec, target)
    assert kernel.arrays == ("var", "m")
    rng = np.random.default_rng(1)
    w = rng.standard_normal((ROWS, DIM)).astype(NUMPY[dtype])
    m = np.zeros_like(w)
    start = w.copy()
    expected = (w.astype(np.float64), m.astype(np.float64))
    for t, (indices, grad) in enumerate(batches(NUMPY[dtype], sparse), start=1):
        hp = hparams_of(SIGN_SGD).at_step(t, lr=LR, beta=BETA)
        kernel(wrap(w), wrap(m), wrap(grad) if indices is None else (wrap(indices), wrap(grad)),
               hp)
        expected = numpy_step(*expected, grad, lr=LR, beta=BETA, indices=indices)
        np.testing.assert_allclose(m, expected[1], rtol=1e-6, atol=1e-7)
        # sign(m) is exact: w differs from the model only where m sits on 0 within rounding.
        np.testing.assert_allclose(w, expected[0], rtol=1e-6, atol=1e-6)
    if sparse:
        assert (w[ROWS - 2:] == start[ROWS - 2:]).all() and not m[ROWS - 2:].any()


def test_cuda_sources_compile_with_nvcc(tmp_path):
    """The rule's dense and sparse CUDA kernels to PTX for sm_90 in one unit, as
    tests/test_cuda_codegen.py compiles the product."""
    from test_cuda_codegen import compile_unit, nvcc_or_skip
    nvcc = nvcc_or_skip()
    sources = [lazyadam.generate(SIGN_SGD.spec(sparse=s, dtype=d).validate(), "cuda")
               for s in (False, True) for d in ("float32", "bfloat16")]
    assert compile_unit(nvcc, "90", sources, tmp_path).exists()


def test_generate_writes_sources_that_build_with_plain_cc(tmp_path):
    """`lazyadam generate --rule test_rule_api:SIGN_SGD`, as a user runs it with this folder on
    PYTHONPATH (`module:attribute` imports the module), then `cc -std=c99 -Wall -Werror`."""
    from lazyadam.targets import c
    if c.unavailable():
        pytest.skip(c.unavailable())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS),
                                                        os.environ.get("PYTHONPATH", "")])}
    for sparse in ("--dense", "--sparse"):
        result = subprocess.run(
            [sys.executable, "-c", "from lazyadam.cli import main; main()", "generate",
             "--rule", "test_rule_api:SIGN_SGD", sparse, "--out", str(tmp_path)],
            env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    sources = sorted(p.name for p in tmp_path.glob("lazyadam_sign_sgd_*.c"))
    assert sources == ["lazyadam_sign_sgd_dense_f32.c", "lazyadam_sign_sgd_sparse_f32_i64.c"]
    for source in sources:
        built = subprocess.run([*c.compiler(), "-std=c99", "-Wall", "-Werror", "-c", source],
                               cwd=tmp_path, capture_output=True, text=True)
        assert built.returncode == 0, built.stderr


# --- the MindSpore-style front end ---------------------------------------------------------------

def test_the_mindspore_style_optimizer_takes_the_rules_arguments():
    SignSgd = lazyadam.optimizer(SIGN_SGD)
    assert SignSgd.__name__ == "SignSgd" and lazyadam.optimizer(SIGN_SGD) is SignSgd
    import inspect
    parameters = inspect.signature(SignSgd).parameters
    assert [(n, p.default) for n, p in list(parameters.items())[1:3]] == [
        ("learning_rate", 0.01), ("beta", 0.9)]
    table = lazyadam.Parameter(np.zeros((3, 2), np.float32), name="table")
    with pytest.raises(ValueError, match=r"beta must lie in \[0, 1\), got 1.5"):
        SignSgd([table], beta=1.5)
    with pytest.raises(ValueError, match="rule 'sign_sgd' has no weight decay"):
        SignSgd([{"params": [table], "weight_decay": 0.1}])
    with pytest.raises(TypeError, match="momentum"):
        SignSgd([table], momentum=0.9)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_the_mindspore_style_optimizer_steps_the_rule(tmp_path, sparse):
    SignSgd = lazyadam.optimizer(SIGN_SGD)
    rng = np.random.default_rng(2)
    start = rng.standard_normal((ROWS, DIM)).astype(np.float32)
    data = batches(np.float32, sparse, seed=3, steps=4)

    def make(values):
        return SignSgd([lazyadam.Parameter(values.copy(), name="table")], learning_rate=LR,
                       beta=BETA)

    def grad(batch):
        indices, values = batch
        return [values if indices is None else lazyadam.RowTensor(indices, values, (ROWS, DIM))]

    opt = make(start)
    expected = (start, np.zeros_like(start))
    for batch in data[:3]:
        assert opt(grad(batch)) is True
        expected = numpy_step(*expected, batch[1], lr=LR, beta=BETA, indices=batch[0])
    assert [a.name for a in opt.moments] == ["moments.table"]
    np.testing.assert_allclose(opt.moments[0].data, expected[1], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(opt.parameters[0].data, expected[0], rtol=1e-6, atol=1e-6)

    opt.save(tmp_path / "sign_sgd.npz")
    resumed = make(np.zeros_like(start))
    resumed.load(tmp_path / "sign_sgd.npz")
    assert resumed.global_step == 3
    for o in (opt, resumed):
        o(grad(data[3]))
    mine, theirs = opt.state_dict(), resumed.state_dict()
    assert mine["rule"] == "sign_sgd" and list(mine) == list(theirs)
    for key in ("parameters", "moments"):
        assert np.array_equal(mine[key]["table"], theirs[key]["table"])
    with pytest.raises(ValueError, match="rule 'sign_sgd'.*rule 'adam'"):
        lazyadam.LazyAdam([lazyadam.Parameter(start.copy(), name="table")]).load(
            tmp_path / "sign_sgd.npz")


# --- the torch front end -------------------------------------------------------------------------

def test_the_torch_optimizer_steps_the_rule():
    """`lazyadam.torch.optimizer(rule)`: the torch half of the proof, written beside this one."""
    torch = pytest.importorskip("torch", reason="the torch front end needs torch")
    import lazyadam.torch as lazyadam_torch
    rng = np.random.default_rng(4)
    start = rng.standard_normal((ROWS, DIM)).astype(np.float32)
    weight = torch.nn.Parameter(torch.from_numpy(start.copy()))
    opt = lazyadam_torch.optimizer(SIGN_SGD)([weight], lr=LR, beta=BETA)
    expected = (start, np.zeros_like(start))
    steps = batches(np.float32, False, seed=5) + batches(np.float32, True, seed=6)
    for indices, values in steps:  # 3 dense steps, then 3 lazy sparse ones
        weight.grad = (torch.from_numpy(values) if indices is None else torch.sparse_coo_tensor(
            torch.from_numpy(indices)[None], torch.from_numpy(values), (ROWS, DIM)))
        opt.step()
        expected = numpy_step(*expected, values, lr=LR, beta=BETA, indices=indices)
    np.testing.assert_allclose(weight.detach().numpy(), expected[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(opt.state[weight]["momentum_buffer"].numpy(), expected[1],
                               rtol=1e-6, atol=1e-7)
    # A checkpoint round trip (torch.save, then torch.load as weights only): a new optimizer
    # resumes bitwise.
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    again = torch.nn.Parameter(weight.detach().clone())
    resumed = lazyadam_torch.optimizer(SIGN_SGD)([again], lr=LR, beta=BETA)
    resumed.load_state_dict(saved)
    grad = torch.from_numpy(rng.standard_normal((ROWS, DIM)).astype(np.float32))
    weight.grad, again.grad = grad.clone(), grad.clone()
    opt.step()
    resumed.step()
    assert torch.equal(weight, again)
    assert torch.equal(opt.state[weight]["momentum_buffer"], resumed.state[again]["momentum_buffer"])
