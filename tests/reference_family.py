"""Plain numpy references for the family of lazy rules: SGD, Adagrad, rowwise Adagrad,
partial-rowwise Adam and Lion, each written from its definition (docs/semantics.md, "Other rules").

Like tests/reference.py (LazyAdam's), everything is computed in float64 on copies and nothing of
`lazyadam` is imported. Every rule shares the first half of a step:

- the effective gradient: `g = grad/loss_scale`, negated when maximizing; on a sparse step the
  occurrences of a row are summed (in float64 the kernels' fixed order does not show at the
  tests' tolerances), and only the rows that occur are read and written ("lazy");
- then the rule's own math on those rows (every row, dense), where L2 weight decay adds `wd*w` to
  the summed gradient once per row.

Each `*_step` takes the parameter, its state and a gradient (dense: var's shape; sparse: `indices`
and values of shape `(len(indices),) + var.shape[1:]`) and returns new float64 arrays; the inputs
are not modified. Per-row state has shape `(var.shape[0],)`: a row is `var[r]`, and its mean is over
its `var[r].size` elements.
"""

import math

import numpy as np

from reference import DECAYS, EPS_MODES, _check_indices


def touched(var, grad, indices, *, loss_scale, maximize):
    """The rows a step reads and writes and their summed gradient `g` (`grad/loss_scale`, negated
    when maximizing): every row of a dense step, the distinct rows of a sparse one, in increasing
    order."""
    var = np.asarray(var, dtype=np.float64)
    grad = np.asarray(grad, dtype=np.float64) / loss_scale
    if maximize:
        grad = -grad
    if indices is None:
        if grad.shape != var.shape:
            raise ValueError(f"dense gradient has shape {grad.shape}, parameter has {var.shape}")
        return np.arange(var.shape[0]), grad
    idx = _check_indices(indices, var.shape[0], grad.shape, var.shape[1:])
    rows = np.unique(idx)
    g = np.zeros((len(rows),) + var.shape[1:])
    np.add.at(g, np.searchsorted(rows, idx), grad)
    return rows, g


def _row_mean(x):
    """The mean over each row's elements (axis 0 is the row): shape `(len(x),)`."""
    return x.reshape(len(x), math.prod(x.shape[1:])).mean(axis=1)  # also with no rows


def _per_row(values, like):
    """Per-row `values` broadcast against the rows of `like`."""
    return values.reshape((len(values),) + (1,) * (like.ndim - 1))


def _copies(*arrays):
    return tuple(None if a is None else np.array(a, dtype=np.float64) for a in arrays)


def sgd_step(var, momentum_buffer, seen, grad, *, lr, momentum=0.0, dampening=0.0,
             weight_decay=0.0, nesterov=False, maximize=False, loss_scale=1.0, indices=None):
    """One step of torch.optim.SGD's rule, lazy on sparse gradients.

    `g += wd*w`; with momentum `b = mu*b + (1-dampening)*g`, or `b = g` on a row's first step
    (`seen[r]` False: the row has never been stepped); nesterov `g = g + mu*b`, else `g = b`;
    `w -= lr*g`. Rows a sparse step does not touch keep w, b and their `seen`: unlike torch's
    sparse momentum buffer, which decays and applies the buffer of every row it ever saw.

    Returns:
        (var, momentum_buffer, seen): seen is a new boolean array of shape `(var.shape[0],)`.
    """
    var, b = _copies(var, momentum_buffer)
    seen = np.array(seen, dtype=bool)
    rows, g = touched(var, grad, indices, loss_scale=loss_scale, maximize=maximize)
    w = var[rows]
    g = g + weight_decay * w
    if momentum != 0:
        first = _per_row(~seen[rows], g)
        buffer = np.where(first, g, momentum * b[rows] + (1 - dampening) * g)
        b[rows] = buffer
        g = g + momentum * buffer if nesterov else buffer
    var[rows] = w - lr * g
    seen[rows] = True
    return var, b, seen


def adagrad_step(var, state_sum, grad, *, lr, step, lr_decay=0.0, weight_decay=0.0, eps=1e-10,
                 maximize=False, loss_scale=1.0, indices=None):
    """One step of torch.optim.Adagrad's rule, lazy on sparse gradients (as torch's sparse
    Adagrad is): `clr = lr / (1 + (t-1)*lr_decay)` with t = `step` (1 on the first); `g += wd*w`;
    `s += g*g`; `w -= clr * g / (sqrt(s) + eps)`.

    Returns:
        (var, state_sum).
    """
    var, s = _copies(var, state_sum)
    rows, g = touched(var, grad, indices, loss_scale=loss_scale, maximize=maximize)
    w = var[rows]
    g = g + weight_decay * w
    clr = lr / (1 + (step - 1) * lr_decay)
    s[rows] = s[rows] + g * g
    var[rows] = w - clr * g / (np.sqrt(s[rows]) + eps)
    return var, s


def rowwise_adagrad_step(var, accumulator, grad, *, lr, eps=1e-8, weight_decay=0.0,
                         decay="none", maximize=False, loss_scale=1.0, indices=None):
    """One step of rowwise Adagrad (FBGEMM's EXACT_ROWWISE_ADAGRAD): per row
    `a += mean_r(g*g)`; `w -= lr * g / (sqrt(a) + eps)`. Weight decay as LazyAdam's: "l2" adds
    `wd*w` to g before the mean; "decoupled" also takes `lr*wd*w` (the old w) from the row.

    Returns:
        (var, accumulator): the accumulator has shape `(var.shape[0],)`.
    """
    if decay not in DECAYS:
        raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")
    var, a = _copies(var, accumulator)
    rows, g = touched(var, grad, indices, loss_scale=loss_scale, maximize=maximize)
    w = var[rows]
    if decay == "l2":
        g = g + weight_decay * w
    a[rows] = a[rows] + _row_mean(g * g)
    update = g / (np.sqrt(_per_row(a[rows], g)) + eps)
    if decay == "decoupled":
        update = update + weight_decay * w
    var[rows] = w - lr * update
    return var, a


def partial_rowwise_adam_step(var, m, v, grad, *, lr, beta1, beta2, eps, beta1_power,
                              beta2_power, weight_decay=0.0, decay="none", amsgrad=False,
                              vmax=None, nesterov=False, eps_mode="pytorch", maximize=False,
                              loss_scale=1.0, indices=None):
    """One step of partial-rowwise Adam (FBGEMM's PARTIAL_ROWWISE_ADAM): m per element, v (and
    vmax) per row, with LazyAdam's options.

    `m = b1*m + (1-b1)*g`; per row `v = b2*v + (1-b2)*mean_r(g*g)` (amsgrad: `vmax = max(vmax, v)`,
    used for v); the numerator is m, or `b1*m + (1-b1)*g` with nesterov. eps_mode "pytorch" (the
    default, FBGEMM's): `w -= lr * (m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps)`; "mindspore":
    `w -= lr*sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps)`. Decay "l2" adds `wd*w` to g,
    "decoupled" takes `lr*wd*w` from w first (AdamW). The beta powers are this step's beta^t.

    Returns:
        (var, m, v, vmax): v and vmax have shape `(var.shape[0],)`; vmax is None unless amsgrad.
    """
    if decay not in DECAYS:
        raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")
    if eps_mode not in EPS_MODES:
        raise ValueError(f"eps_mode must be one of {EPS_MODES}, got {eps_mode!r}")
    var, m, v = _copies(var, m, v)
    vmax = (np.zeros(len(var)) if vmax is None else np.array(vmax, dtype=np.float64)) \
        if amsgrad else None
    rows, g = touched(var, grad, indices, loss_scale=loss_scale, maximize=maximize)
    w = var[rows]
    if decay == "l2":
        g = g + weight_decay * w
    if decay == "decoupled":
        w = w - lr * weight_decay * w
    mm = beta1 * m[rows] + (1 - beta1) * g
    vv = beta2 * v[rows] + (1 - beta2) * _row_mean(g * g)
    m[rows], v[rows] = mm, vv
    if amsgrad:
        vv = np.maximum(vmax[rows], vv)
        vmax[rows] = vv
    numerator = beta1 * mm + (1 - beta1) * g if nesterov else mm
    vv = _per_row(vv, g)
    if eps_mode == "pytorch":
        w = w - lr * (numerator / (1 - beta1_power)) / (np.sqrt(vv / (1 - beta2_power)) + eps)
    else:
        lr_t = lr * math.sqrt(1 - beta2_power) / (1 - beta1_power)
        w = w - lr_t * numerator / (np.sqrt(vv) + eps)
    var[rows] = w
    return var, m, v, vmax


def lion_step(var, m, grad, *, lr, beta1=0.9, beta2=0.99, weight_decay=0.0, maximize=False,
              loss_scale=1.0, indices=None):
    """One step of Lion (its paper's algorithm; optax's `lion`): `c = b1*m + (1-b1)*g`;
    `w -= lr*(sign(c) + wd*w)`; `m = b2*m + (1-b2)*g`. sign(0) is 0 (a zero direction takes no
    step, as jnp.sign in optax), sign(NaN) NaN.

    Returns:
        (var, m).
    """
    var, m = _copies(var, m)
    rows, g = touched(var, grad, indices, loss_scale=loss_scale, maximize=maximize)
    w, mm = var[rows], m[rows]
    c = beta1 * mm + (1 - beta1) * g
    sign = np.where(c > 0, 1.0, np.where(c < 0, -1.0, c))
    var[rows] = w - lr * (sign + weight_decay * w)
    m[rows] = beta2 * mm + (1 - beta2) * g
    return var, m
