"""The kernel cache: hits and misses across processes, concurrent builds, failures, deletion."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import lazyadam
from lazyadam import CompilationError, CompilerNotFoundError, HParams, Spec
from lazyadam.targets import c, cache, cuda, nvcc

# A spec no other test builds, with a static value unique to this file so that its key is fresh.
FRESH = Spec(sparse=True, nesterov=True, static={"eps": 3.25e-7})

# Builds a kernel and checks one known step; prints nothing on success.
STEP_SCRIPT = textwrap.dedent("""
    import numpy as np
    import lazyadam
    from lazyadam import HParams, Spec
    spec = Spec.from_json({spec!r})
    kernel = lazyadam.compile(spec)
    var, m, v = (np.ones((3, 2), np.float32) for _ in range(3))
    kernel(var, m, v, (np.array([1]), np.ones((1, 2), np.float32)), HParams.at_step(1))
    assert var[0, 0] == 1 and var[1, 0] < 1, var
""")


@pytest.fixture
def counting_cc(tmp_path, monkeypatch):
    """A cache of its own and a compiler wrapper that logs every build it does. The wrapper
    compiles at -O0 (the last -O wins): what these tests check is whether and where a kernel is
    built, and a kernel takes an eighth of -O3's time (the command, so the cache key, is the
    target's own)."""
    log = tmp_path / "cc.log"
    wrapper = tmp_path / "cc"
    wrapper.write_text(f'#!/bin/sh\ncase "$*" in *-shared*) echo build >> {log};; esac\n'
                       f'exec cc "$@" -O0\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("LAZYADAM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LAZYADAM_CC", str(wrapper))
    monkeypatch.setattr(cache, "_loaded", {})

    def builds() -> int:
        return len(log.read_text().splitlines()) if log.exists() else 0
    return builds


def run_step_process(spec: Spec, **env):
    return subprocess.run([sys.executable, "-c", STEP_SCRIPT.format(spec=spec.to_json())],
                          env={**os.environ, **env}, capture_output=True, text=True)


def test_second_process_loads_from_the_cache_without_compiling(counting_cc):
    for _ in range(2):
        proc = run_step_process(FRESH)
        assert proc.returncode == 0, proc.stderr
    assert counting_cc() == 1
    (entry,) = cache.entries()
    assert {p.suffix for p in entry.iterdir()} >= {".so", ".c", ".h", ".log"}


def test_concurrent_processes_build_once(counting_cc):
    procs = [subprocess.Popen([sys.executable, "-c", STEP_SCRIPT.format(spec=FRESH.to_json())],
                              env=os.environ.copy(), stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    assert counting_cc() == 1


def test_concurrent_threads_share_one_kernel(counting_cc):
    with ThreadPoolExecutor(4) as pool:
        kernels = list(pool.map(lambda _: lazyadam.compile(FRESH), range(4)))
    assert all(k is kernels[0] for k in kernels) and counting_cc() == 1


def test_source_flags_and_compiler_are_part_of_the_key(counting_cc, monkeypatch):
    key = c.TARGET.cache_key(lazyadam.generate(FRESH))
    assert c.TARGET.cache_key(lazyadam.generate(Spec(sparse=True, nesterov=True))) != key
    monkeypatch.setenv("LAZYADAM_CFLAGS", "-DSOMETHING")
    assert c.TARGET.cache_key(lazyadam.generate(FRESH)) != key
    monkeypatch.delenv("LAZYADAM_CFLAGS")
    monkeypatch.setenv("LAZYADAM_CC", "cc")  # the same compiler under another command
    assert c.TARGET.cache_key(lazyadam.generate(FRESH)) != key


def test_keys_are_made_of_the_parts_existing_entries_were_made_with(monkeypatch):
    """The key's parts, spelled out: a change to them would orphan every kernel already cached
    (C: source, header, flags and the compiler's identity; CUDA: the same but for the flags,
    which nvcc's identity holds)."""
    source = lazyadam.generate(FRESH)
    assert c.TARGET.cache_key(source) == cache.make_key(
        {"target": "c", "source": source.text, "header": source.header, "flags": c.flags(),
         **c.identity()})
    if nvcc.nvcc() is None:
        pytest.skip("nvcc not found: the CUDA key needs its identity")
    monkeypatch.setenv("LAZYADAM_CUDA_ARCH", "80")
    source = lazyadam.generate(FRESH, "cuda")
    assert cuda.TARGET.cache_key(source) == cache.make_key(
        {"target": "cuda", "source": source.text, "header": source.header, **nvcc.identity()})


def test_disabled_cache_builds_in_a_temporary_folder(counting_cc, monkeypatch, tmp_path):
    monkeypatch.setenv("LAZYADAM_DISABLE_CACHE", "1")
    kernel = lazyadam.compile(FRESH)
    var, m, v = (np.ones((2, 2), np.float32) for _ in range(3))
    kernel(var, m, v, (np.array([0]), np.ones((1, 2), np.float32)), HParams.at_step(1))
    assert var[0, 0] < 1
    assert not (tmp_path / "cache").exists() and counting_cc() == 1


def test_cache_deleted_between_processes_is_rebuilt(counting_cc, tmp_path):
    assert run_step_process(FRESH).returncode == 0
    assert cache.clear() == 1
    proc = run_step_process(FRESH)
    assert proc.returncode == 0, proc.stderr
    assert counting_cc() == 2


def test_cache_deleted_after_the_build_but_before_loading(counting_cc, monkeypatch):
    real_fetch = cache.fetch
    calls = []

    def fetch_then_delete(key, artifact, build):
        path = real_fetch(key, artifact, build)
        calls.append(path)
        if len(calls) == 1:
            cache.clear()  # someone empties the cache just before dlopen
        return path
    monkeypatch.setattr(cache, "fetch", fetch_then_delete)
    kernel = lazyadam.compile(FRESH)
    assert len(calls) == 2 and kernel.path.exists() and counting_cc() == 2


def claimed_entry(owner: str) -> Path:
    key = c.TARGET.cache_key(lazyadam.generate(FRESH))
    entry = cache.root() / key[:2] / key
    entry.mkdir(parents=True)
    (entry / "claim").write_text(owner)
    return entry


def test_claim_of_a_killed_builder_is_taken_over_at_once(counting_cc, monkeypatch):
    monkeypatch.setattr(cache, "STALE_SECONDS", float("inf"))  # only the dead pid can free it
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    entry = claimed_entry(f"{socket.gethostname()} {dead.pid}")
    compile_past_the_claim(entry, "the claim of a dead process")
    assert counting_cc() == 1


def compile_past_the_claim(entry: Path, what: str) -> None:
    """Compiles FRESH in a thread, which must neither wait for the claim in `entry` nor leave it."""
    worker = threading.Thread(target=lazyadam.compile, args=(FRESH,), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), f"still waiting for {what}"
    assert not (entry / "claim").exists()


def test_claim_older_than_the_stale_limit_is_taken_over(counting_cc):
    entry = claimed_entry("another-host 1")
    old = time.time() - 2 * cache.STALE_SECONDS
    os.utime(entry / "claim", (old, old))
    assert lazyadam.compile(FRESH).path.exists()
    assert not (entry / "claim").exists()


def test_failed_build_raises_with_the_compiler_log(counting_cc, monkeypatch):
    monkeypatch.setenv("LAZYADAM_CFLAGS", "--no-such-flag-for-lazyadam")
    with pytest.raises(CompilationError) as info:
        lazyadam.compile(FRESH)
    err = info.value
    assert "--no-such-flag-for-lazyadam" in err.log
    assert err.source_path is not None and err.source_path.name.endswith(".c")
    assert err.log_path is not None
    assert "failed to build" in str(err)


def test_waiters_see_a_failed_build_instead_of_waiting_forever(tmp_path, monkeypatch):
    monkeypatch.setenv("LAZYADAM_CACHE_DIR", str(tmp_path))
    entry = cache.root() / "ab" / ("ab" + "0" * 62)
    entry.mkdir(parents=True)
    (entry / "claim").write_text("1")
    (entry / "failed").write_text("error: boom")

    def release():
        time.sleep(0.2)
        (entry / "claim").unlink()
    with ThreadPoolExecutor(1) as pool:
        pool.submit(release)
        with pytest.raises(CompilationError, match="another process failed"):
            cache.fetch(entry.name, "k.so", lambda folder: pytest.fail("must not build"))


def test_missing_compiler_names_the_command_and_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("LAZYADAM_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("LAZYADAM_CC", "/nonexistent/bin/cc-lazyadam")
    monkeypatch.setattr(cache, "_loaded", {})
    with pytest.raises(CompilerNotFoundError, match=r"tried '/nonexistent/bin/cc-lazyadam'.*"
                                                    r"LAZYADAM_CC"):
        lazyadam.compile(FRESH)


# -- faults: a full disk, an abandoned empty claim, a damaged artifact --------------------------

FULL_DISK_SCRIPT = textwrap.dedent("""
    import resource, signal, sys, time
    import lazyadam
    from lazyadam import Spec
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
    start = time.monotonic()
    try:
        lazyadam.compile(Spec.from_json({spec!r}))
    except OSError as error:
        print(f"{{time.monotonic() - start:.3f}} {{error}}")
        sys.exit(0)
    sys.exit("built a kernel on a disk that takes no bytes")
""")


def test_a_cache_that_cannot_be_written_raises_at_once_and_leaves_no_claim(counting_cc):
    """Every write fails (as on a full disk): a clear error in well under a second, no claim left
    to block the next process, which then builds at once."""
    proc = subprocess.run([sys.executable, "-c", FULL_DISK_SCRIPT.format(spec=FRESH.to_json())],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seconds, message = proc.stdout.strip().split(" ", 1)
    assert float(seconds) < 5
    assert f"cannot write the kernel cache {cache.root()}" in message
    assert "LAZYADAM_CACHE_DIR" in message and "LAZYADAM_DISABLE_CACHE=1" in message
    assert not list(cache.root().glob("*/*/claim"))
    started = time.monotonic()
    assert lazyadam.compile(FRESH).path.exists()
    assert time.monotonic() - started < 60 and counting_cc() == 1


TMPFS_SCRIPT = textwrap.dedent("""
    set -e
    mount -t tmpfs -o size=512k tmpfs "$DISK"
    mkdir "$DISK/cache"
    exec "$PYTHON" -c '
    import os, sys, lazyadam
    from lazyadam import Spec
    spec = Spec.from_json(sys.argv[1])
    with open(os.path.join(os.environ["DISK"], "filler"), "wb", buffering=0) as f:
        try:
            while True:
                f.write(bytes(4096))
        except OSError:
            pass
    try:
        lazyadam.compile(spec)
        sys.exit("built a kernel on a full disk")
    except OSError as error:
        assert "No space left on device" in str(error), error
    claims = [p for p in os.popen("find $DISK -name claim").read().split()]
    assert not claims, claims
    os.remove(os.path.join(os.environ["DISK"], "filler"))
    assert lazyadam.compile(spec).path.exists()
    print("ok")
    ' "$SPEC"
""")


def test_a_full_tmpfs_raises_at_once_and_builds_once_space_is_free(tmp_path):
    """The same with a real full disk: a small tmpfs, mounted in a user and mount namespace."""
    unshare = [shutil.which("unshare") or "unshare", "-rm", "--fork", "--kill-child"]
    try:
        usable = subprocess.run([*unshare, "true"], capture_output=True).returncode == 0
    except OSError:
        usable = False
    if not usable:
        pytest.skip("needs unshare -rm (user and mount namespaces) to mount a small tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    env = {**os.environ, "DISK": str(disk), "PYTHON": sys.executable, "SPEC": FRESH.to_json(),
           "LAZYADAM_CACHE_DIR": str(disk / "cache")}
    proc = subprocess.run([*unshare, "sh", "-c", TMPFS_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr


def test_an_empty_claim_of_a_vanished_maker_is_taken_over(counting_cc, monkeypatch):
    """A claim created but never written (its maker died or its disk was full) blocks nobody."""
    monkeypatch.setattr(cache, "STALE_SECONDS", float("inf"))
    entry = claimed_entry("")
    old = time.time() - 2 * cache.EMPTY_CLAIM_SECONDS
    os.utime(entry / "claim", (old, old))
    compile_past_the_claim(entry, "an empty claim")
    assert counting_cc() == 1


def test_a_truncated_cached_library_is_built_again(counting_cc):
    assert run_step_process(FRESH).returncode == 0
    (entry,) = cache.entries()
    (library,) = entry.glob("*.so")
    size = library.stat().st_size
    with open(library, "r+b") as f:
        f.truncate(100)
    proc = run_step_process(FRESH)
    assert proc.returncode == 0, proc.stderr
    assert counting_cc() == 2 and library.stat().st_size == size
