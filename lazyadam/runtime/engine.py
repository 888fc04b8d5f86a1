"""The step both front ends take, written once: the capture guard, the check that writes
nothing, then under one lock the count and the kernels (`Engine.step`); a captured step's replay
(`Engine.replay`); and snapshots that wait for the kernels in flight (`Engine.quiescent`).

A front end says how to check its step and how to count it (`Prepared`); the engine says when:

    under the lock   wait for snapshots; check (`check_phase`: nothing written, kernels compiled,
                     scratch and device tables allocated); count (`Prepared.commit`)
    kernels          under the lock with use_locking (a step is atomic: k threads give bitwise
                     what k steps one after another give), after it without (Hogwild: the
                     kernels of steps in flight may interleave on shared rows)

A snapshot (`state_dict`, `load_state_dict`, a checkpoint) holds the lock once no step is running
its kernels outside it, and steps that begin meanwhile wait for it: it never records a step's
count with the arrays of the step before.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from .checks import check_phase
from .launcher import Launcher


@dataclass(slots=True)
class Prepared:
    """A checked step, ready to count and run.

    Attributes:
        work: `Slot.prepare`'s work items, for `Launcher.run`.
        capturable: whether the step reads its hyperparameters from device tables (made in the
            check phase, so that running out of memory changes nothing).
        commit: counts the step (steps, beta powers, state stored) and returns the hparams
            entries its kernels take (`Launcher.run`'s `hparams`); called under the lock, after
            the check, and never for a captured step.
        hparams: the entries of a captured step, which records its launches and counts nothing
            (`prepare_replay` counts each replay).
        around: (before, after) the kernels, e.g. a working copy of a strided parameter copied in
            and written back; None for nothing.
    """
    work: list
    capturable: bool
    commit: Callable[[], Any]
    hparams: Any = None
    around: tuple[Callable[[], None], Callable[[], None]] | None = None
    tables: Any = field(default=None, init=False)


class Engine:
    """The lock, the launcher and the counting of one optimizer's steps (see the module).

    The lock is reentrant: a hook that a front end runs under it (a load pre-hook, a closure) may
    step or take a snapshot.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.launcher = Launcher()
        #: Notified when the last step running its kernels outside the lock ends, and when a
        #: snapshot ends: `quiescent` waits for the first, steps for the second.
        self._idle = threading.Condition(self.lock)
        self._running = 0  # steps running their kernels outside the lock
        self._snapshots = 0  # snapshots waiting for them to end

    def step(self, check: Callable[[bool], Prepared], *, capture: bool,
             locking: Callable[[], bool]) -> Prepared:
        """One step: `check(capture)` under the lock, then the count and the kernels.

        Args:
            check: checks every gradient and prepares the work; writes nothing.
            capture: the step is being captured into a CUDA graph (the front end's guard has
                already refused a capture it cannot take): its launches are recorded, and
                nothing is counted.
            locking: whether this step runs its kernels under the lock (`use_locking`), asked
                after the check.

        Returns:
            The prepared step.

        Raises:
            whatever `check` raises; nothing was changed then.
        """
        with self.lock:
            while self._snapshots:  # a waiting snapshot goes first (it would never find a gap)
                self._idle.wait()
            with check_phase():
                prepared = check(capture)
                if prepared.capturable:
                    prepared.tables = self.launcher.tables(prepared.work)
            if capture:
                self.launcher.run(prepared.work, prepared.hparams, prepared.tables, True)
                return prepared
            hparams = prepared.commit()
            if locking():
                self._run(prepared, hparams)
                return prepared
            self._running += 1
        try:
            self._run(prepared, hparams)
        finally:
            with self.lock:
                self._running -= 1
                if not self._running:
                    self._idle.notify_all()
        return prepared

    def _run(self, prepared: Prepared, hparams: Any) -> None:
        if prepared.around is None:
            self.launcher.run(prepared.work, hparams, prepared.tables)
            return
        before, after = prepared.around
        before()
        self.launcher.run(prepared.work, hparams, prepared.tables)
        after()

    def replay(self, prepare: Callable[[], tuple[Any, Callable[[], None]]]) -> None:
        """Counts one replay of the captured step: `prepare()` checks that the capture still
        holds and gives the step's hparams entries and its count, which are stored in the device
        tables the captured kernels read, then counted. Nothing waits.

        Raises:
            whatever `prepare` raises (RuntimeError: nothing captured, or it no longer holds);
                nothing was changed then.
        """
        with self.lock:
            hparams, commit = prepare()
            self.launcher.prepare_replay(hparams)
            commit()

    @contextlib.contextmanager
    def quiescent(self) -> Iterator[None]:
        """Holds the lock once no step is running its kernels outside it: a step counted under
        the lock with use_locking=False runs them after releasing it, and a snapshot taken
        meanwhile would record its count with the arrays of the step before, or a mix."""
        with self.lock:
            self._snapshots += 1
            try:
                while self._running:
                    self._idle.wait()
            finally:
                self._snapshots -= 1
            try:
                yield
            finally:
                self._idle.notify_all()
