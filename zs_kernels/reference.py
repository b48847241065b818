"""Readable pure-PyTorch oracle for every public op.

These functions favour obviousness over speed: dense frame operators, one Python iteration per
window. They compute in the dtype they are given, so tests call them with float64 inputs to get
the ground truth. The fast paths never import this module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _validate, frames


def _mix(matrix: torch.Tensor, frames_first: torch.Tensor) -> torch.Tensor:
    """Apply a ``[rows, frames]`` matrix to the leading (frame) axis of a tensor."""
    return torch.tensordot(matrix, frames_first, dims=1)


def back_project(x: torch.Tensor, y: torch.Tensor, kind: str, scale: int, frame_dim: int = 1) -> torch.Tensor:
    """``(I - A⁺A) x + A⁺ y`` along ``frame_dim`` with the dense operator ``A`` of ``kind``.

    ``x`` has ``scale * t0`` frames along ``frame_dim``, ``y`` the same shape with ``t0`` frames.
    """
    scale, frame_dim = _validate.back_project_args(x, y, kind, scale, frame_dim)
    num_key_frames = y.shape[frame_dim]
    operator = frames.frame_operator(kind, num_key_frames, scale).to(x.dtype)
    inverse = frames.frame_operator_pinv(kind, num_key_frames, scale).to(x.dtype)
    x_frames = x.movedim(frame_dim, 0)
    y_frames = y.movedim(frame_dim, 0)
    corrected = x_frames - _mix(inverse, _mix(operator, x_frames)) + _mix(inverse, y_frames)
    return corrected.movedim(0, frame_dim)


def _attend(q, k, v, scale, rel_k, rel_v):
    """Softmax attention over one window, ``[N, H, w, D]`` each, with optional relative bias."""
    length = q.shape[2]
    scores = q @ k.transpose(-1, -2)
    if rel_k is not None:
        bias = rel_k[frames.relative_positions(length, rel_k.shape[0])]  # [w, w, D]
        scores = scores + torch.einsum("nhid,ijd->nhij", q, bias)
    probabilities = torch.softmax(scores * scale, dim=-1)
    out = probabilities @ v
    if rel_v is not None:
        bias = rel_v[frames.relative_positions(length, rel_v.shape[0])]
        out = out + torch.einsum("nhij,ijd->nhid", probabilities, bias)
    return out


def _windowed(q, k, v, window, stride, weighting, scale, rel_k, rel_v):
    starts, weights = frames.fusion_weights(q.shape[2], window, stride, weighting)
    length = weights.shape[1]
    weights = weights.to(q.dtype)
    out = torch.zeros_like(q)
    for start, window_weights in zip(starts, weights):
        span = slice(start, start + length)
        attended = _attend(q[:, :, span], k[:, :, span], v[:, :, span], scale, rel_k, rel_v)
        out[:, :, span] += window_weights[:, None] * attended
    return out


def windowed_attention(
    q, k, v, *, window, stride, weighting="pyramid", scale=None, rel_k=None, rel_v=None, corrected=None, blend=None
):
    """Overlapping-window temporal attention with FreeNoise fusion (SPEC §5). See
    :func:`zs_kernels.windowed_attention` for the contract."""
    window, stride, scale, blend = _validate.windowed_attention_args(
        q, k, v, window, stride, weighting, scale, rel_k, rel_v, corrected, blend
    )
    out = _windowed(q, k, v, window, stride, weighting, scale, rel_k, rel_v)
    if corrected is None:
        return out
    out_hat = _windowed(*corrected, window, stride, weighting, scale, rel_k, rel_v)
    return out + blend * (out_hat - out)


def corrected_qkv(h, key_qkv, weight, bias=None, *, scale, kv_kind):
    """Projections of ``h`` and their back-projections onto the key branch's (SPEC §4).

    Returns ``(qkv, qkv_hat)``, each ``[B, t, L, 3*C_out]``: Q corrected with ``sample``, K and
    V with ``kv_kind``. See :func:`zs_kernels.corrected_qkv`.
    """
    scale = _validate.corrected_qkv_args(h, key_qkv, weight, bias, scale, kv_kind)
    qkv = F.linear(h, weight, bias)
    c_out = weight.shape[0] // 3
    q_hat = back_project(qkv[..., :c_out], key_qkv[..., :c_out], "sample", scale, frame_dim=1)
    kv_hat = back_project(qkv[..., c_out:], key_qkv[..., c_out:], kv_kind, scale, frame_dim=1)
    return qkv, torch.cat([q_hat, kv_hat], dim=-1)
