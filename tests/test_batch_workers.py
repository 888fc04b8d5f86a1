"""Processes that build the same kernels at once (the test suite's pytest-xdist workers) share the
batches (`batch.build` under `cache.lock`): each batch is compiled once, by one of them, and each
returns only when every kernel it asked for is in the cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lazyadam import Spec
from lazyadam.targets import cache
from test_cache import counting_cc  # noqa: F401  (a fixture)

#: Cheap kernels that no other test builds (their static values are their own).
SPECS = [Spec(sparse=sparse, amsgrad=amsgrad, static={"eps": 3.5e-7})
         for sparse in (False, True) for amsgrad in (False, True)]

#: Waits for `go`, builds SPECS one to a batch on one thread, then prints the batches it built and
#: whether every kernel was in the cache when `build` returned.
WORKER = """
import json, os, sys, time
from pathlib import Path
from lazyadam import Spec
from lazyadam.codegen import generate
from lazyadam.targets import batch, cache, get

specs = [Spec.from_json(text) for text in json.loads(sys.argv[1])]
Path(sys.argv[2] + ".ready").touch()
while not Path(sys.argv[2]).exists():
    time.sleep(0.01)
lines = []
failed = batch.build(specs, get("c"), batch_size=1, jobs=1, report=lines.append)
target = get("c")
complete = all((cache.entry(target.cache_key(generate(s))) / f"{generate(s).symbol}.so").exists()
               for s in specs)
print(json.dumps({"built": lines, "failed": [s.to_json() for s in failed], "complete": complete}))
"""


def slow_compiler(wrapper: Path) -> None:
    """Makes `counting_cc`'s wrapper take a second more per call, so that both workers are
    building while the other is."""
    text = wrapper.read_text().replace("exec cc", "sleep 1\nexec cc")
    wrapper.write_text(text)


def test_two_processes_share_the_batches_and_compile_each_once(counting_cc, tmp_path):
    slow_compiler(tmp_path / "cc")
    go = tmp_path / "go"
    workers = [subprocess.Popen([sys.executable, "-c", WORKER,
                                 json.dumps([spec.to_json() for spec in SPECS]), str(go)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    deadline = time.monotonic() + 120
    while not all(Path(f"{go}.ready").exists() for _ in workers) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
        results.append(json.loads(out.splitlines()[-1]))
    assert counting_cc() == len(SPECS), "a batch was compiled by both workers"
    built = [line for result in results for line in result["built"]]
    assert len(built) == len(SPECS) and all(line.startswith("building 1 c kernels") for line in built)
    assert all(result["built"] for result in results), "one worker built every batch"
    assert all(result["complete"] and not result["failed"] for result in results), results


HOLDER = """
import sys, time
from lazyadam.targets import cache
with cache.lock(sys.argv[1]) as held:
    print(held, flush=True)
    time.sleep(600)
"""


def test_a_batch_lock_is_refused_while_held_and_freed_when_its_holder_dies(tmp_path, monkeypatch):
    monkeypatch.setenv("LAZYADAM_CACHE_DIR", str(tmp_path / "cache"))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, "batch-x"], stdout=subprocess.PIPE,
                              text=True, env=os.environ.copy())
    try:
        assert holder.stdout.readline().strip() == "True"
        with cache.lock("batch-x", wait=False) as held:
            assert held is False
        with cache.lock("batch-y", wait=False) as held:
            assert held is True  # another name is free
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with cache.lock("batch-x", wait=False) as held:
        assert held is True
    lock = tmp_path / "cache" / "locks"
    assert (lock.stat().st_mode & 0o777) == 0o700
    assert not cache.entries(), "a lock is no cache entry"


def test_clearing_the_cache_removes_the_lock_files_no_one_holds(tmp_path, monkeypatch):
    monkeypatch.setenv("LAZYADAM_CACHE_DIR", str(tmp_path / "cache"))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, "batch-held"],
                              stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert holder.stdout.readline().strip() == "True"
        with cache.lock("batch-free"):
            pass
        locks = tmp_path / "cache" / "locks"
        assert sorted(p.name for p in locks.iterdir()) == ["batch-free", "batch-held"]
        assert cache.clear() == 0
        assert [p.name for p in locks.iterdir()] == ["batch-held"]
        with cache.lock("batch-held", wait=False) as held:
            assert held is False  # its holder still has it
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    cache.clear()
    assert list(locks.iterdir()) == []
