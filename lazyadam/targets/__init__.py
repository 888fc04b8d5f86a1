"""Targets: one module per target behind one small interface.

Each target module has `name`, `unavailable() -> str | None` (what is missing, or None), `identity()`
(its compiler, for the cache key), `ENVIRONMENT` (the variables that choose its compiler and flags),
`build(source, folder)` and `load(spec)` returning a callable kernel (see `base`).

`compile` keeps what it returns: a spec is generated, built (or found in the disk cache) and loaded
once per process and toolchain environment, however many parameters use it.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from ..codegen.spec import Spec
from ..errors import TargetUnavailableError

TARGETS = ("c", "cuda")

#: The target modules imported so far (an import, even of a loaded module, takes microseconds).
_modules: dict[str, ModuleType] = {}
#: The kernels `compile` returned, by (target, spec, the target's `ENVIRONMENT` values).
#: Threads that miss together load through `cache.load`, which builds and loads a key once.
_compiled: dict[tuple, object] = {}


def get(name: str) -> ModuleType:
    """The target module called `name`.

    Raises:
        ValueError: an unknown target.
    """
    module = _modules.get(name)
    if module is None:
        if name not in TARGETS:
            raise ValueError(f"unknown target {name!r}; choose from {', '.join(TARGETS)}")
        module = _modules[name] = importlib.import_module(f"{__name__}.{name}")
    return module


def compile(spec: Spec, target: str = "c"):  # noqa: A001  (the verb users expect)
    """The compiled, loaded kernel for `spec` on `target`, built once and cached.

    A spec asked for again (the same target, and the same values of the target's `ENVIRONMENT`
    variables) gets the kernel it got before, without generating its source again: the first step
    over 100,000 parameters of one spec generates, builds and loads one kernel.

    Raises:
        SpecError: an illegal spec.
        TargetUnavailableError: the target cannot run here (says what is missing).
        CompilationError: the build failed (carries the compiler's log).
    """
    module = get(target)
    memo = (target, spec, tuple(os.environ.get(variable) for variable in module.ENVIRONMENT))
    kernel = _compiled.get(memo)
    if kernel is not None:
        return kernel
    problem = module.unavailable()
    if problem and target != "c":
        raise TargetUnavailableError(problem)
    return _compiled.setdefault(memo, module.load(spec))
