"""`runtime.engine.Engine`: when a step counts, when its kernels run, and what a snapshot waits
for, with a launcher that records what it is asked to do (the front ends' own tests run the real
one)."""

import threading

import pytest

from lazyadam.runtime.engine import Engine, Prepared


class Recorder:
    """A launcher that records its calls; `run` waits for `release` where it is set."""

    def __init__(self):
        self.calls = []
        self.release = None
        self.started = threading.Event()

    def tables(self, work):
        self.calls.append(("tables", tuple(work)))
        return {"device": "table"}

    def run(self, work, hparams, tables=None, capture=False):
        self.calls.append(("run", tuple(work), hparams, tables, capture))
        self.started.set()
        if self.release is not None:
            assert self.release.wait(10)

    def prepare_replay(self, hparams):
        self.calls.append(("replay", hparams))


def engine_and_log():
    engine = Engine()
    engine.launcher = Recorder()
    return engine, engine.launcher.calls


def prepared(log, capturable=False, hparams=None):
    def commit():
        log.append(("commit",))
        return "entries"
    return Prepared(["work"], capturable, commit, hparams=hparams)


def test_a_step_checks_counts_then_runs():
    engine, calls = engine_and_log()
    engine.step(lambda capture: prepared(calls), capture=False, locking=lambda: True)
    assert calls == [("commit",), ("run", ("work",), "entries", None, False)]


def test_a_capturable_step_gets_its_tables_in_the_check_phase():
    engine, calls = engine_and_log()
    engine.step(lambda capture: prepared(calls, capturable=True), capture=False,
                locking=lambda: False)
    assert calls == [("tables", ("work",)), ("commit",),
                     ("run", ("work",), "entries", {"device": "table"}, False)]


def test_a_failed_check_counts_and_runs_nothing():
    engine, calls = engine_and_log()

    def check(capture):
        raise ValueError("bad gradient")
    with pytest.raises(ValueError, match="bad gradient"):
        engine.step(check, capture=False, locking=lambda: True)
    assert calls == []


def test_a_captured_step_records_its_launches_and_counts_nothing():
    engine, calls = engine_and_log()
    engine.step(lambda capture: prepared(calls, capturable=True, hparams="now"), capture=True,
                locking=lambda: True)
    assert calls == [("tables", ("work",)), ("run", ("work",), "now", {"device": "table"}, True)]


def test_a_replay_stores_then_counts_and_a_failed_one_does_neither():
    engine, calls = engine_and_log()
    engine.replay(lambda: ("entries", lambda: calls.append(("commit",))))
    assert calls == [("replay", "entries"), ("commit",)]

    def stale():
        raise RuntimeError("capture again")
    with pytest.raises(RuntimeError, match="capture again"):
        engine.replay(stale)
    assert calls == [("replay", "entries"), ("commit",)]


def running_step(engine, calls, locking):
    """A thread stepping `engine`, once its kernels have started (they wait for `release`)."""
    engine.launcher.release = threading.Event()
    stepper = threading.Thread(target=engine.step, args=(lambda capture: prepared(calls),),
                               kwargs=dict(capture=False, locking=lambda: locking))
    stepper.start()
    assert engine.launcher.started.wait(10)
    return stepper


@pytest.mark.parametrize("locking", [True, False])
def test_a_snapshot_waits_for_the_kernels_in_flight(locking):
    """Without use_locking the kernels run outside the lock; a snapshot still waits for them, so
    it never sees a step counted with the arrays of the step before."""
    engine, calls = engine_and_log()
    stepper = running_step(engine, calls, locking)
    seen = []

    def snapshot():
        with engine.quiescent():
            seen.append(len(calls))
    taker = threading.Thread(target=snapshot)
    taker.start()
    taker.join(0.2)
    assert seen == []  # still waiting for the kernels
    engine.launcher.release.set()
    stepper.join(10)
    taker.join(10)
    assert seen == [2]  # the commit and the run, both done


def test_a_step_waits_for_a_waiting_snapshot():
    """A snapshot waiting for the kernels in flight goes before steps that begin meanwhile (under
    a stream of Hogwild steps it would never find a gap otherwise)."""
    engine, calls = engine_and_log()
    first = running_step(engine, calls, locking=False)
    order = []

    def snapshot():
        with engine.quiescent():
            order.append("snapshot")
    taker = threading.Thread(target=snapshot)
    taker.start()
    taker.join(0.1)

    def check(capture):
        order.append("second step")
        return prepared(calls)
    second = threading.Thread(target=engine.step, args=(check,),
                              kwargs=dict(capture=False, locking=lambda: True))
    second.start()
    second.join(0.1)
    assert order == []
    engine.launcher.release.set()
    for thread in (first, taker, second):
        thread.join(10)
    assert order == ["snapshot", "second step"]
