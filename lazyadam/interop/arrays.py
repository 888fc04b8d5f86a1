"""Arrays of any library read and made the same way: numpy, PyTorch, and device arrays (anything with
`__cuda_array_interface__`: PyTorch CUDA tensors, CuPy arrays, pycuda GPUArrays). These helpers are
the only places that look into an array's library, so the optimizers read every array the same way:

    is_device_array  whether an array lives on a CUDA device
    is_torch      whether an array is a PyTorch tensor
    dtype_of      numpy dtype of any array (PyTorch dtypes included; bfloat16 through ml_dtypes)
    device_of     the GPU an array lives on, where its library says
    to_host       a numpy array (device arrays copied to host memory)
    copy_into     copy a value into an existing array in place, through host memory for devices
    full_beside   an array of one value on the same device, of a given shape and dtype: state
    empty_bytes   uninitialized bytes on the same device: a sparse step's scratch
    readable      a PyTorch tensor as kernels read it: detached, a negative view resolved, a
                  ZeroTensor made into zeros
    contiguous    a C-contiguous array (device arrays copied only where needed)
    index_bounds  min and max of an index array, computed where it lives
    centralized   g - mean(g over every axis but the first), computed where it lives
    astype        a cast in the array's own library
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable

import numpy as np

from ..dtypes import bfloat16
from .device import DeviceArray, is_torch_device_tensor, torch_kind


def is_device_array(data: Any) -> bool:
    """True for arrays that live on a CUDA device (they expose `__cuda_array_interface__`)."""
    if type(data) is np.ndarray:  # the common case, without the failed attribute lookup
        return False
    if torch_kind(type(data)):  # PyTorch builds the whole interface to answer hasattr
        return is_torch_device_tensor(data)
    try:
        return hasattr(data, "__cuda_array_interface__")
    except RuntimeError:
        # PyTorch refuses the interface of a CUDA tensor that requires grad; it is on a device all
        # the same (Parameter detaches such tensors).
        return True


def is_torch(data: Any) -> bool:
    """True for PyTorch tensors, subclasses included (they take PyTorch's spelling of arguments)."""
    kind = type(data)
    found = _TORCH_TYPES.get(kind)
    if found is None:
        found = _TORCH_TYPES[kind] = any(cls.__module__.partition(".")[0] == "torch"
                                         for cls in kind.__mro__)
    return found


#: Whether each type met so far is PyTorch's (asked for every array of every parameter).
_TORCH_TYPES: dict[type, bool] = {}


def library_function(data: Any, name: str) -> Callable[..., Any] | None:
    """The function `name` of the library that defines `data`'s type (or a base of it), or None.

    It looks in each class's own module, then in that module's top-level package: `empty` of a
    `pycuda.gpuarray.GPUArray` is `pycuda.gpuarray.empty`, of a `cupy.ndarray` `cupy.empty`. Only modules already imported are searched (the array's library is, since
    the array exists).
    """
    for cls in type(data).__mro__[:-1]:
        for module in (cls.__module__, cls.__module__.partition(".")[0]):
            function = getattr(sys.modules.get(module), name, None)
            if callable(function):
                return function
    return None


def _kind(data: Any) -> str:
    return f"{type(data).__module__}.{type(data).__name__}"


def dtype_of(array: Any) -> np.dtype:
    """`array.dtype` as a numpy dtype, whatever the array's library.

    numpy, CuPy and pycuda already use numpy dtypes; a PyTorch dtype such as `torch.float32` is
    read by its name, `torch.bfloat16` as ml_dtypes' bfloat16.

    Raises:
        TypeError: no `dtype`, or one numpy has no equivalent for (e.g. `torch.bits16`).
        ImportError: a bfloat16 tensor without ml_dtypes installed (the message says how).
    """
    dtype = getattr(array, "dtype", None)
    if dtype is None:
        raise TypeError(f"a {_kind(array)} has no dtype; expected an array")
    found = _NUMPY_DTYPES.get(dtype)
    if found is not None:
        return found
    try:
        found = np.dtype(dtype)
    except TypeError:
        name = str(dtype).rpartition(".")[2]
        try:
            found = bfloat16() if name == "bfloat16" else np.dtype(name)
        except TypeError:
            raise TypeError(f"dtype {dtype} of a {_kind(array)} has no numpy equivalent; LazyAdam "
                            "takes float32, float64, bfloat16 or float16 values and integer "
                            "indices") from None
    _NUMPY_DTYPES[dtype] = found
    return found


#: The numpy dtype of each library dtype read so far (PyTorch's take a failed lookup to read).
_NUMPY_DTYPES: dict[Any, np.dtype] = {}


def device_of(array: Any) -> int | None:
    """The ordinal of the GPU `array` lives on, where its library says (PyTorch's `device.index`,
    CuPy's `device.id`); None otherwise (host arrays, pycuda)."""
    device = getattr(array, "device", None)
    for attr in ("index", "id"):
        ordinal = getattr(device, attr, None)
        if isinstance(ordinal, int) and not isinstance(ordinal, bool):
            return ordinal
    return None


def to_host(data: Any) -> np.ndarray:
    """`data` as a numpy array: host arrays as they are, device arrays copied to host memory
    (PyTorch's `cpu().numpy()`, else the library's `get()`, as CuPy and pycuda name it).

    Raises:
        TypeError: a device array whose library has neither.
    """
    if type(data) is np.ndarray:
        return data
    if not is_device_array(data):
        return _torch_numpy(data) if is_torch(data) else np.asarray(data)
    if is_torch(data):
        return _torch_numpy(data.detach().cpu())
    if not hasattr(data, "get"):
        raise TypeError(f"cannot copy a {_kind(data)} to host memory: it has no get()")
    return np.asarray(data.get())


def _torch_numpy(tensor: Any) -> np.ndarray:
    """A CPU tensor as a numpy array over its memory (over a copy for a negative view or a
    ZeroTensor: `readable`); a bfloat16 one (which numpy lacks) as ml_dtypes' bfloat16, through
    its bits."""
    tensor = readable(tensor)
    if str(tensor.dtype) == "torch.bfloat16":
        import torch  # only reached with a torch tensor in hand
        return tensor.view(torch.int16).numpy().view(bfloat16())
    return tensor.numpy()


def _numpy_torch(array: np.ndarray) -> Any:
    """A numpy array as a CPU tensor over its memory (bfloat16 through its bits)."""
    import torch  # only reached with a torch tensor in hand
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def copy_into(target: Any, value: Any) -> None:
    """Copies `value` (same shape; cast to `target`'s dtype) into `target`, in place.

    Device targets receive the value through host memory: PyTorch tensors by `copy_`, others by
    their library's `set(host_array)` (CuPy, pycuda), so the target array object, its device and
    every view of it stay the same.

    Raises:
        TypeError: a device array whose library offers neither.
    """
    if not is_device_array(target):
        target[...] = to_host(value)
        return
    host = np.ascontiguousarray(to_host(value), dtype=dtype_of(target))
    if is_torch(target):
        target.copy_(_numpy_torch(host))
    elif hasattr(target, "set"):
        target.set(host)
    else:
        raise TypeError(f"cannot copy host data into a {_kind(target)}: it has no set()")


def full_beside(data: Any, shape: tuple, dtype: Any, value: float) -> Any:
    """A C-contiguous array of `shape` and `dtype` (a numpy dtype), every element `value`, where
    `data` lives: a numpy array in host memory, or an array of the device array's own library on
    its device (PyTorch's `new_full`; else the library's `empty`, as CuPy's and pycuda's, then the
    value copied in): state arrays per element or per row.

    Raises:
        TypeError: a device array whose library has no `empty`.
    """
    dtype = np.dtype(dtype)
    if not is_device_array(data):
        return np.full(shape, value, dtype=dtype)
    if is_torch(data):
        import torch  # only reached with a torch tensor in hand
        return data.new_full(shape, value, dtype=getattr(torch, dtype.name))
    array = _allocate_beside(data, "empty", "state", shape, dtype)
    copy_into(array, np.full(shape, value, dtype=dtype))
    return array


def _allocate_beside(data: Any, name: str, what: str, *args: Any, **kwargs: Any) -> Any:
    """`name(*args, **kwargs)` of `data`'s library, called on `data`'s device (inside
    `with data.device` where the device is a context manager, as CuPy's, whose allocations go to
    the current device).

    Raises:
        TypeError: the library has no `name`.
    """
    make = library_function(data, name)
    if make is None:
        raise TypeError(f"cannot allocate {what} for a {_kind(data)}: its library has no {name}")
    device = getattr(data, "device", None)
    with device if hasattr(device, "__enter__") else contextlib.nullcontext():
        return make(*args, **kwargs)


def empty_bytes(like: Any, nbytes: int) -> Any:
    """`nbytes` bytes of uninitialized scratch where `like` lives: a numpy array in host memory, or
    a uint8 array of the device array's own library on its device (PyTorch's `new_empty`, else the
    library's `empty(shape, dtype)`, as CuPy's and pycuda's), starting on a 256-byte boundary as
    the CUDA kernels' scratch must.

    Raises:
        MemoryError, or the library's own out-of-memory error (see `is_out_of_memory`).
        TypeError: a device array whose library has no `empty`.
    """
    if not is_device_array(like):
        return np.empty(nbytes, np.uint8)
    padded = nbytes + _DEVICE_ALIGNMENT - 1
    if is_torch(like):
        import torch  # only reached with a torch tensor in hand
        block = like.new_empty((padded,), dtype=torch.uint8)
    else:
        block = _allocate_beside(like, "empty", "scratch", (padded,), np.uint8)
    start = -DeviceArray(block, "scratch").ptr % _DEVICE_ALIGNMENT
    return block[start:start + nbytes]


#: Where device scratch starts (the arrays a CUDA launcher carves out of it are so aligned).
_DEVICE_ALIGNMENT = 256


def is_out_of_memory(error: BaseException) -> bool:
    """Whether an allocation failed for want of memory: a `MemoryError`, PyTorch's
    `OutOfMemoryError` (a RuntimeError), CuPy's, or pycuda's driver error saying so."""
    return (isinstance(error, MemoryError) or "OutOfMemory" in type(error).__name__
            or "out of memory" in str(error).lower())


def is_c_contiguous(data: Any) -> bool:
    """True for C-contiguous arrays (device arrays read through `__cuda_array_interface__`)."""
    if is_device_array(data):
        return DeviceArray(data, "array").flags.c_contiguous
    return np.asarray(data).flags.c_contiguous


def readable(array: Any) -> Any:
    """A PyTorch tensor as the kernels read its values: detached from autograd, a negative view
    (`torch._neg_view`) resolved and a ZeroTensor (which has no memory) made into zeros, both
    copies in its own library; any other array as it is. (numpy refuses all three, and a
    kernel handed their memory would read the un-negated values, or address 0.)"""
    if not is_torch(array):
        return array
    if array.requires_grad:
        array = array.detach()
    if array._is_zerotensor():
        import torch  # only reached with a torch tensor in hand
        return torch.zeros_like(array)
    return array.resolve_neg()


def contiguous(array: Any) -> Any:
    """`array` itself when C-contiguous, else a C-contiguous copy in its own library (numpy's
    `ascontiguousarray`, PyTorch's `contiguous()`, the library's `ascontiguousarray` as in CuPy).

    Raises:
        ValueError: a strided device array whose library cannot copy it.
    """
    if not is_device_array(array):
        return np.ascontiguousarray(array)
    if is_c_contiguous(array):
        return array
    if is_torch(array):
        return array.contiguous()
    copy = library_function(array, "ascontiguousarray")
    if copy is None:
        raise ValueError(f"a strided {_kind(array)} must be made C-contiguous first; its library "
                         "has no ascontiguousarray")
    return copy(array)


def index_bounds(indices: Any) -> tuple[int, int]:
    """(min, max) of a non-empty integer array, reduced where it lives (only two numbers travel).

    Device arrays use their `min()`/`max()` methods (PyTorch, CuPy) or their library's `min`/`max`
    functions (pycuda.gpuarray).

    Raises:
        TypeError: a device array whose library has neither.
    """
    if not is_device_array(indices):
        indices = np.asarray(indices)
        return int(indices.min()), int(indices.max())
    if torch_kind(type(indices)):  # one reduction and one copy to the host, not two of each
        import torch  # only reached with a torch tensor in hand
        low, high = torch.aminmax(indices)
        low, high = to_host(torch.stack([low, high]).as_subclass(torch.Tensor)).tolist()
        return int(low), int(high)
    return _reduce(indices, "min"), _reduce(indices, "max")


def _reduce(array: Any, name: str) -> int:
    method = getattr(array, name, None)
    if callable(method):
        return int(to_host(method()))
    function = library_function(array, name)
    if function is None:
        raise TypeError(f"cannot check the indices of a {_kind(array)}: it has no {name}()")
    return int(to_host(function(array)))


def centralized(grad: Any) -> Any:
    """`grad - mean(grad over every axis but the first)`, a new array where `grad` lives.

    Raises:
        TypeError: a device array whose library has no `mean` over axes.
    """
    axes = tuple(range(1, len(grad.shape)))
    if is_torch(grad):
        return grad - grad.mean(dim=axes, keepdim=True)
    if not callable(getattr(grad, "mean", None)):
        raise TypeError(f"grad_centralization needs the mean of a {_kind(grad)} over axes "
                        f"{axes}, and it has no mean(); centralize it yourself, or pass a "
                        "PyTorch or CuPy array")
    return grad - grad.mean(axis=axes, keepdims=True)


def astype(array: Any, dtype: np.dtype) -> Any:
    """`array` cast to `dtype` in its own library (PyTorch's `to`, others' `astype`)."""
    if is_torch(array):
        import torch  # only reached with a torch tensor in hand
        return array.to(getattr(torch, np.dtype(dtype).name))
    return array.astype(dtype)
