"""The optimizers users import: parameters, sparse gradients, `LazyAdam` and the MindSpore-style
classes of the other rules, schedules, checkpoints. (`lazyadam.optimizer(rule)`, the class of any
rule, is `classes.optimizer`: `lazyadam.runtime.optimizer` is the module of their base class.)

    from lazyadam import LazyAdam, Parameter, RowTensor
    opt = LazyAdam([table, dense], learning_rate=1e-3)
    opt((RowTensor(indices, values, table.shape), dense_grad))
"""

from .classes import Adagrad, Lion, Momentum, PartialRowWiseAdam, RowWiseAdagrad
from .lazyadam import LazyAdam
from .optimizer import Optimizer
from .parameter import Parameter, RowTensor

__all__ = ["Adagrad", "LazyAdam", "Lion", "Momentum", "Optimizer", "Parameter",
           "PartialRowWiseAdam", "RowTensor", "RowWiseAdagrad"]
