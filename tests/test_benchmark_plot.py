"""benchmarks/: the JSON a run writes with --json (record.py), and plot.py that draws it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
pytest.importorskip("torch", reason="the benchmarks record torch's version and threads")
import plot  # noqa: E402
import record  # noqa: E402


def write_run(path: Path, threads: int, lazy_ms: float, torch_ms: float, monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", str(threads))
    recorder = record.Recorder("bench_x.py")
    recorder.add("sparse", {"yardstick": 0.5e-3, "SparseAdam": torch_ms / 1e3,
                            "lazyadam": lazy_ms / 1e3, "not recorded": 1.0},
                 {"lazyadam": "lazyadam", "SparseAdam": "torch", "yardstick": "yardstick"})
    recorder.write(path)


def test_a_run_records_its_medians_threads_and_machine(tmp_path, monkeypatch):
    write_run(tmp_path / "run.json", 1, 1.5, 12.0, monkeypatch)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["benchmark"] == "bench_x.py" and run["threads"] == 1
    assert run["machine"]["cpus"] >= 1 and len(run["machine"]["load_average"]) == 2
    (workload,) = run["workloads"]
    assert workload == {"name": "sparse", "contenders": [
        {"label": "yardstick", "kind": "yardstick", "median_ms": pytest.approx(0.5)},
        {"label": "SparseAdam", "kind": "torch", "median_ms": pytest.approx(12.0)},
        {"label": "lazyadam", "kind": "lazyadam", "median_ms": pytest.approx(1.5)}]}


def test_a_contender_of_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="'fast' is not one of lazyadam, torch, yardstick"):
        record.Contender("x", "fast", 1.0)


def test_the_plot_shows_lazyadam_first_against_torch_per_thread_count(tmp_path, monkeypatch):
    write_run(tmp_path / "t1.json", 1, 2.0, 16.0, monkeypatch)
    write_run(tmp_path / "t2.json", 2, 1.0, 10.0, monkeypatch)
    table = plot.steps(plot.load([tmp_path / "t1.json", tmp_path / "t2.json"]))
    assert {k: {t: list(m.items()) for t, m in v.items()} for k, v in table.items()} == {
        "sparse": {1: [("lazyadam", 2.0), ("SparseAdam", 16.0)],
                   2: [("lazyadam", 1.0), ("SparseAdam", 10.0)]}}


def test_the_plot_refuses_a_file_that_is_no_run(tmp_path):
    (tmp_path / "other.json").write_text('{"threads": 2}')
    with pytest.raises(ValueError, match="other.json is not a benchmark run .*benchmark, machine"):
        plot.load([tmp_path / "other.json"])


def test_the_plot_draws_an_image(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib", reason="plotting needs the plot extra (pip install "
                                             "-e '.[plot]'), not part of the test install")
    write_run(tmp_path / "t1.json", 1, 2.0, 16.0, monkeypatch)
    plot.draw(plot.load([tmp_path / "t1.json"]), tmp_path / "speed.png")
    assert (tmp_path / "speed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
