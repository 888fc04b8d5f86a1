"""lazyadam: a compiler of lazy optimizer kernels (C/OpenMP and CUDA) from update rules, and the
optimizers over them (`LazyAdam` and the MindSpore-style classes here, `lazyadam.torch`)."""

__version__ = "0.1.0"

from .codegen import Source, SpecError, UnknownOptionError, generate, stages  # noqa: E402
from . import rules  # noqa: E402,F401  (registers the rules that ship)
from .rules.adam import Spec  # noqa: E402
from .errors import (CompilationError, CompilerNotFoundError, KernelError,  # noqa: E402
                     TargetUnavailableError, UntrustedCacheWarning)
from .targets import compile  # noqa: E402
from .targets.base import HParams  # noqa: E402
from .runtime import (Adagrad, LazyAdam, Lion, Momentum, Optimizer, Parameter,  # noqa: E402
                      PartialRowWiseAdam, RowTensor, RowWiseAdagrad)
from .runtime.classes import optimizer  # noqa: E402

__all__ = ["LazyAdam", "Parameter", "RowTensor", "Optimizer", "optimizer", "Momentum", "Adagrad",
           "RowWiseAdagrad", "PartialRowWiseAdam", "Lion",
           "Spec", "SpecError", "UnknownOptionError", "Source", "HParams", "generate", "stages",
           "compile",
           "CompilationError", "CompilerNotFoundError", "KernelError", "TargetUnavailableError",
           "UntrustedCacheWarning", "__version__"]
