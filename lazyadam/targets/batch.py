"""Many kernels per compiler call: a batch of specs built into one library, its kernels then cached
one by one, so that a later `targets.compile(spec)` (or `Target.load`) finds each in the cache.

    [Spec...] --generate--> [Source...] --one compiler call per batch--> batch .so
              --linked into each kernel's cache entry--> what `Target.load` finds

A compiler call has a fixed cost (nvcc's, or the CUDA emulation's, is a second or two of headers
before any kernel), and a cold cache of hundreds of variants paid it once per kernel. A batch pays it
once: its sources are compiled as separate files of one call (the C kernels, whose helpers share
names), or as one translation unit that includes them all where the target says they may share one
(`Target.one_unit`). Each kernel's source is the one `generate` gives for a single build, compiled
with the same command and flags, and its entry holds that source, its header and the batch's log.
Batches are built `jobs` at a time (one per core by default).

The library of a batch is hard-linked into every entry (copied where a link cannot be made), so
the loader maps one library per batch, however many of its kernels are loaded.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..codegen.pipeline import generate
from ..codegen.render import Source
from ..codegen.spec import Spec
from ..errors import CompilationError
from . import cache
from .target import Target

#: Kernels per compiler call at most: large enough that the fixed cost of a call is small beside its
#: kernels, small enough that two cores share the work evenly and a cold run reports often.
BATCH_SIZE = 48


@dataclass(frozen=True)
class Job:
    """One kernel of a batch: its spec, generated source and cache key."""

    spec: Spec
    source: Source
    key: str


def build(specs: Sequence[Spec], target: Target, *, batch_size: int = BATCH_SIZE,
          jobs: int | None = None, report: Callable[[str], None] | None = None) -> list[Spec]:
    """Builds every spec of `specs` that the cache lacks, `batch_size` to a compiler call and
    `jobs` calls at a time, into the kernel cache.

    Nothing is built with the cache disabled (`LAZYADAM_DISABLE_CACHE`): every load builds afresh.

    Args:
        specs: the kernels to build (duplicates and those already cached are skipped).
        target: the target to build them for (`targets.get(name)`).
        batch_size: kernels per compiler call at most.
        jobs: compiler calls at a time (default: the CPUs this process may use).
        report: called with a line before each batch starts, e.g. "building 48 c kernels
            (batch 3/18)", and for each batch that failed.

    Returns:
        The specs of the batches that failed to build: each builds on its own when loaded, and its
        error then names it.

    Raises:
        SpecError: an illegal spec.
        unavailable_error of the target: it cannot build here.
    """
    if not cache.enabled():
        return []
    problem = target.unavailable()
    if problem:
        raise target.unavailable_error(problem)
    missing: dict[str, Job] = {}
    for spec in dict.fromkeys(specs):
        source = generate(spec.validate(), target.name)
        key = target.cache_key(source)
        if not (cache.entry(key) / f"{source.symbol}.so").exists():
            missing.setdefault(key, Job(spec, source, key))
    todo = list(missing.values())
    batches = [todo[at:at + batch_size] for at in range(0, len(todo), batch_size)]
    jobs = jobs or len(os.sched_getaffinity(0))

    def one(numbered: tuple[int, list[Job]]) -> list[Spec]:
        number, batch = numbered
        if report:
            report(f"building {len(batch)} {target.name} kernels (batch {number}/{len(batches)})")
        try:
            _build_batch(target, batch)
        except CompilationError as error:
            if report:
                report(f"batch {number}/{len(batches)} failed ({error}); its kernels build one "
                       "by one when loaded")
            return [job.spec for job in batch]
        return []

    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(batches) or 1))) as pool:
        return [spec for failed in pool.map(one, enumerate(batches, 1)) for spec in failed]


def _build_batch(target: Target, batch: list[Job]) -> None:
    """Compiles `batch` into one library and places it in the cache entry of each of its kernels.

    Raises:
        CompilationError: the compiler failed.
    """
    folder = cache.scratch()
    try:
        inputs = []
        for job in batch:
            (folder / job.source.filename).write_text(job.source.text)
            (folder / f"{job.source.symbol}.h").write_text(job.source.header)
            inputs.append(folder / job.source.filename)
        if target.one_unit:
            unit = folder / f"batch{inputs[0].suffix}"
            unit.write_text("".join(f'#include "{path.name}"\n' for path in inputs))
            inputs = [unit]
        library = target.run_compiler(inputs, folder / "batch.so",
                                      f"a batch of {len(batch)} kernels")
        log = (folder / "build.log").read_text()
        for job in batch:
            cache.fetch(job.key, f"{job.source.symbol}.so",
                        lambda entry, job=job: _place(library, job.source, log, entry))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _place(library: Path, source: Source, log: str, folder: Path) -> Path:
    """What a single build would leave in `folder` (the kernel's source, header and a log), with
    the batch's library as the kernel's; returns the library's path there."""
    (folder / source.filename).write_text(source.text)
    (folder / f"{source.symbol}.h").write_text(source.header)
    (folder / "build.log").write_text(log)
    out = folder / f"{source.symbol}.so"
    try:
        os.link(library, out)
    except OSError:  # another file system (a private build), or no hard links there
        shutil.copy2(library, out)
    return out
