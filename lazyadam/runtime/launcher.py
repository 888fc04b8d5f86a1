"""The apply phase of a step: `Launcher.run(work, hparams)` runs (host) or queues (CUDA) every
gradient's step that `Slot.prepare` checked, with the `HParams` fields its slot's `group` selects.

A slot on a CUDA device hands over its `CudaBinding`: the launcher queues the dense CUDA steps of
a call in multi-tensor launches, one plan per kernel and device over all of them whatever their
group (each tensor takes its own hyperparameter entry), and the sparse ones through the launcher
that never waits (their indices were checked on the host). A capturable step (`capturable=True`)
reads its hyperparameters from device memory that the step, or `prepare_replay` before a CUDA
graph replays a captured one, stores; it checks indices on the device and never waits.
"""

from __future__ import annotations

from typing import Any

from ..interop.device import DeviceArray, capturing as stream_capturing, stream_handle
from ..targets.cuda_binding import CudaBinding
from .checks import allocate
from .work import Work


def capturing(slots: Any) -> bool:
    """Whether the step about to run is being captured into a CUDA graph (asked of the stream
    that the first device parameter's kernels would take)."""
    for slot in slots:
        if slot.on_device:
            data = slot.param.data
            return stream_capturing(stream_handle(None, [DeviceArray(data, "parameter")]), data)
    return False


class Launcher:
    """The apply phase of an optimizer's steps (see the module), and what it keeps between steps:
    the multi-tensor plans over its CUDA bindings, and the last step captured in a CUDA graph.

    Host slots run their bound C calls. CUDA slots: the dense steps go through one `MultiPlan`
    per kernel and device, each tensor with its own hyperparameter entry (entries are deduplicated,
    so steps that share hyperparameters share one); the sparse ones through the deferred launcher.
    Eager steps copy their entries into the launches. A capturable step puts them in a table in
    device memory instead, one per device, which the step fills before its launches; a captured
    step only records its launches, and `prepare_replay` fills the table before each replay.
    """

    def __init__(self) -> None:
        #: The multi-tensor plans of the last step with device work, and of the one before: a
        #: plan unused for a whole step is dropped, with the arrays its bindings hold (a
        #: parameter bound again after a move must not keep its old storage alive).
        self.plans: dict[tuple, Any] = {}
        self._previous: dict[tuple, Any] = {}
        self.captured: _Captured | None = None

    def tables(self, work: list[Work]) -> dict[Any, tuple[Any, int]]:
        """The device tables of a capturable step's hyperparameters, one per device, with room
        for an entry per device step (each of its kernel's struct, `hparams_bytes`: one rule's
        steps share it): allocated in the check phase, so that running out of memory, too,
        changes nothing.

        Returns:
            `{device: (table array, its address)}`, for `run`.

        Raises:
            MemoryError: naming the device and the bytes.
        """
        out = {}
        on_device = [item for item in work if item.slot.target == "cuda"]
        for device, items in _by_device(on_device).items():
            nbytes = len(items) * items[0].call.kernel.hparams_bytes
            table = allocate(items[0].slot.param.data, nbytes, f"out of memory on CUDA device "
                              f"{device}: a capturable step needs {nbytes:,} bytes for its "
                              "hyperparameters")
            out[device] = (table, DeviceArray(table, "hyperparameters").ptr)
        return out

    def run(self, work: list[Work], hparams: Any, tables: dict | None = None,
            capture: bool = False) -> None:
        """Queues (or, for host slots, runs) the prepared steps.

        Args:
            work: `Slot.prepare`'s work items.
            hparams: `hparams[group]` holds the fields of `HParams` in order, for each slot's
                `group` (a list by group, or a dict).
            tables: a capturable step's `tables(work)`: device slots read their
                hyperparameters from them. None: they travel with the launches.
            capture: the launches are being captured into a CUDA graph: the tables are not
                filled (`prepare_replay` fills them before each replay), each group (and seed)
                gets an entry of its own, and the step is kept.

        Raises:
            RuntimeError: a captured step with a parameter in host memory.
            KernelError: the CUDA runtime failed (earlier launches may have run).
        """
        if capture:
            host = next((item.slot for item in work if item.slot.target != "cuda"), None)
            if host is not None:
                raise RuntimeError(f"parameter {host.param.name!r} is in host memory: a step "
                                   "captured in a CUDA graph updates device parameters only")
        on_device, entries = [], []  # the device steps, and the entry each takes
        for item in work:
            slot = item.slot
            hp = hparams[item.group]
            if slot.seed_offset:  # `Slot.entry`, called only where it changes the entry
                hp = slot.entry(hp)
            if slot.target == "cuda":
                on_device.append(item)
                entries.append(hp)
            elif item.scratch is None:
                item.call(item.grad, hp)
            else:
                item.call(item.grad, hp, workspace=item.scratch)
        if not on_device:
            return
        self._previous, self.plans = self.plans, {}
        streams: dict[Any, int] = {}
        if tables is None:
            self._eager(on_device, entries, streams)
            return
        by_device: dict[Any, tuple[list, list]] = {}
        for item, hp in zip(on_device, entries):
            items, hps = by_device.setdefault(item.call.device, ([], []))
            items.append(item)
            hps.append(hp)
        filled = [self._tabled(items, hps, streams, tables[device], capture)
                  for device, (items, hps) in by_device.items()]
        if capture:
            self.captured = _Captured(filled, work)

    def _eager(self, items: list[Work], entries: list[tuple], streams: dict) -> None:
        """Launches with their hyperparameters (`entries`, one per item) copied in: a plan per
        (kernel, device) for the dense steps, the deferred launcher for the sparse ones."""
        dense: dict[tuple, list] = {}
        for item, hp in zip(items, entries):
            call = item.call
            if item.scratch is None:
                dense.setdefault(call.batch, []).append((call, item.grad, hp))
                continue
            workspace, record = item.scratch
            call.deferred(item.grad, hp, _stream(streams, call), workspace,
                          call.kernel.ffi.cast("lazyadam_index_record *", record))
        for batch in dense.values():
            entries: dict[tuple, int] = {}
            which = [entries.setdefault(hp, len(entries)) for _, _, hp in batch]
            self._plan([c for c, _, _ in batch]).launch(
                [g[0] for _, g, _ in batch], list(entries), which, _stream(streams, batch[0][0]))

    def _tabled(self, items: list[Work], hps: list[tuple], streams: dict,
                table: tuple[Any, int], capture: bool) -> tuple:
        """The launches of one device's steps with their hyperparameters in its device table,
        filled first unless the launches are being captured. Entries are shared by steps with
        equal hyperparameters; captured, by the steps of one group and seed, which stay equal.

        Returns:
            `(table, address, kernel, sources, example)`: the table's array and address, a kernel
            of the device that can fill it, for each entry a `(group, slot)` it serves, and a view
            of an array on the device (for its stream).
        """
        entries: dict[tuple, int] = {}
        sources: list[tuple] = []
        values: list[tuple] = []
        which = []
        for item, hp in zip(items, hps):
            slot, group = item.slot, item.group
            key = (group, slot.seed_offset) if capture else hp
            k = entries.get(key)
            if k is None:
                k = entries[key] = len(entries)
                sources.append((group, slot))
                values.append(hp)
            which.append(k)
        first_call = items[0].call
        example = first_call.home
        stream = _stream(streams, first_call)
        table, address = table
        kernel = first_call.kernel
        if not capture:
            kernel.store_at(address, values, stream)
        dense: dict[Any, list] = {}
        for item, k in zip(items, which):
            call = item.call
            if item.scratch is None:
                dense.setdefault(call.kernel, []).append((call, item.grad, k))
                continue
            workspace, record = item.scratch
            entry = address + k * call.kernel.hparams_bytes
            ffi = call.kernel.ffi
            call.deferred(item.grad, ffi.cast(f"{call.kernel.hparams_type} *", entry), stream,
                          workspace, ffi.cast("lazyadam_index_record *", record))
        for batch_kernel, batch in dense.items():
            self._plan([c for c, _, _ in batch]).launch(
                [g[0] for _, g, _ in batch],
                batch_kernel.ffi.cast(f"{batch_kernel.hparams_type} *", address),
                [k for _, _, k in batch], stream)
        return table, address, kernel, sources, example

    def _plan(self, bindings: list[CudaBinding]) -> Any:
        key = tuple(bindings)
        plan = self.plans.get(key)
        if plan is None:
            plan = self._previous.pop(key, None) or bindings[0].kernel.plan(bindings)
            self.plans[key] = plan
        return plan

    def prepare_replay(self, hparams: Any) -> None:
        """Fills the device tables of the captured step with `hparams` (as `run` takes them), on
        the current stream of each table's device: what the next replay of the graph reads.

        Raises:
            RuntimeError: no step was captured; a captured array moved since.
        """
        captured = self.captured
        if captured is None:
            raise RuntimeError("no step has been captured: call the step of a capturable "
                               "optimizer inside a CUDA graph capture first")
        for item in captured.work:
            if not item.call.current():
                raise RuntimeError(f"parameter {item.slot.param.name!r} or its state moved since "
                                   "the step was captured: the graph would write where they were; "
                                   "capture the step again")
        for table, address, kernel, sources, example in captured.tables:
            kernel.store_at(address, [slot.entry(hparams[group]) for group, slot in sources],
                            stream_handle(None, [example]))

    @staticmethod
    def check_indices(slots: Any) -> None:
        """Waits for each capturable sparse step's stream and raises the first bad index one
        left in its slot's record (clearing it): that step, and the parameter's later ones,
        wrote nothing.

        Raises:
            IndexError: naming the parameter, the position and the value.
        """
        for slot in slots:
            found = slot.records and slot.records.get(True)
            if found is None:
                continue
            array, address, kernel = found
            try:
                kernel.check_at(address, stream_handle(None, [DeviceArray(array, "record")]))
            except IndexError as error:
                raise IndexError(f"parameter {slot.param.name!r}: {error}") from None


class _Captured:
    """A step captured in a CUDA graph: its device tables (see `Launcher._tabled`), and its
    prepared work, which keeps the gradients, scratch and bindings that the graph uses alive."""

    __slots__ = ("tables", "work")

    def __init__(self, tables: list[tuple], work: list[Work]):
        self.tables, self.work = tables, [item for item in work if item.slot.target == "cuda"]


def _by_device(items: list[Work]) -> dict[Any, list[Work]]:
    grouped: dict[Any, list[Work]] = {}
    for item in items:
        grouped.setdefault(item.call.device, []).append(item)
    return grouped


def _stream(streams: dict, call: CudaBinding) -> int:
    """The stream of `call`'s device in this step (the current one, read once a step)."""
    found = streams.get(call.device)
    if found is None:
        found = streams[call.device] = call.stream()
    return found
