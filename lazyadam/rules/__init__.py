"""The update rules that ship with lazyadam, one module each; importing this package registers them
(`lazyadam.codegen.rule.get`)."""

from .adagrad import ADAGRAD
from .adam import ADAM
from .lion import LION
from .partial_rowwise_adam import PARTIAL_ROWWISE_ADAM
from .rowwise_adagrad import ROWWISE_ADAGRAD
from .sgd import SGD

__all__ = ["ADAGRAD", "ADAM", "LION", "PARTIAL_ROWWISE_ADAM", "ROWWISE_ADAGRAD", "SGD"]
