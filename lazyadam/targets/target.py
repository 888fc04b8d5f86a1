"""The interface every target implements, and the cached build flow, written once for all of them.

A target (`c.CTarget`, `cuda.CudaTarget`) says what is its own:

    name               "c" or "cuda": the language `generate` renders, and part of the cache key
    environment        the variables that choose its compiler and flags (`targets.compile` keys
                       its memo on their values)
    unavailable()      None when it can run here, else what is missing
    unavailable_error  what `load` raises when `unavailable()` names something missing
    key_parts()        everything about its toolchain (and machine) that can change a binary
    command(src, out)  the compiler command that builds `src` into the library `out`
    compiler_name()    how build errors name the compiler
    kernel(spec, source, path)   the loaded kernel object of a built library

and inherits the rest, the same for every target:

    [Spec] --generate--> [Source] --cache_key--> key --build (on a miss)--> .so --kernel--> kernel

`batch.build` builds many kernels of a target in one compiler call (`run_compiler` on several
files, or on one unit that includes them where `one_unit` says their sources may share one).
"""

from __future__ import annotations

import abc
import shlex
import subprocess
from pathlib import Path
from typing import Any, ClassVar

from ..codegen.pipeline import generate
from ..codegen.render import Source
from ..codegen.spec import SpecBase
from ..errors import CompilationError
from . import cache


class Target(abc.ABC):
    """One target: the hooks each defines (see the module) and the flow they share."""

    name: ClassVar[str]
    environment: ClassVar[tuple[str, ...]]
    unavailable_error: ClassVar[type[Exception]]
    #: Whether several kernels' sources can be one translation unit (whatever they define alike is
    #: guarded), so that a batch compiles one unit including them all (`batch.build`).
    one_unit: ClassVar[bool] = False

    @abc.abstractmethod
    def unavailable(self) -> str | None:
        """None when the target can run here; otherwise what is missing."""

    @abc.abstractmethod
    def key_parts(self) -> dict:
        """Everything about the toolchain and machine that can change a binary."""

    @abc.abstractmethod
    def command(self, src: Path, out: Path) -> list[str]:
        """The command that builds `src` into the library `out`.

        Raises:
            CompilerNotFoundError: no compiler.
        """

    @abc.abstractmethod
    def compiler_name(self) -> str:
        """How build errors name the compiler."""

    @abc.abstractmethod
    def kernel(self, spec: SpecBase, source: Source, path: Path) -> Any:
        """The loaded kernel of the library built from `source` at `path`."""

    def cache_key(self, source: Source) -> str:
        """The key of `source`'s library: the rendered source and header, and `key_parts()`."""
        return cache.make_key({"target": self.name, "source": source.text, "header": source.header,
                               **self.key_parts()})

    def build(self, source: Source, folder: Path) -> Path:
        """Compiles `source` into `folder/<symbol>.so`; returns that path. The source, its header
        and the compiler's log (`build.log`) are left beside it.

        Raises:
            CompilerNotFoundError: no compiler.
            CompilationError: the compiler failed; carries its log and the source path.
        """
        src = folder / source.filename
        src.write_text(source.text)
        (folder / f"{source.symbol}.h").write_text(source.header)
        return self.run_compiler([src], folder / f"{source.symbol}.so", source.symbol)

    def run_compiler(self, inputs: list[Path], out: Path, what: str) -> Path:
        """Compiles the source files `inputs` (written, in `out`'s folder) into the library `out`,
        in one call of `command`; leaves its log in `build.log` beside it. Returns `out`.

        Raises:
            CompilerNotFoundError: no compiler.
            CompilationError: the compiler failed to build `what`; carries its log.
        """
        folder = out.parent
        cmd = self.command(inputs[0], out)
        at = cmd.index(str(inputs[0]))
        cmd[at:at + 1] = [str(path) for path in inputs]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=folder)
        log = f"$ {shlex.join(cmd)}\n{proc.stdout}{proc.stderr}"
        (folder / "build.log").write_text(log)
        if proc.returncode != 0 or not out.exists():
            raise CompilationError(f"{self.compiler_name()} failed to build {what} "
                                   f"(exit {proc.returncode})", log=log,
                                   log_path=folder / "build.log", source_path=inputs[0])
        return out

    def load(self, spec: SpecBase) -> Any:
        """The compiled kernel for `spec`: from this process, the disk cache, or a fresh build.

        Raises:
            SpecError: an illegal spec.
            unavailable_error: the target cannot run here (the message says what is missing).
            CompilationError: the build failed.
        """
        source = generate(spec.validate(), self.name)
        problem = self.unavailable()
        if problem:
            raise self.unavailable_error(problem)
        return cache.load(self.cache_key(source), f"{source.symbol}.so",
                          lambda folder: self.build(source, folder),
                          lambda path: self.kernel(spec, source, path))
