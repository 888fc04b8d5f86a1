"""A digest of every generated source: prints one sha256 over the text, header and cdef of every
spec of `product.ALL` on the C and CUDA targets, and of a static spec and a named symbol.

    python tests/golden/sources.py

A change that must keep the generated files byte for byte (a refactor of codegen) prints the same
digest before and after; quote both in its commit message. Not a golden: merges that change the
templates change it.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import product  # noqa: E402

from lazyadam import Spec  # noqa: E402
from lazyadam.codegen import generate  # noqa: E402

EXTRA = [(Spec(sparse=True, static={"beta1": 0.9, "eps": 1e-8}), None),
         (Spec(sparse=False, amsgrad=True), "my_adam_step")]


def sources_digest() -> str:
    h = hashlib.sha256()
    for spec, symbol in [(s, None) for s in product.ALL] + EXTRA:
        for target in ("c", "cuda"):
            source = generate(spec, target, symbol)
            for text in (source.symbol, source.text, source.header, source.cdef):
                h.update(text.encode() + b"\0")
    return h.hexdigest()


if __name__ == "__main__":
    print(sources_digest())
