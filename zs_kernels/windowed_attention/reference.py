"""Readable oracle of the windowed attention: one Python iteration per window (SPEC §5).

Computes in the dtype it is given, so tests call it with float64 inputs for the ground truth.
Arguments are the public op's, validated and normalised by it (:func:`zs_kernels.windowed_attention`).
"""

from __future__ import annotations

import torch

from .. import frames


def _attend(q, k, v, softmax_scale, rel_k, rel_v):
    """Softmax attention over one window, ``[N, H, w, D]`` each, with optional relative bias."""
    length = q.shape[2]
    scores = q @ k.transpose(-1, -2)
    if rel_k is not None:
        bias = rel_k[frames.relative_positions(length, rel_k.shape[0])]  # [w, w, D]
        scores = scores + torch.einsum("nhid,ijd->nhij", q, bias)
    probabilities = torch.softmax(scores * softmax_scale, dim=-1)
    out = probabilities @ v
    if rel_v is not None:
        bias = rel_v[frames.relative_positions(length, rel_v.shape[0])]
        out = out + torch.einsum("nhij,ijd->nhid", probabilities, bias)
    return out


def _windowed(q, k, v, window, stride, weighting, softmax_scale, rel_k, rel_v):
    starts, weights = frames.fusion_weights(q.shape[2], window, stride, weighting)
    length = weights.shape[1]
    weights = weights.to(q.dtype)
    out = torch.zeros_like(q)
    for start, window_weights in zip(starts, weights):
        span = slice(start, start + length)
        attended = _attend(q[:, :, span], k[:, :, span], v[:, :, span], softmax_scale, rel_k, rel_v)
        out[:, :, span] += window_weights[:, None] * attended
    return out


def windowed_attention(q, k, v, window, stride, weighting, softmax_scale, rel_k, rel_v, corrected, blend):
    """Every window attended separately, fused with :func:`zs_kernels.frames.fusion_weights`;
    with ``corrected`` the blend ``o + blend·(ô − o)``. ``[N, H, F, D]`` in, same out."""
    out = _windowed(q, k, v, window, stride, weighting, softmax_scale, rel_k, rel_v)
    if corrected is None:
        return out
    out_hat = _windowed(*corrected, window, stride, weighting, softmax_scale, rel_k, rel_v)
    return out + blend * (out_hat - out)
