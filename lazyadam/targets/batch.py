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
Batches are built `jobs` at a time (one per core by default), each under a lock of the cache, so
that processes building the same kernels at once (test workers) share the batches between them.

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

#: Kernels per compiler call at most, where each kernel is a file of its own: a C compiler's cost is
#: per file (at -O3, 0.33-0.44 CPU-seconds a kernel, all of it the optimizer's), so a larger call
#: saves little; 48 lets two cores share the work evenly and a cold run report often.
BATCH_SIZE = 48
#: The same where a batch is one translation unit (`Target.one_unit`): each call pays the
#: headers once (the CUDA emulation's 1.1 CPU-seconds, then 0.05 a kernel at -O0: 48 kernels
#: took 3.4 CPU-seconds, 200 took 11.2).
UNIT_BATCH_SIZE = 160


@dataclass(frozen=True)
class Job:
    """One kernel of a batch: its spec, generated source and cache key."""

    spec: Spec
    source: Source
    key: str

    def built(self) -> bool:
        return (cache.entry(self.key) / f"{self.source.symbol}.so").exists()


def build(specs: Sequence[Spec], target: Target, *, batch_size: int | None = None,
          jobs: int | None = None, report: Callable[[str], None] | None = None) -> list[Spec]:
    """Builds every spec of `specs` that the cache lacks, `batch_size` to a compiler call and
    `jobs` calls at a time, into the kernel cache.

    The batches are cut from `specs` as given (in even parts of at most `batch_size`), built or
    not, so that processes asking for the same specs at once cut the same batches: each batch is
    built under a lock of the cache (`cache.lock`), a process builds the batches no other is
    building, then waits for the others' and builds what any of them left unbuilt.

    Nothing is built with the cache disabled (`LAZYADAM_DISABLE_CACHE`): every load builds afresh.

    Args:
        specs: the kernels to build (duplicates and those already cached are skipped).
        target: the target to build them for (`targets.get(name)`).
        batch_size: kernels per compiler call at most (default `UNIT_BATCH_SIZE` for a target
            that compiles a batch as one unit, else `BATCH_SIZE`).
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
    unique: dict[str, Job] = {}
    for spec in dict.fromkeys(specs):
        source = generate(spec.validate(), target.name)
        key = target.cache_key(source)
        unique.setdefault(key, Job(spec, source, key))
    size = batch_size or (UNIT_BATCH_SIZE if target.one_unit else BATCH_SIZE)
    batches = [batch for batch in even_parts(list(unique.values()), size)
               if not all(job.built() for job in batch)]
    jobs = jobs or len(os.sched_getaffinity(0))

    def one(numbered: tuple[int, list[Job]], wait: bool) -> list[Spec] | None:
        """Builds what the cache lacks of a batch, under its lock; None where another process
        holds the lock (and `wait` is False)."""
        number, batch = numbered
        name = cache.make_key({"batch": [job.key for job in batch]})
        with cache.lock(f"batch-{name}", wait=wait) as held:
            if not held:
                return None
            missing = [job for job in batch if not job.built()]
            if not missing:
                return []
            if report:
                report(f"building {len(missing)} {target.name} kernels (batch {number}/"
                       f"{len(batches)})")
            try:
                _build_batch(target, missing)
            except CompilationError as error:
                if report:
                    report(f"batch {number}/{len(batches)} failed ({error}); its kernels build "
                           "one by one when loaded")
                return [job.spec for job in missing]
            return []

    numbered = list(enumerate(batches, 1))
    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(batches) or 1))) as pool:
        first = list(pool.map(lambda item: one(item, wait=False), numbered))
        others = [item for item, failed in zip(numbered, first) if failed is None]
        rest = list(pool.map(lambda item: one(item, wait=True), others))
    return [spec for failed in first + rest if failed for spec in failed]


def even_parts(items: list, most: int) -> list[list]:
    """`items` in order, cut into as few parts of at most `most` items as hold them, all but the
    last of one size (331 by 160: 111, 111, 109), so that a few workers share them evenly."""
    size = -(-len(items) // -(-len(items) // most)) if items else most
    return [items[at:at + size] for at in range(0, len(items), size)]


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
