"""The public ops computed by their readable pure-PyTorch oracles.

Each function is the op of the same name with ``backend="reference"``: same arguments, same
validation, same output layout. The oracles favour obviousness over speed (dense frame
operators, one Python iteration per window) and compute in the dtype they are given, so tests
call them with float64 inputs for the ground truth. The fast paths never use them.
"""

from __future__ import annotations

from .back_project import back_project as _back_project
from .corrected_qkv import corrected_qkv as _corrected_qkv
from .windowed_attention import windowed_attention as _windowed_attention


def back_project(x, y, kind, scale, frame_dim=1):
    """:func:`zs_kernels.back_project` with ``backend="reference"``."""
    return _back_project(x, y, kind, scale, frame_dim, backend="reference")


def windowed_attention(q, k, v, **options):
    """:func:`zs_kernels.windowed_attention` with ``backend="reference"``."""
    return _windowed_attention(q, k, v, backend="reference", **options)


def corrected_qkv(h, key_qkv, weight, bias=None, **options):
    """:func:`zs_kernels.corrected_qkv` with ``backend="reference"``."""
    return _corrected_qkv(h, key_qkv, weight, bias, backend="reference", **options)
