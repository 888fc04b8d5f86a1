"""`lazyadam.torch`: `torch.optim.Optimizer`s over the generated kernels.

    import lazyadam.torch
    opt = lazyadam.torch.LazyAdam(model.parameters(), lr=1e-3)
    loss.backward(); opt.step(); opt.zero_grad()

Sparse gradients (`nn.Embedding(..., sparse=True)`, `nn.EmbeddingBag(..., sparse=True)`) get the
lazy update: only the rows the gradient touches change. Their COO indices and values go to the
kernel as torch made them: uncoalesced, duplicates included (the kernel sums a row's occurrences in
input order), never copied when contiguous. A COO gradient sparse in more dimensions
(`dense.to_sparse()`) is coalesced and read as rows. Dense gradients get the dense kernel. CPU
tensors are updated in place by the C kernels through numpy arrays over their memory; CUDA tensors
by the CUDA kernels on torch's current stream, the dense parameters that share a kernel in
multi-tensor launches (each tensor with its own hyperparameters).

The optimizers: `LazyAdam` (Adam, AdamW, SparseAdam), `SGD`, `Adagrad` (torch's arguments and
state), `RowWiseAdagrad`, `PartialRowWiseAdam`, `Lion`; and `optimizer(rule)`, the class of any
`Rule`. Each is a `RuleOptimizer` (`optimizer.py`: groups, checks, state, the step on the
runtime's `Engine`); `binding.py` binds a parameter's tensors to a `Slot`, `tensors.py` decides how
kernels see a tensor, `check.py` checks a step in full and `fast.py` confirms a step like the
last one, `groups.py` reads a group's options, `capture.py` holds the CUDA graph methods.
"""

from .adam import EPS_MODES, LazyAdam
from .family import SGD, Adagrad, Lion, PartialRowWiseAdam, RowWiseAdagrad
from .optimizer import RuleOptimizer
from .rule import optimizer

__all__ = ["LazyAdam", "SGD", "Adagrad", "RowWiseAdagrad", "PartialRowWiseAdam", "Lion",
           "RuleOptimizer", "optimizer", "EPS_MODES"]
