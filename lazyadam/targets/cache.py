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

Trust (docs/security.md): entry names are predictable, so whoever can write into the cache could
plant a library there. The cache uses an entry only when the root, the entry's shard folder, the
entry and everything in it (artifact, claim, `failed`) are owned by this user or root and writable
by nobody else; the root alone may be sticky and writable by all, as /tmp is. Otherwise it loads
nothing from the entry, waits for no claim and believes no `failed` marker there: it builds the
kernel in a private temporary folder of this process and warns once with `UntrustedCacheWarning`,
naming the path and the reason. It creates folders 0700, artifacts 0700 and other files 0600,
whatever the umask. A cache shared by several accounts is not supported, beyond one that root
filled and others only read.

Environment:
    LAZYADAM_CACHE_DIR: the cache root (default `$XDG_CACHE_HOME/lazyadam`, else `~/.cache/lazyadam`).
    LAZYADAM_DISABLE_CACHE=1: build every kernel afresh in a temporary folder.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import pwd
import shutil
import stat
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from .. import processes
from ..errors import CompilationError, UntrustedCacheWarning

STALE_SECONDS = 600.0
EMPTY_CLAIM_SECONDS = 5.0
#: errno values of a write refused for want of space (or of a writable disk), wherever it happens.
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
POLL_SECONDS = 0.02

Kernel = TypeVar("Kernel")
_loaded: dict[str, object] = {}
_building: dict[str, threading.Lock] = {}
_lock = threading.Lock()
#: The artifacts built in private folders in place of untrusted entries, by key.
_private: dict[str, Path] = {}
#: (pid, folder) of each private build, removed when the process that made it exits.
_private_folders: list[tuple[int, Path]] = []
#: How many kernels this process has built (see `builds`).
_builds = 0


def root() -> Path:
    """The cache directory (not created)."""
    if os.environ.get("LAZYADAM_CACHE_DIR"):
        return Path(os.environ["LAZYADAM_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lazyadam"


def enabled() -> bool:
    return os.environ.get("LAZYADAM_DISABLE_CACHE", "").lower() not in ("1", "true", "yes", "on")


def builds() -> int:
    """How many kernels this process has built with a compiler, in the cache or outside it.

    A kernel found in the disk cache, or built by another process that this one waited for, is
    not counted: compare the count before and after a first step to tell whether it compiled its
    kernels or loaded them.
    """
    return _builds


def _count_build() -> None:
    global _builds
    with _lock:
        _builds += 1


def make_key(parts: dict) -> str:
    """sha256 of the canonical JSON of `parts`."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def entry(key: str) -> Path:
    """The folder of `key`'s entry (which may not exist)."""
    return root() / key[:2] / key


def scratch() -> Path:
    """A fresh private folder for a build whose artifact is then placed in entries by `fetch`: in
    the cache root (so that an entry can hard-link it), or in the system's temporary folder where
    the root is not to be trusted. The caller removes it.

    Raises:
        OSError: the root cannot be created.
    """
    try:
        base = _make_root()
    except _Refused:
        return Path(tempfile.mkdtemp(prefix="lazyadam-"))
    return Path(tempfile.mkdtemp(prefix="build-", dir=base))


def entries() -> list[Path]:
    """Every complete or partial entry folder in the cache."""
    base = root()
    return sorted(p for p in base.glob("??/*") if p.is_dir()) if base.is_dir() else []


def clear() -> int:
    """Removes every entry, and every lock file that no process holds; returns how many entries
    there were.

    A lock file is removed while this process holds it, so no other holder loses it; a process
    that opened it before and takes it after holds a lock nobody else can see, and may build a
    batch that another process builds too (each entry is still claimed on its own, by `fetch`).
    """
    found = entries()
    for entry in found:
        shutil.rmtree(entry, ignore_errors=True)
    locks = root() / "locks"
    for path in locks.iterdir() if locks.is_dir() else ():
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path.unlink()
        except OSError:  # held by another process (BlockingIOError), or gone already
            pass
        finally:
            os.close(fd)
    return len(found)


@contextlib.contextmanager
def lock(name: str, wait: bool = True) -> Iterator[bool]:
    """Holds the lock `name` of this cache (`flock` on `<root>/locks/<name>`), shared by every
    process that uses the cache: yields True once held, or, with `wait=False`, False at once where
    another holder has it. It is released on leaving, or when its process dies.

    What many kernels at once (`batch.build`) claim, where `fetch` claims one entry. Where the
    root is not to be trusted, or the lock cannot be made, it yields True at once: every process
    then builds for itself, as `fetch` does there.
    """
    try:
        folder = _make_root() / "locks"
        _mkdir_private(folder)
        _check(folder)
        fd = os.open(folder / name, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o600)
    except (_Refused, OSError):
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


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
    artifact it made there (it raises `CompilationError` on failure). Where the entry, or the cache
    above it, cannot be trusted (see `refusal`), the artifact is built in a private temporary
    folder instead (kept until this process exits) with an `UntrustedCacheWarning`.

    Raises:
        CompilationError: the build failed, here or in another process building the same key.
        OSError: the cache cannot be written (a full disk, no permission); no claim is left.
    """
    try:
        return _fetch(entry(key), artifact, build)
    except _Refused as refused:
        return _build_private(key, build, refused)


def _fetch(entry: Path, artifact: str, build: Callable[[Path], Path]) -> Path:
    """`fetch` in a trusted cache. Raises _Refused where an entry or a folder above it is not."""
    target = entry / artifact
    while True:
        try:
            _make_folders(entry)
            _check_entry(entry)
        except FileNotFoundError:  # the cache was deleted meanwhile
            continue
        except OSError as error:
            raise _unwritable(error) from error
        if target.exists():
            return target
        try:
            fd = os.open(entry / "claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
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
            os.chmod(path, 0o700 if path == product or path.is_dir() else 0o600)
            if path != product:
                os.replace(path, entry / path.name)
        os.replace(product, target)
        _count_build()
        return target
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _wait_for_claim(entry: Path, target: Path) -> None:
    """Returns when the claim is gone (built, failed or stale); raises if the build failed.

    Raises:
        CompilationError: the claimant left a `failed` marker.
        _Refused: the entry holds a claim, marker or anything else that is not to be trusted.
    """
    claim = entry / "claim"
    while True:
        try:
            _check_entry(entry)
        except FileNotFoundError:  # the cache was deleted meanwhile: start again
            return
        if target.exists():
            return
        try:
            age = time.time() - claim.stat().st_mtime
        except FileNotFoundError:
            failed = entry / "failed"
            try:
                _check(failed)
            except FileNotFoundError:
                return
            if not target.exists():
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
    try:
        product = build(work)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    _count_build()
    return product, work


# -- trust: who may have written what the cache is about to use ---------------------------------

class _Refused(Exception):
    """A path in the cache that is not to be trusted, and why."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path} {reason}")
        self.path = path
        self.reason = reason


def refusal(entry: Path) -> str | None:
    """Why the cache would not use `entry` (a folder `root()/<key[:2]>/<key>`), or None if it would.

    Trusted: the root, the entry's shard folder, the entry and everything in it, each owned by this
    user or root and writable by nobody else (the root may be sticky and writable by all, as /tmp).
    Not trusted: another owner, group or other write permission, a symbolic link, a path that
    cannot be examined.

    Returns:
        "<path> <reason>" for the first path that fails, e.g. "... is owned by uid 65534 (nobody),
        not by uid 1000 (alice) or root".
    """
    try:
        _check_entry(entry)
    except _Refused as refused:
        return str(refused)
    except FileNotFoundError:  # deleted meanwhile: nothing there to trust or not
        pass
    return None


def user(uid: int) -> str:
    """'uid N (name)', or 'uid N' for a uid with no account."""
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _check(path: Path, is_root: bool = False) -> None:
    """Raises _Refused unless `path` is owned by this user or root and writable by no one else.

    The root is followed if a symbolic link (the user may point the cache anywhere) and may be
    sticky and writable by all; anything below it is examined itself, not followed.

    Raises:
        FileNotFoundError: `path` is not there.
    """
    try:
        info = os.stat(path) if is_root else os.lstat(path)
    except FileNotFoundError:
        raise
    except OSError as error:
        raise _Refused(path, f"cannot be examined ({error.strerror or error})") from error
    if stat.S_ISLNK(info.st_mode):
        raise _Refused(path, "is a symbolic link")
    me = os.geteuid()
    if info.st_uid not in (me, 0):
        raise _Refused(path, f"is owned by {user(info.st_uid)}, not by {user(me)} or root")
    shared = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if shared and not (is_root and info.st_mode & stat.S_ISVTX):
        whom = "group and others" if shared == stat.S_IWGRP | stat.S_IWOTH else (
            "its group" if shared == stat.S_IWGRP else "others")
        raise _Refused(path, f"is writable by {whom} (mode {stat.filemode(info.st_mode)})")


def _check_entry(entry: Path) -> None:
    """`_check` on the root, the entry's shard folder, the entry and everything in it (not below).

    Raises:
        _Refused: the first that fails. FileNotFoundError: the entry is gone.
    """
    _check(root(), is_root=True)
    _check(entry.parent)
    _check(entry)
    try:
        names = os.listdir(entry)
    except FileNotFoundError:
        raise
    except OSError as error:
        raise _Refused(entry, f"cannot be listed ({error.strerror or error})") from error
    for name in names:
        with contextlib.suppress(FileNotFoundError):  # gone meanwhile (a released claim)
            _check(entry / name)


def _make_folders(entry: Path) -> None:
    """Creates the root, the entry's shard folder and the entry where missing, each 0700, and
    checks each before creating anything in it.

    Raises:
        _Refused: one is not to be trusted. OSError: one cannot be created.
    """
    _make_root()
    for folder in (entry.parent, entry):
        _mkdir_private(folder)
        _check(folder)


def _make_root() -> Path:
    """The root, created 0700 where missing (with the folders above it), and checked.

    Raises:
        _Refused: it is not to be trusted. OSError: it cannot be created.
    """
    base = root()
    if not base.is_dir():
        base.parent.mkdir(parents=True, exist_ok=True)
        _mkdir_private(base)
    _check(base, is_root=True)
    return base


def _mkdir_private(folder: Path) -> None:
    """Creates `folder` with mode 0700, whatever the umask; leaves an existing one as it is."""
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        return
    os.chmod(folder, 0o700)


def _build_private(key: str, build: Callable[[Path], Path], refused: _Refused) -> Path:
    """The artifact for `key` built in a private temporary folder (once per process), in place of
    the refused entry; warns the first time."""
    path = _private.get(key)
    if path is not None and path.exists():
        return path
    if path is None:
        warnings.warn(UntrustedCacheWarning(
            f"not using the kernel cache entry for {key[:16]}: {refused}; building the kernel "
            "in a private temporary folder instead (see docs/security.md)"))
    path, folder = build_uncached(build)
    _private_folders.append((os.getpid(), folder))
    _private[key] = path
    return path


@atexit.register
def _remove_private_folders() -> None:
    """Removes the private builds of this process (not those of a parent it was forked from)."""
    for pid, folder in _private_folders:
        if pid == os.getpid():
            shutil.rmtree(folder, ignore_errors=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as file:
            file.write(text)
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
