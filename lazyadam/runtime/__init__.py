"""The optimizer users import: parameters, sparse gradients, `LazyAdam`, schedules, checkpoints.

    from lazyadam import LazyAdam, Parameter, RowTensor
    opt = LazyAdam([table, dense], learning_rate=1e-3)
    opt((RowTensor(indices, values, table.shape), dense_grad))
"""

from .optimizer import LazyAdam
from .parameter import Parameter, RowTensor

__all__ = ["LazyAdam", "Parameter", "RowTensor"]
