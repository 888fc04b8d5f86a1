"""The optimizer's bookkeeping in plain numpy, over `reference.lazyadam_step` (docs/semantics.md
"One step").

Step k (from 0) uses `lr_at(k, i)` and `wd_at(k, i)` for parameter i; the beta powers are running
products multiplied before the step; gradient centralization subtracts the mean over every axis but
the first of a dense gradient of rank >= 2. Deliberately does not import `lazyadam`.
"""

import numpy as np

from reference import lazyadam_step


def centralized(grad):
    """`g - mean(g over every axis but the first)` for rank >= 2, in float64."""
    grad = np.asarray(grad, dtype=np.float64)
    if grad.ndim < 2:
        return grad
    return grad - grad.mean(axis=tuple(range(1, grad.ndim)), keepdims=True)


#: Parameter number i rounds stochastically with the optimizer's seed plus i times this constant.
SEED_STRIDE = 0x9E3779B97F4A7C15


def simulate(initial, steps, *, lr_at, wd_at=lambda k, i: 0.0, decay="l2", beta1=0.9,
             beta2=0.999, eps=1e-8, centralize=(), amsgrad=False, seed=0, **flags):
    """Runs the optimizer's steps on float64 copies.

    Args:
        initial: the parameters' initial values.
        steps: per step, one gradient per parameter: an array, or `(indices, values)`.
        lr_at, wd_at: `(k, i) -> value` for step k and parameter i; wd 0 means no decay.
        decay: the decay mode of decayed parameters, "l2" or "decoupled".
        centralize: indices of parameters whose dense gradients are centralized.
        amsgrad and **flags: as `lazyadam_step` (loss_scale, nesterov, maximize, eps_mode, and
            the storage of half-precision parameters: dtype, state_dtype, rounding).
        seed: the optimizer's seed; parameter i rounds with `seed + i * SEED_STRIDE`, step k + 1.

    Returns:
        `(params, m, v, vmax, beta1_power, beta2_power)`; lists of float64 arrays and floats.
    """
    params = [np.array(p, dtype=np.float64) for p in initial]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    vmax = [np.zeros_like(p) for p in params] if amsgrad else [None] * len(params)
    beta1_power = beta2_power = 1.0
    for k, grads in enumerate(steps):
        beta1_power *= beta1
        beta2_power *= beta2
        for i, grad in enumerate(grads):
            indices, values = grad if isinstance(grad, tuple) else (None, grad)
            if indices is None and i in centralize:
                values = centralized(values)
            wd = wd_at(k, i)
            params[i], m[i], v[i], new_vmax = lazyadam_step(
                params[i], m[i], v[i], values, indices=indices, lr=lr_at(k, i), beta1=beta1,
                beta2=beta2, eps=eps, beta1_power=beta1_power, beta2_power=beta2_power,
                weight_decay=wd, decay=decay if wd else "none", amsgrad=amsgrad, vmax=vmax[i],
                seed=(seed + i * SEED_STRIDE) % 2**64, step=k + 1, **flags)
            if amsgrad:
                vmax[i] = new_vmax
    return params, m, v, vmax, beta1_power, beta2_power
