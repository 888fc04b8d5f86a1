"""What the optimizer updates and what it is given: `Parameter` and the sparse gradient `RowTensor`.

A `Parameter` is an array with a name, updated in place: the optimizer writes into `param.data`, so
every view of that array (the user's own included) sees each step. A `RowTensor` is MindSpore's
sparse gradient: `values[i]` is the gradient of row `indices[i]` of a parameter of `dense_shape`.

Arrays on a GPU (anything with `__cuda_array_interface__`) are kept as they are; everything else is
held as a C-contiguous numpy array.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

_unnamed = itertools.count()


def is_device_array(data: Any) -> bool:
    """True for arrays that live on a CUDA device (they expose `__cuda_array_interface__`)."""
    return hasattr(data, "__cuda_array_interface__")


def to_host(data: Any) -> np.ndarray:
    """`data` as a numpy array: host arrays as they are, device arrays copied (CuPy's `get()`,
    else PyTorch's `cpu().numpy()`)."""
    if not is_device_array(data):
        return np.asarray(data)
    return data.get() if hasattr(data, "get") else data.cpu().numpy()


def zeros_like(data: Any) -> Any:
    """A zero array of `data`'s shape and dtype, on the same device: the optimizer's moments.

    Host data gives a C-contiguous numpy array. Device data gives the `zeros_like` of the array's
    own library (CuPy, PyTorch, ...), found from the array's type.

    Raises:
        TypeError: a device array whose library has no `zeros_like`.
    """
    if not is_device_array(data):
        return np.zeros(np.shape(data), dtype=data.dtype)
    library = __import__(type(data).__module__.split(".")[0])
    make = getattr(library, "zeros_like", None)
    if make is None:
        raise TypeError(f"cannot allocate moments for a {type(data).__name__}: its library "
                        f"{library.__name__!r} has no zeros_like")
    return make(data)


class Parameter:
    """A named array that an optimizer updates in place (MindSpore's `Parameter`).

    Args:
        data: the initial value. A C-contiguous, writable numpy array is kept as is (no copy), so
            the caller's array is the one that is trained; anything else numpy accepts is copied
            into a new C-contiguous array. Device arrays are kept as they are.
        name: the parameter's name, used by the weight-decay filter, the moments' names and
            checkpoints. Default: `Parameter_<n>` with a per-process counter.

    Raises:
        TypeError: `name` is not a string.
        ValueError: `data` is read-only.
    """

    __slots__ = ("_data", "_name")

    def __init__(self, data: Any, name: str | None = None):
        if name is None:
            name = f"Parameter_{next(_unnamed)}"
        if not isinstance(name, str):
            raise TypeError(f"Parameter name must be a string, got {type(name).__name__}: {name!r}")
        if not is_device_array(data):
            data = np.asarray(data, order="C")
            if not data.flags.writeable:
                raise ValueError(f"Parameter {name!r}: data is read-only; pass a writable array "
                                 "(e.g. a copy)")
        self._data = data
        self._name = name

    @property
    def data(self) -> Any:
        """The array itself (not a copy): updated in place by the optimizer."""
        return self._data

    @property
    def name(self) -> str:
        return self._name

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._data.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._data.dtype)

    @property
    def ndim(self) -> int:
        return len(self._data.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self._data.shape, dtype=np.int64))

    def asnumpy(self) -> np.ndarray:
        """A numpy copy of the current value (as MindSpore's `Tensor.asnumpy`)."""
        return np.array(to_host(self._data), copy=True)

    def set_data(self, value: Any) -> Parameter:
        """Copies `value` into the parameter in place (the array object stays the same).

        Raises:
            ValueError: `value` has another shape.
        """
        value = np.asarray(value) if not is_device_array(value) else value
        if tuple(value.shape) != self.shape:
            raise ValueError(f"Parameter {self._name!r}: set_data got shape {tuple(value.shape)}, "
                             f"the parameter has {self.shape}")
        self._data[...] = value
        return self

    def __array__(self, dtype=None, copy=None):
        if dtype is None or np.dtype(dtype) == self._data.dtype:
            return self._data if not copy else self._data.copy()
        return self._data.astype(dtype)

    def __repr__(self) -> str:
        return f"Parameter(name={self._name!r}, shape={self.shape}, dtype={self.dtype})"


class RowTensor:
    """A sparse gradient by rows (MindSpore's `RowTensor`).

    It stands for the dense gradient `G` of shape `dense_shape` with `G[indices[i]] += values[i]`
    (duplicate indices are summed). Nothing is checked here: the optimizer checks every gradient of
    a call against its parameter before it writes anything (SEMANTICS "Bad input").

    Args:
        indices: 1-d integer array of row numbers.
        values: array of shape `(len(indices),) + dense_shape[1:]`.
        dense_shape: the shape of the parameter this gradient belongs to.
    """

    __slots__ = ("indices", "values", "dense_shape")

    def __init__(self, indices: Any, values: Any, dense_shape: Any):
        self.indices = indices if is_device_array(indices) else np.asarray(indices)
        self.values = values if is_device_array(values) else np.asarray(values)
        self.dense_shape = tuple(int(d) for d in dense_shape)

    def __repr__(self) -> str:
        return (f"RowTensor(nnz={len(self.indices)}, dense_shape={self.dense_shape}, "
                f"dtype={self.values.dtype})")
