"""Tolerances of a kernel against the float64 reference, by dtype, stated once."""

import ml_dtypes
import numpy as np

#: (rtol, atol) after a few steps.
TOLERANCES = {"float32": (2e-5, 2e-6), "float64": (1e-12, 1e-14)}
#: 16-bit storage: the reference rounds what it stores as the kernels do, so the values are equal,
#: except where the kernels' float32 arithmetic and the reference's float64 fall on the two sides of
#: a rounding boundary (a tie, or a carry of stochastic rounding): there they differ by one unit in
#: the last place. At most this share of the elements (and at least one) may. Values within float32's
#: absolute tolerance are equal in any case (a sum that cancels to nearly 0 keeps only the rounding
#: errors of float32 or float64 arithmetic, which 16 bits then store as different tiny numbers).
HALF_MISMATCHES = 0.01
HALF = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def assert_close(actual, expected, dtype, what=""):
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    if name in HALF:
        assert_rounded(actual, expected, name, what)
        return
    rtol, atol = TOLERANCES[name]
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=rtol,
                               atol=atol, err_msg=what)


def ulp_distance(a, b, dtype):
    """How many values of the 16-bit `dtype` lie between a and b (arrays of that dtype)."""
    def ordered(x):
        bits = np.asarray(x, dtype=HALF[dtype]).view(np.uint16).astype(np.int64)
        return np.where(bits & 0x8000, -(bits & 0x7FFF), bits)
    return np.abs(ordered(a) - ordered(b))


def assert_rounded(actual, expected, dtype, what=""):
    """`actual` (stored in `dtype`) equals the reference's rounded `expected`, up to rare 1-ulp ties."""
    actual = np.asarray(actual)
    assert actual.dtype == HALF[dtype], f"{what}: stored as {actual.dtype}, expected {dtype}"
    wanted = np.asarray(expected, dtype=np.float64).astype(HALF[dtype])
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(wanted), err_msg=f"{what}: NaNs")
    finite = ~np.isnan(wanted)
    close = np.abs(actual[finite].astype(np.float64) - wanted[finite].astype(np.float64)) <= (
        TOLERANCES["float32"][1])
    distance = np.where(close, 0, ulp_distance(actual[finite], wanted[finite], dtype))
    assert distance.size == 0 or distance.max() <= 1, (
        f"{what}: {int((distance > 1).sum())} of {distance.size} values differ by more than one "
        f"{dtype} ulp (up to {int(distance.max())})")
    allowed = max(1, int(HALF_MISMATCHES * distance.size))
    assert int((distance == 1).sum()) <= allowed, (
        f"{what}: {int((distance == 1).sum())} of {distance.size} values are one {dtype} ulp off "
        f"(at most {allowed} may be)")
