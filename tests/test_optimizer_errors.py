"""Every row of the table of bad input in docs/semantics.md: the documented error, and a failed
call changes nothing (parameters, moments, beta powers, step)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from lazyadam import LazyAdam, Parameter, RowTensor
from lazyadam.schedules import ExponentialDecayLR


@pytest.fixture
def params(rng):
    return [Parameter(rng.standard_normal((6, 3)).astype(np.float32), name="table"),
            Parameter(rng.standard_normal((2, 2)).astype(np.float32), name="dense")]


def make(params, **kwargs):
    return LazyAdam(params, **kwargs)


# -- the constructor -------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [None, []], ids=["None", "empty"])
def test_params_none_or_empty(bad):
    with pytest.raises(ValueError, match="params"):
        LazyAdam(bad)


@pytest.mark.parametrize("bad", [5, Parameter(np.zeros(2), name="alone"), "table"],
                         ids=["int", "a Parameter", "str"])
def test_params_not_iterable(bad):
    with pytest.raises(TypeError, match="params"):
        LazyAdam(bad)


def test_params_element_neither_parameter_nor_dict(params):
    with pytest.raises(TypeError, match=r"params\[1\].*ndarray"):
        LazyAdam([params[0], np.zeros(3)])


@pytest.mark.parametrize("bad", [None, "0.1", np.float32(0.1), np.int64(1), True,
                                 {"lr": 0.1}, ["a", "b"], {0.1, 0.2}],
                         ids=["None", "str", "np.float32", "np.int64", "bool", "dict",
                              "strings", "set (no order)"])
def test_learning_rate_of_another_type(params, bad):
    with pytest.raises(TypeError, match="learning_rate"):
        make(params, learning_rate=bad)


@pytest.mark.parametrize("bad", [-0.1, -1, math.nan, math.inf, np.ones((2, 2)),
                                 np.array(-1.0), [0.1, -0.1], [0.1, math.nan], []],
                         ids=["negative", "negative int", "nan", "inf", "2-d", "0-d negative",
                              "negative element", "nan element", "empty"])
def test_learning_rate_bad_value(params, bad):
    with pytest.raises(ValueError, match="learning_rate"):
        make(params, learning_rate=bad)


@pytest.mark.parametrize("name", ["beta1", "beta2", "eps"])
@pytest.mark.parametrize("bad", [1, True, np.float32(0.5), "0.5", None],
                         ids=["int", "bool", "np.float32", "str", "None"])
def test_betas_and_eps_must_be_python_floats(params, name, bad):
    with pytest.raises(TypeError, match=name):
        make(params, **{name: bad})


@pytest.mark.parametrize("name", ["beta1", "beta2"])
@pytest.mark.parametrize("bad", [0.0, 1.0, -0.5, 1.5, math.nan])
def test_betas_outside_the_open_unit_interval(params, name, bad):
    with pytest.raises(ValueError, match=name):
        make(params, **{name: bad})


@pytest.mark.parametrize("bad", [0.0, -1e-8, math.nan, math.inf])
def test_eps_not_positive_and_finite(params, bad):
    with pytest.raises(ValueError, match="eps"):
        make(params, eps=bad)


@pytest.mark.parametrize("bad", ["0.1", None, np.float32(0.1), True, [0.1]],
                         ids=["str", "None", "np.float32", "bool", "list"])
def test_weight_decay_of_another_type(params, bad):
    with pytest.raises(TypeError, match="weight_decay"):
        make(params, weight_decay=bad)


@pytest.mark.parametrize("bad", [-0.1, -1, math.nan])
def test_weight_decay_negative_or_nan(params, bad):
    with pytest.raises(ValueError, match="weight_decay"):
        make(params, weight_decay=bad)


@pytest.mark.parametrize("bad", ["1", None, np.float32(1.0), [1.0]],
                         ids=["str", "None", "np.float32", "list"])
def test_loss_scale_of_another_type(params, bad):
    with pytest.raises(TypeError, match="loss_scale"):
        make(params, loss_scale=bad)


@pytest.mark.parametrize("good", [True, 2, 1024.0])
def test_loss_scale_accepts_bool_and_int(params, good):
    assert make(params, loss_scale=good).loss_scale == float(good)


@pytest.mark.parametrize("bad", [0, 0.0, -1.0, False, math.nan, math.inf])
def test_loss_scale_not_positive_and_finite(params, bad):
    with pytest.raises(ValueError, match="loss_scale"):
        make(params, loss_scale=bad)


@pytest.mark.parametrize("name", ["use_locking", "use_nesterov", "amsgrad", "maximize",
                                  "decoupled_weight_decay"])
@pytest.mark.parametrize("bad", [1, "yes", None])
def test_flags_must_be_bool(params, name, bad):
    with pytest.raises(TypeError, match=name):
        make(params, **{name: bad})


def test_eps_mode_must_be_known(params):
    with pytest.raises(ValueError, match="eps_mode"):
        make(params, eps_mode="torch")


def test_parameter_dtype_must_be_float():
    with pytest.raises(TypeError, match="int64"):
        LazyAdam([Parameter(np.zeros(3, np.int64), name="counts")])


def test_parameter_names_must_be_unique(params):
    twin = Parameter(np.zeros(3, np.float32), name="table")
    with pytest.raises(ValueError, match="table"):
        LazyAdam([params[0], twin])
    with pytest.raises(ValueError, match="more than once"):
        LazyAdam([params[0], params[0]])


# -- groups ----------------------------------------------------------------------------------------

def test_group_unknown_key(params):
    with pytest.raises(KeyError, match="learning_rate"):
        LazyAdam([{"params": params, "learning_rate": 0.1}])


def test_group_without_params(params):
    with pytest.raises(KeyError, match="params"):
        LazyAdam([{"lr": 0.1}])


def test_parameter_in_two_groups(params):
    with pytest.raises(RuntimeError, match="table"):
        LazyAdam([{"params": params}, {"params": [params[0]]}])


def test_group_bad_values(params):
    with pytest.raises(TypeError, match="group 0 lr"):
        LazyAdam([{"params": params, "lr": "fast"}])
    with pytest.raises(ValueError, match="group 0 weight_decay"):
        LazyAdam([{"params": params, "weight_decay": -1.0}])
    with pytest.raises(TypeError, match="grad_centralization"):
        LazyAdam([{"params": params, "grad_centralization": 1}])
    with pytest.raises(ValueError, match="group 0"):
        LazyAdam([{"params": []}])
    with pytest.raises(TypeError, match="mixes"):
        LazyAdam([{"params": [params[0]]}, params[1]])


def test_order_params_must_be_exactly_the_grouped_parameters(params):
    extra = Parameter(np.zeros(2, np.float32), name="extra")
    with pytest.raises(ValueError, match="missing from order_params: \\['dense'\\]"):
        LazyAdam([{"params": params}, {"order_params": [params[0]]}])
    with pytest.raises(ValueError, match="not in a group: \\['extra'\\]"):
        LazyAdam([{"params": params}, {"order_params": [*params, extra]}])
    with pytest.raises(ValueError, match="only 'order_params'"):
        LazyAdam([{"params": params, "order_params": params}])


# -- every call: a clear error, and nothing changes --------------------------------------------

def snapshot(opt):
    return ([p.asnumpy() for p in opt.parameters], [p.asnumpy() for p in opt.moment1],
            [p.asnumpy() for p in opt.moment2], opt.beta1_power, opt.beta2_power, opt.global_step)


def assert_unchanged(opt, before):
    after = snapshot(opt)
    for old, new in zip(before[:3], after[:3]):
        for a, b in zip(old, new):
            np.testing.assert_array_equal(a, b)
    assert before[3:] == after[3:]


def good_gradients(params):
    table, dense = params
    return [RowTensor(np.array([0, 5, 0]), np.ones((3, 3), np.float32), table.shape),
            np.ones((2, 2), np.float32)]


BAD_CALLS = {
    "not a sequence": (lambda t, d: {"table": 1}, TypeError, "tuple or list"),
    "too few": (lambda t, d: [t], ValueError, "1 gradients for 2 parameters"),
    "too many": (lambda t, d: [t, d, d], ValueError, "3 gradients for 2 parameters"),
    "dense of another type": (lambda t, d: [t, d.tolist()], TypeError, "list"),
    "dense shape": (lambda t, d: [t, np.ones((2, 3), np.float32)], ValueError, r"\(2, 3\)"),
    "dense dtype": (lambda t, d: [t, d.astype(np.float64)], TypeError, "float64"),
    "float indices": (lambda t, d: [RowTensor(np.array([0.0, 1.0]), np.ones((2, 3), np.float32),
                                              (6, 3)), d], TypeError, "integers"),
    "bool indices": (lambda t, d: [RowTensor(np.array([True]), np.ones((1, 3), np.float32),
                                             (6, 3)), d], TypeError, "integers"),
    "2-d indices": (lambda t, d: [RowTensor(np.array([[0, 1]]), np.ones((2, 3), np.float32),
                                            (6, 3)), d], ValueError, "1-d"),
    "values shape": (lambda t, d: [RowTensor(np.array([0, 1]), np.ones((2, 4), np.float32),
                                             (6, 3)), d], ValueError, r"\(2, 4\)"),
    "values dtype": (lambda t, d: [RowTensor(np.array([0, 1]), np.ones((2, 3)), (6, 3)), d],
                     TypeError, "float64"),
    "dense_shape": (lambda t, d: [RowTensor(np.array([0]), np.ones((1, 3), np.float32), (7, 3)),
                                  d], ValueError, "dense_shape"),
    "index too large": (lambda t, d: [RowTensor(np.array([0, 6, 9]), np.ones((3, 3), np.float32),
                                                (6, 3)), d], IndexError,
                        r"indices\[1\] = 6 is outside \[0, 6\)"),
    "negative index": (lambda t, d: [RowTensor(np.array([2, -1], np.int32),
                                               np.ones((2, 3), np.float32), (6, 3)), d],
                       IndexError, r"indices\[1\] = -1"),
    "dense byte order": (lambda t, d: [t, d.astype(">f4")], TypeError,
                         r"gradient 1 \(parameter 'dense'\): dtype '>f4'.*astype\('=f4'\)"),
    "values byte order": (lambda t, d: [RowTensor(t.indices, t.values.astype(">f4"), (6, 3)), d],
                          TypeError, r"gradient 0 .*: values: dtype '>f4'.*astype\('=f4'\)"),
    "indices byte order": (lambda t, d: [RowTensor(t.indices.astype(">i8"), t.values, (6, 3)), d],
                           TypeError, r"gradient 0 .*: indices: dtype '>i8'.*astype\('=i8'\)"),
}


@pytest.mark.parametrize("case", BAD_CALLS)
def test_bad_call_changes_nothing(params, case):
    make_grads, error, message = BAD_CALLS[case]
    opt = make(params, learning_rate=0.1, weight_decay=0.1)
    opt(good_gradients(params))
    before = snapshot(opt)
    with pytest.raises(error, match=message):
        opt(make_grads(*good_gradients(params)))
    assert_unchanged(opt, before)
    assert opt(good_gradients(params)) is True


def test_bad_second_gradient_leaves_the_first_parameter_alone(params):
    """All gradients are checked before any kernel runs."""
    opt = make(params)
    before = snapshot(opt)
    table_grad = good_gradients(params)[0]
    with pytest.raises(IndexError, match="dense"):
        opt([table_grad, RowTensor(np.array([2]), np.ones((1, 2), np.float32), (2, 2))])
    assert_unchanged(opt, before)


def test_learning_rate_sequence_that_ran_out(params):
    opt = make(params, learning_rate=[0.1, 0.01])
    opt(good_gradients(params))
    opt(good_gradients(params))
    before = snapshot(opt)
    with pytest.raises(IndexError, match="learning_rate has 2 values.*step 2"):
        opt(good_gradients(params))
    assert_unchanged(opt, before)
    with pytest.raises(IndexError, match="step 2"):
        opt.get_lr()


def test_read_only_parameter_data():
    data = np.zeros(3)
    data.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        Parameter(data, name="frozen")


def test_an_empty_index_list_is_an_empty_batch():
    table = Parameter(np.ones((4, 2), np.float32), name="table")
    opt = LazyAdam([table])
    assert opt((RowTensor([], np.zeros((0, 2), np.float32), table.shape),))
    assert opt.global_step == 1
    np.testing.assert_array_equal(table.data, 1.0)


# -- values that are legal, or refused with a clear error, after a hostile test run -------------

def test_np_float64_hyperparameters_are_python_floats(params, rng):
    """np.float64 subclasses float (MindSpore's checks accept it); np.float32 stays refused."""
    grads = good_gradients(params)
    twins = [Parameter(p.asnumpy(), name=p.name) for p in params]
    numpy_floats = make(params, learning_rate=np.float64(0.05), beta1=np.float64(0.8),
                        beta2=np.float64(0.99), eps=np.float64(1e-7),
                        weight_decay=np.float64(0.01), loss_scale=np.float64(2.0))
    python_floats = make(twins, learning_rate=0.05, beta1=0.8, beta2=0.99, eps=1e-7,
                         weight_decay=0.01, loss_scale=2.0)
    for _ in range(3):
        numpy_floats(grads)
        python_floats(grads)
    for a, b in zip(params, twins):
        np.testing.assert_array_equal(a.data, b.data)
    assert type(numpy_floats.beta1) is float and numpy_floats.beta1_power == 0.8 ** 3
    assert numpy_floats.get_lr() == 0.05 and type(numpy_floats.learning_rate) is float


def test_np_float64_group_learning_rate(params):
    """A group's lr takes np.float64 as the optimizer's learning_rate does."""
    opt = make([{"params": [params[0]], "lr": np.float64(0.5)}, {"params": [params[1]]}],
               learning_rate=np.float64(0.25))
    assert opt.get_lr() == (0.5, 0.25)


class Overflowing(ExponentialDecayLR):
    """1e-300 * (1e100 ** k): 1 at step 3; at step 4, 1e100 ** 4 overflows."""

    def __init__(self):
        super().__init__(1e-300, 1e100, 1)


@pytest.mark.parametrize("which", ["learning_rate", "weight_decay"])
def test_a_schedule_that_overflows_is_a_value_error_naming_it_and_the_step(params, which):
    opt = make(params, **{which: Overflowing()}, **({"learning_rate": 0.0}
                                                     if which == "weight_decay" else {}))
    zero = [RowTensor(np.array([0]), np.zeros((1, 3), np.float32), (6, 3)),
            np.zeros((2, 2), np.float32)]
    for _ in range(4):
        opt(zero)
    before = snapshot(opt)
    with pytest.raises(ValueError, match=f"{which} schedule Overflowing.* failed at step 4: "
                                         "OverflowError"):
        opt(zero)
    assert_unchanged(opt, before)


def endless(value, limit=10_000):
    """`itertools.repeat(value)`, but failing loudly if read eagerly instead of filling memory."""
    for count, item in enumerate(itertools.repeat(value)):
        if count == limit:
            raise AssertionError("an endless learning rate was read eagerly")
        yield item


def test_an_endless_iterable_learning_rate_is_read_as_the_steps_need_it(params):
    source = endless(1e-3)
    opt = make(params, learning_rate=source)
    for step in range(5):
        assert opt.get_lr() == 1e-3
        assert opt(good_gradients(params))
    assert opt.global_step == 5 and opt.dynamic_lr and opt.learning_rate is source


@pytest.mark.parametrize("bad, error, message", [
    (-0.5, ValueError, r"learning_rate must be finite and >= 0, got -0.5 at position 2"),
    (math.nan, ValueError, "got nan at position 2"),
    ("fast", TypeError, r"learning_rate\[2\] must be a real number, got str"),
])
def test_a_bad_value_of_an_iterator_is_refused_at_its_step_and_after(params, bad, error,
                                                                     message):
    opt = make(params, learning_rate=iter([0.1, 0.2, bad, 0.3]))
    opt(good_gradients(params))
    opt(good_gradients(params))
    before = snapshot(opt)
    for _ in range(2):  # the value after the bad one cannot stand in for it
        with pytest.raises(error, match=message):
            opt(good_gradients(params))
        assert_unchanged(opt, before)


def test_an_iterator_is_checked_from_its_first_value(params):
    with pytest.raises(ValueError, match="learning_rate is an empty iterator"):
        make(params, learning_rate=iter([]))
    with pytest.raises(ValueError, match="got -1.0 at position 0"):
        make(params, learning_rate=(x for x in [-1.0, 0.1]))
    opt = make(params, learning_rate=iter([0.1]))
    opt(good_gradients(params))
    with pytest.raises(IndexError, match="learning_rate has 1 values.*step 1"):
        opt(good_gradients(params))


ALIASES = {
    "dense gradient is the parameter": lambda t, d, opt: [good_gradients([t, d])[0], d.data],
    "dense gradient is a view of moment2": lambda t, d, opt: [
        good_gradients([t, d])[0], opt.moment2[1].data[:, :]],
    "values are rows of the parameter": lambda t, d, opt: [
        RowTensor(np.array([1, 0]), t.data[:2], t.shape), np.ones((2, 2), np.float32)],
    "values are rows of moment1": lambda t, d, opt: [
        RowTensor(np.array([1, 0]), opt.moment1[0].data[3:5], t.shape),
        np.ones((2, 2), np.float32)],
    "indices are the parameter's bytes": lambda t, d, opt: [
        RowTensor(t.data[2].view(np.int32), np.ones((3, 3), np.float32), t.shape),
        np.ones((2, 2), np.float32)],
}


@pytest.mark.parametrize("case", ALIASES)
def test_a_gradient_that_shares_memory_with_what_the_step_writes_is_refused(case):
    table = Parameter(np.zeros((6, 3), np.float32), name="table")  # zero bytes: valid indices
    dense = Parameter(np.ones((2, 2), np.float32), name="dense")
    opt = make([table, dense], learning_rate=0.1)
    opt(good_gradients([table, dense]))
    before = snapshot(opt)
    with pytest.raises(ValueError, match=r"gradient [01] \(parameter '(table|dense)'\).*shares "
                                         "memory with the .*parameter.*pass a copy"):
        opt(ALIASES[case](table, dense, opt))
    assert_unchanged(opt, before)


# -- out of memory: every step's scratch is allocated before any kernel writes ---------------------

def test_scratch_that_cannot_be_had_is_a_memory_error_and_changes_nothing(rng, monkeypatch):
    """A dense parameter first, then a sparse one whose scratch cannot be allocated: before, the
    dense one had been updated and the step counted when the sparse kernel failed."""
    from lazyadam.runtime import checks
    dense = Parameter(rng.standard_normal((2, 2)).astype(np.float32), name="dense")
    table = Parameter(rng.standard_normal((6, 3)).astype(np.float32), name="table")
    opt = make([dense, table])
    grads = [np.ones((2, 2), np.float32),
             RowTensor(np.array([0, 5, 0]), np.ones((3, 3), np.float32), table.shape)]
    opt(grads)
    before = snapshot(opt)

    def no_memory(like, nbytes):
        raise MemoryError(f"Unable to allocate {nbytes} bytes")
    monkeypatch.setattr(checks, "empty_bytes", no_memory)
    with pytest.raises(MemoryError, match=r"gradient 1 \(parameter 'table'\): out of memory: its "
                                          r"sparse step needs [\d,]+ bytes of scratch for 3 indices"):
        opt(grads)
    assert_unchanged(opt, before)


OUT_OF_MEMORY_SCRIPT = r"""
import resource, sys
import numpy as np
from lazyadam import LazyAdam, Parameter, RowTensor

nnz = 30_000_000
dense = Parameter(np.ones((64, 64), np.float32), name="dense")
table = Parameter(np.zeros((1000, 1), np.float32), name="table")
opt = LazyAdam([dense, table])
small = RowTensor(np.array([1, 2]), np.ones((2, 1), np.float32), table.shape)
opt([np.ones((64, 64), np.float32), small])  # compiles both kernels
big = RowTensor(np.arange(nnz) % 1000, np.ones((nnz, 1), np.float32), table.shape)
dense_before = dense.asnumpy()
with open("/proc/self/status") as f:
    size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (size + 400 * 2**20, resource.RLIM_INFINITY))
try:
    opt([np.ones((64, 64), np.float32), big])
except MemoryError as error:
    print("MemoryError:", error)
else:
    sys.exit("no MemoryError")
assert opt.global_step == 1 and opt.beta1_power == 0.9, (opt.global_step, opt.beta1_power)
np.testing.assert_array_equal(dense.asnumpy(), dense_before)
print("unchanged")
"""


def test_a_step_over_a_memory_limit_fails_before_writing_anything():
    """The issue's case for real: 30M indices under an address-space limit that leaves 400 MiB,
    less than their scratch (about 1 GiB)."""
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-c", OUT_OF_MEMORY_SCRIPT], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "out of memory: its sparse step needs" in proc.stdout
    assert proc.stdout.rstrip().endswith("unchanged")


@pytest.mark.parametrize("step", [2**64 - 1, 2**64, 2**70], ids=["2**64-1", "2**64", "2**70"])
def test_a_step_count_past_64_bits_is_refused_when_loaded(params, step):
    """The next step, global_step + 1, goes to the kernels as a 64-bit unsigned count: a state whose
    count leaves no next step is refused by load_state_dict, which changes nothing (a call after
    it raised OverflowError, with step and beta powers already moved on)."""
    opt = make(params)
    opt(good_gradients(params))
    state = opt.state_dict()
    before = snapshot(opt)
    with pytest.raises(ValueError, match=r"global_step.*2\*\*64"):
        opt.load_state_dict({**state, "global_step": step})
    assert_unchanged(opt, before)


def test_the_last_step_a_64_bit_count_holds(params):
    """global_step = 2**64 - 2 loads, and its call runs step 2**64 - 1."""
    opt = make(params)
    state = opt.state_dict()
    opt.load_state_dict({**state, "global_step": 2**64 - 2})
    assert opt(good_gradients(params)) and opt.global_step == 2**64 - 1
    assert opt.beta1_power == 0.9


@pytest.mark.parametrize("dtype", [">f4", ">f8"])
def test_a_parameter_in_the_other_byte_order_is_refused(dtype):
    """The name of the dtype hides the byte order ('>f4' is "float32"): its bytes were read as this
    machine's floats. Refused when the optimizer is made, saying how to convert."""
    param = Parameter(np.ones((2, 2), dtype), name="loaded")
    with pytest.raises(TypeError, match=rf"parameter 'loaded': dtype '{dtype}' is big-endian.*"
                                        rf"astype\('={dtype[1:]}'\)"):
        LazyAdam([param])


def test_a_gradient_in_the_other_byte_order_converted_as_told_steps_right():
    """The issue's case: one step of lr 0.1 moves a weight by -0.1 (Adam's first step moves every
    weight by lr), once the big-endian gradient is converted with .astype('=f4')."""
    param = Parameter(np.zeros(3, np.float32), name="w")
    opt = LazyAdam([param], learning_rate=0.1)
    grad = np.array([1.0, 2.0, 3.0], ">f4")
    with pytest.raises(TypeError, match=r"astype\('=f4'\)"):
        opt((grad,))
    np.testing.assert_array_equal(param.data, 0.0)
    opt((grad.astype("=f4"),))
    np.testing.assert_allclose(param.data, -0.1, rtol=1e-5)
