"""Several threads calling one optimizer (docs/semantics.md "use_locking and threads"), and a
process forked after kernels ran."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from lazyadam import LazyAdam, Parameter, RowTensor

THREADS = 4
CALLS = 5


def build(use_locking):
    rng = np.random.default_rng(0)
    table = Parameter(rng.standard_normal((2000, 32)).astype(np.float32), name="embedding")
    dense = Parameter(rng.standard_normal((256, 64)).astype(np.float32), name="dense")
    return LazyAdam([table, dense], learning_rate=0.01, use_locking=use_locking,
                    weight_decay=0.001)


def gradient():
    rng = np.random.default_rng(1)
    indices = rng.integers(0, 2000, 4000)  # many duplicates: long row updates
    return (RowTensor(indices, rng.standard_normal((4000, 32)).astype(np.float32), (2000, 32)),
            rng.standard_normal((256, 64)).astype(np.float32))


def run_threads(opt, grads):
    start = threading.Barrier(THREADS)
    errors = []

    def work():
        try:
            start.wait()
            for _ in range(CALLS):
                assert opt(grads) is True
        except BaseException as error:  # noqa: BLE001 (reported by the main thread)
            errors.append(error)
    threads = [threading.Thread(target=work) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


def test_with_locking_threads_equal_sequential_calls_bitwise():
    grads = gradient()
    concurrent, sequential = build(True), build(True)
    run_threads(concurrent, grads)
    for _ in range(THREADS * CALLS):
        sequential(grads)
    for a, b in zip(concurrent.parameters + concurrent.moment1 + concurrent.moment2,
                    sequential.parameters + sequential.moment1 + sequential.moment2):
        np.testing.assert_array_equal(a.data, b.data, err_msg=a.name)
    assert (concurrent.global_step, concurrent.beta1_power, concurrent.beta2_power) == (
        sequential.global_step, sequential.beta1_power, sequential.beta2_power)


def test_without_locking_bookkeeping_stays_consistent():
    """Hogwild kernels may interleave, but every call counts once and memory stays finite."""
    grads = gradient()
    opt = build(False)
    run_threads(opt, grads)
    steps = THREADS * CALLS
    assert opt.global_step == steps
    beta1_power = beta2_power = 1.0
    for _ in range(steps):
        beta1_power *= 0.9
        beta2_power *= 0.999
    assert (opt.beta1_power, opt.beta2_power) == (beta1_power, beta2_power)
    for param in opt.parameters + opt.moment1 + opt.moment2:
        assert np.isfinite(param.data).all(), param.name


@pytest.mark.parametrize("use_locking", [False, True])
def test_a_failing_thread_does_not_disturb_the_others(use_locking):
    grads = gradient()
    opt = build(use_locking)
    bad = (RowTensor(np.array([2000]), np.ones((1, 32), np.float32), (2000, 32)), grads[1])
    failures = []

    def fail():
        try:
            opt(bad)
        except IndexError as error:
            failures.append(error)
    threads = [threading.Thread(target=fail) for _ in range(2)]
    threads += [threading.Thread(target=opt, args=(grads,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(failures) == 2 and opt.global_step == 2


# A parent runs kernels on several OpenMP threads, forks, and both take the same next step. The
# parent reaps the child itself, killing it if it hangs, so that no process outlives the test.
FORK_SCRIPT = textwrap.dedent("""
    import hashlib, os, signal, sys, threading, time
    import numpy as np
    from lazyadam import LazyAdam, Parameter, RowTensor

    rng = np.random.default_rng(0)
    table = Parameter(rng.standard_normal((20000, 16)).astype(np.float32), name="embedding")
    dense = Parameter(rng.standard_normal((300, 300)), name="dense")
    opt = LazyAdam([table, dense], learning_rate=0.01, weight_decay=0.001, use_nesterov=True)

    def grads(seed):
        r = np.random.default_rng(seed)
        indices = r.zipf(1.3, 30000) % 20000  # many duplicates, a long hot row
        return (RowTensor(indices, r.standard_normal((30000, 16)).astype(np.float32),
                          table.shape), r.standard_normal((300, 300)))

    def digest():
        return hashlib.sha256(b"".join(a.data.tobytes() for a in (*opt.parameters, *opt.moment1,
                                                                  *opt.moment2))).hexdigest()

    opt(grads(1))
    worker = threading.Thread(target=opt, args=(grads(2),))  # kernels from another thread too
    worker.start()
    worker.join()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        signal.alarm(50)
        opt(grads(3))
        threaded = threading.Thread(target=opt, args=(grads(4),))  # a thread of the child's own
        threaded.start()
        threaded.join()
        os.write(write, digest().encode())
        os._exit(0)
    opt(grads(3))
    opt(grads(4))
    deadline = time.monotonic() + 40
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            sys.exit("the forked child's step never returned")
        time.sleep(0.05)
    os.close(write)
    child = os.read(read, 100).decode()
    assert child == digest(), "the child's steps differ from the parent's"
    print("ok")
""")


def test_a_forked_child_steps_and_matches_its_parent_bitwise():
    """After fork the child's first step returns (it hung in libgomp) and gives what the parent's
    gives, although the child runs its kernels on one thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "4"}
    proc = subprocess.run([sys.executable, "-c", FORK_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr
