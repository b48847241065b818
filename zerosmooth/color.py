"""Colour-tone correction by AdaIN (SPEC §7; optional in the paper, on by default here)."""

from __future__ import annotations

import torch


def adain_to_key_frames(latents: torch.Tensor, key_latents: torch.Tensor, scale: int, frame_dim: int,
                        eps: float = 1e-6) -> torch.Tensor:
    """Match every frame ``j`` of ``latents`` to key frame ``⌊j/n⌋`` of ``key_latents``, per channel.

    ``x_j ← σ_k (x_j - μ_j) / σ_j + μ_k`` with mean and standard deviation over the spatial dims.

    Args:
        latents: long-branch latents with ``n·t0`` frames along ``frame_dim``; the last two dims are
            ``h, w`` (``[B, F, C, h, w]`` or ``[B, C, F, h, w]``).
        key_latents: the previous stage's latents, ``t0`` frames along ``frame_dim``.
        scale: the frame scale ``n``.
        frame_dim: the frame axis of both tensors.
        eps: added to ``σ_j`` so flat frames stay finite.

    Returns:
        A new tensor like ``latents``.
    """
    keys = key_latents.repeat_interleave(scale, dim=frame_dim)
    mean = latents.mean(dim=(-2, -1), keepdim=True)
    std = latents.std(dim=(-2, -1), keepdim=True)
    key_mean = keys.mean(dim=(-2, -1), keepdim=True)
    key_std = keys.std(dim=(-2, -1), keepdim=True)
    return (latents - mean) / (std + eps) * key_std + key_mean
