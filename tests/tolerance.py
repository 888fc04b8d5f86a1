"""Tolerances of a kernel against the float64 reference, by dtype, stated once."""

import numpy as np

#: (rtol, atol) after a few steps.
TOLERANCES = {"float32": (2e-5, 2e-6), "float64": (1e-12, 1e-14)}


def assert_close(actual, expected, dtype, what=""):
    rtol, atol = TOLERANCES[str(np.dtype(dtype))]
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=rtol,
                               atol=atol, err_msg=what)
