"""Noise shared across stages (SPEC §6, Eq. 23).

The noise is drawn once for the longest stage (``t_S = n^(S-1)·t0`` frames); stage ``s`` uses its
frames ``i·n^(S-s)``. The same holds for every per-step noise a stochastic sampler adds, passed to
the scheduler as ``variance_noise`` (diffusers' ``DDIMScheduler.step``).
"""

from __future__ import annotations

import inspect

import torch


def frame_stride(scale: int, num_stages: int, stage: int) -> int:
    """Stride ``n^(S-s)`` between the longest stage's frames that stage ``stage`` (1-based) uses."""
    return scale ** (num_stages - stage)


def stage_noise(noise: torch.Tensor, frame_dim: int, scale: int, num_stages: int, stage: int) -> torch.Tensor:
    """Frames ``i·n^(S-s)`` of the longest-stage ``noise`` along ``frame_dim`` (a strided view)."""
    index = [slice(None)] * noise.dim()
    index[frame_dim] = slice(None, None, frame_stride(scale, num_stages, stage))
    return noise[tuple(index)]


def accepts_variance_noise(scheduler) -> bool:
    """Whether ``scheduler.step`` takes the per-step noise as ``variance_noise=``."""
    return "variance_noise" in inspect.signature(scheduler.step).parameters
