"""Generate, compile and run one LazyAdam kernel: the known sparse step of docs/semantics.md.

    python examples/quickstart.py
"""

import time

import numpy as np

import lazyadam
from lazyadam import HParams, Spec


def main() -> None:
    spec = Spec(sparse=True, nesterov=False, dtype="float32", index_dtype="int64")
    start = time.perf_counter()
    kernel = lazyadam.compile(spec)  # generated, compiled by the C compiler, cached on disk
    print(f"kernel {kernel.source.symbol} ready in {1e3 * (time.perf_counter() - start):.1f} ms "
          f"({kernel.path})")

    var, m, v = (np.ones((3, 1, 2), np.float32) for _ in range(3))
    indices = np.array([0, 1])
    values = np.full((2, 1, 2), 0.1, np.float32)
    hp = HParams(lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, loss_scale=1.0,
                 beta1_power=0.9, beta2_power=0.999)
    kernel(var, m, v, (indices, values), hp)
    print("var rows 0-1:", var[:2].ravel(), "(expected 0.9997121)")
    print("m rows 0-1:  ", m[:2].ravel(), "(expected 0.91)")
    print("v rows 0-1:  ", v[:2].ravel(), "(expected 0.99901)")
    print("row 2 untouched:", var[2].ravel())
    np.testing.assert_allclose(var[:2], 0.9997121, rtol=1e-7)


if __name__ == "__main__":
    main()
