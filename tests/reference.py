"""A plain numpy reference for one LazyAdam step, mirroring docs/semantics.md line by line.

Everything is computed in float64 on copies, so the kernels (float32 or float64) can be checked
against it with tolerances chosen by their dtype. Half-precision storage (bfloat16, float16
parameters; float32 or bfloat16 state) is modelled exactly where it rounds: every stored value is
rounded as the kernels round it, first to float32 (their arithmetic), then to its storage dtype, to
nearest even through ml_dtypes and numpy, or stochastically with the kernels' counter-based hash,
reimplemented here. It deliberately does not import `lazyadam`.
"""

import math

import ml_dtypes
import numpy as np

DECAYS = ("none", "l2", "decoupled")
EPS_MODES = ("mindspore", "pytorch")
HALF = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
ROUNDINGS = ("nearest", "stochastic")
#: The stream of each array in the hash of stochastic rounding, and which half of its 32 bits the
#: array takes (0: the high 16 bits, as they come; 1: the low 16, moved up).
STREAMS = {"var": (0, 0), "m": (0, 1), "v": (1, 0), "vmax": (1, 1)}
_MASK64 = (1 << 64) - 1


# --- stochastic rounding: the counter-based hash and the two roundings ----------------------------

def _mix64(x):
    """splitmix64's finalizer, on Python ints modulo 2**64."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _mix32(x):
    """lowbias32 on a uint32 array (numpy's uint32 products wrap modulo 2**32)."""
    x = (x ^ (x >> np.uint32(16))) * np.uint32(0x7FEB352D)
    x = (x ^ (x >> np.uint32(15))) * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def step_key(seed, step, stream):
    """The key of one stream of stochastic rounding in one step: hash(hash(hash(seed) ^ step) + stream)."""
    return _mix64((_mix64(_mix64(seed) ^ step) + stream) & _MASK64)


def random_bits(key, positions, half=0):
    """32 random bits per element position (an int array): one lowbias32 round over the low 32 bits
    of the position xor the key's, plus the high 32 bits of both (xored) times 0x9e3779b9; `half` 1
    moves the low 16 bits up (the second array of a stream)."""
    p = np.asarray(positions, dtype=np.int64).astype(np.uint64)
    low = (p & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    high = ((p >> np.uint64(32)).astype(np.uint32) ^ np.uint32(key >> 32)) * np.uint32(0x9E3779B9)
    bits = _mix32((low ^ np.uint32(key & 0xFFFFFFFF)) + high)
    return bits << np.uint32(16) if half else bits


def round_nearest(x, dtype):
    """x (float64) rounded to float32, then to nearest even in `dtype`; as float64."""
    x32 = np.asarray(x, dtype=np.float64).astype(np.float32)
    if dtype == "float32":
        return x32.astype(np.float64)
    with np.errstate(over="ignore"):  # 65520 and beyond are inf in float16, as in the kernels
        return x32.astype(HALF[dtype]).astype(np.float64)


def round_stochastic(x, dtype, bits):
    """x (float64) rounded to float32, then stochastically to `dtype` with 32 random bits per element:
    the top 16 (bfloat16) or 13 (float16) bits are added to the float32's bits below the last bit
    the storage keeps, which carry into it with probability (dropped part) / (spacing); the rest is
    cut off. Below 2^-14 (float16's subnormals, spaced 2^-24) x is first moved up by 2^-14 with one
    float32 addition, rounded there, and moved back. Inf and NaN stay as they are."""
    x32 = np.asarray(x, dtype=np.float64).astype(np.float32)
    u = x32.view(np.uint32)
    special = (u & np.uint32(0x7FFFFFFF)) >= np.uint32(0x7F800000)
    if dtype == "bfloat16":
        rounded = ((u + (bits >> np.uint32(16))) & np.uint32(0xFFFF0000)).view(np.float32)
    else:
        r = bits >> np.uint32(19)
        sign, magnitude = u & np.uint32(0x80000000), u & np.uint32(0x7FFFFFFF)
        normal = (magnitude + r) & np.uint32(0xFFFFE000)
        shifted = (magnitude.view(np.float32) + np.float32(2.0 ** -14)).view(np.uint32)
        moved = ((shifted + r) & np.uint32(0xFFFFE000)).view(np.float32) - np.float32(2.0 ** -14)
        small = magnitude < np.uint32(0x38800000)
        rounded = (sign | np.where(small, moved.view(np.uint32), normal)).view(np.float32)
    rounded = np.where(special, x32, rounded)
    with np.errstate(over="ignore"):  # 2^16 and beyond are inf in float16, as in the kernels
        return rounded.astype(HALF[dtype]).astype(np.float64)


def store(x, dtype, rounding="nearest", seed=0, step=0, array="var", positions=None):
    """What a kernel stores of the float64 result `x` in storage dtype `dtype` (float32, bfloat16 or
    float16): rounded as described above; `positions` are the elements' indices in their array."""
    if dtype == "float32" or rounding == "nearest":
        return round_nearest(x, dtype)
    if rounding != "stochastic":
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    stream, half = STREAMS[array]
    bits = random_bits(step_key(seed, step, stream), positions, half)
    return round_stochastic(x, dtype, bits)


def _effective_gradient(grad, w, *, weight_decay, decay, loss_scale, maximize):
    """docs/semantics.md "One step" 2: `g = g/loss_scale + wd*w`, maximize's `g = -g` between.

    The order (negate, then add the L2 term) is PyTorch's, so maximize ascends the loss but
    still decays the weights towards zero.
    """
    g = grad / loss_scale
    if maximize:
        g = -g
    if decay == "l2":
        g = g + weight_decay * w
    return g


def _check_indices(indices, rows, values_shape, row_shape):
    """docs/semantics.md "Bad input": 1-d integer indices in `[0, rows)`, values of shape
    `(len(indices),) + row`."""
    idx = np.asarray(indices)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"indices must be a 1-d integer array, got shape {idx.shape} "
                         f"and dtype {idx.dtype}")
    if values_shape != (len(idx),) + row_shape:
        raise ValueError(f"values have shape {values_shape}, expected {(len(idx),) + row_shape}")
    bad = np.flatnonzero((idx < 0) | (idx >= rows))
    if bad.size:
        raise ValueError(f"index {int(idx[bad[0]])} at position {int(bad[0])} is outside "
                         f"[0, {rows})")
    return idx.astype(np.int64)


def lazyadam_step(var, m, v, grad, *, lr, beta1, beta2, eps, beta1_power, beta2_power,
                  indices=None, weight_decay=0.0, decay="none", loss_scale=1.0,
                  nesterov=False, amsgrad=False, vmax=None, maximize=False, eps_mode="mindspore",
                  dtype=None, state_dtype=None, rounding="nearest", seed=0, step=0):
    """One kernel-level step, computed in float64.

    Args:
        var, m, v: the parameter and its moments (same shape).
        grad: dense, var's shape (indices None); sparse, shape `(len(indices),) + var.shape[1:]`.
        lr, beta1, beta2, eps: hyperparameters of this step.
        beta1_power, beta2_power: beta^t of THIS step (t=1 on the first step), as passed to a kernel.
        indices: None for a dense step; otherwise the rows of the lazy sparse step, in any order,
            duplicates allowed (their effective gradients are summed; in float64 the order of the
            kernels' float32 sums does not show at the tests' tolerances, and
            tests/test_summation_order.py checks that order bitwise).
        weight_decay: used only when decay is "l2" (added to the gradient) or "decoupled" (AdamW).
        decay: "none", "l2" or "decoupled".
        loss_scale: the gradient is divided by it.
        nesterov, amsgrad, maximize: the flags of docs/semantics.md.
        vmax: running max of v for amsgrad; None means zeros (the first step).
        eps_mode: "mindspore" (eps added to sqrt(v), correction folded into lr_t) or "pytorch"
            (eps added to the bias-corrected sqrt(v_hat), as torch.optim.Adam).
        dtype: None: the results are float64, unrounded. "bfloat16" or "float16": the parameter is
            stored in 16 bits, and what the step writes is rounded as a kernel stores it (`store`):
            var to `dtype`, m, v and vmax to `state_dtype` (float32 by default, or bfloat16); the
            update itself uses the unrounded values, as the kernels' float32 locals.
        rounding: "nearest" or "stochastic", for every write to 16 bits.
        seed, step: what stochastic rounding hashes, with each array and element position
            (`row * row_size + column` in a sparse step, the flat index in a dense one).

    Returns:
        (var, m, v, vmax) as new float64 arrays; vmax is None unless amsgrad. Inputs are not modified.

    Raises:
        ValueError: unknown decay or eps_mode, a gradient of the wrong shape, or an index outside
            `[0, var.shape[0])` (the message names the first one).
    """
    if decay not in DECAYS:
        raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")
    if eps_mode not in EPS_MODES:
        raise ValueError(f"eps_mode must be one of {EPS_MODES}, got {eps_mode!r}")
    var, m, v = (np.array(a, dtype=np.float64) for a in (var, m, v))
    grad = np.asarray(grad, dtype=np.float64)
    if amsgrad:
        vmax = np.zeros_like(var) if vmax is None else np.array(vmax, dtype=np.float64)
    else:
        vmax = None
    flags = dict(weight_decay=weight_decay, decay=decay, loss_scale=loss_scale, maximize=maximize)

    if indices is None:
        if grad.shape != var.shape:
            raise ValueError(f"dense gradient has shape {grad.shape}, parameter has {var.shape}")
        rows = ...
        # 2. dense: g = g/loss_scale + wd*w
        g = _effective_gradient(grad, var, **flags)
    else:
        idx = _check_indices(indices, var.shape[0], grad.shape, var.shape[1:])
        rows = np.unique(idx)
        # 2. sparse: values[i] = values[i]/loss_scale + wd*w[indices[i]] per occurrence ...
        g_occurrence = _effective_gradient(grad, var[idx], **flags)
        # ... then duplicate indices are summed.
        g = np.zeros((len(rows),) + var.shape[1:])
        for i, position in enumerate(np.searchsorted(rows, idx)):
            g[position] += g_occurrence[i]

    # 4. Only the rows in indices (every element, dense) are read and written: "lazy".
    w, mm, vv = var[rows], m[rows], v[rows]
    if decay == "decoupled":
        w = w - lr * weight_decay * w                      # AdamW: w -= lr*wd*w, before the update
    mm = beta1 * mm + (1 - beta1) * g                      # m = beta1*m + (1-beta1)*g
    vv = beta2 * vv + (1 - beta2) * g * g                  # v = beta2*v + (1-beta2)*g*g
    v_denominator = vv
    if amsgrad:
        v_denominator = np.maximum(vmax[rows], vv)         # vmax = max(vmax, v), used for v
        vmax[rows] = v_denominator
    numerator = beta1 * mm + (1 - beta1) * g if nesterov else mm
    if eps_mode == "mindspore":
        # 3. lr_t = lr * sqrt(1 - beta2_power) / (1 - beta1_power); w = w - lr_t*m/(sqrt(v) + eps)
        lr_t = lr * math.sqrt(1 - beta2_power) / (1 - beta1_power)
        w = w - lr_t * numerator / (np.sqrt(v_denominator) + eps)
    else:
        # w -= lr/(1-beta1^t) * m / (sqrt(v)/sqrt(1-beta2^t) + eps)
        w = w - lr / (1 - beta1_power) * numerator / (
            np.sqrt(v_denominator) / math.sqrt(1 - beta2_power) + eps)
    if dtype is not None and dtype in HALF:
        positions = np.arange(var.size).reshape(var.shape)[rows]
        state = state_dtype or "float32"
        keep = dict(rounding=rounding, seed=seed, step=step, positions=positions)
        w = store(w, dtype, array="var", **keep)
        mm, vv = store(mm, state, array="m", **keep), store(vv, state, array="v", **keep)
        if amsgrad:
            vmax[rows] = store(vmax[rows], state, array="vmax", **keep)
    var[rows], m[rows], v[rows] = w, mm, vv
    return var, m, v, vmax


def run_steps(var, grads, *, steps, beta1, beta2, lr, **flags):
    """Apply `steps` steps from zero m and v (and vmax), as the optimizer would.

    Args:
        var: the initial parameter.
        grads: one gradient per step: a dense array, or an `(indices, values)` tuple for a
            sparse step.
        steps: the number of steps; must equal len(grads).
        beta1, beta2, lr: hyperparameters, fixed over the steps.
        **flags: the other keywords of `lazyadam_step` (eps is required).

    Returns:
        The final (var, m, v, vmax) in float64; vmax is None unless flags["amsgrad"].

    Raises:
        ValueError: steps differs from len(grads), or as `lazyadam_step`.
    """
    if steps != len(grads):
        raise ValueError(f"steps={steps} but {len(grads)} gradients were given")
    var = np.array(var, dtype=np.float64)
    m, v, vmax = np.zeros_like(var), np.zeros_like(var), None
    beta1_power = beta2_power = 1.0
    for t, grad in enumerate(grads, start=1):
        # 1. beta1_power *= beta1, beta2_power *= beta2: step t uses beta^t.
        beta1_power *= beta1
        beta2_power *= beta2
        indices, values = grad if isinstance(grad, tuple) else (None, grad)
        var, m, v, vmax = lazyadam_step(
            var, m, v, values, lr=lr, beta1=beta1, beta2=beta2, beta1_power=beta1_power,
            beta2_power=beta2_power, indices=indices, vmax=vmax, step=t, **flags)
    return var, m, v, vmax
