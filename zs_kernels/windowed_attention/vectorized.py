"""Vectorised PyTorch windowed attention: what CPU tensors get through the public op.

No Python loop runs over windows or frames. Arguments are validated and normalised by the public
op (:func:`zs_kernels.windowed_attention`); this module is plain PyTorch, so ``torch.compile``
traces it.

The overlapping windows share their work instead of being attended one by one. For a query
frame ``f`` every window holding ``f`` applies a softmax over its own key range, so with
``E[f, j] = exp(s[f, j] - m[f])`` (``m[f]`` any shift common to the row, such as its maximum)
and ``Z_w[f] = Σ_{j ∈ w} E[f, j]``, the fused output is

    o[f] = Σ_j E[f, j] · G[f, j] · v[j],   G[f, j] = Σ_{w ∋ f, j} c_w[f] / Z_w[f]

with ``c_w[f]`` the normalised fusion weight. One score, one exponential and one ``P @ V`` term
per frame pair, whatever the overlap.

Formulations (:func:`formulation` picks one per problem):

* **plain attention**: one window (``F <= W``) without relative tables is one
  ``F.scaled_dot_product_attention`` call, unless a query is not finite (SDPA's CPU kernel drops
  a NaN query instead of propagating it).
* **banded blocks** (eager mode): the query frames are cut into blocks of ``B`` rows, and block
  ``b`` scores only the *band* of ``K`` key frames that holds every window meeting it (``K ≈ B +
  2(W − stride)``), not all ``F``. Queries and bands are strided views of one zero-padded copy of
  the chunk, so the overlapping bands are not copied, and every product is one batched matmul
  over ``[N·H·blocks]``. ``B = F`` is one block, the full shared score matrix; small ``B`` wastes
  less work on frame pairs that share no window but pays a fixed cost per block.
  :func:`block_rows` picks ``B`` with a cost model. The batch is processed in chunks whose
  temporaries stay near the CPU's L2 cache (:data:`CHUNK_ELEMENTS`).
* **per-window form**: the ``[F, F]`` scores, each window's softmax stabilised by its own
  maximum and non-finite values confined to their windows; exact for every input, and free of
  data-dependent branches, so ``torch.compile`` traces it.
* **lane form** (few frames, small head dim, no tables): every window attended on its own, with
  the sequences (``N·H``, and both passes of a dual call) as the innermost, contiguous dim of
  frame-major copies. Windows of a few frames make ``[W, W]`` score matrices and rows of ``D``
  channels far too small for batched matrix products or a last-dim softmax, which then cost
  mostly per-matrix and per-row overhead; with the sequences innermost, the products, the
  softmax over key frames and the fold are elementwise operations over long vectors.

A window whose scores all lie far below ``m[f]`` would underflow ``Z_w``, and a non-finite input
reaches every row whose band holds it; in those (rare) cases the banded formulation hands the
chunk to the per-window form.
"""

from __future__ import annotations

import functools

import torch

from .. import frames

# Batch chunking on CPU: a chunk's scores hold at most this many elements (1 MiB in float32), so a
# chunk's working set stays near a core's L2 cache (2 MiB here; 1 << 18 and 1 << 19 measured best
# among 1 << 15 … 1 << 21 at the bench shapes). On other devices (a host sync per chunk) and under
# torch.compile (the chunk loop is unrolled into the graph) chunks are larger.
CHUNK_ELEMENTS = 1 << 18
LARGE_CHUNK_ELEMENTS = 1 << 22
# Cost model of one block of one sequence, in ns (fitted on the 2-core AVX-512 Xeon the benches run
# on, D = 16, 40, 64, F = 28 … 128, when each block's band was gathered into its own copy; only the
# argmin is used): a fixed cost per block (small products) and a cost per score element (products,
# softmax, weights). Rechecked with strided bands at the bench shapes (D = 40, W = 16): its choice
# is the measured best at stride 8 and within 10 % of it at stride 4.
BLOCK_COST_NS = (185.0, 58.0)  # + per head-dim channel
ELEMENT_COST_NS = (5.2, 0.046)  # + per head-dim channel
# Below this many frames the band buffers' fixed cost dominates and the per-window form is faster:
# measured (dual pass, one thread, N·H = 256 and 2048, D = 16 and 40) banded / per-window 1.5–1.6 at
# F = 8, W = 4 and 1.25–1.4 at F = 12, W = 8; 0.4–0.8 from F = 16 on (N·H = 2048).
PER_WINDOW_BELOW_FRAMES = 16
# Below those frames, head dims up to this take the lane form: measured (dual pass, one thread,
# N·H = 256, 2048, 4096; F = 8, 12, 15) lane / per-window 0.13–0.35 at D = 4, 0.3–0.95 at D = 8,
# 0.4–1.4 at D = 12 and 0.9–1.2 at D = 16.
LANES_MAX_HEAD_DIM = 8
# The lane form's chunks hold products of at most this many elements (4 MiB in float32): measured
# (tiny SVD shapes, dual pass) 1 << 20 and 1 << 22 within 5 % of each other, 1 << 18 8 % and
# 1 << 16 50 % slower, from the fixed cost of each chunk's operations.
LANE_CHUNK_ELEMENTS = 1 << 20


def _eager_cache(function):
    """``functools.lru_cache`` in eager mode; under ``torch.compile`` the function is traced
    directly (dynamo ignores caches, with a warning, and its graph builds the constants anyway)."""
    cached = functools.lru_cache(maxsize=64)(function)

    @functools.wraps(function)
    def call(*args):
        return function(*args) if torch.compiler.is_compiling() else cached(*args)

    return call


def _band_geometry(num_frames: int, window: int, stride: int, rows: int):
    """Blocks of ``rows`` query frames from frame 0: ``(bases, meeting, left, band)`` with
    ``meeting[b]`` the windows holding a frame of block ``b``; block ``b``'s band, the frames
    ``bases[b] − left … bases[b] − left + band − 1``, holds all of them."""
    layout = frames.windows(num_frames, window, stride)
    starts = layout.starts
    bases = list(range(0, num_frames, rows))
    meeting = [
        [w for w, start in enumerate(starts) if start < min(base + rows, num_frames) and start + layout.length > base]
        for base in bases
    ]
    left = max(base - min(starts[w] for w in ws) for base, ws in zip(bases, meeting))
    band = left + max(max(starts[w] for w in ws) + layout.length - base for base, ws in zip(bases, meeting))
    return bases, meeting, left, band


class _BandPlan:
    """Per-(frames, window, stride, weighting, block rows) tensors of the banded formulation.

    Each sequence's frames are laid out with a pitch of ``padded = blocks · rows`` frames (frames
    ``F … padded − 1`` are zero), so block ``b`` of every sequence is the run of ``rows`` frames at
    ``b · rows`` and its band is the run of ``band`` frames at ``b · rows − left``: every block's
    queries and band are views of one buffer with one stride, and the bands overlap without being
    copied. Band columns outside the sequence read its neighbour's frames or the buffer's zero
    margins (``left`` frames before, ``back`` after); they share no window with the row, so their
    weight is 0 like every other such pair's. Up to ``slots`` windows meet a block.

    Rows past the last frame (padding) take the last frame's weights, so they stay finite.
    ``indicator [blocks, slots, band]`` is 1 where column ``c`` lies in the block's window
    ``w``, ``indicator_t`` its transpose, ``coef [blocks, rows, slots]`` the normalised fusion weight
    of window ``w`` at row ``i`` (0 if the row is outside it), ``empty`` 1 where ``coef`` is 0 (so
    that no window sum divides 0 by 0); ``plain`` when every row's band is its one window (a plain
    softmax, no weights); ``distance [blocks, rows, band]`` key frame minus query frame of every
    pair, for relative tables.
    """

    def __init__(self, num_frames, window, stride, weighting, rows, device, dtype):
        starts, weights = frames.fusion_weights(num_frames, window, stride, weighting)
        length = weights.shape[1]
        bases, meeting, left, band = _band_geometry(num_frames, window, stride, rows)
        blocks = len(bases)
        slots = max(len(ws) for ws in meeting)
        query = (torch.tensor(bases)[:, None] + torch.arange(rows)).clamp(max=num_frames - 1)  # [blocks, rows]
        key = torch.tensor(bases)[:, None] - left + torch.arange(band)  # [blocks, band]
        indicator = torch.zeros(blocks, slots, band, dtype=torch.float64)
        coef = torch.zeros(blocks, rows, slots, dtype=torch.float64)
        for block, ws in enumerate(meeting):
            for slot, w in enumerate(ws):
                indicator[block, slot] = ((key[block] >= starts[w]) & (key[block] < starts[w] + length)).double()
                position = query[block] - starts[w]
                inside = (position >= 0) & (position < length)
                coef[block, inside, slot] = weights[w, position[inside]]
        shared = (coef > 0).double() @ indicator > 0  # [blocks, rows, band]: pairs sharing a window
        self.rows, self.blocks, self.band, self.slots, self.left = rows, blocks, band, slots, left
        self.padded = blocks * rows
        self.back = max(0, (blocks - 1) * rows - left + band - self.padded)
        self.indicator = indicator.to(device, dtype)
        self.indicator_t = indicator.transpose(1, 2).contiguous().to(device, dtype)
        self.coef = coef.to(device, dtype)
        self.empty = (coef == 0).to(device, dtype)
        self.plain = slots == 1 and bool(shared.all())
        self.distance = (key[:, None, :] - query[:, :, None]).to(device)
        self.tiny = torch.finfo(dtype).tiny ** 0.5

    def buckets(self, table_rows: int) -> torch.Tensor:
        """Row ``clip(j − i, −R, R) + R`` of a ``[2R + 1, D]`` table for every pair, ``[blocks, rows, band]``."""
        radius = table_rows // 2
        return self.distance.clamp(-radius, radius) + radius


@_eager_cache
def _band_plan(num_frames, window, stride, weighting, rows, device, dtype) -> _BandPlan:
    return _BandPlan(num_frames, window, stride, weighting, rows, device, dtype)


def block_cost(num_frames: int, window: int, stride: int, head_dim: int, rows: int) -> float:
    """Modelled time (ns) of the banded formulation with ``rows`` query rows per block, one sequence."""
    bases, _, _, band = _band_geometry(num_frames, window, stride, rows)
    blocks = len(bases)
    per_block = BLOCK_COST_NS[0] + BLOCK_COST_NS[1] * head_dim
    per_element = ELEMENT_COST_NS[0] + ELEMENT_COST_NS[1] * head_dim
    return blocks * (per_block + rows * band * per_element)


@functools.lru_cache(maxsize=256)
def block_rows(num_frames: int, window: int, stride: int, head_dim: int) -> int:
    """Query rows per block of the banded formulation: the multiple of ``stride`` below ``F`` (so
    blocks line up with the windows), or ``F`` itself, of least :func:`block_cost`; ``F`` when
    one window holds every frame."""
    if num_frames <= window:
        return num_frames
    candidates = list(range(stride, num_frames, stride)) + [num_frames]
    return min(candidates, key=lambda rows: block_cost(num_frames, window, stride, head_dim, rows))


class _BandBuffers:
    """Buffers of one call's chunks: queries (scaled), keys and values of ``count`` sequences
    ([N·H]) laid out as :class:`_BandPlan` says, reused by every chunk and pass. The margins and
    each sequence's frames past ``F`` stay zero; a last chunk smaller than the others leaves the
    previous chunk's frames after it, which its last bands may read (at weight 0)."""

    def __init__(self, plan: _BandPlan, count: int, head_dim: int, device, dtype):
        self.plan, self.head_dim = plan, head_dim
        frames_total = plan.left + count * plan.padded + plan.back
        self.q, self.k, self.v = (torch.zeros(frames_total, head_dim, device=device, dtype=dtype) for _ in range(3))

    def load(self, q, k, v, softmax_scale):
        """Copy one chunk ``[n, H, F, D]`` in; return the views ``queries [n·H·blocks, rows, D]``
        and ``keys``, ``values [n·H·blocks, band, D]``."""
        plan, head_dim = self.plan, self.head_dim
        n, heads, num_frames, _ = q.shape
        sequences = n * heads * plan.blocks
        frames_used = n * heads * plan.padded
        for buffer, source in ((self.q, q), (self.k, k), (self.v, v)):
            target = buffer[plan.left : plan.left + frames_used].view(n, heads, plan.padded, head_dim)
            target = target[:, :, :num_frames]
            if buffer is self.q and source.dtype == buffer.dtype:
                torch.mul(source, softmax_scale, out=target)
            elif buffer is self.q:  # half precision: scale after the conversion, so as not to round twice
                target.copy_(source).mul_(softmax_scale)
            else:
                target.copy_(source)
        queries = self.q[plan.left : plan.left + frames_used].view(sequences, plan.rows, head_dim)
        keys, values = (
            buffer.as_strided((sequences, plan.band, head_dim), (plan.rows * head_dim, head_dim, 1))
            for buffer in (self.k, self.v)
        )
        return queries, keys, values


def _banded(buffers: _BandBuffers, q, k, v, softmax_scale, rel_k, rel_v):
    """The banded formulation of one chunk ``q, k, v [n, H, F, D]``: ``[n, H, blocks · rows, D]``
    (rows past ``F`` are padding), or None when a window sum underflows or the result is not
    finite.

    The softmax runs over the whole band, masked pairs included: the weights ``c_w / Z_w`` are 0
    outside the row's windows, and the softmax's common factor cancels in them, so masking would
    only cost a pass. A masked pair still takes part in the row's maximum and sum, so a
    non-finite entry anywhere in the band, or in a neighbour's frames read as padding, makes the
    row non-finite: the per-window form, which confines it to its windows, then recomputes the chunk.
    """
    plan = buffers.plan
    n, heads = q.shape[:2]
    queries, keys, values = buffers.load(q, k, v, softmax_scale)
    scores = torch.bmm(queries, keys.transpose(1, 2)).view(n * heads, plan.blocks, plan.rows, plan.band)
    if rel_k is not None:
        bias = queries.view(n * heads, plan.blocks, plan.rows, -1) @ rel_k.T  # scaled, like the queries
        scores += bias.gather(-1, plan.buckets(rel_k.shape[0]).expand_as(scores))
    probabilities = torch.softmax(scores, dim=-1)
    if not plan.plain:
        sums = (probabilities @ plan.indicator_t).add_(plan.empty)  # [n·H, blocks, rows, slots]: Z_w
        if bool((sums < plan.tiny).any()):
            return None
        probabilities *= (plan.coef / sums) @ plan.indicator
    result = torch.bmm(probabilities.view(-1, plan.rows, plan.band), values)
    result = result.view(n * heads, plan.blocks, plan.rows, -1)
    if rel_v is not None:
        index = plan.buckets(rel_v.shape[0]).expand_as(probabilities)
        buckets = probabilities.new_zeros(*probabilities.shape[:-1], rel_v.shape[0])
        result += buckets.scatter_add_(-1, index, probabilities) @ rel_v
    if not bool(torch.isfinite(result.sum())):
        return None
    return result.view(n, heads, plan.padded, -1)


class _WindowPlan:
    """Per-(frames, window, stride, weighting) index tensors of the per-window form.

    ``member [F, nw]``: 1 where ``f ∈ w``; ``indicator [nw, F]``: 1 where key frame ``j`` lies
    in window ``w``; ``block_index [nw·w·w]`` and ``block_weights [nw, w, 1]``: the windows'
    diagonal blocks of a flattened ``[F, F]`` score matrix and their fusion weights.
    """

    def __init__(self, num_frames: int, window: int, stride: int, weighting: str, device, dtype):
        starts, weights = frames.fusion_weights(num_frames, window, stride, weighting)
        length = weights.shape[1]
        offsets = torch.arange(length)
        starts = torch.tensor(starts)
        members = starts[:, None] + offsets  # [nw, w] frames of each window
        indicator = torch.zeros(len(starts), num_frames, dtype=torch.float64)
        indicator.scatter_(1, members, 1.0)
        self.indicator = indicator.to(device, dtype)
        self.member = indicator.T.contiguous().to(device, dtype)
        rows = members[:, :, None] * num_frames
        self.block_index = (rows + members[:, None, :]).flatten().to(device)
        self.block_weights = weights[:, :, None].to(device, dtype)
        self.length = length


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

    ``probabilities`` is zero outside the windows, but in a dense product ``0 · NaN = NaN`` would
    carry a non-finite ``v`` entry to every frame. So the finite entries are multiplied and the
    frames sharing a window with a non-finite one are set to NaN in its channel, as on the other
    backends. Eager mode pays for that only when there is one: a non-finite ``v`` entry makes the
    plain product, hence its sum, non-finite. Under ``torch.compile`` the masked form runs,
    branch-free.
    """
    if not torch.compiler.is_compiling():
        out = probabilities @ v
        if bool(torch.isfinite(out.sum())):
            return out
    non_finite = ~torch.isfinite(v)
    reach = plan.member @ (plan.indicator @ non_finite.to(v.dtype))
    return (probabilities @ v.masked_fill(non_finite, 0.0)).masked_fill_(reach > 0, float("nan"))


def _per_window(q, k, v, plan: _WindowPlan, softmax_scale, rel_k, rel_v):
    """Windowed attention with each window's softmax stabilised by its own maximum, ``[n, H, F, D]``."""
    scores = _scores(q, k, softmax_scale, rel_k)
    num_frames, length = q.shape[2], plan.length
    blocks = scores.flatten(-2)[..., plan.block_index].unflatten(-1, (-1, length, length))
    weighted = torch.softmax(blocks, dim=-1).mul_(plan.block_weights)
    combined = torch.zeros_like(scores).flatten(-2).index_add_(-1, plan.block_index, weighted.flatten(-3))
    probabilities = combined.unflatten(-1, (num_frames, num_frames))
    out = _attend_values(probabilities, v, plan)
    if rel_v is not None:
        index = _relative_index(v.shape[2], rel_v.shape[0], v.device).expand_as(probabilities)
        buckets = probabilities.new_zeros(*probabilities.shape[:-1], rel_v.shape[0])
        out += buckets.scatter_add_(-1, index, probabilities) @ rel_v
    return out


class _LanePlan:
    """Per-(frames, window, stride, weighting) tensors of the lane form: ``members [nw·w]`` the
    frame at each position of each window (window-major), ``weights [nw, w, 1, 1]`` the
    normalised fusion weight of each window at each position."""

    def __init__(self, num_frames: int, window: int, stride: int, weighting: str, device, dtype):
        starts, weights = frames.fusion_weights(num_frames, window, stride, weighting)
        self.windows, self.length = weights.shape
        self.members = (torch.tensor(starts)[:, None] + torch.arange(self.length)).flatten().to(device)
        self.weights = weights[:, :, None, None].to(device, dtype)


@_eager_cache
def _lane_plan(num_frames, window, stride, weighting, device, dtype) -> _LanePlan:
    return _LanePlan(num_frames, window, stride, weighting, device, dtype)


def _lanes(passes, plan: _LanePlan, softmax_scale, blend, dtype):
    """The lane form of one chunk: ``passes`` one or two ``(q, k, v)``, each ``[n, H, F, D]``;
    returns the (blended) result as a ``[n, H, F, D]`` view.

    Each window's frames are gathered frame-major, ``[passes, nw, w, D, lanes]`` with
    ``lanes = n · H`` (one strided gather per input, no other copy); scores, softmax and values
    are then elementwise products and reductions over dims outside the lanes, so every operation
    runs over contiguous vectors of ``lanes`` elements. Each window's softmax is normalised on its
    own, as in the definition, so a non-finite input reaches exactly the windows holding it.
    """
    n, heads, num_frames, head_dim = passes[0][0].shape
    count, lanes = len(passes), n * heads
    gathered = []
    for sources in zip(*passes):
        buffer = torch.empty(count, plan.windows * plan.length, head_dim, n, heads, device=sources[0].device,
                             dtype=dtype)
        for index, source in enumerate(sources):
            if source.dtype == dtype:
                torch.index_select(source.permute(2, 3, 0, 1), 0, plan.members, out=buffer[index])
            else:
                buffer[index].copy_(source.permute(2, 3, 0, 1)[plan.members])
        gathered.append(buffer.view(count, plan.windows, plan.length, head_dim, lanes))
    q, k, v = gathered
    # [passes, nw, w (query), w (key), lanes]
    scores = (q[:, :, :, None] * k[:, :, None]).sum(4).mul_(softmax_scale)
    probabilities = torch.softmax(scores, dim=3).mul_(plan.weights)
    attended = (probabilities[:, :, :, :, None] * v[:, :, None]).sum(3)  # [passes, nw, w, D, lanes]
    fused = attended.new_zeros(count, num_frames, head_dim * lanes)
    fused.index_add_(1, plan.members, attended.view(count, -1, head_dim * lanes))
    fused = fused.view(count, num_frames, head_dim, n, heads)
    result = fused[0] if count == 1 else fused[0].lerp_(fused[1], blend)
    return result.permute(2, 3, 0, 1)


def _plain_attention(q, k, v, softmax_scale, dtype):
    """Attention over all ``F`` frames of ``q, k, v [N, H, F, D]`` computed in ``dtype``, ``[N, H, F, D]``."""
    q, k, v = (tensor.to(dtype) for tensor in (q, k, v))
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=softmax_scale)


def formulation(num_frames: int, window: int, stride: int, head_dim: int, tables: bool, compiling: bool):
    """The formulation for a problem: ``("sdpa", None)``, ``("banded", rows)``, ``("lanes", None)`` or
    ``("per_window", None)``.

    ``torch.compile`` traces the per-window form (no data-dependent branch). In eager mode, one
    window (``F <= W``) without relative tables is plain attention: one
    ``F.scaled_dot_product_attention`` call, the peer's own kernel without its loop; several
    windows over fewer than :data:`PER_WINDOW_BELOW_FRAMES` frames take the lane form when the
    head dim is at most :data:`LANES_MAX_HEAD_DIM` and there are no tables, the per-window form
    otherwise; anything else takes the banded formulation with :func:`block_rows` rows per block."""
    if compiling:
        return "per_window", None
    if num_frames <= window and not tables:
        return "sdpa", None
    if window < num_frames < PER_WINDOW_BELOW_FRAMES:
        return ("lanes", None) if head_dim <= LANES_MAX_HEAD_DIM and not tables else ("per_window", None)
    return "banded", block_rows(num_frames, window, stride, head_dim)


def windowed_attention(q, k, v, window, stride, weighting, softmax_scale, rel_k, rel_v, corrected, blend):
    """Fused windowed attention; ``q, k, v [N, H, F, D]`` any strides, output ``torch.empty_like(q)``.

    Half-precision inputs are computed in float32. :func:`formulation` picks the formulation; the
    banded, per-window and lane ones process the batch in chunks so that their temporaries stay small,
    and a chunk the banded one cannot take goes to the per-window one.
    """
    compute_dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    batch, heads, num_frames, head_dim = q.shape
    rel_k, rel_v = (None if table is None else table.to(compute_dtype) for table in (rel_k, rel_v))
    passes = [(q, k, v)] if corrected is None else [(q, k, v), corrected]
    compiling = torch.compiler.is_compiling()
    kind, rows = formulation(num_frames, window, stride, head_dim, rel_k is not None or rel_v is not None, compiling)
    # SDPA's CPU kernel drops a non-finite query instead of propagating it to the query's frame.
    if kind == "sdpa" and not all(bool(torch.isfinite(inputs[0].sum())) for inputs in passes):
        kind, rows = "banded", block_rows(num_frames, window, stride, head_dim)
    if kind == "sdpa":
        results = [_plain_attention(*inputs, softmax_scale, compute_dtype) for inputs in passes]
        result = results[0] if corrected is None else results[0].lerp_(results[1], blend)
        return torch.empty_like(q).copy_(result)
    out = torch.empty_like(q)
    if kind == "lanes":
        plan = _lane_plan(num_frames, window, stride, weighting, q.device, compute_dtype)
        # The largest temporaries, the [passes, nw, w, w, D, lanes] products, kept to a chunk's size.
        per_sequence = len(passes) * heads * plan.windows * plan.length**2 * head_dim
        chunk = max(1, LANE_CHUNK_ELEMENTS // per_sequence)
        for begin in range(0, batch, chunk):
            span = slice(begin, begin + chunk)
            out[span] = _lanes([[tensor[span] for tensor in inputs] for inputs in passes], plan, softmax_scale,
                               blend, compute_dtype)
        return out
    window_plan = band_plan = buffers = None
    if kind == "per_window":
        window_plan = _window_plan(num_frames, window, stride, weighting, q.device, compute_dtype)
        chunk = max(1, LARGE_CHUNK_ELEMENTS // (heads * num_frames * num_frames))
    else:
        band_plan = _band_plan(num_frames, window, stride, weighting, rows, q.device, compute_dtype)
        capacity = CHUNK_ELEMENTS if q.device.type == "cpu" else LARGE_CHUNK_ELEMENTS
        chunk = max(1, min(batch, capacity // (heads * band_plan.blocks * rows * band_plan.band)))
        buffers = _BandBuffers(band_plan, chunk * heads, head_dim, q.device, compute_dtype)
    for begin in range(0, batch, chunk):
        span = slice(begin, begin + chunk)
        results = []
        for inputs in passes:
            chunk_inputs = [tensor[span] for tensor in inputs]
            result = None if buffers is None else _banded(buffers, *chunk_inputs, softmax_scale, rel_k, rel_v)
            if result is None:
                if window_plan is None:
                    window_plan = _window_plan(num_frames, window, stride, weighting, q.device, compute_dtype)
                chunk_inputs = [tensor.to(compute_dtype) for tensor in chunk_inputs]
                result = _per_window(*chunk_inputs, window_plan, softmax_scale, rel_k, rel_v)
            results.append(result[:, :, :num_frames])
        out[span] = results[0] if corrected is None else results[0].lerp_(results[1], blend)
    return out
