"""The dtypes of the kernels' arrays, as numpy spells them.

float32, float64 and float16 are numpy's own. numpy has no bfloat16: `ml_dtypes` (the dtype package
that JAX uses) adds one, and is an optional dependency (`pip install 'lazyadam[bfloat16]'`),
imported only when a bfloat16 dtype has to be made: for a bfloat16 array, or a bfloat16 torch
tensor (the `torch` extra installs it). The storage name of an array needs no import: a bfloat16
array is recognized by its dtype's name, or, through the CUDA array interface (PyTorch,
ml_dtypes), by the typestr `<V2` that both give bfloat16.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def storage_name(dtype: Any) -> str:
    """The name of `dtype` as the kernels name dtypes: "float32", "bfloat16", "int64", ...

    A 2-byte void dtype (`<V2`, how the CUDA array interface spells bfloat16) reads as bfloat16.

    Raises:
        TypeError: a dtype in the other byte order than this machine's (see `native`).
    """
    found = _NAMES.get(dtype)
    if found is None:
        found = native(np.dtype(dtype))
        if found.name == "bfloat16" or (found.kind == "V" and found.itemsize == 2
                                        and not found.fields):
            found = "bfloat16"
        else:
            found = found.name
        _NAMES[dtype] = found
    return found


def native(dtype: np.dtype) -> np.dtype:
    """`dtype`, if its bytes are in this machine's order.

    Every array a kernel reads or writes is checked here (through `storage_name`), since its name
    alone hides the byte order: `np.dtype('>f4').name` is "float32", and a kernel would read a
    big-endian array's bytes as wrong numbers (a weight moved by -1.5e-35 instead of -0.1).

    Raises:
        TypeError: the other byte order, saying how to convert the array.
    """
    if dtype.isnative:
        return dtype
    order = "big" if dtype.byteorder == ">" else "little"
    convert = (f".astype('={dtype.kind}{dtype.itemsize}')" if dtype.kind in "fiuc"
               else ".astype(array.dtype.newbyteorder('='))")
    raise TypeError(f"dtype {dtype.str!r} is {order}-endian, not this machine's byte order: the "
                    f"kernels would read its bytes as other numbers; convert it with {convert}")


#: The name of each dtype read so far (numpy's `dtype.name` takes microseconds to make).
_NAMES: dict[Any, str] = {}


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype of the storage dtype `name`.

    Raises:
        ImportError: bfloat16 without ml_dtypes installed (the message says how to install it).
    """
    if name == "bfloat16":
        return bfloat16()
    return np.dtype(name)


def bfloat16() -> np.dtype:
    """numpy's bfloat16, from ml_dtypes.

    Raises:
        ImportError: ml_dtypes is not installed.
    """
    try:
        import ml_dtypes
    except ImportError:
        raise ImportError("bfloat16 arrays in numpy need the ml_dtypes package: "
                          "pip install 'lazyadam[bfloat16]' (or pip install ml_dtypes)") from None
    return np.dtype(ml_dtypes.bfloat16)
