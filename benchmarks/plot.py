"""Draws benchmark runs: each workload's median step time, lazyadam against torch's optimizers, per
thread count.

    .venv/bin/pip install -e '.[plot]'        # matplotlib, kept out of the core and test installs
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_torch.py --json runs/torch_t1.json
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_torch.py --json runs/torch_t2.json
    ... (bench_cpu.py --skip-large --json ... likewise)
    .venv/bin/python benchmarks/plot.py runs/*.json -o docs/speed.png

Each JSON file is one run of a benchmark (`record.py`). One panel per workload; in it, a group of
bars per thread count (OMP_NUM_THREADS of that run), a bar per contender, lazyadam's first, and
above each torch bar how many times lazyadam's time it took. Yardsticks (loops that only move the
bytes) are left out. The title names the machine and the load average the runs saw, since the
figures of a shared machine mean little without it.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

COLOURS = {"lazyadam": "#1f77b4", "torch": ("#d62728", "#ff9896", "#8c564b")}


def load(paths: list[Path]) -> list[dict]:
    """The runs, each checked for the fields the plot reads.

    Raises:
        ValueError: a file that is not a benchmark run, naming it.
    """
    runs = []
    for path in paths:
        run = json.loads(path.read_text())
        missing = {"benchmark", "threads", "machine", "workloads"} - set(run)
        if missing:
            raise ValueError(f"{path} is not a benchmark run written with --json (no "
                             f"{', '.join(sorted(missing))})")
        runs.append(run)
    return runs


def steps(runs: list[dict]) -> dict[str, dict[int, dict[str, float]]]:
    """workload -> threads -> contender -> median ms, lazyadam's contender first, then torch's."""
    table: dict[str, dict[int, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for run in runs:
        for workload in run["workloads"]:
            shown = [c for c in workload["contenders"] if c["kind"] in ("lazyadam", "torch")]
            for contender in sorted(shown, key=lambda c: c["kind"] != "lazyadam"):
                table[workload["name"]][run["threads"]][contender["label"]] = (
                    contender["median_ms"])
    return table


def draw(runs: list[dict], out: Path) -> None:
    """Draws `runs` into the image file `out` (its suffix picks the format)."""
    import matplotlib  # the `plot` extra: imported only to draw
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    table = steps(runs)
    fig, axes = plt.subplots(1, len(table), figsize=(4.2 * len(table), 4.4), squeeze=False)
    for ax, (workload, by_threads) in zip(axes[0], table.items()):
        threads = sorted(by_threads)
        order = list(dict.fromkeys(label for t in threads for label in by_threads[t]))
        ours = order[0]
        width = 0.8 / len(order)
        for k, label in enumerate(order):
            colour = COLOURS["lazyadam"] if k == 0 else COLOURS["torch"][(k - 1) % 3]
            xs = [x + (k - (len(order) - 1) / 2) * width for x in range(len(threads))]
            heights = [by_threads[t].get(label, float("nan")) for t in threads]
            bars = ax.bar(xs, heights, width * 0.9, label=label, color=colour)
            for bar, t in zip(bars, threads):
                if k and label in by_threads[t] and ours in by_threads[t]:
                    ax.annotate(f"{by_threads[t][label] / by_threads[t][ours]:.1f}x",
                                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                                ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(threads)), [f"{t} thread{'s' * (t != 1)}" for t in threads])
        ax.set_ylabel("median step time, ms (lower is better)")
        ax.set_title(workload, fontsize=9, wrap=True)
        ax.margins(y=0.1)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=1, frameon=False)
    machines = sorted({f"{r['machine']['cpu']}, {r['machine']['cpus']} CPUs" for r in runs})
    loads = [load for r in runs for load in r["machine"]["load_average"]]
    dates = sorted(r["date"][:10] for r in runs)
    fig.suptitle(f"{'; '.join(machines)}, {dates[0]}\nshared with other jobs: load average "
                 f"{min(loads):.1f}-{max(loads):.1f} during the runs", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="JSON files written with --json")
    parser.add_argument("-o", "--out", type=Path, default=Path("docs/speed.png"))
    args = parser.parse_args()
    draw(load(args.runs), args.out)


if __name__ == "__main__":
    main()
