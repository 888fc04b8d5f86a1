"""Exceptions users can catch."""

from __future__ import annotations

from pathlib import Path


class CompilationError(RuntimeError):
    """A kernel failed to build.

    Attributes:
        log: the compiler's output.
        log_path: where that output was saved (None if it could not be saved).
        source_path: the source file that was compiled.
    """

    def __init__(self, message: str, log: str = "", log_path: Path | None = None,
                 source_path: Path | None = None):
        details = [message]
        if source_path:
            details.append(f"source: {source_path}")
        if log_path:
            details.append(f"log: {log_path}")
        if log:
            details.append("compiler output (last lines):\n" + "\n".join(log.splitlines()[-20:]))
        super().__init__("\n".join(details))
        self.log = log
        self.log_path = log_path
        self.source_path = source_path


class CompilerNotFoundError(CompilationError):
    """The compiler command for a target is not installed or not on PATH."""


class TargetUnavailableError(RuntimeError):
    """A target cannot run here (no GPU, no pycuda, ...); the message says what is missing."""


class KernelError(RuntimeError):
    """A kernel returned an error code that argument checks should have prevented."""


class UntrustedCacheWarning(UserWarning):
    """The kernel cache held something another user owns or can write, so it was not used.

    The message names the path and the reason; the kernel was built in a private temporary folder
    instead (see docs/security.md).
    """
