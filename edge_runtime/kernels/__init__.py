"""Numba kernels: plain ``@njit(cache=True)`` functions over arrays, one module per method.

The Python classes in ``edge_runtime.adapters`` validate input and own the state; the kernels here
only compute, writing into buffers they are given.
"""
