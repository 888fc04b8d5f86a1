"""The compiler: spec, IR, passes, printers and the Jinja environment. Pure functions, no I/O."""

from .pipeline import generate, optimize, stages
from .render import Source
from .spec import Spec, SpecError

__all__ = ["Spec", "SpecError", "Source", "generate", "optimize", "stages"]
