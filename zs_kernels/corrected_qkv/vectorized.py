"""Corrected projections in PyTorch: one ``F.linear``, then the closed-form correction in place.

What CPU tensors get through the public op; plain PyTorch, so ``torch.compile`` traces it.
Arguments are validated and normalised by the public op (:func:`zs_kernels.corrected_qkv`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..back_project.vectorized import correct_in_place
from . import layout


def _frames_first(tensor: torch.Tensor, channels: slice) -> torch.Tensor:
    """``[B, t, L, C]`` → a ``[t, B, L, c]`` view of the given channels."""
    return tensor[..., channels].transpose(0, 1)


def corrected_qkv(h, key_qkv, weight, bias, scale: int, kv_kind: str):
    """One ``F.linear`` over ``h`` in its own memory order (no copy of ``h``), then the
    correction on the projections.

    Returns ``(qkv, qkv_hat)`` of logical shape ``[B, t, L, 3 C_out]`` laid out like ``h``
    (:func:`zs_kernels.corrected_qkv.layout.empty_projection`).
    """
    qkv = layout.from_memory_order(F.linear(layout.in_memory_order(h), weight, bias), h)
    qkv_hat = layout.empty_projection(h, weight.shape[0])
    qkv_hat.copy_(qkv)
    c_out = weight.shape[0] // 3
    for channels, kind in ((slice(0, c_out), "sample"), (slice(c_out, None), kv_kind)):
        out, x, y = (_frames_first(tensor, channels) for tensor in (qkv_hat, qkv, key_qkv))
        correct_in_place(out, x, y, kind, scale)
    return qkv, qkv_hat
