"""The C target as the family's product builds it (tests/conftest.py, `family_kernels`): the
target's own compiler and flags, with -O1 for -O3 and every warning an error.

The family's full product is 1404 C kernels; at -O3 they take 0.33-0.44 CPU-seconds each (about
470-620 in all, most of the 6-minute budget of a cold run on two cores), at -O1 about 0.15. The
kernels compute the same numbers at both levels (no -ffast-math, no contraction: the optimizer may
not reassociate), so the reference checks the generated code either way; a sample of the product
meeting every flag value (`product.FAMILY_SAMPLE`) is built at the target's own -O3, which
`lazyadam.compile` then loads. -Wall -Wshadow -Werror: the generated C compiles without a warning.
"""

from __future__ import annotations

from pathlib import Path

from lazyadam.targets import c

WARNINGS = ("-Wall", "-Wshadow", "-Werror")


def flags() -> list[str]:
    return ["-O1" if flag == "-O3" else flag for flag in c.flags()] + list(WARNINGS)


class QuickC(c.CTarget):
    """`c.CTarget` with `flags()`: its kernels have cache entries of their own."""

    def key_parts(self) -> dict:
        return {**super().key_parts(), "flags": flags()}

    def command(self, src: Path, out: Path) -> list[str]:
        own = super().command(src, out)  # the compiler, its flags, then the files
        return [*c.compiler(), *flags(), *own[len(c.compiler()) + len(c.flags()):]]


TARGET = QuickC()
