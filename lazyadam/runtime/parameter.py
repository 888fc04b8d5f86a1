"""What the optimizer updates and what it is given: `Parameter` and the sparse gradient `RowTensor`.

A `Parameter` is an array with a name, updated in place: the optimizer writes into `param.data`, so
every view of that array (the user's own included) sees each step. A `RowTensor` is MindSpore's
sparse gradient: `values[i]` is the gradient of row `indices[i]` of a parameter of `dense_shape`.

Arrays on a GPU (anything with `__cuda_array_interface__`: PyTorch CUDA tensors, CuPy arrays, pycuda
GPUArrays) are kept as they are; everything else is held as a C-contiguous numpy array. Both are read
through `lazyadam.interop.arrays`.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from ..interop.arrays import copy_into, dtype_of, is_device_array, is_torch, to_host

_unnamed = itertools.count()


class Parameter:
    """A named array that an optimizer updates in place (MindSpore's `Parameter`).

    Args:
        data: the initial value. A C-contiguous, writable numpy array is kept as is (no copy), so
            the caller's array is the one that is trained; anything else numpy accepts is copied
            into a new C-contiguous array. Device arrays are kept as they are (the optimizer
            requires them C-contiguous). A PyTorch tensor that requires grad (an `nn.Parameter`)
            is detached: the detached tensor shares its memory, so the caller's tensor is trained.
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
        if is_torch(data) and data.requires_grad:
            data = data.detach()
        if not is_device_array(data):
            data = np.asarray(to_host(data) if is_torch(data) else data, order="C")
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
        """The numpy dtype (also for PyTorch tensors, see `dtype_of`)."""
        return dtype_of(self._data)

    @property
    def ndim(self) -> int:
        return len(self._data.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self._data.shape, dtype=np.int64))

    @property
    def on_device(self) -> bool:
        """True when the data lives on a CUDA device."""
        return is_device_array(self._data)

    def asnumpy(self) -> np.ndarray:
        """A numpy copy of the current value in host memory (as MindSpore's `Tensor.asnumpy`)."""
        return np.array(to_host(self._data), copy=True)

    def set_data(self, value: Any) -> Parameter:
        """Copies `value` into the parameter in place (the array object stays the same).

        `value` may be a host or a device array; device parameters receive it through host memory
        (`copy_into`).

        Raises:
            ValueError: `value` has another shape.
        """
        if not is_device_array(value):
            value = to_host(value)
        if tuple(value.shape) != self.shape:
            raise ValueError(f"Parameter {self._name!r}: set_data got shape {tuple(value.shape)}, "
                             f"the parameter has {self.shape}")
        copy_into(self._data, value)
        return self

    def __array__(self, dtype=None, copy=None):
        data = to_host(self._data)
        if dtype is not None and np.dtype(dtype) != data.dtype:
            return data.astype(dtype)
        return data.copy() if copy else data

    def __repr__(self) -> str:
        where = f", device={type(self._data).__name__}" if self.on_device else ""
        return f"Parameter(name={self._name!r}, shape={self.shape}, dtype={self.dtype}{where})"


class RowTensor:
    """A sparse gradient by rows (MindSpore's `RowTensor`).

    It stands for the dense gradient `G` of shape `dense_shape` with `G[indices[i]] += values[i]`
    (duplicate indices are summed). Nothing is checked here: the optimizer checks every gradient of
    a call against its parameter before it writes anything (docs/semantics.md "Bad input").
    Device arrays are kept as they are (a device parameter takes indices and values on its
    device); anything else becomes a numpy array.

    Args:
        indices: 1-d integer array of row numbers.
        values: array of shape `(len(indices),) + dense_shape[1:]`.
        dense_shape: the shape of the parameter this gradient belongs to.
    """

    __slots__ = ("indices", "values", "dense_shape")

    def __init__(self, indices: Any, values: Any, dense_shape: Any):
        if is_device_array(indices):
            self.indices = indices
        else:  # an empty list would read as float64; an empty batch is rows of int64
            self.indices = to_host(indices)
            if self.indices.size == 0 and self.indices.dtype.kind not in "iu":
                self.indices = self.indices.astype(np.int64)
        self.values = values if is_device_array(values) else to_host(values)
        self.dense_shape = tuple(int(d) for d in dense_shape)

    def __repr__(self) -> str:
        return (f"RowTensor(nnz={len(self.indices)}, dense_shape={self.dense_shape}, "
                f"dtype={dtype_of(self.values)})")
