"""The kernel cache loads only what this user made (docs/security.md).

Entries that another user owns or can write hold a planted library whose constructor would leave a
file behind if it were ever loaded: none is loaded, the kernel is built in a private folder and
gives the reference's numbers, and an UntrustedCacheWarning names the path. The tests run as root
(as in CI), so "another user" is an `os.chown` to uid 65534.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import cuda_emulation as emulation
import lazyadam
from lazyadam import CompilationError, HParams, Spec, UntrustedCacheWarning
from lazyadam.cli import main
from lazyadam.targets import c, cache, cuda
from product import reference_flags
from reference import lazyadam_step
from tolerance import assert_close

SPEC = Spec(sparse=True)
OTHER_UID = 65534
HP = HParams.at_step(1, lr=0.01)

PLANTED_C = """
#include <stdio.h>
__attribute__((constructor)) static void planted(void) {
    FILE *f = fopen(MARKER, "w");
    if (f) fclose(f);
}
"""

needs_root = pytest.mark.skipif(os.getuid() != 0, reason="os.chown to another uid needs root")


@pytest.fixture
def counting_cc(tmp_path, monkeypatch):
    """A cache of its own, nothing loaded yet, and a compiler wrapper that logs each kernel build:
    the mode of the claim it was built under, or "none" outside the cache. It compiles at -O0
    (the last -O wins; the cache key is the target's own command): these tests check where a
    kernel is built and loaded from, and a kernel takes an eighth of -O3's time."""
    log = tmp_path / "cc.log"
    wrapper = tmp_path / "cc"
    wrapper.write_text('#!/bin/sh\ncase "$*" in *-shared*) '
                       f'(stat -c %a ../claim 2>/dev/null || echo none) >> {log};; esac\n'
                       'exec cc "$@" -O0\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("LAZYADAM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LAZYADAM_CC", str(wrapper))
    monkeypatch.setattr(cache, "_loaded", {})
    monkeypatch.setattr(cache, "_private", {})

    def builds() -> list[str]:
        return log.read_text().split() if log.exists() else []
    return builds


@pytest.fixture
def planted(tmp_path) -> tuple[Path, Path]:
    """(library, marker): a shared library whose constructor creates `marker` when it is loaded,
    shown to do so in a process of its own."""
    marker = tmp_path / "planted-ran"
    source = tmp_path / "planted.c"
    source.write_text(PLANTED_C)
    library = tmp_path / "planted.so"
    subprocess.run(["cc", "-shared", "-fPIC", f'-DMARKER="{marker}"', str(source), "-o",
                    str(library)], check=True)
    subprocess.run([sys.executable, "-c", f"import ctypes; ctypes.CDLL({str(library)!r})"],
                   check=True)
    assert marker.exists(), "the planted library does not show when it is loaded"
    marker.unlink()
    return library, marker


def plant(library: Path, key: str, artifact: str) -> Path:
    """The cache entry for `key`, holding `library` under the artifact's name; returns the entry."""
    entry = cache.root() / key[:2] / key
    entry.mkdir(parents=True)
    (entry / artifact).write_bytes(library.read_bytes())
    (entry / "build.log").write_text("")
    return entry


def c_entry(library: Path) -> Path:
    source = lazyadam.generate(SPEC)
    return plant(library, c.TARGET.cache_key(source), f"{source.symbol}.so")


def give_away(*paths: Path) -> None:
    for path in paths:
        os.chown(path, OTHER_UID, OTHER_UID, follow_symlinks=False)


def run_step(kernel) -> None:
    """One sparse step on a fresh state, against the reference."""
    rng = np.random.default_rng(5)
    var0 = rng.standard_normal((6, 3)).astype(np.float32)
    indices = np.array([4, 0, 4], np.int64)
    values = rng.standard_normal((3, 3)).astype(np.float32)
    var, m, v = var0.copy(), np.zeros_like(var0), np.zeros_like(var0)
    kernel(var, m, v, (indices, values), HP)
    expected = lazyadam_step(var0, np.zeros(var0.shape), np.zeros(var0.shape), values,
                             indices=indices, lr=HP.lr, beta1=HP.beta1, beta2=HP.beta2, eps=HP.eps,
                             beta1_power=HP.beta1_power, beta2_power=HP.beta2_power,
                             **reference_flags(SPEC))
    for name, actual, wanted in zip(("var", "m", "v"), (var, m, v), expected):
        assert_close(actual, wanted, "float32", name)


def compile_refusing(spec: Spec, path: Path, reason: str, target: str = "c"):
    """`lazyadam.compile`, which must warn once that it refused `path` for `reason`."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kernel = lazyadam.compile(spec, target)
    refusals = [w for w in caught if issubclass(w.category, UntrustedCacheWarning)]
    assert len(refusals) == 1, [str(w.message) for w in caught]
    assert f"{path} {reason}" in str(refusals[0].message)
    return kernel


def assert_private(kernel, root: Path) -> None:
    """The kernel was built outside the cache, in a folder only this user can enter."""
    assert not kernel.path.is_relative_to(root)
    folder = kernel.path.parent.stat()
    assert folder.st_uid == os.getuid() and stat.S_IMODE(folder.st_mode) == 0o700


def make_untrusted(how: str, entry: Path) -> tuple[Path, str]:
    """Makes the cache around `entry` untrusted in the way `how` says; returns the path refused
    first and the reason given."""
    library = next(entry.glob("*.so"))
    shard, root = entry.parent, entry.parent.parent
    if how == "planted by another user in a sticky root":  # the reported attack
        root.chmod(0o1777)
        give_away(shard, entry, *entry.iterdir())
        return shard, f"is owned by {cache.user(OTHER_UID)}"
    if how == "library owned by another user":
        give_away(library)
        return library, f"is owned by {cache.user(OTHER_UID)}"
    if how == "root owned by another user":
        give_away(root)
        return root, f"is owned by {cache.user(OTHER_UID)}"
    if how == "library writable by others":
        library.chmod(0o666)
        return library, "is writable by group and others (mode -rw-rw-rw-)"
    if how == "entry writable by its group":
        entry.chmod(0o770)
        return entry, "is writable by its group (mode drwxrwx---)"
    if how == "shard writable by others":
        shard.chmod(0o757)
        return shard, "is writable by others (mode drwxr-xrwx)"
    if how == "root writable by its group, not sticky":
        root.chmod(0o775)
        return root, "is writable by its group (mode drwxrwxr-x)"
    if how == "library a symbolic link":
        target = entry.parent / "elsewhere.so"
        library.rename(target)
        library.symlink_to(target)
        return library, "is a symbolic link"
    raise ValueError(how)


UNTRUSTED = ["planted by another user in a sticky root", "library owned by another user",
             "root owned by another user", "library writable by others",
             "entry writable by its group", "shard writable by others",
             "root writable by its group, not sticky", "library a symbolic link"]
OWNERSHIP = {"planted by another user in a sticky root", "library owned by another user",
             "root owned by another user"}


@pytest.mark.parametrize("how", UNTRUSTED)
def test_an_untrusted_entry_is_never_loaded_and_the_kernel_is_built_privately(
        counting_cc, planted, how):
    if how in OWNERSHIP and os.getuid() != 0:
        pytest.skip("os.chown to another uid needs root")
    library, marker = planted
    entry = c_entry(library)
    path, reason = make_untrusted(how, entry)
    kernel = compile_refusing(SPEC, path, reason)
    assert not marker.exists(), "the planted library was loaded"
    assert_private(kernel, cache.root())
    run_step(kernel)
    assert len(counting_cc()) == 1


def test_an_untrusted_root_gets_nothing_written_into_it(counting_cc):
    root = cache.root()
    root.mkdir(mode=0o775)
    root.chmod(0o775)
    kernel = compile_refusing(SPEC, root, "is writable by its group (mode drwxrwxr-x)")
    assert list(root.iterdir()) == []
    run_step(kernel)


def test_a_sticky_world_writable_root_keeps_this_users_entries(counting_cc):
    root = cache.root()
    root.mkdir()
    root.chmod(0o1777)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UntrustedCacheWarning)
        first = lazyadam.compile(SPEC)
        cache._loaded.clear()
        second = lazyadam.compile(SPEC)
    assert first.path == second.path and first.path.is_relative_to(root)
    assert len(counting_cc()) == 1


def test_the_cache_is_private_whatever_the_umask(counting_cc, monkeypatch):
    old = os.umask(0)
    try:
        kernel = lazyadam.compile(SPEC)
        monkeypatch.setenv("LAZYADAM_CFLAGS", "--no-such-flag-for-lazyadam")
        with pytest.raises(CompilationError):
            lazyadam.compile(Spec(sparse=False))
    finally:
        os.umask(old)
    entry = kernel.path.parent
    modes = {path: stat.S_IMODE(path.stat().st_mode)
             for path in (cache.root(), entry.parent, entry, *entry.iterdir())}
    failed = next(cache.root().glob("*/*/failed"))
    modes[failed] = stat.S_IMODE(failed.stat().st_mode)
    expected = {path: 0o700 if path.is_dir() or path == kernel.path else 0o600 for path in modes}
    assert {p: oct(m) for p, m in modes.items()} == {p: oct(m) for p, m in expected.items()}
    assert counting_cc() == ["600", "600"]  # each claim, while its build ran


def test_a_private_build_is_made_and_announced_once_per_process(tmp_path, monkeypatch):
    monkeypatch.setenv("LAZYADAM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "_private", {})
    key = "ab" + "1" * 62
    entry = plant(Path(os.devnull), key, "k.so")
    entry.chmod(0o777)
    builds = []

    def build(folder: Path) -> Path:
        builds.append(folder)
        (folder / "k.so").write_text("built")
        return folder / "k.so"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paths = [cache.fetch(key, "k.so", build) for _ in range(3)]
    assert len(caught) == 1 and str(entry) in str(caught[0].message)
    assert len(builds) == 1 and paths == [builds[0] / "k.so"] * 3
    assert (entry / "k.so").read_bytes() == b""


# -- claims and failure markers ------------------------------------------------------------------

def claim_of_a_live_process(entry: Path) -> Path:
    claim = entry / "claim"
    claim.write_text(f"{socket.gethostname()} {os.getpid()}")
    return claim


@pytest.mark.parametrize("content", ["live", "empty"])
@pytest.mark.parametrize("how", ["owned by another user", "writable by others"])
def test_an_untrusted_claim_does_not_hold_up_a_build(counting_cc, monkeypatch, how, content):
    """A claim that would otherwise be waited for (a live process's, or an empty one still young)
    is refused at once; before, the build waited for the claim to go stale."""
    if how == "owned by another user" and os.getuid() != 0:
        pytest.skip("os.chown to another uid needs root")
    monkeypatch.setattr(cache, "STALE_SECONDS", 30.0)
    monkeypatch.setattr(cache, "EMPTY_CLAIM_SECONDS", 30.0)
    key = c.TARGET.cache_key(lazyadam.generate(SPEC))
    entry = cache.root() / key[:2] / key
    entry.mkdir(parents=True)
    claim = claim_of_a_live_process(entry)
    if content == "empty":
        claim.write_text("")
    if how == "owned by another user":
        give_away(claim)
        reason = f"is owned by {cache.user(OTHER_UID)}"
    else:
        claim.chmod(0o646)
        reason = "is writable by others (mode -rw-r--rw-)"
    started = time.monotonic()
    kernel = compile_refusing(SPEC, claim, reason)
    assert time.monotonic() - started < 15
    assert_private(kernel, cache.root())
    run_step(kernel)
    assert claim.exists()


@needs_root
def test_another_users_failure_marker_does_not_fail_the_build(counting_cc):
    """A claim that goes away next to a `failed` marker: ours would fail the waiters (see
    test_cache.py); another user's is refused, and the kernel is built."""
    key = c.TARGET.cache_key(lazyadam.generate(SPEC))
    entry = cache.root() / key[:2] / key
    entry.mkdir(parents=True)
    claim = claim_of_a_live_process(entry)
    failed = entry / "failed"
    failed.write_text("error: planted")
    give_away(failed)
    release = threading.Timer(0.2, claim.unlink)
    release.start()
    try:
        kernel = compile_refusing(SPEC, failed, f"is owned by {cache.user(OTHER_UID)}")
    finally:
        release.join()
    run_step(kernel)


# -- the CUDA target and the listing -------------------------------------------------------------

@needs_root
def test_the_cuda_target_refuses_a_planted_entry(counting_cc, planted, monkeypatch):
    """The CUDA target's load goes through the same checks: its nvcc build is stood in for by the
    host emulation (tests/cuda_emulation), and its numbers checked on emulated device arrays."""
    if emulation.host_compiler() is None:
        pytest.skip("no host C++ compiler (c++ or g++) to build the CUDA emulation")
    monkeypatch.setattr(cuda.TARGET, "unavailable", lambda: None)
    monkeypatch.setattr(cuda.TARGET, "key_parts", lambda: {"compiler": "host emulation"})
    monkeypatch.setattr(cuda.TARGET, "build",
                        emulation.target().build)
    library, marker = planted
    source = lazyadam.generate(SPEC, "cuda")
    entry = plant(library, cuda.TARGET.cache_key(source), f"{source.symbol}.so")
    entry.parent.parent.chmod(0o1777)
    give_away(entry.parent, entry, *entry.iterdir())
    kernel = compile_refusing(SPEC, entry.parent, f"is owned by {cache.user(OTHER_UID)}", "cuda")
    assert not marker.exists(), "the planted library was loaded"
    assert isinstance(kernel, cuda.CudaKernel)
    assert_private(kernel, cache.root())

    def on_device(*arrays):
        return [emulation.Emulated(a) for a in arrays]
    run_step(lambda var, m, v, grad, hp: kernel(*on_device(var, m, v), tuple(on_device(*grad)),
                                                hp))


@needs_root
def test_cache_ls_shows_owner_and_mode_and_flags_what_it_would_refuse(counting_cc, planted):
    good = lazyadam.compile(SPEC).path.parent
    dense = lazyadam.generate(Spec(sparse=False))
    bad = plant(planted[0], c.TARGET.cache_key(dense), f"{dense.symbol}.so")
    give_away(bad / f"{dense.symbol}.so")
    result = CliRunner().invoke(main, ["cache", "ls"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    by_key = {line.split()[0]: (line, following) for line, following in zip(lines, lines[1:] + [""])}
    line, following = by_key[good.name[:16]]
    assert f"  ok        {cache.user(0)}  drwx------  " in line
    assert not following.strip().startswith("refused")
    line, following = by_key[bad.name[:16]]
    assert f"{cache.user(0)}  drwxr-xr-x  " in line
    assert following == (f"    refused: {bad / dense.symbol}.so is owned by {cache.user(OTHER_UID)}"
                         f", not by {cache.user(0)} or root")


@needs_root
def test_cache_ls_lists_an_entry_it_cannot_read(counting_cc, monkeypatch):
    """Another user's listing of a shared sticky cache: this user's entries are 0700, so it cannot
    see their files; it says so instead of failing."""
    shared = Path(tempfile.mkdtemp(dir="/tmp"))  # pytest's tmp_path is closed to other users
    try:
        shared.chmod(0o755)
        monkeypatch.setenv("LAZYADAM_CACHE_DIR", str(shared / "cache"))
        entry = lazyadam.compile(SPEC).path.parent
        cache.root().chmod(0o1777)
        entry.parent.chmod(0o755)
        os.seteuid(OTHER_UID)
        try:
            result = CliRunner().invoke(main, ["cache", "ls"])
        finally:
            os.seteuid(0)
    finally:
        shutil.rmtree(shared)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1:] == [
        f"{entry.name[:16]}  ok        {cache.user(0)}  drwx------     0.0 KiB  ",
        f"    refused: {entry} cannot be listed (Permission denied)"]


def test_a_failed_private_build_leaves_no_folder_behind(counting_cc, monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    cache.root().mkdir(mode=0o777)
    cache.root().chmod(0o777)
    monkeypatch.setenv("LAZYADAM_CFLAGS", "--no-such-flag-for-lazyadam")
    with pytest.warns(UntrustedCacheWarning, match=re.escape(str(cache.root()))):
        with pytest.raises(CompilationError, match="failed to build"):
            lazyadam.compile(SPEC)
    assert list((tmp_path / "tmp").iterdir()) == []
