"""The checks both front ends make outside a slot: the check phase of a step (`check_phase`), the
scratch it allocates before anything is written (`allocate`), and device state
(`check_device_state`).
"""

from __future__ import annotations

import contextlib
import gc
from typing import Any, Iterator

from .. import targets
from ..interop.arrays import device_of, empty_bytes, is_out_of_memory
from ..interop.device import DeviceArray
from .parameter import Parameter


@contextlib.contextmanager
def check_phase() -> Iterator[None]:
    """The check phase of a step, or the making of an optimizer: Python's cyclic garbage
    collector paused (if it runs), and the toolchain environment read once
    (`targets.environment_read_once`), however many parameters are bound.

    Binding 100,000 parameters makes millions of objects that live as long as the optimizer, and
    the collector's repeated full passes over them took a third of the first step (40 of 120 us a
    parameter). It runs again when the phase ends (a cycle made meanwhile, by any thread, waits
    for it then); where it was already off, it stays off.
    """
    with targets.environment_read_once():
        if not gc.isenabled():
            yield
            return
        gc.disable()
        try:
            yield
        finally:
            gc.enable()


def allocate(like: Any, nbytes: int, problem: str) -> Any:
    """`empty_bytes(like, nbytes)`, in the check phase of a step: running out of memory, whatever
    the array's library calls it, is a `MemoryError` saying `problem` and that nothing changed.

    Raises:
        MemoryError: out of memory.
    """
    try:
        return empty_bytes(like, nbytes)
    except Exception as error:  # noqa: BLE001  (libraries name running out of memory their way)
        if not is_out_of_memory(error):
            raise
        raise MemoryError(f"{problem}; nothing was changed") from error


def check_device_state(param: Parameter, states: list[Parameter]) -> None:
    """Device parameters and their state arrays must be arrays a CUDA kernel can update in place.

    Checked once, when the state is made, so that no kernel call can refuse them later (after
    the step was counted, or after other parameters were updated).

    Raises:
        TypeError: a state array that is not on the parameter's device (a library whose
            allocations go elsewhere).
        ValueError: a strided or read-only array.
    """
    home = device_of(param.data)
    for array in [param, *states]:
        if not array.on_device or device_of(array.data) != home:
            raise TypeError(f"{array.name}: allocating beside a {type(param.data).__name__} on "
                            f"device {home} gave a {type(array.data).__name__} "
                            + ("on device " + str(device_of(array.data)) if array.on_device
                               else "in host memory")
                            + "; state must live on the parameter's device")
        flags = DeviceArray(array.data, array.name).flags
        if not flags.c_contiguous:
            raise ValueError(f"{array.name} is not C-contiguous on its device; pass a contiguous "
                             "array (e.g. torch's .contiguous(), cupy.ascontiguousarray)")
        if not flags.writeable:
            raise ValueError(f"{array.name} is read-only on its device")
