"""The one check of a step like the last one that both front ends take (`quick`): a dense
PyTorch device gradient like the one a full check took as it was (`Taken`, which the slot keeps
by gradient dtype), confirmed in a microsecond instead of checked in several.

Each front end first confirms its own objects, which `quick` does not look at:
`Slot._fast_dense` (the MindSpore API) that the slot's arrays are the ones bound, where they were
bound; `torch.fast.recheck` that the optimizer's groups, parameters and state tensors are as
the last full check found them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from .work import Work

if TYPE_CHECKING:
    from .slot import Slot


class Taken(NamedTuple):
    """What a full check took of a slot's dense PyTorch device gradient of one dtype, as it was
    (contiguous, not copied), for `quick` to confirm on the next steps: the bound call, the
    gradient's dtype, layout, shape, device index and bytes, the byte spans the call writes; and
    `arrays`, what the slot's own arrays were (the bound var, its address, shape and dtype, and
    each state array with its array and address), which `Slot._fast_dense` compares (the torch
    front end compares its tensors instead: `torch.fast.recheck`).

    A named tuple, which `quick` unpacks at once."""
    call: Any
    dtype: Any
    layout: Any
    shape: Any
    device: int
    nbytes: int
    spans: tuple
    arrays: tuple

    @staticmethod
    def of(slot: Slot, call: Any, grad: Any, nbytes: int) -> Taken:
        """The record of `grad`, which the full check took as it was for `call`."""
        address, shape, dtype = call.keys[0]
        states = tuple((state, array, key[0]) for state, array, key
                       in zip(slot.states, call.arrays[1:], call.keys[1:]))
        return Taken(call, grad.dtype, grad.layout, shape, grad.get_device(), nbytes, call.spans,
                     (call.arrays[0], address, shape, dtype, states))


def quick(slot: Slot, taken: Taken, grad: Any) -> Work | None:
    """The slot's step on a dense PyTorch device gradient like the one the full check took
    (`taken`), once the front end has confirmed that the call's arrays are still where they were
    bound: the same dtype, layout, shape and device, contiguous, not a negative view, with
    memory (not a ZeroTensor), and sharing no byte with what the call writes; None where anything
    differs (the full check then says what, or resolves the view, or makes the zeros)."""
    call, dtype, layout, shape, device, nbytes, spans, _ = taken
    if (grad.dtype is not dtype or grad.layout is not layout or grad.shape != shape
            or not grad.is_contiguous() or grad.get_device() != device or grad.is_neg()):
        return None
    start = grad.data_ptr()
    if not start:  # a ZeroTensor: no memory (the full check makes zeros)
        return None
    end = start + nbytes
    for first, last in spans:
        if start < last and first < end:
            return None
    return Work(slot, call, (start, grad), slot.group)
