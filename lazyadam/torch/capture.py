"""CUDA graphs for `RuleOptimizer` (docs/cuda.md): whether a step is being captured
(`_capturing`), the count and hyperparameters of each replay of the captured step
(`prepare_replay`), and the index checks capturable steps leave on the device (`check_indices`).
"""

from __future__ import annotations

from typing import Callable

import torch

from ..runtime.launcher import Launcher
from ..runtime.layout import entry


class Graphs:
    """The CUDA graph methods of `RuleOptimizer` (a mixin: it reads the optimizer's groups,
    state, `_captured` bindings, `_read` and `_engine`)."""

    def _capturing(self) -> bool:
        """Whether this step is being captured into a CUDA graph: PyTorch's current stream is
        capturing (asked of PyTorch even before any parameter is bound, so that a first step is
        not run eagerly inside a capture).

        Raises:
            RuntimeError: captured, with a group whose `capturable` is False.
        """
        if not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()):
            return False
        for number, group in enumerate(self.param_groups):
            if not group["capturable"]:
                raise RuntimeError(f"this step is being captured into a CUDA graph, and param "
                                   f"group {number} has capturable=False: its steps wait for "
                                   "their index checks and carry their hyperparameters; set "
                                   "capturable=True")
        return True

    @torch.compiler.disable
    def prepare_replay(self) -> None:
        """Counts one replay of the captured step: the `step` of each parameter it updates + 1,
        and stores each one's hyperparameters (its group's options as they are now, so that a
        scheduler's learning rate takes effect, and its step's derived values) in the device
        memory that the captured kernels read. Call it before each `graph.replay()`, on the
        stream that replays (the current one). Nothing waits.

        Raises:
            RuntimeError: no step was captured; since the capture, a parameter or its state got
                new storage, its group's options changed the kernel, or its gradient is another
                tensor than the one the graph reads (capture again, or keep the gradients:
                `zero_grad(set_to_none=False)`). Nothing was changed when it is raised.
            TypeError, ValueError: a group's options.
        """
        self._engine.replay(self._replayed)

    def _replayed(self) -> tuple[dict, Callable[[], None]]:
        """The hparams entries of the next replay, and its count (`Engine.replay`'s `prepare`)."""
        if not self._captured:
            raise RuntimeError("no step has been captured: call the step of a capturable "
                               "optimizer inside a CUDA graph capture first")
        hparams = {}
        counts = []
        for captured in self._captured:
            binding, number, param = captured.binding, captured.group, captured.param
            options = self._read(self.param_groups[number], f"param group {number}")
            name = binding.slot.param.name
            if not binding.matches(param, self.state.get(param), options.flags, binding.key[-1]):
                raise RuntimeError(f"parameter {name!r} or its state has new storage, or its "
                                   "group's options change its kernel, since the step was "
                                   "captured: capture the step again")
            grad = param.grad
            if (grad is None or grad.layout != torch.strided
                    or grad.data_ptr() != captured.address):
                raise RuntimeError(f"the gradient of parameter {name!r} is not the tensor the "
                                   "captured step reads: keep it (zero_grad(set_to_none=False) "
                                   "zeroes it in place) or capture the step again")
            t = int(binding.step) + 1
            hparams[id(param)] = entry(self.RULE, options.values, t, options.seed)
            counts.append((binding, t))

        def commit() -> None:
            for binding, t in counts:
                binding.step.fill(t)

        return hparams, commit

    def check_indices(self) -> None:
        """Waits for the queued steps and raises what a capturable step's index check found.

        Capturable steps check sparse gradients' indices on the device and never wait: an index
        outside its table makes that parameter's step, and its later ones, write nothing, and is
        reported here (then cleared).

        Raises:
            IndexError: naming the parameter, the first bad position and its value.
        """
        Launcher.check_indices(binding.slot for binding in self._bindings.values())
