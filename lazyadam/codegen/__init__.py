"""The compiler: spec, IR, passes, printers and the Jinja environment. Pure functions, no I/O."""

from .ir import SUM_CHUNK
from .pipeline import generate, optimize, stages
from .render import Source
from .spec import Spec, SpecError

__all__ = ["SUM_CHUNK", "Spec", "SpecError", "Source", "generate", "optimize", "stages"]
