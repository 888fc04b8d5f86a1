"""The full check phase of a `lazyadam.torch` step (`full`): every parameter with a gradient
checked, bound and prepared, nothing written. A step like the last one is confirmed faster
(`fast.recheck`).
"""

from __future__ import annotations

from typing import Any

import torch

from ..runtime.layout import entry
from . import tensors
from .fast import Captured, Checked


def full(optimizer: Any, capture: bool = False) -> Checked:
    """The full check phase: every parameter with a gradient prepared; nothing written
    (bindings that no longer match a parameter without a gradient are dropped: they are a
    cache).

    Args:
        optimizer: the `RuleOptimizer` whose step it is.
        capture: the step is being captured: a parameter without state is refused.

    Returns:
        The checked step, with the new state entries to store (`pending`) and, captured, the
        parameters of the capture.

    Raises:
        ValueError: groups with a gradient disagree on capturable.
        RuntimeError: captured, with a parameter that has no state yet.
    """
    checked = Checked()
    work, hparams, pending, entries = checked.work, checked.hparams, checked.pending, {}
    bindings, states, rule = optimizer._bindings, optimizer.state, optimizer.RULE
    position = 0
    capturable = None
    listed_as: dict[int, tuple[int, int]] = {}
    for number, group in enumerate(optimizer.param_groups):
        options = None  # read at the first gradient: a group without any is not checked
        names = group.get("param_names")
        for i, param in enumerate(group["params"]):
            first = listed_as.setdefault(id(param), (number, i))
            if first != (number, i):
                label = "group {} param {}".format(*first)
                raise ValueError(f"parameter {names[i] if names else label!r} is listed "
                                 f"twice: as {label} and as group {number} param {i}; list "
                                 "each parameter once (torch.optim steps it twice)")
            grad = param.grad
            binding = bindings.get(param)
            state = states.get(param)
            if grad is None:
                if binding is not None and not binding.matches(param, state, None, position):
                    del bindings[param]  # it would keep memory the param has left
                position += 1
                continue
            if options is None:
                options = optimizer._read(group, f"param group {number}")
            name = names[i] if names else f"group {number} param {i}"
            if capturable is None:
                capturable = options.capturable
            elif capturable != options.capturable:
                raise ValueError(f"param group {number} has capturable="
                                 f"{options.capturable}, an earlier group with gradients "
                                 f"{capturable}: a step is capturable or not as a whole")
            if capture and grad.layout != torch.strided:
                raise RuntimeError(f"parameter {name!r} has a sparse gradient, whose tensors "
                                   "are new every step: a CUDA graph cannot replay it (capture "
                                   "dense gradients, or step lazyadam.LazyAdam with RowTensors "
                                   "over buffers of a fixed size)")
            if binding is None or not binding.matches(param, state, options.flags, position):
                if capture and not state:
                    raise RuntimeError(f"parameter {name!r} has no state yet: run an eager "
                                       "step before capturing one (torch.cuda.graph's own "
                                       "advice: warm up on a side stream), so that the "
                                       "graph does not allocate the optimizer's state")
                binding, created = optimizer._bind(param, state, group, options.flags, name,
                                              position)
                pending.append((param, binding, created))
            if options.capturable and not binding.slot.on_device:
                raise TypeError(f"parameter {name!r} is on {param.device}: capturable steps "
                                "update CUDA tensors (CUDA graphs capture device work only)")
            if options.capturable and binding.copy is not None:
                raise ValueError(f"parameter {name!r} is not contiguous, or a negative view: "
                                 "capturable steps update parameters in place, with no "
                                 "working copy; make it contiguous first (param.data = "
                                 "param.data.contiguous())")
            t = int(binding.step) + 1
            item = binding.slot.prepare(position, tensors.gradient(grad, name),
                                        options.capturable, capture)
            work.append(item)
            if capture:
                checked.captured.append(Captured(binding, number, param, item.grad[0]))
            # one entry a step for each (group, t): 100,000 parameters at their first step
            # share one tuple, not one each (about 170 bytes a parameter while it runs)
            hp = entries.get((number, t))
            if hp is None:
                hp = entries[number, t] = entry(rule, options.values, t, options.seed)
            hparams[id(param)] = hp
            checked.bindings.append(binding)
            checked.ts.append(t)
            position += 1
    checked.capturable = bool(capturable)
    return checked
