"""How the kernels see PyTorch tensors: a parameter they can update (`check_parameter`), the array
a kernel takes for a tensor (`view`, the only place that decides it), a gradient as a slot takes
it (`gradient`: an array, or a `RowTensor` of rows), and the small objects a binding keeps
(`Memory`, `StateView`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..interop.arrays import index_bounds, readable, to_host
from ..runtime.parameter import Parameter, RowTensor
from ..targets.base import index_error

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
#: The dtypes of the `step` state tensor.
STEP_DTYPES = (torch.float32, torch.float64)


def check_parameter(param: torch.Tensor, name: str, who: str) -> None:
    """A parameter the kernels can update: a float32, float64, bfloat16 or float16 dense
    tensor in CPU or CUDA memory (one that is not contiguous, or a negative view, is stepped
    through a working copy: see `binding.bind`). `who` names the optimizer in errors.

    Raises:
        ValueError: a complex or sparse parameter (as torch's SparseAdam), a ZeroTensor (which
            torch cannot write either).
        TypeError: another dtype, layout or device type.
    """
    if param.dtype not in DTYPES:
        error = ValueError if param.is_complex() else TypeError
        raise error(f"parameter {name!r} has dtype {param.dtype}; {who} updates float32, "
                    "float64, bfloat16 and float16 parameters (not complex ones)")
    if param.layout != torch.strided:
        raise ValueError(f"parameter {name!r} has layout {param.layout}; the kernels update "
                         "dense (strided) tensors")
    if param.device.type not in ("cpu", "cuda"):
        raise TypeError(f"parameter {name!r} is on device {param.device}; {who} updates CPU and "
                        "CUDA tensors")
    if param._is_zerotensor():
        raise ValueError(f"parameter {name!r} is a ZeroTensor, which is immutable (torch's "
                         "optimizers cannot step it either); pass a tensor of its own (.clone())")


def scalar_dtype() -> torch.dtype:
    """The dtype of `step`, as torch's optimizers choose it: float64 under a float64 default."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


#: numpy's type string of each dtype whose CPU tensors `Memory.view` takes (numpy has no bfloat16).
_TYPESTRS = {dtype: np.dtype(str(dtype).rpartition(".")[2]).str
             for dtype in (torch.float32, torch.float64, torch.float16)}


class Memory:
    """What a binding's numpy views keep alive, as their `base` (one object for all of them).

    A view made by `Tensor.numpy()` costs about 390 bytes (RSS, 100,000 parameters): the array
    and, as its base, a tensor object of its own (for a parameter that requires grad, the
    `detach()` it needs first). These are made from the tensors' addresses, about 100 bytes each
    and one `Memory`; `kept` holds the parameter's storage (which outlives a `param.data = ...`,
    as a detached alias would) or its working copy, and the binding's state tensors.
    """

    __slots__ = ("kept", "__array_interface__")

    def __init__(self, kept: tuple):
        self.kept = kept

    def view(self, tensor: torch.Tensor) -> np.ndarray:
        """A numpy array over a contiguous CPU tensor of a dtype in `_TYPESTRS`."""
        self.__array_interface__ = {"data": (tensor.data_ptr(), False),
                                    "shape": tuple(tensor.shape),
                                    "typestr": _TYPESTRS[tensor.dtype], "version": 3}
        try:
            return np.asarray(self)
        finally:
            del self.__array_interface__


class StateView(Parameter):
    """A state array of a parameter, named `<key>.<the parameter's name>` (`key` its state_dict
    key) when its name is asked for, in an error: made for each binding, such names took about
    90 bytes each."""

    __slots__ = ("_of",)

    def __init__(self, data: Any, key: str, of: Parameter):
        # Not `Parameter.__init__`: `data` is already what it would keep (`view` of a state
        # tensor: a writable C-contiguous numpy array, or a CUDA tensor that requires no grad),
        # and its checks took a microsecond, for each state array of each parameter.
        self._data, self._name, self._of = data, key, of

    @property
    def name(self) -> str:
        return f"{self._name}.{self._of.name}"


def view(tensor: torch.Tensor, memory: Memory | None = None) -> Any:
    """The array a kernel takes for `tensor`, sharing its memory: a numpy array over a CPU tensor,
    the (detached) tensor itself for a CUDA tensor, which the CUDA target reads through
    `__cuda_array_interface__`. (The only place that decides how kernels see a tensor: the
    emulated CUDA tests replace it.)

    `memory`, for the tensors a binding keeps (contiguous): a CPU tensor's array is `memory`'s
    view of it, the smaller kind (a gradient's, made every step, is `Tensor.numpy()`'s, which
    takes less time)."""
    if memory is not None and not tensor.is_cuda and tensor.dtype in _TYPESTRS:
        return memory.view(tensor)
    if tensor.requires_grad:
        tensor = tensor.detach()
    if tensor.is_cuda:
        return tensor
    return to_host(tensor) if tensor.dtype == torch.bfloat16 else tensor.numpy()  # ml_dtypes


def gradient(grad: torch.Tensor, name: str) -> Any:
    """A parameter's gradient as the slot takes it: an array (dense), or a `RowTensor` of rows.

    A COO gradient sparse in its first dimension only (sparse_dim 1, as `nn.Embedding` and
    `nn.EmbeddingBag` make them) gives its row indices and values, uncoalesced, as they are; one
    sparse in more dimensions (`dense.to_sparse()`) is read as rows by `rows`. A negative view
    (`torch._neg_view`) is resolved and a ZeroTensor made into zeros (copies: numpy reads neither).

    Raises:
        ValueError: a sparse gradient that is not COO, or has no sparse dimension.
        IndexError: an index outside the parameter, in a sparse dimension after the first.
    """
    if grad.layout == torch.strided:
        return view(readable(grad))
    if grad.layout != torch.sparse_coo or grad.sparse_dim() == 0:
        sparse_dim = grad.sparse_dim() if grad.layout == torch.sparse_coo else "-"
        raise ValueError(f"the gradient of parameter {name!r} is {grad.layout} with sparse_dim "
                         f"{sparse_dim}; lazy updates take sparse COO gradients sparse in their "
                         "first dimension at least (as nn.Embedding, nn.EmbeddingBag and "
                         "Tensor.to_sparse make them)")
    if grad.sparse_dim() > 1:
        indices, values = rows(grad, name)
    else:
        indices, values = grad._indices()[0], grad._values()
    return RowTensor(view(indices), view(readable(values)), grad.shape)


def rows(grad: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The row indices and values of a COO gradient sparse in more than its first dimension:
    coalesced (duplicates summed), each row it touches whole, the elements of such a row that it
    leaves out zero. (So the lazy update is by rows, as for every sparse gradient: such an
    element gets a zero-gradient step with its row, where SparseAdam leaves it alone.)

    Raises:
        IndexError: an index outside the parameter in a sparse dimension after the first
            (checked before coalescing, which would fold it into another element; the first
            dimension is the slot's to check).
    """
    raw = grad._indices()
    for dim in range(1, grad.sparse_dim()):
        size = grad.shape[dim]
        low, high = index_bounds(raw[dim]) if raw.shape[1] else (0, 0)
        if low < 0 or high >= size:
            raise IndexError(f"the gradient of parameter {name!r}, sparse dimension {dim}: "
                             f"{index_error(to_host(raw[dim]), size)}")
    grad = grad.coalesce()
    indices, values = grad.indices(), grad.values()
    touched, inverse = torch.unique(indices[0], return_inverse=True)
    dense = values.new_zeros((touched.shape[0],) + tuple(grad.shape[1:]))
    dense[(inverse, *indices[1:])] = values
    return touched, dense
