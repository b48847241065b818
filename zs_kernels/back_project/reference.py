"""Readable oracle of the back-projection: the dense operator and pseudo-inverse of SPEC §3.

Computes in the dtype it is given, so tests call it with float64 inputs for the ground truth.
Arguments are validated and normalised by the public op (:func:`zs_kernels.back_project`).
"""

from __future__ import annotations

import torch

from .. import frames


def _mix(matrix: torch.Tensor, frames_first: torch.Tensor) -> torch.Tensor:
    """Apply a ``[rows, frames]`` matrix to the leading (frame) axis of a tensor."""
    return torch.tensordot(matrix, frames_first, dims=1)


def back_project(x: torch.Tensor, y: torch.Tensor, kind: str, scale: int, frame_dim: int) -> torch.Tensor:
    """``(I - A⁺A) x + A⁺ y`` along ``frame_dim`` with the dense operator ``A`` of ``kind``.

    ``x`` has ``scale * t0`` frames along ``frame_dim``, ``y`` the same shape with ``t0`` frames.
    """
    num_key_frames = y.shape[frame_dim]
    operator = frames.frame_operator(kind, num_key_frames, scale).to(x.dtype)
    inverse = frames.frame_operator_pinv(kind, num_key_frames, scale).to(x.dtype)
    x_frames = x.movedim(frame_dim, 0)
    y_frames = y.movedim(frame_dim, 0)
    corrected = x_frames - _mix(inverse, _mix(operator, x_frames)) + _mix(inverse, y_frames)
    return corrected.movedim(0, frame_dim)
