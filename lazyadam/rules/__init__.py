"""The update rules that ship with lazyadam, one module each; importing this package registers them
(`lazyadam.codegen.rule.get`)."""

from .adam import ADAM

__all__ = ["ADAM"]
