"""The compiler: spec, IR, passes, printers and the Jinja environment. Pure functions, no I/O."""

from .ir import SUM_CHUNK
from .pipeline import generate, optimize, stages
from .render import Source
from .spec import SpecBase, SpecError, UnknownOptionError

__all__ = ["SUM_CHUNK", "SpecBase", "SpecError", "Source", "UnknownOptionError", "generate",
           "optimize", "stages"]
