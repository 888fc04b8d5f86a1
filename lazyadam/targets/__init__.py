"""Targets: one module per target behind one small interface.

Each target module has `name`, `unavailable() -> str | None` (what is missing, or None), `identity()`
(its compiler, for the cache key), `build(source, folder)` and `load(spec)` returning a callable
kernel (see `base`).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..codegen.spec import Spec
from ..errors import TargetUnavailableError

TARGETS = ("c", "cuda")


def get(name: str) -> ModuleType:
    """The target module called `name`.

    Raises:
        ValueError: an unknown target.
    """
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; choose from {', '.join(TARGETS)}")
    return importlib.import_module(f"{__name__}.{name}")


def compile(spec: Spec, target: str = "c"):  # noqa: A001  (the verb users expect)
    """The compiled, loaded kernel for `spec` on `target`, built once and cached.

    Raises:
        SpecError: an illegal spec.
        TargetUnavailableError: the target cannot run here (says what is missing).
        CompilationError: the build failed (carries the compiler's log).
    """
    module = get(target)
    problem = module.unavailable()
    if problem and target != "c":
        raise TargetUnavailableError(problem)
    return module.load(spec)
