"""The kernel variants that the tests compile on every target, and what the reference needs of one.

The full flag product in float32 and float64 (576 kernels), and a sample of the half-precision
product (`half_variants`: every flag combination once, 288 kernels, each of the 16 ways of storing
a bfloat16 or float16 parameter meeting every flag value). The whole half-precision product would
be 4608 kernels more, eight times the compile time of the rest of the suite.
"""

import ml_dtypes
import numpy as np

from lazyadam import Spec
from lazyadam.codegen.variants import half_variants, variants

FULL = variants(dtype="float32") + variants(dtype="float64")
HALF = half_variants()
ALL = FULL + HALF

#: numpy's type of each storage dtype.
NUMPY = {"float32": np.float32, "float64": np.float64, "bfloat16": ml_dtypes.bfloat16,
         "float16": np.float16}


def dtype(spec: Spec, array: str) -> type:
    """The numpy type in which `array` ("var", "m", "v", "vmax" or "grad") of `spec` is stored."""
    return NUMPY[spec.storage(array)]


def reference_flags(spec: Spec, seed: int = 0, step: int = 0) -> dict:
    """The keywords of `reference.lazyadam_step` that describe `spec` (its storage included), for
    step `step` of a run with seed `seed`."""
    flags = dict(nesterov=spec.nesterov, decay=spec.decay, amsgrad=spec.amsgrad,
                 maximize=spec.maximize, eps_mode=spec.eps_mode)
    if spec.dtype in ("bfloat16", "float16"):
        flags.update(dtype=spec.dtype, state_dtype=spec.storage("m"), rounding=spec.rounding,
                     seed=seed, step=step)
    return flags
