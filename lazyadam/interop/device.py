"""Device arrays: `__cuda_array_interface__` and PyTorch tensors read the same way, CUDA streams
and stream capture.

    torch_kind            how an array type is read (not PyTorch, PyTorch's own, a subclass)
    DeviceArray           a view of a device array: shape, dtype, address, layout, device
    locate                a device array's address, shape and dtype, read the cheap way
    stream_handle         the raw `cudaStream_t` of PyTorch, CuPy and pycuda streams
    capturing             whether a stream is being captured into a CUDA graph
    driver                the CUDA driver library (libcuda), initialised once
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any, Sequence

import numpy as np

#: The CUDA driver API's success status.
CUDA_SUCCESS = 0


@functools.lru_cache(maxsize=None)
def driver() -> ctypes.CDLL | str:
    """The initialised CUDA driver library, or why it cannot be had."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError as err:
        return f"no CUDA driver: libcuda.so.1 could not be loaded ({err})"
    status = lib.cuInit(0)
    if status != CUDA_SUCCESS:
        return f"no CUDA GPU found: cuInit failed with CUDA driver error {status}"
    return lib


#: Per array type: 0 not a PyTorch tensor; 1 a PyTorch tensor whose `__cuda_array_interface__` is
#: PyTorch's (a device array when `is_cuda`); 2 a subclass that presents one of its own.
_TORCH_KINDS: dict[type, int] = {}
#: PyTorch dtype -> numpy dtype (bfloat16 as `<V2`, as PyTorch's array interface spells it).
_TORCH_DTYPES: dict[Any, np.dtype] = {}


def torch_kind(cls: type) -> int:
    """How an array of type `cls` is read: see `_TORCH_KINDS` (computed once per type)."""
    kind = _TORCH_KINDS.get(cls)
    if kind is None:
        tensor = next((c for c in cls.__mro__ if c.__name__ == "Tensor"
                       and c.__module__.partition(".")[0] == "torch"), None)
        if tensor is None:
            kind = 0
        else:
            kind = 1 if cls.__cuda_array_interface__ is tensor.__cuda_array_interface__ else 2
        _TORCH_KINDS[cls] = kind
    return kind


def _torch_dtype(dtype: Any) -> np.dtype:
    """The numpy dtype of a PyTorch dtype (bfloat16: `<V2`).

    Raises:
        TypeError: a dtype that numpy has no equivalent for.
    """
    found = _TORCH_DTYPES.get(dtype)
    if found is None:
        name = str(dtype).rpartition(".")[2]
        found = _TORCH_DTYPES[dtype] = np.dtype("V2" if name == "bfloat16" else name)
    return found


def is_torch_device_tensor(obj: Any) -> bool:
    """True for a PyTorch tensor that is a device array (a CUDA tensor, or a subclass presenting
    `__cuda_array_interface__`): read through PyTorch's own attributes, which cost a fraction of
    building its array interface."""
    kind = torch_kind(type(obj))
    return kind == 2 or (kind == 1 and obj.is_cuda)


def locate(obj: Any) -> tuple:
    """What a bound call compares on each step: a device array's address, shape and dtype, read
    the cheap way (PyTorch's attributes, else the array interface)."""
    if torch_kind(type(obj)):
        return obj.data_ptr(), tuple(obj.shape), obj.dtype
    interface = obj.__cuda_array_interface__
    return interface["data"][0], tuple(interface["shape"]), interface["typestr"]


class DeviceArray:
    """A view of a device array: what the checks and the launchers need.

    Read from `__cuda_array_interface__`, or for PyTorch tensors from their own attributes (the
    same facts, without building the interface's dictionary).

    Attributes:
        obj: the array it describes (kept alive while the view is).
        shape, dtype, ndim, size, ptr: as their names say; `ptr` is the device address.
        flags: `c_contiguous` and `writeable`, as numpy names them.
        device: the GPU ordinal where the array's library says (PyTorch, CuPy), else None.
    """

    __slots__ = ("obj", "shape", "dtype", "ndim", "size", "ptr", "flags", "device")

    class _Flags:
        __slots__ = ("c_contiguous", "writeable")

        def __init__(self, c_contiguous: bool, writeable: bool):
            self.c_contiguous = c_contiguous
            self.writeable = writeable

    def __init__(self, obj: Any, what: str):
        self.obj = obj
        if is_torch_device_tensor(obj):
            self.shape = tuple(obj.shape)
            self.dtype = _torch_dtype(obj.dtype)
            self.ndim = len(self.shape)
            self.size = obj.numel()
            self.ptr = obj.data_ptr()
            self.flags = _CONTIGUOUS if obj.is_contiguous() else _STRIDED
            index = obj.get_device()
            self.device = index if index >= 0 else None
            return
        interface = getattr(obj, "__cuda_array_interface__", None)
        if interface is None:
            raise TypeError(f"{what} must be a CUDA device array (an object with "
                            f"__cuda_array_interface__, e.g. a torch CUDA tensor, a CuPy array or a "
                            f"pycuda GPUArray), got {type(obj).__module__}.{type(obj).__name__}")
        self.shape = tuple(int(n) for n in interface["shape"])
        self.dtype = np.dtype(interface["typestr"])
        self.ndim = len(self.shape)
        self.size = int(np.prod(self.shape, dtype=np.int64))
        self.ptr, readonly = interface["data"]
        strides = interface.get("strides")
        contiguous = strides is None or self.size <= 1 or tuple(strides) == _c_strides(
            self.shape, self.dtype.itemsize)
        self.flags = self._Flags(contiguous, not readonly)
        self.device = None
        device = getattr(obj, "device", None)
        for attr in ("index", "id"):
            ordinal = getattr(device, attr, None)
            if isinstance(ordinal, int) and not isinstance(ordinal, bool):
                self.device = ordinal
                break

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize


#: The flags of PyTorch tensors (always writable), made once.
_CONTIGUOUS, _STRIDED = DeviceArray._Flags(True, True), DeviceArray._Flags(False, True)


def _c_strides(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    strides, step = [], itemsize
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def stream_handle(stream: Any, arrays: Sequence[DeviceArray]) -> int:
    """The raw `cudaStream_t` to launch on.

    `stream` may be None, an int handle, or a stream object of PyTorch (`.cuda_stream`), CuPy (`.ptr`)
    or pycuda (`.handle`). None means PyTorch's current stream for torch tensors, and otherwise the
    legacy default stream (0), which orders the launch after work on every blocking stream.

    Raises:
        TypeError: an object that is none of these.
    """
    if stream is None:
        first = arrays[0].obj
        if type(first).__module__.startswith("torch"):
            import torch  # only reached with torch tensors in hand
            return int(torch.cuda.current_stream(first.device).cuda_stream)
        return 0
    if isinstance(stream, (int, np.integer)) and not isinstance(stream, bool):
        return int(stream)
    for attr in ("cuda_stream", "ptr", "handle"):
        if hasattr(stream, attr):
            return int(getattr(stream, attr))
    raise TypeError(f"stream must be None, an int handle or a CUDA stream object, "
                    f"got {type(stream).__name__}")


def capturing(stream: int, example: Any) -> bool:
    """Whether work queued on `stream` is being captured into a CUDA graph rather than run.

    PyTorch's own test for its tensors (whose stream is PyTorch's current one), else the driver's
    `cuStreamIsCapturing`; False without a driver.
    """
    if torch_kind(type(example)):
        import torch  # only reached with a torch tensor in hand
        return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
    lib = driver()
    if isinstance(lib, str):
        return False
    status = ctypes.c_int(0)
    if lib.cuStreamIsCapturing(ctypes.c_void_p(stream), ctypes.byref(status)) != CUDA_SUCCESS:
        return False
    return status.value != 0
