"""The check phase of a step like the last one, in a microsecond a parameter (`recheck`): what
the last full check found (`Memo`), confirmed for an all-CUDA dense step: the optimizer's groups,
parameters and state tensors here, each gradient by `runtime.quick`, the one check of a
gradient like the last that both front ends take.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from ..runtime.layout import entry
from ..runtime.quick import Taken, quick
from ..runtime.work import Work
from .binding import Binding


@dataclass(slots=True)
class Captured:
    """A parameter of a step captured in a CUDA graph: its binding, param group number, the
    parameter, and the address of the gradient the graph reads."""
    binding: Binding
    group: int
    param: torch.Tensor
    address: int


@dataclass(slots=True)
class Checked:
    """A checked step of the torch front end (`RuleOptimizer._check`, `recheck`).

    Attributes:
        work: the prepared `Work`, one per gradient.
        hparams: the hparams entries, by slot key (`id(param)`).
        bindings, ts: per gradient (in the order of `work`), the parameter's binding and t, the
            count its `step` becomes (parallel lists: a step of 100,000 parameters makes no
            object per parameter for them).
        capturable: whether the step is capturable.
        pending: `(param, binding, new state entries)` to store (a full check's).
        captured: the parameters of a step being captured.
    """
    work: list[Work] = field(default_factory=list)
    hparams: dict = field(default_factory=dict)
    bindings: list[Binding] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    capturable: bool = False
    pending: list[tuple] = field(default_factory=list)
    captured: list[Captured] = field(default_factory=list)


class Record(NamedTuple):
    """What the last full check found of one parameter with a gradient, for `recheck`: the
    parameter, where its elements were (address, strides, shape), its state dict and state
    tensors (`(key, tensor, address)`), what its slot took of its gradient (`Taken`, which
    `quick` confirms), its binding and slot, and the slot's key in a step's hparams
    (`id(param)`).

    A named tuple, which `recheck` unpacks at once: reading its fields one by one took longer
    than the rest of a parameter's recheck but the gradient's own reads."""
    param: torch.Tensor
    ptr: int
    strides: tuple
    shape: Any
    state: Any
    tensors: tuple
    taken: Taken
    binding: Binding
    slot: Any
    group: int


@dataclass(slots=True)
class GroupRecord:
    """A param group as the last full check found it: the group dict, its params list, its
    options' flags (None: no gradients then, and the options were not read), and a `Record` or
    None (no gradient) per parameter."""
    group: dict
    params: list
    flags: Any
    records: tuple


@dataclass(slots=True)
class Memo:
    """What a full check of a step found, for `recheck` to confirm on the next steps: a
    `GroupRecord` per group, and whether the step was capturable.

    Made only for steps whose every gradient went to a dense CUDA kernel bound to PyTorch tensors
    and was taken as it is (contiguous, not copied), each parameter updated in place (no working
    copy).
    """

    groups: tuple
    capturable: bool

    @staticmethod
    def of(optimizer: Any, checked: Checked) -> Memo | None:
        """The memo of a step that `_check` prepared, or None where it does not qualify."""
        prepared = {item.group: (item, binding)
                    for item, binding in zip(checked.work, checked.bindings)}
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
                item, binding = found
                slot, grad = item.slot, param.grad
                taken = slot.fast.get(grad.dtype) if slot.fast else None
                if (taken is None or taken.call is not item.call or binding.copy is not None
                        or item.scratch is not None or item.grad[0] != grad.data_ptr()):
                    return None
                flags = binding.flags
                state = optimizer.state.get(param)
                tensors = tuple((key, tensor, tensor.data_ptr())
                                for key, tensor in zip(binding.keys, binding.tensors)
                                if tensor is not None)
                records.append(Record(param, param.data_ptr(), param.stride(), param.shape,
                                      state, tensors, taken, binding, slot, item.group))
            groups.append(GroupRecord(group, group["params"], flags, tuple(records)))
        return Memo(tuple(groups), checked.capturable)


def recheck(optimizer: Any) -> Checked | None:
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
    states = optimizer.state
    checked = Checked(capturable=memo.capturable)
    hparams = checked.hparams
    # bound once: this loop's fraction of a microsecond a parameter is most of a step's host time
    add_work, add_binding, add_t = checked.work.append, checked.bindings.append, checked.ts.append
    for number, (group, known) in enumerate(zip(groups, memo.groups)):
        members, records, flags = group["params"], known.records, known.flags
        if group is not known.group or members is not known.params or len(members) != len(records):
            return None
        if flags is None:  # no gradients then: none now, and the options are not read
            if any(param.grad is not None for param in members):
                return None
            continue
        options = read(group, f"param group {number}")
        if options.flags != flags or options.capturable != memo.capturable:
            return None
        entries, last_t, hp = {}, None, None  # the group's entry for each count t
        for param, record in zip(members, records):
            grad = param.grad
            if record is None:
                if grad is not None:
                    return None
                continue
            bound, ptr, strides, shape, state, tensors, taken, binding, slot, slot_key = record
            if (param is not bound or grad is None or param.data_ptr() != ptr
                    or param.stride() != strides or param.shape != shape or param.is_neg()
                    or states.get(param) is not state):
                return None
            for key, tensor, address in tensors:
                if state.get(key) is not tensor or tensor.data_ptr() != address:
                    return None
            work = quick(slot, taken, grad)
            if work is None:
                return None
            t = int(binding.step) + 1
            if t != last_t:  # a group's parameters mostly share their count, and so the entry
                hp = entries.get(t)
                if hp is None:
                    hp = entries[t] = entry(rule, options.values, t, options.seed)
                last_t = t
            hparams[slot_key] = hp
            add_work(work)
            add_binding(binding)
            add_t(t)
    return checked
