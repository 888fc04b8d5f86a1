"""A gradient's step, checked and ready to run: what `Slot.prepare` gives and `Launcher.run` takes
(`Work`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Work:
    """One prepared step of one parameter.

    Attributes:
        slot: the parameter's `Slot`.
        call: the bound kernel call: a host call `call(grad, hparams[, workspace=scratch])`, or a
            device slot's `CudaBinding`.
        grad: what the call takes: a host array (dense) or `(indices, values)` (sparse); on a
            device, `(address, array)` dense, or `DeviceArray` views of the indices and values.
        group: the key of the slot's entry in a step's hparams (`Slot.group`).
        scratch: None for a dense step; a sparse step's workspace (host), or `(workspace view,
            record address)` (device).
    """
    slot: Any
    call: Any
    grad: Any
    group: Any
    scratch: Any = None

