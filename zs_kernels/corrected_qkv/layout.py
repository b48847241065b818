"""Output layout of ``corrected_qkv``, shared by its backends and its custom op's fake implementation.

The model hands the op permuted views (temporal attention sees ``[B·L, t, C]`` viewed as
``[B, t, L, C]``). Outputs follow the input's memory order so no backend has to copy the input
into a canonical layout, and the fake implementation predicts every backend's strides exactly.
"""

from __future__ import annotations

import torch


def memory_order(tensor: torch.Tensor) -> list[int]:
    """Leading dims of ``tensor`` (all but the last) ordered outermost-first in memory.

    The last dim is the channel dim and always stays innermost; a contiguous tensor maps to
    ``[0, 1, …, ndim - 2]``, and size-1 dims (whose stride means nothing) go innermost.
    """
    leading = range(tensor.dim() - 1)
    if tensor.is_contiguous():
        return list(leading)
    return sorted(leading, key=lambda dim: (-tensor.stride(dim) if tensor.shape[dim] > 1 else 0, dim))


def in_memory_order(tensor: torch.Tensor) -> torch.Tensor:
    """A view of ``tensor`` with its leading dims permuted into memory order (no copy)."""
    order = memory_order(tensor)
    return tensor.permute(*order, tensor.dim() - 1)


def from_memory_order(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Undo :func:`in_memory_order` of ``like`` on ``tensor`` (a view, no copy)."""
    order = memory_order(like)
    inverse = [order.index(dim) for dim in range(len(order))]
    return tensor.permute(*inverse, tensor.dim() - 1)


def empty_projection(h: torch.Tensor, channels: int) -> torch.Tensor:
    """Uninitialised ``[*h.shape[:-1], channels]`` tensor laid out in ``h``'s memory order."""
    order = memory_order(h)
    shape = [h.shape[dim] for dim in order] + [channels]
    return from_memory_order(h.new_empty(shape), h)
