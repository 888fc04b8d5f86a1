"""The C target as the tests' C products build them (tests/conftest.py, `c_product`): the
target's own compiler and flags, with -O0 for -O3 and every warning an error.

LazyAdam's product is 864 C kernels and the family's 1515. At -O3 they take 0.33-0.44
CPU-seconds each (the optimizer's time, not parsing: batching does not shrink it), about 900 in
all, more than the 6-minute budget of a cold run on two cores; at -O1 0.145, at -O0 0.05 (15
kernels in one call). The kernels compute the same numbers at every level (no -ffast-math, no
contraction: no optimizer may reassociate; LazyAdam's 864 at -O0 give the golden bits recorded
from -O3 builds, tests/test_bitwise.py), so the reference checks the generated code either way;
a sample of each product meeting every flag value (`product.SAMPLE`, `product.FAMILY_SAMPLE`)
is built at the target's own -O3, and `lazyadam.compile` loads those. -Wall -Wshadow -Werror:
the generated C compiles without a warning.
"""

from __future__ import annotations

from pathlib import Path

from lazyadam.targets import c

WARNINGS = ("-Wall", "-Wshadow", "-Werror")


def flags() -> list[str]:
    return ["-O0" if flag == "-O3" else flag for flag in c.flags()] + list(WARNINGS)


class QuickC(c.CTarget):
    """`c.CTarget` with `flags()`: its kernels have cache entries of their own."""

    def key_parts(self) -> dict:
        return {**super().key_parts(), "flags": flags()}

    def command(self, src: Path, out: Path) -> list[str]:
        own = super().command(src, out)  # the compiler, its flags, then the files
        return [*c.compiler(), *flags(), *own[len(c.compiler()) + len(c.flags()):]]


TARGET = QuickC()
