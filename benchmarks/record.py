"""What a benchmark writes with `--json PATH`: its medians per workload, the threads and the machine.

    {"benchmark": "bench_torch.py", "argv": [...], "date": "2026-12-07T07:10:00+00:00",
     "threads": 2, "torch_threads": 2,
     "machine": {"cpu": "AMD EPYC ...", "cpus": 2, "load_average": [start, end], ...},
     "workloads": [{"name": "...", "contenders": [{"label": "lazyadam", "kind": "lazyadam",
                                                   "median_ms": 2.73}, ...]}]}

A contender's kind is "lazyadam", "torch" (one of torch's optimizers, or what a torch user would
write) or "yardstick" (a loop that only moves the bytes). `benchmarks/plot.py` draws these files.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

KINDS = ("lazyadam", "torch", "yardstick")


@dataclasses.dataclass(frozen=True)
class Contender:
    label: str
    kind: str
    median_ms: float

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"contender kind {self.kind!r} is not one of {', '.join(KINDS)}")


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    contenders: tuple[Contender, ...]


def cpu_model() -> str:
    """The CPU as `lscpu` names it (else what `platform` knows)."""
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    except OSError:
        lines = []
    return next((line.split(":", 1)[1].strip() for line in lines
                 if line.startswith("Model name")), platform.processor() or platform.machine())


def kernel_threads() -> int:
    """The OpenMP threads the kernels run on: OMP_NUM_THREADS, else one per CPU."""
    given = os.environ.get("OMP_NUM_THREADS", "").split(",")[0]
    return int(given) if given.isdigit() and int(given) > 0 else os.cpu_count() or 1


class Recorder:
    """Notes the load average when made; `write` saves the run with the load average at its end."""

    def __init__(self, benchmark: str):
        self.benchmark = benchmark
        self.load_at_start = os.getloadavg()[0]
        self.workloads: list[Workload] = []

    def add(self, name: str, medians_s: dict[str, float], kinds: dict[str, str]) -> None:
        """Adds a workload from its contenders' medians in seconds, each of the kind `kinds`
        gives its label (contenders left out of `kinds` are not recorded)."""
        self.workloads.append(Workload(name, tuple(
            Contender(label, kinds[label], seconds * 1e3)
            for label, seconds in medians_s.items() if label in kinds)))

    def write(self, path: Path) -> None:
        run = {
            "benchmark": self.benchmark,
            "argv": sys.argv[1:],
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "threads": kernel_threads(),
            "torch_threads": torch.get_num_threads(),
            "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(),
                        "load_average": [self.load_at_start, os.getloadavg()[0]],
                        "python": platform.python_version(), "torch": torch.__version__,
                        "numpy": np.__version__},
            "workloads": [dataclasses.asdict(w) for w in self.workloads],
        }
        Path(path).write_text(json.dumps(run, indent=1) + "\n")
        print(f"wrote {path}")
