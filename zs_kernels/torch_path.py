"""Vectorised PyTorch implementations: what CPU tensors get through the public API.

No Python loop runs over windows or frames. Arguments are validated by the public ops
(:mod:`zs_kernels.ops`) before they reach these functions.

Windowed attention shares the overlapping windows' work instead of attending per window. For a
query frame ``f`` every window holding ``f`` applies a softmax over its own key range, so with
``E[f, j] = exp(s[f, j] - m[f])`` (``m`` the maximum over every key sharing a window with ``f``)
and ``Z_w[f] = Σ_{j ∈ w} E[f, j]`` (a difference of prefix sums), the fused output is

    o[f] = Σ_j E[f, j] · G[f, j] · v[j],   G[f, j] = Σ_{w ∋ f, j} c_w[f] / Z_w[f]

with ``c_w[f]`` the normalised fusion weight. One score matrix, one exponential and one
``P @ V`` per frame pair, whatever the overlap. A window whose scores all lie far below ``m[f]``
would underflow ``Z_w``; in that (rare, adversarial) case the chunk is recomputed with every
window's softmax stabilised by its own maximum.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from . import frames, layout

# Temporaries of the windowed attention hold a few [chunk, F, F] tensors; this caps one of them.
_CHUNK_ELEMENTS = 1 << 22


def back_project(x: torch.Tensor, y: torch.Tensor, kind: str, scale: int, frame_dim: int) -> torch.Tensor:
    """Closed-form back-projection (SPEC §3); ``x`` has ``scale * t0`` frames along ``frame_dim``."""
    out = x.clone()
    _correct_in_place(out.movedim(frame_dim, 0), x.movedim(frame_dim, 0), y.movedim(frame_dim, 0), kind, scale)
    return out


def _correct_in_place(out: torch.Tensor, x: torch.Tensor, y: torch.Tensor, kind: str, scale: int) -> None:
    """Frames-first views: ``out`` starts equal to ``x``; replace it by ``(I - A⁺A) x + A⁺ y``.

    ``sample`` overwrites the key frames with ``y``; a box operator moves every frame of box ``i``
    by ``y[i] - mean(box i)``.
    """
    if kind == "sample":
        out[::scale] = y
        return
    if kind == "box_left":
        # Box 0 is frame 0 alone; boxes 1.. are the runs n(i-1)+1 .. n·i; the last n-1 frames are in no box.
        out[0] = y[0]
        first, y = 1, y[1:]
    else:
        first = 0
    stop = first + scale * y.shape[0]
    boxes = x[first:stop].unflatten(0, (y.shape[0], scale))
    accumulate = torch.promote_types(out.dtype, torch.float32)
    shift = (y.to(accumulate) - boxes.to(accumulate).mean(dim=1)).to(out.dtype)
    out[first:stop].unflatten(0, (y.shape[0], scale)).add_(shift.unsqueeze(1))


def _frames_first(tensor: torch.Tensor, channels: slice) -> torch.Tensor:
    """``[B, t, L, C]`` → a ``[t, B, L, c]`` view of the given channels."""
    return tensor[..., channels].transpose(0, 1)


def corrected_qkv(h, key_qkv, weight, bias, scale: int, kv_kind: str):
    """One ``F.linear`` over ``h`` in its own memory order, then the correction on the projections.

    Returns ``(qkv, qkv_hat)`` of logical shape ``[B, t, L, 3 C_out]`` laid out like ``h``
    (:func:`zs_kernels.layout.empty_projection`).
    """
    qkv = layout.from_memory_order(F.linear(layout.in_memory_order(h), weight, bias), h)
    qkv_hat = layout.empty_projection(h, weight.shape[0])
    qkv_hat.copy_(qkv)
    c_out = weight.shape[0] // 3
    for channels, kind in ((slice(0, c_out), "sample"), (slice(c_out, None), kv_kind)):
        _correct_in_place(
            _frames_first(qkv_hat, channels), _frames_first(qkv, channels), _frames_first(key_qkv, channels), kind, scale
        )
    return qkv, qkv_hat


class _WindowPlan:
    """Per-(frames, window, stride, weighting) index tensors for the fused windowed attention.

    ``coef [F, nw]``: normalised fusion weight of window ``w`` at query frame ``f`` (0 if
    ``f ∉ w``); ``indicator [nw, F]``: 1 where key frame ``j`` lies in window ``w``; ``band [F, F]``:
    frame pairs that share a window; ``block_index [nw·w·w]`` and ``block_weights [nw, w, 1]``:
    the windows' diagonal blocks of a flattened ``[F, F]`` score matrix and their fusion weights.
    """

    def __init__(self, num_frames: int, window: int, stride: int, weighting: str, device, dtype):
        starts, weights = frames.fusion_weights(num_frames, window, stride, weighting)
        length = weights.shape[1]
        offsets = torch.arange(length)
        starts = torch.tensor(starts)
        members = starts[:, None] + offsets  # [nw, w] frames of each window
        indicator = torch.zeros(len(starts), num_frames, dtype=torch.float64)
        indicator.scatter_(1, members, 1.0)
        coef = torch.zeros(len(starts), num_frames, dtype=torch.float64)
        coef.scatter_(1, members, weights)
        self.indicator = indicator.to(device, dtype)
        self.coef = coef.T.contiguous().to(device, dtype)
        self.band = ((coef.T > 0).double() @ indicator > 0).to(device)
        rows = members[:, :, None] * num_frames
        self.block_index = (rows + members[:, None, :]).flatten().to(device)
        self.block_weights = weights[:, :, None].to(device, dtype)
        self.length = length
        self.tiny = torch.finfo(dtype).tiny ** 0.5


@functools.lru_cache(maxsize=64)
def _window_plan(num_frames, window, stride, weighting, device, dtype) -> _WindowPlan:
    return _WindowPlan(num_frames, window, stride, weighting, device, dtype)


@functools.lru_cache(maxsize=64)
def _relative_index(num_frames: int, table_rows: int, device) -> torch.Tensor:
    return frames.relative_positions(num_frames, table_rows).to(device)


def _scores(q, k, scale, rel_k):
    """Scaled scores of every frame pair plus the relative key bias, ``[n, H, F, F]``."""
    scores = q @ k.transpose(-1, -2)
    if rel_k is not None:
        index = _relative_index(q.shape[2], rel_k.shape[0], q.device).expand_as(scores)
        scores += (q @ rel_k.T).gather(-1, index)
    return scores.mul_(scale)


def _apply(probabilities, v, rel_v):
    """``probabilities @ v`` plus the relative value bias, ``[n, H, F, D]``."""
    out = probabilities @ v
    if rel_v is not None:
        index = _relative_index(v.shape[2], rel_v.shape[0], v.device).expand_as(probabilities)
        buckets = probabilities.new_zeros(*probabilities.shape[:-1], rel_v.shape[0])
        out += buckets.scatter_add_(-1, index, probabilities) @ rel_v
    return out


def _fused_shared(q, k, v, plan: _WindowPlan, scale, rel_k, rel_v):
    """Windowed attention with one exponential per frame pair; None if a window sum underflows."""
    scores = _scores(q, k, scale, rel_k).masked_fill_(~plan.band, float("-inf"))
    probabilities = scores.sub_(scores.amax(dim=-1, keepdim=True)).exp_()
    sums = probabilities @ plan.indicator.T  # [n, H, F, nw]: Z_w[f]
    sums.masked_fill_(plan.coef == 0, 1.0)
    if bool(sums.amin() < plan.tiny):
        return None
    probabilities.mul_((plan.coef / sums) @ plan.indicator)
    return _apply(probabilities, v, rel_v)


def _fused_per_window(q, k, v, plan: _WindowPlan, scale, rel_k, rel_v):
    """Windowed attention with each window's softmax stabilised by its own maximum."""
    scores = _scores(q, k, scale, rel_k)
    num_frames, length = q.shape[2], plan.length
    blocks = scores.flatten(-2)[..., plan.block_index].unflatten(-1, (-1, length, length))
    weighted = torch.softmax(blocks, dim=-1).mul_(plan.block_weights)
    combined = torch.zeros_like(scores).flatten(-2).index_add_(-1, plan.block_index, weighted.flatten(-3))
    return _apply(combined.unflatten(-1, (num_frames, num_frames)), v, rel_v)


def _fused(q, k, v, plan, scale, rel_k, rel_v):
    out = _fused_shared(q, k, v, plan, scale, rel_k, rel_v)
    return _fused_per_window(q, k, v, plan, scale, rel_k, rel_v) if out is None else out


def windowed_attention(q, k, v, window, stride, weighting, scale, rel_k, rel_v, corrected, blend):
    """Fused windowed attention; ``q, k, v [N, H, F, D]`` any strides, output laid out like ``q``.

    Half-precision inputs are computed in float32. The batch is processed in chunks of ``N`` so
    the ``[chunk, H, F, F]`` temporaries stay small.
    """
    compute_dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    batch, heads, num_frames, _ = q.shape
    plan = _window_plan(num_frames, window, stride, weighting, q.device, compute_dtype)
    rel_k, rel_v = (None if table is None else table.to(compute_dtype) for table in (rel_k, rel_v))
    out = torch.empty_like(q)
    chunk = max(1, _CHUNK_ELEMENTS // (heads * num_frames * num_frames))
    for begin in range(0, batch, chunk):
        rows = slice(begin, begin + chunk)
        inputs = [tensor[rows].to(compute_dtype) for tensor in (q, k, v)]
        result = _fused(*inputs, plan, scale, rel_k, rel_v)
        if corrected is not None:
            inputs = [tensor[rows].to(compute_dtype) for tensor in corrected]
            result = result.lerp_(_fused(*inputs, plan, scale, rel_k, rel_v), blend)
        out[rows] = result
    return out
