"""The check phase of a step like the last one, in a microsecond a parameter (`recheck`): what
the last full check found (`Memo`), confirmed for an all-CUDA dense step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from ..runtime.layout import entry


class Memo(NamedTuple):
    """What a full check of a step found, for `recheck` to confirm on the next steps.

    Made only for steps whose every gradient went to a dense CUDA kernel bound to PyTorch tensors
    and was taken as it is (contiguous, not copied), each parameter updated in place (no working
    copy). Per group: the group dict, its params list, its options' flags (None: no gradients),
    and per parameter None (no gradient) or `(param, its data_ptr, strides, shape,
    gradient dtype, device index, state dict, ((key, state tensor, its data_ptr), ...), Binding,
    the slot and its call, the state's byte spans, the gradient's bytes)`.
    """

    groups: tuple
    capturable: bool

    @staticmethod
    def of(optimizer: Any, work: list, counts: list, capturable: bool) -> Memo | None:
        """The memo of a step that `_check` prepared (`work`, `counts`), or None where it does
        not qualify."""
        prepared = {id(param): (item, binding) for item, (binding, _, param, _) in zip(work, counts)}
        groups = []
        for group in optimizer.param_groups:
            flags = None  # a group without gradients is not checked (as in `_check`)
            records = []
            for param in group["params"]:
                found = prepared.get(id(param))
                if found is None:
                    if param.grad is not None:
                        return None
                    records.append(None)
                    continue
                (slot, call, grad, _, scratch), binding = found
                if (slot.target != "cuda" or scratch is not None or not call.torch
                        or binding.copy is not None or grad[0] != param.grad.data_ptr()):
                    return None
                flags = binding.flags
                state = optimizer.state.get(param)
                tensors = tuple((key, tensor, tensor.data_ptr())
                                for key, tensor in zip(binding.keys, binding.tensors)
                                if tensor is not None)
                records.append((param, param.data_ptr(), param.stride(), param.shape,
                                param.grad.dtype,
                                param.grad.get_device(), state, tensors, binding, slot, call,
                                call.spans, param.grad.numel() * param.grad.element_size()))
            groups.append((group, group["params"], flags, tuple(records)))
        return Memo(tuple(groups), capturable)


def recheck(optimizer: Any) -> tuple[list, dict, list, bool] | None:
    """The result of the optimizer's `_check` when its memo of the last full check still holds
    (the same groups, options flags, parameters, state tensors, and dense contiguous gradients of
    the same dtype, shape and device that share no memory with the state); None where anything
    differs, and the full check runs (and says what is wrong).

    Raises:
        TypeError, ValueError: a group's options (as `_check`).
    """
    memo = optimizer._memo
    groups = optimizer.param_groups
    if memo is None or len(groups) != len(memo.groups):
        return None
    rule, read = optimizer.RULE, optimizer._read
    states, strided = optimizer.state, torch.strided
    work, hparams, counts, entries = [], {}, [], {}
    for number, (group, (known, params, flags, records)) in enumerate(zip(groups, memo.groups)):
        members = group["params"]
        if group is not known or members is not params or len(members) != len(records):
            return None
        if flags is None:  # no gradients then: none now, and the options are not read
            if any(param.grad is not None for param in members):
                return None
            continue
        options = read(group, f"param group {number}")
        if options.flags != flags or options.capturable != memo.capturable:
            return None
        for param, record in zip(members, records):
            grad = param.grad
            if record is None:
                if grad is not None:
                    return None
                continue
            (bound, ptr, strides, shape, dtype, device, state, tensors, binding, slot, call,
             spans, nbytes) = record
            if (param is not bound or grad is None or grad.layout is not strided
                    or grad.dtype is not dtype or grad.shape != shape
                    or not grad.is_contiguous() or grad.get_device() != device
                    or param.data_ptr() != ptr or param.stride() != strides
                    or param.shape != shape or param.is_neg()
                    or states.get(param) is not state):
                return None
            for key, tensor, address in tensors:
                if state.get(key) is not tensor or tensor.data_ptr() != address:
                    return None
            start = grad.data_ptr()
            for first, last in spans:
                if start < last and first < start + nbytes:
                    return None
            t = int(binding.step) + 1
            hp = entries.get((number, t))
            if hp is None:
                hp = entries[number, t] = entry(rule, options.values, t, options.seed)
            hparams[id(param)] = hp
            work.append((slot, call, (start, grad), id(param), None))
            counts.append((binding, number, param, t))
    return work, hparams, counts, memo.capturable
