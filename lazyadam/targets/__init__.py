"""Targets: one module per target, each with a `TARGET` behind one interface (`target.Target`).

A target says whether it can run here (`unavailable() -> str | None`), what can change its binaries
(for the cache key), how its compiler builds a library and how a built one is loaded; the cached
build flow (`cache_key`, `build`, `load(spec)`, returning a callable kernel: see `base`) is written
once, in `target.Target`.

`compile` keeps what it returns: a spec is generated, built (or found in the disk cache) and loaded
once per process and toolchain environment, however many parameters use it. Within
`environment_read_once()` (an optimizer's check phase), it reads that environment once.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
from typing import Iterator

from ..codegen.spec import SpecBase as Spec
from ..errors import TargetUnavailableError
from .target import Target

TARGETS = ("c", "cuda")

#: The targets met so far (an import, even of a loaded module, takes microseconds).
_targets: dict[str, Target] = {}
#: The kernels `compile` returned, by (target, spec, the target's `environment` values).
#: Threads that miss together load through `cache.load`, which builds and loads a key once.
_compiled: dict[tuple, object] = {}
#: `values`: each target's `environment` values as read in this thread's `environment_read_once`.
_read_once = threading.local()


def get(name: str) -> Target:
    """The target called `name` (its module's `TARGET`).

    Raises:
        ValueError: an unknown target.
    """
    found = _targets.get(name)
    if found is None:
        if name not in TARGETS:
            raise ValueError(f"unknown target {name!r}; choose from {', '.join(TARGETS)}")
        found = _targets[name] = importlib.import_module(f"{__name__}.{name}").TARGET
    return found


def compile(spec: Spec, target: str = "c"):  # noqa: A001  (the verb users expect)
    """The compiled, loaded kernel for `spec` on `target`, built once and cached.

    A spec asked for again (the same target, and the same values of the target's `environment`
    variables, read once within `environment_read_once()`) gets the kernel it got before, without
    generating its source again: the first step over 100,000 parameters of one spec generates,
    builds and loads one kernel.

    Raises:
        SpecError: an illegal spec.
        TargetUnavailableError: the target cannot run here (says what is missing).
        CompilationError: the build failed (carries the compiler's log).
    """
    found = get(target)
    memo = (target, spec, _environment(target, found))
    kernel = _compiled.get(memo)
    if kernel is not None:
        return kernel
    problem = found.unavailable()
    if problem and target != "c":
        raise TargetUnavailableError(problem)
    return _compiled.setdefault(memo, found.load(spec))


@contextlib.contextmanager
def environment_read_once() -> Iterator[None]:
    """Within it, `compile` (in this thread) reads each target's environment variables once, at
    its first call, and keeps those values to the end of the outermost such block.

    An optimizer's check phase binds each of its parameters: reading 4 variables took 2.3 of the
    2.7 us of each `compile` call that found its kernel, for 100,000 parameters of one spec. A
    variable changed within a block is seen by the first `compile` after it (the next step).
    """
    if getattr(_read_once, "values", None) is not None:
        yield
        return
    _read_once.values = {}
    try:
        yield
    finally:
        _read_once.values = None


def _environment(name: str, found: Target) -> tuple:
    """The values of `found`'s environment variables, as `compile` keys its memo on them."""
    values = getattr(_read_once, "values", None)
    if values is None:
        return tuple(os.environ.get(variable) for variable in found.environment)
    read = values.get(name)
    if read is None:
        read = values[name] = tuple(os.environ.get(variable) for variable in found.environment)
    return read
