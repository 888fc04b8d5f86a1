"""Array interop: every place that looks into an array's library (numpy, PyTorch, CuPy, pycuda).

    arrays   any array read and made in its own library: dtype, device, host copies, zeros, scratch
    device   device arrays through `__cuda_array_interface__` (PyTorch's attributes where cheaper),
             CUDA streams and stream capture
"""
