"""The on-disk kernel cache.

An entry is a folder `<root>/<key[:2]>/<key>/` holding the built artifact and the files it was built
from. The key must hash everything that can change the binary (the targets build it: rendered source,
flags, compiler version, ISA, Python ABI).

Concurrency: a builder claims an entry by creating `claim` (holding its host and pid) with O_EXCL,
builds in a private temporary folder and `os.replace`s the artifact in, so a reader never sees half
a file. Others wait for the artifact; a failed build leaves `failed` (holding the log) so that
waiters stop waiting; a claim whose owner is gone (a dead pid on this host) is taken over at once,
a claim still empty after `EMPTY_CLAIM_SECONDS` (its maker died or could not write it) then, and
any claim older than `STALE_SECONDS` (e.g. from another host on a shared disk) after that.

Faults: a cache that cannot be written (a full disk, no permission) raises an OSError naming the
folder at once, and leaves no claim behind. An artifact that is there but cannot be loaded
(truncated, corrupted) is removed and built once more.

Environment:
    LAZYADAM_CACHE_DIR: the cache root (default `$XDG_CACHE_HOME/lazyadam`, else `~/.cache/lazyadam`).
    LAZYADAM_DISABLE_CACHE=1: build every kernel afresh in a temporary folder.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, TypeVar

from .. import processes
from ..errors import CompilationError

STALE_SECONDS = 600.0
EMPTY_CLAIM_SECONDS = 5.0
#: errno values of a write refused for want of space (or of a writable disk), wherever it happens.
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
POLL_SECONDS = 0.02

Kernel = TypeVar("Kernel")
_loaded: dict[str, object] = {}
_building: dict[str, threading.Lock] = {}
_lock = threading.Lock()


def root() -> Path:
    """The cache directory (not created)."""
    if os.environ.get("LAZYADAM_CACHE_DIR"):
        return Path(os.environ["LAZYADAM_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lazyadam"


def enabled() -> bool:
    return os.environ.get("LAZYADAM_DISABLE_CACHE", "").lower() not in ("1", "true", "yes", "on")


def make_key(parts: dict) -> str:
    """sha256 of the canonical JSON of `parts`."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def entries() -> list[Path]:
    """Every complete or partial entry folder in the cache."""
    base = root()
    return sorted(p for p in base.glob("??/*") if p.is_dir()) if base.is_dir() else []


def clear() -> int:
    """Removes every entry; returns how many there were."""
    found = entries()
    for entry in found:
        shutil.rmtree(entry, ignore_errors=True)
    return len(found)


def load(key: str, artifact: str, build: Callable[[Path], Path],
         open_artifact: Callable[[Path], Kernel]) -> Kernel:
    """The loaded kernel for `key`: from this process, the disk cache, or a fresh build.

    Threads asking for the same key build and load it once; different keys build in parallel. With
    the cache disabled, the artifact is built in a temporary folder that is removed once loaded.

    Args:
        key: the cache key (everything that can change the artifact).
        artifact: the artifact's file name in its entry.
        build: `build(folder) -> artifact path`, see `fetch`.
        open_artifact: loads a built artifact (e.g. dlopen); OSError if the file is gone.
    """
    kernel = _loaded.get(key)
    if kernel is not None:
        return kernel
    with _lock:
        building = _building.setdefault(key, threading.Lock())
    with building:
        if key not in _loaded:
            _loaded[key] = _open(key, artifact, build, open_artifact)
    return _loaded[key]


def _open(key: str, artifact: str, build: Callable[[Path], Path],
          open_artifact: Callable[[Path], Kernel]) -> Kernel:
    if not enabled():
        path, folder = build_uncached(build)
        try:
            return open_artifact(path)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    path = fetch(key, artifact, build)
    seen = _identity(path)
    try:
        return open_artifact(path)
    except OSError:  # deleted since fetch (the cache was cleared), or damaged: build it once more
        if seen is not None and _identity(path) == seen:  # not replaced meanwhile by a rebuild
            _unlink(path)
    path = fetch(key, artifact, build)
    try:
        return open_artifact(path)
    except OSError as error:
        raise OSError(f"cannot load {path}, even built afresh: {error}") from error


def fetch(key: str, artifact: str, build: Callable[[Path], Path]) -> Path:
    """The path of the cached `artifact` for `key`, building it with `build(folder)` if needed.

    `build` writes whatever it needs into the empty `folder` it is given and returns the path of the
    artifact it made there (it raises `CompilationError` on failure).

    Raises:
        CompilationError: the build failed, here or in another process building the same key.
        OSError: the cache cannot be written (a full disk, no permission); no claim is left.
    """
    entry = root() / key[:2] / key
    target = entry / artifact
    while True:
        if target.exists():
            return target
        try:
            entry.mkdir(parents=True, exist_ok=True)
            fd = os.open(entry / "claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            _wait_for_claim(entry, target)
            continue
        except FileNotFoundError:  # the folder was deleted between mkdir and open
            continue
        except OSError as error:
            raise _unwritable(error) from error
        claimed = False
        try:
            with os.fdopen(fd, "w") as claim:
                claim.write("{} {}".format(*processes.me()))
            claimed = True
            if target.exists():  # built by the previous claimant after our first look
                return target
            return _build_into(entry, target, build)
        except FileNotFoundError:  # the cache was deleted mid-build: build again
            continue
        except OSError as error:
            if not claimed or error.errno in _FULL:
                raise _unwritable(error) from error
            raise
        finally:
            _unlink(entry / "claim")


def _build_into(entry: Path, target: Path, build: Callable[[Path], Path]) -> Path:
    _unlink(entry / "failed")
    work = Path(tempfile.mkdtemp(prefix="build-", dir=entry))
    try:
        try:
            product = build(work)
        except CompilationError as err:
            if not work.is_dir():
                raise FileNotFoundError(work) from err
            with contextlib.suppress(OSError):  # waiters then build it themselves
                _write_atomic(entry / "failed", err.log or str(err))
            raise
        for path in work.iterdir():  # sources and log next to the artifact, for a person to read
            if path != product:
                os.replace(path, entry / path.name)
        os.replace(product, target)
        return target
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _wait_for_claim(entry: Path, target: Path) -> None:
    """Returns when the claim is gone (built, failed or stale); raises if the build failed."""
    claim = entry / "claim"
    while True:
        if target.exists():
            return
        try:
            age = time.time() - claim.stat().st_mtime
        except FileNotFoundError:
            failed = entry / "failed"
            if failed.exists() and not target.exists():
                raise CompilationError(f"another process failed to build {entry.name}",
                                       log=_read(failed), log_path=failed)
            return
        if age > STALE_SECONDS or _abandoned(claim, age):
            _unlink(claim)
            return
        time.sleep(POLL_SECONDS)


def _abandoned(claim: Path, age: float) -> bool:
    """True when the claim's maker is gone, or it has stayed empty for `EMPTY_CLAIM_SECONDS`."""
    owner = _read(claim)
    if not owner:
        return age > EMPTY_CLAIM_SECONDS
    host, _, pid = owner.partition(" ")
    return pid.isdigit() and processes.gone(host, int(pid))


def _unwritable(error: OSError) -> OSError:
    """The error of a cache that cannot be written, saying what the user can do about it."""
    return OSError(error.errno, f"cannot write the kernel cache {root()}: "
                                f"{error.strerror or error}; free space there, point "
                                "LAZYADAM_CACHE_DIR at another folder, or set "
                                "LAZYADAM_DISABLE_CACHE=1", error.filename)


def _identity(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of a file, to tell it from a later one at its path; None if gone."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def build_uncached(build: Callable[[Path], Path]) -> tuple[Path, Path]:
    """Builds in a fresh temporary folder; returns (artifact, folder). The caller removes the folder."""
    work = Path(tempfile.mkdtemp(prefix="lazyadam-"))
    return build(work), work


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        _unlink(tmp)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
