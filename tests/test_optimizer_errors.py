"""The table of bad input in docs/semantics.md, for the MindSpore-style `LazyAdam`'s constructor
and groups: the documented error. Bad calls, which must also change nothing (parameters, moments,
beta powers, step), are checked in tests/test_bad_input.py."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from lazyadam import LazyAdam, Parameter, RowTensor


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


# -- calls: what is legal (bad calls are refused, changing nothing: tests/test_bad_input.py) ----

def good_gradients(params):
    table, dense = params
    return [RowTensor(np.array([0, 5, 0]), np.ones((3, 3), np.float32), table.shape),
            np.ones((2, 2), np.float32)]


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


def test_an_iterator_is_checked_from_its_first_value(params):
    with pytest.raises(ValueError, match="learning_rate is an empty iterator"):
        make(params, learning_rate=iter([]))
    with pytest.raises(ValueError, match="got -1.0 at position 0"):
        make(params, learning_rate=(x for x in [-1.0, 0.1]))
    opt = make(params, learning_rate=iter([0.1]))
    opt(good_gradients(params))
    with pytest.raises(IndexError, match="learning_rate has 1 values.*step 1"):
        opt(good_gradients(params))


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
