"""`LazyAdam` on bfloat16 and float16 parameters: numpy arrays (ml_dtypes) and torch tensors, state
in its own dtype, float32 gradients, stochastic rounding with the seed in the state and the
checkpoints (bad input, refused before anything is written: tests/test_bad_input.py)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from lazyadam import LazyAdam, Parameter, RowTensor
from runtime_reference import simulate
from tolerance import assert_close

torch = pytest.importorskip("torch", reason="torch is not installed: no torch tensors to train")

NUMPY = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16, "float32": np.float32}
TORCH = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
HYPER = dict(learning_rate=0.01, beta1=0.9, beta2=0.999, eps=1e-8)


def model(rng, dtype):
    """An embedding table (sparse gradients) and a dense matrix, of `dtype`."""
    return [Parameter(rng.standard_normal((13, 2, 3)).astype(NUMPY[dtype]), name="embedding"),
            Parameter(rng.standard_normal((4, 5)).astype(NUMPY[dtype]), name="dense")]


def gradients(rng, params, steps, dtype):
    """Per step: a RowTensor with duplicate, unsorted indices for the table, a dense array else."""
    table, dense = params
    out = []
    for k in range(steps):
        indices = np.array([7, 2, 7, 0, 12, 2, 7][: 7 - k])
        values = rng.standard_normal((len(indices),) + table.shape[1:]).astype(NUMPY[dtype])
        out.append([RowTensor(indices, values, table.shape),
                    rng.standard_normal(dense.shape).astype(NUMPY[dtype])])
    return out


CASES = [("bfloat16", None, "nearest", "bfloat16"), ("bfloat16", "bfloat16", "stochastic", "float32"),
         ("float16", None, "stochastic", "float16"), ("float16", "bfloat16", "nearest", "float32")]


@pytest.mark.parametrize("dtype, state_dtype, rounding, grad_dtype", CASES,
                         ids=["-".join(str(x) for x in case) for case in CASES])
def test_half_precision_parameters_match_the_reference(dtype, state_dtype, rounding, grad_dtype,
                                                       rng):
    params = model(rng, dtype)
    initial = [p.asnumpy() for p in params]
    steps = gradients(rng, params, 3, grad_dtype)
    opt = LazyAdam(params, weight_decay=0.05, state_dtype=state_dtype, rounding=rounding,
                   seed=1234, **HYPER)
    for grads in steps:
        assert opt(grads) is True
    reference = [[(g.indices, g.values) if isinstance(g, RowTensor) else g for g in grads]
                 for grads in steps]
    lr = HYPER["learning_rate"]
    expected = simulate(initial, reference, lr_at=lambda k, i: lr, wd_at=lambda k, i: 0.05,
                        beta1=0.9, beta2=0.999, eps=1e-8, seed=1234, dtype=dtype,
                        state_dtype=state_dtype, rounding=rounding)
    state = state_dtype or "float32"
    for i, param in enumerate(opt.parameters):
        assert param.dtype == NUMPY[dtype] and opt.moment1[i].dtype == NUMPY[state]
        assert_close(param.data, expected[0][i], dtype, param.name)
        assert_close(opt.moment1[i].data, expected[1][i], state, f"moment1 of {param.name}")
        assert_close(opt.moment2[i].data, expected[2][i], state, f"moment2 of {param.name}")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_torch_tensors_train_in_place_as_numpy_arrays_do(dtype, rng):
    """A torch tensor of a half dtype (nn.Parameter included) is trained in place, bit for bit as
    the same values in a numpy array; torch gradients and RowTensors of torch tensors work too."""
    start = rng.standard_normal((6, 4)).astype(np.float32)
    grads = [(rng.integers(0, 6, 5), rng.standard_normal((5, 4)).astype(np.float32))
             for _ in range(3)]
    weight = torch.nn.Parameter(torch.from_numpy(start).to(TORCH[dtype]))
    array = start.astype(NUMPY[dtype])
    ours = LazyAdam([Parameter(weight, name="w")], rounding="stochastic", seed=9, **HYPER)
    theirs = LazyAdam([Parameter(array, name="w")], rounding="stochastic", seed=9, **HYPER)
    for indices, values in grads:
        ours((RowTensor(torch.from_numpy(indices), torch.from_numpy(values).to(TORCH[dtype]),
                        (6, 4)),))
        theirs((RowTensor(indices, values.astype(NUMPY[dtype]), (6, 4)),))
    trained = weight.detach().view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(trained, array.view(np.uint16))
    assert not np.array_equal(array.astype(np.float32), start)
    dense = torch.ones((6, 4), dtype=torch.float32)  # float32 gradients of a half parameter
    ours((dense,))
    theirs((np.ones((6, 4), np.float32),))
    np.testing.assert_array_equal(weight.detach().view(torch.int16).numpy().view(np.uint16),
                                  array.view(np.uint16))


def test_stochastic_rounding_depends_on_the_seed_and_resumes_from_a_checkpoint(rng, tmp_path):
    """Two steps, a checkpoint, two more: a fresh optimizer that loads the checkpoint (its seed
    included) continues bitwise; another seed rounds otherwise."""
    def run(seed, steps, opt=None, params=None):
        params = params or model(np.random.default_rng(3), "bfloat16")
        opt = opt or LazyAdam(params, state_dtype="bfloat16", rounding="stochastic", seed=seed,
                              **HYPER)
        for grads in steps:
            opt(grads)
        return opt, params

    steps = gradients(rng, model(np.random.default_rng(3), "bfloat16"), 4, "bfloat16")
    straight, _ = run(77, steps)
    first, _ = run(77, steps[:2])
    first.save(tmp_path / "opt.ckpt")
    assert first.state_dict()["seed"] == 77
    resumed, params = run(0, [], params=model(np.random.default_rng(5), "bfloat16"))
    resumed.load(tmp_path / "opt.ckpt")
    assert resumed.seed == 77 and resumed.moment1[0].dtype == ml_dtypes.bfloat16
    run(0, steps[2:], opt=resumed)
    for a, b in zip(straight.state_dict()["parameters"].values(),
                    resumed.state_dict()["parameters"].values()):
        np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16))
    other, _ = run(78, steps)
    assert not np.array_equal(other.parameters[1].asnumpy().view(np.uint16),
                              straight.parameters[1].asnumpy().view(np.uint16))
