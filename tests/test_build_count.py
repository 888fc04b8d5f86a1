"""`cache.builds()`: how many kernels this process compiled, told apart from kernels it loaded."""

from __future__ import annotations

import stat

import lazyadam
import lazyadam.targets
from lazyadam import Spec
from lazyadam.targets import cache

# A spec no other test builds (its static eps is unique to this file), so its key is fresh.
FRESH = Spec(sparse=False, static={"eps": 4.75e-7})


def test_builds_counts_compiles_and_not_loads(tmp_path, monkeypatch):
    log = tmp_path / "cc.log"
    wrapper = tmp_path / "cc"
    wrapper.write_text(f'#!/bin/sh\ncase "$*" in *-shared*) echo build >> {log};; esac\n'
                       'exec cc "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("LAZYADAM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LAZYADAM_CC", str(wrapper))

    def compiler_runs() -> int:
        return len(log.read_text().splitlines()) if log.exists() else 0

    def compile_as_a_new_process() -> None:
        monkeypatch.setattr(cache, "_loaded", {})
        monkeypatch.setattr(lazyadam.targets, "_compiled", {})
        lazyadam.compile(FRESH)

    before = cache.builds()
    compile_as_a_new_process()  # cold cache: compiled
    assert (cache.builds() - before, compiler_runs()) == (1, 1)
    compile_as_a_new_process()  # warm cache: loaded
    assert (cache.builds() - before, compiler_runs()) == (1, 1)
    lazyadam.compile(FRESH)  # this process's own kernel again
    assert cache.builds() - before == 1
    monkeypatch.setenv("LAZYADAM_DISABLE_CACHE", "1")
    compile_as_a_new_process()  # no cache: compiled afresh
    assert (cache.builds() - before, compiler_runs()) == (2, 2)
