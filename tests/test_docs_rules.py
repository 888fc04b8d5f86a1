"""docs/rules.md's example runs as written: each Python block, in a fresh interpreter (its
asserts check the numbers of the rule it defines)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from lazyadam.targets import c

DOC = Path(__file__).parents[1] / "docs" / "rules.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def test_the_doc_has_an_example():
    assert BLOCKS


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.splitlines()[0])
def test_each_python_block_runs(block):
    if c.unavailable():
        pytest.skip(c.unavailable())
    proc = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
