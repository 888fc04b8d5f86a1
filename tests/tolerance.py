"""Tolerances of a kernel against the float64 reference, by dtype, stated once."""

import ml_dtypes
import numpy as np

#: (rtol, atol) after a few steps.
TOLERANCES = {"float32": (2e-5, 2e-6), "float64": (1e-12, 1e-14)}
#: 16-bit storage: the reference rounds what it stores as the kernels do, so the values are equal,
#: except where the kernels' float32 arithmetic (and float32 hyperparameters: 1 - beta1 is 0.1f) and
#: the reference's float64 fall on the two sides of a rounding boundary (a tie, or a carry of
#: stochastic rounding), rarely: at most this share of the elements (at least one) may differ.
HALF_MISMATCHES = 0.01
#: Such a difference is one unit in the last place, and stays a few of them in later steps, except
#: where a later sum cancels (m after a gradient of the other sign): there it is a few units of
#: the earlier, larger value. So every value is within 4 units of itself or 2 of the largest.
EPSILON = {"bfloat16": 2.0 ** -7, "float16": 2.0 ** -10}
HALF = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def assert_close(actual, expected, dtype, what=""):
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    if name in HALF:
        assert_rounded(actual, expected, name, what)
        return
    rtol, atol = TOLERANCES[name]
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=rtol,
                               atol=atol, err_msg=what)


def assert_rounded(actual, expected, dtype, what=""):
    """`actual` (stored in `dtype`) equals the reference's rounded `expected`, but for rare ties."""
    actual = np.asarray(actual)
    assert actual.dtype == HALF[dtype], f"{what}: stored as {actual.dtype}, expected {dtype}"
    wanted = np.asarray(expected, dtype=np.float64).astype(HALF[dtype])
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(wanted), err_msg=f"{what}: NaNs")
    finite = ~np.isnan(wanted)
    got, wanted = actual[finite].astype(np.float64), wanted[finite].astype(np.float64)
    # Values within float32's tolerance count as equal: a sum that cancels to nearly 0 keeps only
    # the rounding errors of float32 or float64 arithmetic, stored as different tiny numbers.
    differ = np.abs(got - wanted) > TOLERANCES["float32"][1]
    allowed = max(1, int(HALF_MISMATCHES * wanted.size))
    assert int(differ.sum()) <= allowed, (
        f"{what}: {int(differ.sum())} of {wanted.size} {dtype} values differ from the reference's "
        f"(at most {allowed} may)")
    largest = float(np.abs(wanted).max(initial=0.0))
    np.testing.assert_allclose(got, wanted, rtol=4 * EPSILON[dtype],
                               atol=2 * EPSILON[dtype] * largest, err_msg=what)
