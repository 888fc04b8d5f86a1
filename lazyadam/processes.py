"""Files that name the process that made them: a claim on a cache entry, a checkpoint being written.

A file's maker is its host name and process id (`me()`). Whether that maker is gone can be known
only on its own host: there `gone` asks the kernel whether the pid still exists. A file made on
another host (a shared disk) is never taken for abandoned here.
"""

from __future__ import annotations

import os
import socket


def me() -> tuple[str, int]:
    """(host name, pid) of this process."""
    return socket.gethostname(), os.getpid()


def gone(host: str, pid: int) -> bool:
    """True when process `pid` of `host` is this host's and no longer exists (e.g. killed)."""
    if host != socket.gethostname() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        return False
    return False
