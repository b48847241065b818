"""Vectorised PyTorch windowed attention: what CPU tensors get through the public op.

No Python loop runs over windows or frames. Arguments are validated and normalised by the public
op (:func:`zs_kernels.windowed_attention`); this module is plain PyTorch, so ``torch.compile``
traces it.

The overlapping windows share their work instead of being attended one by one. For a query
frame ``f`` every window holding ``f`` applies a softmax over its own key range, so with
``E[f, j] = exp(s[f, j] - m[f])`` (``m`` the maximum over every key sharing a window with ``f``)
and ``Z_w[f] = Σ_{j ∈ w} E[f, j]``, the fused output is

    o[f] = Σ_j E[f, j] · G[f, j] · v[j],   G[f, j] = Σ_{w ∋ f, j} c_w[f] / Z_w[f]

with ``c_w[f]`` the normalised fusion weight. One score matrix, one exponential and one
``P @ V`` per frame pair, whatever the overlap. A window whose scores all lie far below ``m[f]``
would underflow ``Z_w``; in that (rare, adversarial) case the chunk is recomputed with every
window's softmax stabilised by its own maximum. That check is data-dependent, so under
``torch.compile`` the per-window form, exact for every input, is traced instead.
"""

from __future__ import annotations

import functools

import torch

from .. import frames

# Batch chunking: the temporaries hold a few [chunk, H, F, F] tensors, each capped at this many elements.
CHUNK_ELEMENTS = 1 << 22


def _eager_cache(function):
    """``functools.lru_cache`` in eager mode; under ``torch.compile`` the function is traced
    directly (dynamo ignores caches, with a warning, and its graph builds the constants anyway)."""
    cached = functools.lru_cache(maxsize=64)(function)

    @functools.wraps(function)
    def call(*args):
        return function(*args) if torch.compiler.is_compiling() else cached(*args)

    return call


class _WindowPlan:
    """Per-(frames, window, stride, weighting) index tensors of the fused windowed attention.

    ``coef [F, nw]``: normalised fusion weight of window ``w`` at query frame ``f`` (0 if
    ``f ∉ w``); ``member [F, nw]``: 1 where ``f ∈ w``; ``indicator [nw, F]``: 1 where key frame
    ``j`` lies in window ``w``; ``band [F, F]``: frame pairs that share a window; ``block_index
    [nw·w·w]`` and ``block_weights [nw, w, 1]``: the windows' diagonal blocks of a flattened
    ``[F, F]`` score matrix and their fusion weights.
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
        self.member = indicator.T.contiguous().to(device, dtype)
        self.coef = coef.T.contiguous().to(device, dtype)
        self.band = (indicator.T @ indicator > 0).to(device)
        rows = members[:, :, None] * num_frames
        self.block_index = (rows + members[:, None, :]).flatten().to(device)
        self.block_weights = weights[:, :, None].to(device, dtype)
        self.length = length
        self.tiny = torch.finfo(dtype).tiny ** 0.5


@_eager_cache
def _window_plan(num_frames, window, stride, weighting, device, dtype) -> _WindowPlan:
    return _WindowPlan(num_frames, window, stride, weighting, device, dtype)


@_eager_cache
def _relative_index(num_frames: int, table_rows: int, device) -> torch.Tensor:
    return frames.relative_positions(num_frames, table_rows).to(device)


def _scores(q, k, softmax_scale, rel_k):
    """Scaled scores of every frame pair plus the relative key bias, ``[n, H, F, F]``."""
    scores = q @ k.transpose(-1, -2)
    if rel_k is not None:
        index = _relative_index(q.shape[2], rel_k.shape[0], q.device).expand_as(scores)
        scores += (q @ rel_k.T).gather(-1, index)
    return scores.mul_(softmax_scale)


def _attend_values(probabilities, v, plan: _WindowPlan):
    """``probabilities @ v``, ``[n, H, F, D]``, with a non-finite ``v`` entry reaching only the
    frames that share a window with it.

    ``probabilities`` is zero outside the band, but in a dense product ``0 · NaN = NaN`` would
    carry a non-finite ``v`` entry to every frame. So when there is one, the finite entries are
    multiplied and the frames sharing a window with it are set to NaN in its channel, as on the
    other backends. Eager mode pays for that only then: a non-finite ``v`` entry makes the plain
    product, hence its sum, non-finite. Under ``torch.compile`` the masked form runs, branch-free.
    """
    if not torch.compiler.is_compiling():
        out = probabilities @ v
        if bool(torch.isfinite(out.sum())):
            return out
    non_finite = ~torch.isfinite(v)
    reach = plan.member @ (plan.indicator @ non_finite.to(v.dtype))
    return (probabilities @ v.masked_fill(non_finite, 0.0)).masked_fill_(reach > 0, float("nan"))


def _apply(probabilities, v, rel_v, plan: _WindowPlan):
    """``probabilities @ v`` plus the relative value bias, ``[n, H, F, D]``."""
    out = _attend_values(probabilities, v, plan)
    if rel_v is not None:
        index = _relative_index(v.shape[2], rel_v.shape[0], v.device).expand_as(probabilities)
        buckets = probabilities.new_zeros(*probabilities.shape[:-1], rel_v.shape[0])
        out += buckets.scatter_add_(-1, index, probabilities) @ rel_v
    return out


def _fused_shared(q, k, v, plan: _WindowPlan, softmax_scale, rel_k, rel_v):
    """Windowed attention with one exponential per frame pair; None if a window sum underflows."""
    scores = _scores(q, k, softmax_scale, rel_k).masked_fill_(~plan.band, float("-inf"))
    probabilities = scores.sub_(scores.amax(dim=-1, keepdim=True)).exp_()
    sums = probabilities @ plan.indicator.T  # [n, H, F, nw]: Z_w[f]
    sums.masked_fill_(plan.coef == 0, 1.0)
    # NaN compares False: a non-finite input does not force the slower path on its chunk.
    if bool((sums < plan.tiny).any()):
        return None
    probabilities.mul_((plan.coef / sums) @ plan.indicator)
    return _apply(probabilities, v, rel_v, plan)


def _fused_per_window(q, k, v, plan: _WindowPlan, softmax_scale, rel_k, rel_v):
    """Windowed attention with each window's softmax stabilised by its own maximum."""
    scores = _scores(q, k, softmax_scale, rel_k)
    num_frames, length = q.shape[2], plan.length
    blocks = scores.flatten(-2)[..., plan.block_index].unflatten(-1, (-1, length, length))
    weighted = torch.softmax(blocks, dim=-1).mul_(plan.block_weights)
    combined = torch.zeros_like(scores).flatten(-2).index_add_(-1, plan.block_index, weighted.flatten(-3))
    return _apply(combined.unflatten(-1, (num_frames, num_frames)), v, rel_v, plan)


def _fused(q, k, v, plan, softmax_scale, rel_k, rel_v):
    if not torch.compiler.is_compiling():
        out = _fused_shared(q, k, v, plan, softmax_scale, rel_k, rel_v)
        if out is not None:
            return out
    return _fused_per_window(q, k, v, plan, softmax_scale, rel_k, rel_v)


def windowed_attention(q, k, v, window, stride, weighting, softmax_scale, rel_k, rel_v, corrected, blend):
    """Fused windowed attention; ``q, k, v [N, H, F, D]`` any strides, output ``torch.empty_like(q)``.

    Half-precision inputs are computed in float32. The batch is processed in chunks of ``N`` so
    the ``[chunk, H, F, F]`` temporaries stay small.
    """
    compute_dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    batch, heads, num_frames, _ = q.shape
    plan = _window_plan(num_frames, window, stride, weighting, q.device, compute_dtype)
    rel_k, rel_v = (None if table is None else table.to(compute_dtype) for table in (rel_k, rel_v))
    out = torch.empty_like(q)
    chunk = max(1, CHUNK_ELEMENTS // (heads * num_frames * num_frames))
    for begin in range(0, batch, chunk):
        rows = slice(begin, begin + chunk)
        inputs = [tensor[rows].to(compute_dtype) for tensor in (q, k, v)]
        result = _fused(*inputs, plan, softmax_scale, rel_k, rel_v)
        if corrected is not None:
            inputs = [tensor[rows].to(compute_dtype) for tensor in corrected]
            result = result.lerp_(_fused(*inputs, plan, softmax_scale, rel_k, rel_v), blend)
        out[rows] = result
    return out
