"""Triton kernels, one file per kernel family, each with its launcher.

Imported lazily by :mod:`zs_kernels.ops` so that CPU-only users never import triton.
"""
