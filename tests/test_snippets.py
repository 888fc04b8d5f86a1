"""Every ```python block of README.md and docs/*.md runs on its own, as a reader would paste it.

Each block runs in a fresh Python process, in an empty folder, with nothing from the blocks before
it; a block whose first import is torch's runs in a child of tests/warm_python.py's server, which
imported torch before it forked (3 of a torch block's 3.5 CPU-seconds), in a namespace of its own.
A block whose fence says more than `python` names what it needs: `python gpu` needs an NVIDIA GPU
that torch and the CUDA target both see, and is skipped, saying so, where there is none.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([^`\s]*)\s*(.*)$")
#: What a fence may say a snippet needs, after `python`.
NEEDS = {"gpu"}


@dataclass(frozen=True)
class Snippet:
    page: Path
    line: int  # of the opening fence, from 1
    needs: frozenset[str]
    code: str

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def snippets(page: Path) -> list[Snippet]:
    """The ```python blocks of `page`.

    Raises:
        ValueError: a fence left open, or a python fence naming a need not in `NEEDS`.
    """
    found, lines = [], page.read_text().splitlines()
    k = 0
    while k < len(lines):
        opening = FENCE.match(lines[k])
        if not opening:
            k += 1
            continue
        indent, fence, language, rest = opening.groups()
        end = next((j for j in range(k + 1, len(lines))
                    if lines[j].strip() == fence), None)
        if end is None:
            raise ValueError(f"{page.name}:{k + 1}: code fence {fence} is never closed")
        if language == "python":
            needs = frozenset(rest.split())
            if needs - NEEDS:
                raise ValueError(f"{page.name}:{k + 1}: unknown need {sorted(needs - NEEDS)} "
                                 f"(known: {sorted(NEEDS)})")
            code = "\n".join(line[len(indent):] for line in lines[k + 1:end])
            found.append(Snippet(page, k + 1, needs, code + "\n"))
        k = end + 1
    return found


ALL = [snippet for page in PAGES for snippet in snippets(page)]
#: An import statement's module.
IMPORT = re.compile(r"^\s*(?:import|from)\s+([\w.]+)", re.M)


def torch_first(code: str) -> bool:
    """Whether `code` imports torch before anything else (and leaves the environment alone): a
    warm server's child, with torch imported, runs it as a fresh process would."""
    first = IMPORT.search(code)
    return bool(first) and first.group(1).split(".")[0] == "torch" and "environ" not in code


def test_the_front_page_and_every_doc_page_are_read():
    names = {page.name for page in PAGES}
    assert {"README.md", "pytorch.md", "mindspore.md", "kernels.md", "half-precision.md",
            "cuda.md", "cli.md", "performance.md", "semantics.md"} <= names
    assert sum(s.page.name == "README.md" for s in ALL) >= 2  # PyTorch and MindSpore-style


def test_an_open_fence_or_an_unknown_need_is_refused(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n```python\nx = 1\n")
    with pytest.raises(ValueError, match="page.md:2: code fence ``` is never closed"):
        snippets(page)
    page.write_text("```python tpu\nx = 1\n```\n")
    with pytest.raises(ValueError, match=r"page.md:1: unknown need \['tpu'\]"):
        snippets(page)
    page.write_text("```console\n$ ls\n```\n```python\nx = 1\n```\n```python gpu\ny = 2\n```\n")
    assert [(s.line, s.needs, s.code) for s in snippets(page)] == [
        (4, frozenset(), "x = 1\n"), (7, frozenset({"gpu"}), "y = 2\n")]


@pytest.mark.parametrize("snippet", [
    pytest.param(s, marks=pytest.mark.xdist_group("warm_python")) if torch_first(s.code) else s
    for s in ALL], ids=[s.name for s in ALL])
def test_snippet_runs_on_its_own(snippet, tmp_path, request):
    if "gpu" in snippet.needs:
        try:
            request.getfixturevalue("gpu")
        except pytest.skip.Exception as missing:
            pytest.skip(f"{snippet.name} needs a GPU: {missing.msg}")
    if re.search(r"^\s*import torch\b|^\s*import lazyadam\.torch", snippet.code, re.M):
        pytest.importorskip("torch", reason=f"{snippet.name} uses PyTorch, not installed here")
    if torch_first(snippet.code):
        proc = request.getfixturevalue("warm").run(code=snippet.code, cwd=tmp_path)
    else:
        proc = subprocess.run([sys.executable, "-c", snippet.code], cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{snippet.name} failed:\n{snippet.code}\n{proc.stderr}"


LINK = re.compile(r"\]\(([^)\s]+)\)")


def prose(page: Path, inline_code: bool = False) -> list[str]:
    """The lines of `page` outside code blocks; inline code taken out, or with `inline_code` kept
    without its backticks."""
    lines, fence = [], None
    for line in page.read_text().splitlines():
        opening = FENCE.match(line)
        if fence is None and opening:
            fence = opening.group(2)
        elif fence is not None:
            fence = None if line.strip() == fence else fence
        else:
            lines.append(re.sub(r"`([^`]*)`", r"\1" if inline_code else "", line))
    return lines


def anchors(page: Path) -> set[str]:
    """The anchors GitHub makes of a page's headings: lower case, punctuation dropped, - for
    spaces."""
    headings = [line.lstrip("#").strip().lower() for line in prose(page, inline_code=True)
                if line.startswith("#")]
    return {re.sub(r"[^\w\- ]", "", heading).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_link_to_a_file_of_the_repository_resolves(page):
    broken = []
    for target in LINK.findall("\n".join(prose(page))):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no {linked.relative_to(ROOT.resolve())}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.name}")
    assert not broken, f"{page.name}: {broken}"
