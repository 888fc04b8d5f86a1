"""How a C kernel chooses between its team and one thread (c_parallel.j2, docs/threads.md): the
choice and the probes driven with made-up step costs and clock readings, in a harness compiled
with a generated kernel's own source (no timing, so the test says the same on a busy machine)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from lazyadam import Spec, generate

#: Reads commands from stdin: `choose NOW` prints the mode (1 team, 0 one thread) and whether it is
#: a probe; `record MODE PROBE COST NOW` records a step's cost (picoseconds per element).
HARNESS = r"""
#include "SYMBOL.c"
#include <string.h>
int main(void)
{
    team_costs costs = {{0, 0}, 0, 0};
    char what[16];
    long long now, cost;
    int mode, probe;
    while (scanf("%15s", what) == 1) {
        if (!strcmp(what, "choose") && scanf("%lld", &now) == 1) {
            mode = team_choose(&costs, now, &probe);
            printf("%d %d\n", mode, probe);
        } else if (scanf("%d %d %lld %lld", &mode, &probe, &cost, &now) == 4) {
            team_record(&costs, mode, probe, cost, now);
        }
        fflush(stdout);
    }
    return 0;
}
"""

MS = 1_000_000  # ns


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    """`policy(commands)`: the harness's answers to the `choose` commands, as (mode, probe)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler (cc or gcc) on PATH")
    folder = tmp_path_factory.mktemp("team")
    source = generate(Spec(sparse=False))
    (folder / f"{source.symbol}.c").write_text(source.text)
    (folder / f"{source.symbol}.h").write_text(source.header)
    (folder / "harness.c").write_text(HARNESS.replace("SYMBOL", source.symbol))
    subprocess.run([compiler, "-std=c99", "-D_POSIX_C_SOURCE=200809L", "-fopenmp", "-Wall",
                    "-Werror", "-Wno-unused-function", "-I", str(folder), str(folder / "harness.c"),
                    "-o", str(folder / "harness"), "-lm"], check=True)

    def answer(commands: list[str]) -> list[tuple[int, int]]:
        out = subprocess.run([str(folder / "harness")], input="\n".join(commands), text=True,
                             capture_output=True, check=True).stdout
        return [tuple(map(int, line.split())) for line in out.splitlines()]
    return answer


def test_a_new_size_runs_on_the_team_then_probes_one_thread_at_once(policy):
    assert policy(["choose 0", "record 1 0 100 0", "choose 1"]) == [(1, 0), (0, 1)]


def test_the_cheaper_mode_wins_and_the_other_is_probed_after_50_ms_then_less_often(policy):
    start = ["choose 0", "record 1 0 100 0", "choose 1", "record 0 1 300 1"]
    assert policy(start + [f"choose {1 + 49 * MS}"]) == [(1, 0), (0, 1), (1, 0)]
    probe = policy(start + [f"choose {1 + 50 * MS}"])[-1]
    assert probe == (0, 1)  # the probe is due
    # The probe confirms the team: the next one waits twice as long, and so on up to 2 s.
    confirmed = start + [f"choose {1 + 50 * MS}", f"record 0 1 300 {1 + 50 * MS}"]
    assert policy(confirmed + [f"choose {1 + 149 * MS}"])[-1] == (1, 0)
    assert policy(confirmed + [f"choose {1 + 150 * MS}"])[-1] == (0, 1)
    now, commands = 1 + 50 * MS, list(confirmed)
    for _ in range(8):  # 100, 200, ..., then capped at 2000 ms
        now += 2000 * MS
        commands += [f"record 0 1 300 {now}"]
    assert policy(commands + [f"choose {now + 1999 * MS}", f"choose {now + 2000 * MS}"])[-2:] == [
        (1, 0), (0, 1)]


def test_a_team_that_the_machine_stops_running_loses_within_a_step(policy):
    """A busy neighbour: one collapsed team step (20x its cost) moves the team's mean above one
    thread's, and the next step runs on one thread, with no probe."""
    start = ["choose 0", "record 1 0 100 0", "choose 1", "record 0 1 300 1"]
    answers = policy(start + ["record 1 0 2000 2", "choose 3"])
    assert answers[-1] == (0, 0)


def test_a_probe_that_finds_the_team_cheap_again_brings_it_back(policy):
    """The neighbour has gone: the team's probe replaces its old mean, and it wins at once; the
    next probe (of one thread) is due 50 ms on."""
    busy = ["choose 0", "record 1 0 100 0", "choose 1", "record 0 1 300 1", "record 1 0 2000 2"]
    later = 1 + 60 * MS
    answers = policy(busy + [f"choose {later}", f"record 1 1 90 {later}", f"choose {later + 1}",
                             f"choose {later + 50 * MS}"])
    assert answers[-3:] == [(1, 1), (1, 0), (0, 1)]
