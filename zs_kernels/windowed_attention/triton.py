"""Triton kernel: overlapping windowed temporal attention with in-kernel FreeNoise fusion (SPEC §5).

One launch computes, for every sequence of ``q, k, v [N, H, F, D]``, the softmax attention of
every window (each normalised by its own maximum and sum), the fusion weights ``ω``, the
per-frame normalisation ``Σ ω`` and the right-aligned tail window, and writes the fused output
once. Nothing per-window ever reaches global memory.

Work decomposition
------------------
Sequences (``N·H`` of them) lie on grid axis 0, ``SEQS_PER_PROGRAM`` per program, so the grid
stays far below CUDA's 2³¹−1 limit on axis 0 and axes 1/2 are unused. Inside a program the
frames are cut into query blocks of ``BLOCK_M`` rows. For one query block the kernel loops over
the windows that intersect it (the launcher passes :func:`zs_kernels.frames.windows`' layout:
starts ``w·stride`` for the regular windows, ``F − min(W, F)`` for the tail); for each window it
loads that window's ``K, V`` rows (``BLOCK_W = next_pow2(min(W, F))`` of them), computes
``[BLOCK_M, BLOCK_W]`` scores, a softmax stabilised by the window's own row maxima, and adds
``ω(f − start) / Z · P @ V`` to a register accumulator for the block's rows inside the window
(the others are selected away, so a non-finite value reaches only the rows that attend over
it). After the last window the accumulator is divided by ``Σ ω`` and stored. Only ``Q`` and
``O`` rows of the block and the windows' ``K, V`` rows are touched, so DRAM sees ``Q, K, V`` read
once and ``O`` written once; a ``K, V`` row that belongs to several windows or query blocks is
re-read from L1/L2 by the same program moments later (see :func:`load_traffic`).

Relative position bias (``rel_k``, ``rel_v``): pairs in a window are at most ``L − 1 = min(W, F)
− 1`` frames apart, so only the rows ``R − R_eff … R + R_eff`` of a table (``R_eff = min(R, L −
1)``) can ever be read; the launcher passes that slice (a view). ``Q @ rel_kᵀ`` is computed once
per query block; each window adds its entry ``[i, clip(j − i) + R]`` to the scores and sums its
probabilities per relative distance, one distance at a time (selects: ``tl.gather`` needed far
more registers); the bucket sums meet ``rel_v`` in one product per query block.

Dual pass (``corrected=(q̂, k̂, v̂), blend=w``): both passes add into the same accumulators with
factors ``1 − w`` and ``w`` (``Σ ω`` is the same for both), so each query block stores
``(1 − w)·o + w·ô = o + w·(ô − o)`` — six tensors read once, one written once.

Alignment: when every tensor's rows start 16-byte aligned with a unit head-dim stride (what the
model's projections give), the launcher sets ``ALIGN`` and the kernel hints it, so Triton emits
vector loads even for head dims such as 40 that its own stride specialisation (multiples of 16
elements) would miss.

Supported: fp16, bf16 and fp32 inputs (fp32 accumulation; fp32 dots run in IEEE precision, not
TF32), any strides, any ``F`` and ``N``, head dims ``D ≤ 256``, window lengths ``min(W, F) ≤ 32``;
relative tables for ``D ≤ 64`` and ``min(W, F) ≤ 16``; the dual pass with ``D > 128`` for
``min(W, F) ≤ 16`` (larger tiles spill registers, see :data:`CANDIDATES`). Anything else raises a
``ValueError`` that points at ``backend="torch"``; float64 raises a ``TypeError``.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
import triton
import triton.language as tl

from .. import frames
from .._triton_common import Autotuner, KernelConfiguration, LaunchConfig, aot_signature, vector_alignment

MAX_HEAD_DIM = 256
MAX_WINDOW_LENGTH = 32
# CUDA's limit on grid axis 0 (axes 1 and 2 are capped at 65,535 and are not used).
MAX_GRID_X = 2**31 - 1
_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_LOG2_E = 1.4426950408889634


@triton.jit
def _load_rows(base, rows, row_ok, stride_f, stride_d, offs_d, d_ok, ALIGN: tl.constexpr):
    """Load ``[len(rows), BLOCK_D]`` elements of one sequence; out-of-range entries are 0.

    ``ALIGN > 1`` promises (checked by the launcher) that ``stride_f`` is a multiple of ``ALIGN``
    elements and ``stride_d == 1``, so rows start 16-byte aligned and load as vectors.
    """
    row_offsets = rows[:, None].to(tl.int64) * stride_f
    if ALIGN > 1:
        row_offsets = tl.multiple_of(row_offsets, [ALIGN, 1])
        col_offsets = offs_d[None, :]
    else:
        col_offsets = offs_d[None, :].to(tl.int64) * stride_d
    return tl.load(base + row_offsets + col_offsets, mask=row_ok[:, None] & d_ok[None, :], other=0.0)


@triton.jit
def _sequence_offset(n, h, stride_n, stride_h, ALIGN: tl.constexpr):
    """Element offset of sequence ``(n, h)``, int64 (N·H·F·D exceeds 2³¹ for large workloads)."""
    offset = n * stride_n + h * stride_h
    if ALIGN > 1:
        offset = tl.multiple_of(offset, ALIGN)
    return offset


@triton.jit
def _clip(distance, radius):
    """Bucket ``clip(distance, −radius, radius) + radius`` of a relative distance."""
    return tl.minimum(tl.maximum(distance, -radius), radius) + radius


@triton.jit
def _accumulate_windows(
    accumulator,
    bucket_acc,
    factor,
    q_base,
    k_base,
    v_base,
    stride_qf,
    stride_qd,
    stride_kf,
    stride_kd,
    stride_vf,
    stride_vd,
    rel_k_ptr,
    stride_rel_k_r,
    stride_rel_k_d,
    rows,
    row_ok,
    m0,
    offs_d,
    d_ok,
    num_frames,
    length,
    stride,
    n_regular,
    has_tail,
    pyramid,
    qk_scale,
    radius_k,
    radius_v,
    BLOCK_M: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_R: tl.constexpr,
    HAS_REL: tl.constexpr,
    ALIGN: tl.constexpr,
):
    """Add one pass's fused windows of a query block to the running sums, scaled by ``factor``.

    The query block is frames ``rows = m0 + arange(BLOCK_M)``. Returns ``(accumulator
    [BLOCK_M, BLOCK_D], bucket_acc [BLOCK_M, BLOCK_R], weight_sum [BLOCK_M])``: ``accumulator``
    gains ``factor · Σ_w ω_w · softmax_w(q kᵀ) v_w``, ``bucket_acc`` the same probabilities summed
    per relative distance (for ``rel_v``), ``weight_sum`` is ``Σ_w ω_w`` per row. Every window is
    ``length`` frames long; ``n_regular`` windows start at ``w·stride``, plus a tail window at
    ``num_frames − length`` when ``has_tail``. The two passes of the dual mode share the
    accumulators (``factor`` = ``1 − blend`` and ``blend``): ``Σ ω`` is the same for both.
    """
    cols_in_window = tl.arange(0, BLOCK_W)
    col_ok = cols_in_window < length
    q = _load_rows(q_base, rows, row_ok, stride_qf, stride_qd, offs_d, d_ok, ALIGN)
    weight_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    if HAS_REL:
        buckets = tl.arange(0, BLOCK_R)
        rel_k = _load_rows(rel_k_ptr, buckets, buckets <= 2 * radius_k, stride_rel_k_r, stride_rel_k_d, offs_d, d_ok, 1)
        q_rel = tl.dot(q, tl.trans(rel_k), input_precision="ieee")  # [BLOCK_M, BLOCK_R]

    # Windows intersecting frames [m0, m1): regular starts in (m0 − length, m1), plus the tail.
    m1 = tl.minimum(m0 + BLOCK_M, num_frames)
    first = (tl.maximum(m0 - length + 1, 0) + stride - 1) // stride
    last = tl.minimum(n_regular, (m1 - 1) // stride + 1)
    tail_start = num_frames - length
    last += ((has_tail != 0) & (tail_start < m1)).to(tl.int32)
    for w in range(first, last):
        start = tl.where(w < n_regular, w * stride, tail_start)
        cols = start + cols_in_window
        k = _load_rows(k_base, cols, col_ok, stride_kf, stride_kd, offs_d, d_ok, ALIGN)
        scores = tl.dot(q, tl.trans(k), input_precision="ieee")  # [BLOCK_M, BLOCK_W]
        if HAS_REL:
            # scores[i, j] += q_rel[i, clip(j − i, −R, R) + R], one relative distance at a time
            # (a select per distance keeps registers low where tl.gather would not).
            index = _clip(cols[None, :] - rows[:, None], radius_k)
            for b in range(_clip(start - m1 + 1, radius_k), _clip(start + length - 1 - m0, radius_k) + 1):
                column = tl.sum(tl.where(buckets[None, :] == b, q_rel, 0.0), axis=1)
                scores += tl.where(index == b, column[:, None], 0.0)
        # log2-domain softmax stabilised by this window's own row maxima.
        scores = tl.where(col_ok[None, :], scores * qk_scale, float("-inf"))
        p = tl.exp2(scores - tl.max(scores, axis=1)[:, None])
        # ω(r) = min(r + 1, length − r) for the rows inside the window, 0 for the others.
        offset = rows - start
        in_window = (offset >= 0) & (offset < length)
        omega = tl.where(pyramid != 0, tl.minimum(offset + 1, length - offset), 1).to(tl.float32)
        omega = tl.where(in_window, omega, 0.0)
        weight_sum += omega
        # Rows outside the window are selected away, not multiplied by ω = 0: a NaN in this
        # window's q, k or v must not reach rows that do not attend over it (0 · NaN = NaN).
        # (Selecting the updated accumulator, rather than masking the product, spills no
        # registers in the D = 128 dual-pass tile on sm_80.)
        p = tl.where(in_window[:, None], p * (factor * omega / tl.sum(p, axis=1))[:, None], 0.0)
        v = _load_rows(v_base, cols, col_ok, stride_vf, stride_vd, offs_d, d_ok, ALIGN)
        attended = tl.dot(p.to(v.dtype), v, input_precision="ieee")
        accumulator = tl.where(in_window[:, None], accumulator + attended, accumulator)
        if HAS_REL:
            # bucket_acc[i, b] += Σ_j p[i, j] over the keys j with clip(j − i, −R, R) + R = b.
            index = _clip(cols[None, :] - rows[:, None], radius_v)
            for b in range(_clip(start - m1 + 1, radius_v), _clip(start + length - 1 - m0, radius_v) + 1):
                mass = tl.sum(tl.where(index == b, p, 0.0), axis=1)
                bucket_acc += tl.where(buckets[None, :] == b, mass[:, None], 0.0)
    return accumulator, bucket_acc, weight_sum


@triton.jit
def windowed_attention_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    q_hat_ptr,
    k_hat_ptr,
    v_hat_ptr,
    out_ptr,
    rel_k_ptr,
    rel_v_ptr,
    num_sequences,
    num_heads,
    num_frames,
    head_dim,
    length,
    stride,
    n_regular,
    has_tail,
    pyramid,
    qk_scale,
    blend,
    radius_k,
    radius_v,
    stride_qn, stride_qh, stride_qf, stride_qd,
    stride_kn, stride_kh, stride_kf, stride_kd,
    stride_vn, stride_vh, stride_vf, stride_vd,
    stride_q_hat_n, stride_q_hat_h, stride_q_hat_f, stride_q_hat_d,
    stride_k_hat_n, stride_k_hat_h, stride_k_hat_f, stride_k_hat_d,
    stride_v_hat_n, stride_v_hat_h, stride_v_hat_f, stride_v_hat_d,
    stride_on, stride_oh, stride_of, stride_od,
    stride_rel_k_r, stride_rel_k_d,
    stride_rel_v_r, stride_rel_v_d,
    BLOCK_M: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_R: tl.constexpr,
    SEQS_PER_PROGRAM: tl.constexpr,
    HAS_REL: tl.constexpr,
    DUAL: tl.constexpr,
    ALIGN: tl.constexpr,
):
    """Grid ``(cdiv(N·H, SEQS_PER_PROGRAM),)``; every program fuses ``SEQS_PER_PROGRAM`` sequences.

    ``qk_scale`` is ``softmax_scale · log2(e)``; ``length``, ``stride``, ``n_regular`` and
    ``has_tail`` are :func:`zs_kernels.frames.windows`' layout, ``pyramid`` selects the weights.
    ``rel_*_ptr`` point at the effective tables of ``2 radius + 1`` rows.
    With ``DUAL`` the result is ``(1 − blend)·o + blend·ô`` (= ``o + blend·(ô − o)``).
    """
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    if DUAL:
        factor = 1.0 - blend
    else:
        factor = 1.0

    for t in tl.static_range(SEQS_PER_PROGRAM):
        sequence = tl.program_id(0).to(tl.int64) * SEQS_PER_PROGRAM + t
        # Past the last sequence no row is stored (a bound, not `& scalar`: the interpreter
        # rejects masks built from a scalar boolean), and loads repeat the last sequence so that
        # they never leave the tensors.
        valid_frames = tl.where(sequence < num_sequences, num_frames, 0)
        sequence = tl.minimum(sequence, num_sequences - 1)
        n = sequence // num_heads
        h = sequence % num_heads
        for m0 in range(0, num_frames, BLOCK_M):
            rows = m0 + tl.arange(0, BLOCK_M)
            row_ok = rows < valid_frames
            accumulator = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
            bucket_acc = tl.zeros([BLOCK_M, BLOCK_R], dtype=tl.float32)
            accumulator, bucket_acc, weight_sum = _accumulate_windows(
                accumulator, bucket_acc, factor,
                q_ptr + _sequence_offset(n, h, stride_qn, stride_qh, ALIGN),
                k_ptr + _sequence_offset(n, h, stride_kn, stride_kh, ALIGN),
                v_ptr + _sequence_offset(n, h, stride_vn, stride_vh, ALIGN),
                stride_qf, stride_qd, stride_kf, stride_kd, stride_vf, stride_vd,
                rel_k_ptr, stride_rel_k_r, stride_rel_k_d,
                rows, row_ok, m0, offs_d, d_ok, num_frames, length, stride, n_regular, has_tail, pyramid,
                qk_scale, radius_k, radius_v,
                BLOCK_M, BLOCK_W, BLOCK_R, HAS_REL, ALIGN,
            )
            if DUAL:
                accumulator, bucket_acc, _ = _accumulate_windows(
                    accumulator, bucket_acc, blend,
                    q_hat_ptr + _sequence_offset(n, h, stride_q_hat_n, stride_q_hat_h, ALIGN),
                    k_hat_ptr + _sequence_offset(n, h, stride_k_hat_n, stride_k_hat_h, ALIGN),
                    v_hat_ptr + _sequence_offset(n, h, stride_v_hat_n, stride_v_hat_h, ALIGN),
                    stride_q_hat_f, stride_q_hat_d, stride_k_hat_f, stride_k_hat_d, stride_v_hat_f, stride_v_hat_d,
                    rel_k_ptr, stride_rel_k_r, stride_rel_k_d,
                    rows, row_ok, m0, offs_d, d_ok, num_frames, length, stride, n_regular, has_tail, pyramid,
                    qk_scale, radius_k, radius_v,
                    BLOCK_M, BLOCK_W, BLOCK_R, HAS_REL, ALIGN,
                )
            if HAS_REL:
                buckets = tl.arange(0, BLOCK_R)
                rel_v = _load_rows(
                    rel_v_ptr, buckets, buckets <= 2 * radius_v, stride_rel_v_r, stride_rel_v_d, offs_d, d_ok, 1
                )
                accumulator += tl.dot(bucket_acc, rel_v.to(tl.float32), input_precision="ieee")
            # Rows past the last frame lie in no window; keep them finite (they are not stored).
            out = accumulator / tl.where(weight_sum > 0, weight_sum, 1.0)[:, None]
            out_base = out_ptr + _sequence_offset(n, h, stride_on, stride_oh, ALIGN)
            row_offsets = rows[:, None].to(tl.int64) * stride_of
            if ALIGN > 1:
                pointers = out_base + tl.multiple_of(row_offsets, [ALIGN, 1]) + offs_d[None, :]
            else:
                pointers = out_base + row_offsets + offs_d[None, :].to(tl.int64) * stride_od
            tl.store(pointers, out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


# --- configurations -----------------------------------------------------------------------------


def launch_config(block_m: int, seqs_per_program: int = 1, num_warps: int = 4) -> LaunchConfig:
    """Query rows per block (``BLOCK_M``, >= 16 for ``tl.dot``) and sequences per program."""
    return LaunchConfig.of(block_m=block_m, seqs=seqs_per_program, num_warps=num_warps, num_stages=1)


@dataclasses.dataclass(frozen=True)
class Blocks:
    """Compile-time tile shape and features of one launch, fixed by the problem (not tunable)."""

    block_w: int
    block_d: int
    block_r: int
    has_rel: bool
    dual: bool
    align: int


# Shipped launch configurations per (BLOCK_D, BLOCK_W) and feature set: the only ones ever
# launched, the autotuner's search space, and what compile_check builds. Chosen from the
# ahead-of-time builds so that none spills: head dims above 64 need 8 warps; the relative-position
# variants only fit the 64-wide head-dim tile with 16-frame windows, and the dual pass does not
# fit D > 128 with windows longer than 16 frames. (ptxas caps the 32-row, 32-frame, 64-wide tile
# at 128 registers with 8 warps and spills; with 4 warps it takes 184 and does not.) Missing
# entries make the launcher raise (see `windowed_attention`).
CANDIDATES = {
    (64, 16): {
        "plain": (
            launch_config(16), launch_config(32), launch_config(64, num_warps=8),
            launch_config(16, seqs_per_program=2, num_warps=8),
        ),
        "dual": (launch_config(16), launch_config(64, num_warps=8)),
        "rpe": (launch_config(16, num_warps=8),),
        "rpe+dual": (launch_config(16, num_warps=8),),
    },
    (64, 32): {"plain": (launch_config(16), launch_config(32)), "dual": (launch_config(32, num_warps=8),)},
    (128, 16): {
        "plain": (launch_config(16), launch_config(32, num_warps=8)),
        "dual": (launch_config(16), launch_config(32, num_warps=8)),
    },
    (128, 32): {"plain": (launch_config(16, num_warps=8), launch_config(32, num_warps=8)),
                "dual": (launch_config(16, num_warps=8), launch_config(32, num_warps=8))},
    (256, 16): {"plain": (launch_config(16, num_warps=8),), "dual": (launch_config(16, num_warps=8),)},
    (256, 32): {"plain": (launch_config(16, num_warps=8),)},
}

# Chooses among the pruned candidates on CUDA; `AUTOTUNER.pinned(config)` forces one (tests).
AUTOTUNER = Autotuner()


def _next_power_of_2(value: int, minimum: int) -> int:
    return max(minimum, triton.next_power_of_2(value))


def blocks_for(num_frames: int, head_dim: int, window: int, radius: int, dual: bool, align: int) -> Blocks:
    """Tile shape of a problem; ``radius`` is the larger effective table radius, −1 without tables;
    ``align`` the elements per 16 bytes when every row starts 16-byte aligned, else 1.

    Every tile dimension is >= 16 because NVIDIA's ``tl.dot`` needs it; head dims below 64 share
    the 64-wide tile (the kernel is memory-bound, and masked lanes cost no memory traffic).
    """
    block_w = _next_power_of_2(min(window, num_frames), 16)
    return Blocks(
        block_w=block_w,
        block_d=_next_power_of_2(head_dim, 64),
        # Tables hold at most 2·(min(W, F) − 1) + 1 < 2·BLOCK_W effective rows; one tile size per
        # window tile keeps the number of compiled variants small.
        block_r=2 * block_w if radius >= 0 else 16,
        has_rel=radius >= 0,
        dual=dual,
        align=align,
    )


def features(blocks: Blocks) -> str:
    """``"plain"``, ``"dual"``, ``"rpe"`` or ``"rpe+dual"``."""
    return "+".join(name for name, on in (("rpe", blocks.has_rel), ("dual", blocks.dual)) if on) or "plain"


def shipped_configs(blocks: Blocks) -> tuple[LaunchConfig, ...]:
    """Every configuration shipped for this tile shape and feature set (possibly none)."""
    return CANDIDATES[(blocks.block_d, blocks.block_w)].get(features(blocks), ())


def candidate_configs(num_frames: int, blocks: Blocks) -> list[LaunchConfig]:
    """The shipped configurations worth trying, preferred first.

    Pruned: query blocks no taller than the padded sequence, several sequences per program only
    for short sequences (F <= 16). First comes the tallest one-sequence query block of at most 32
    rows (64 from F = 128 on): taller blocks re-read fewer K/V rows across blocks, and it is what
    runs where nothing is timed (the interpreter).
    """
    tallest = _next_power_of_2(num_frames, 16)
    pruned = [
        config
        for config in shipped_configs(blocks)
        if config["block_m"] <= tallest and (config["seqs"] == 1 or num_frames <= 16)
    ]
    if not pruned:
        return []
    limit = 64 if num_frames >= 128 else 32
    preferred = max(
        (config for config in pruned if config["seqs"] == 1 and config["block_m"] <= limit),
        key=lambda config: config["block_m"],
    )
    return [preferred] + [config for config in pruned if config != preferred]


def launch_grid(num_sequences: int, config: LaunchConfig) -> tuple[int, int, int]:
    """Grid for ``num_sequences = N·H`` sequences: all on axis 0 (CUDA limit 2³¹ − 1); axes 1 and 2
    (limit 65,535) stay 1."""
    programs = triton.cdiv(num_sequences, config["seqs"])
    if programs > MAX_GRID_X:
        raise ValueError(f"{num_sequences} sequences need {programs} programs, above CUDA's grid limit {MAX_GRID_X}")
    return (programs, 1, 1)


# --- launcher -----------------------------------------------------------------------------------


def _effective_table(table: Optional[torch.Tensor], length: int, like: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Rows ``R − R_eff … R + R_eff`` of a ``[2R + 1, D]`` table (a view) and ``R_eff = min(R, length − 1)``.

    Frames in one window are at most ``length − 1`` apart, so no other row is ever read. A missing
    table becomes one zero row (radius 0) so that one kernel variant serves rel_k and rel_v alone.
    """
    if table is None:
        return like.new_zeros(1, like.shape[-1]), 0
    radius = (table.shape[0] - 1) // 2
    effective = min(radius, length - 1)
    return table[radius - effective : radius + effective + 1], effective


def _launch(args: dict, blocks: Blocks, config: LaunchConfig) -> None:
    windowed_attention_kernel[launch_grid(args["num_sequences"], config)](
        **args,
        BLOCK_M=config["block_m"],
        BLOCK_W=blocks.block_w,
        BLOCK_D=blocks.block_d,
        BLOCK_R=blocks.block_r,
        SEQS_PER_PROGRAM=config["seqs"],
        HAS_REL=blocks.has_rel,
        DUAL=blocks.dual,
        ALIGN=blocks.align,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )


def _stride_args(**tensors) -> dict:
    """``stride_<name><axis>`` keyword arguments of the kernel for each named tensor."""
    args = {}
    for name, tensor in tensors.items():
        separator = "_" if len(name) > 1 else ""
        letters = "nhfd" if tensor.dim() == 4 else "rd"
        for axis, letter in enumerate(letters):
            args[f"stride_{name}{separator}{letter}"] = tensor.stride(axis)
    return args


def unsupported_reason(q, window, rel_k=None, rel_v=None, corrected=None) -> Optional[str]:
    """Why this kernel cannot run a (validated) problem, or None if it can.

    The public op calls this under ``backend="auto"`` to fall back to the torch path instead of raising.
    """
    if q.dtype not in _SUPPORTED_DTYPES:
        return f"the Triton windowed attention supports float16, bfloat16 and float32, got {q.dtype}"
    num_frames, head_dim = q.shape[-2:]
    if head_dim > MAX_HEAD_DIM:
        return f"head dim D={head_dim} exceeds the Triton kernel's largest supported {MAX_HEAD_DIM}"
    length = min(window, num_frames)
    if length > MAX_WINDOW_LENGTH:
        return (
            f"window length min(window={window}, F={num_frames}) = {length} exceeds the Triton kernel's "
            f"largest supported {MAX_WINDOW_LENGTH}"
        )
    radius = 0 if rel_k is not None or rel_v is not None else -1
    blocks = blocks_for(num_frames, head_dim, window, radius, corrected is not None, 1)
    if not shipped_configs(blocks):
        return (
            f"the Triton kernel has no configuration for head dim D={head_dim}, window length {length} with "
            f"{features(blocks)} (relative tables need D <= 64 and min(W, F) <= 16; the dual pass with "
            "D > 128 needs min(W, F) <= 16)"
        )
    return None


def windowed_attention(q, k, v, window, stride, weighting, softmax_scale, rel_k, rel_v, corrected, blend):
    """Fused windowed attention of ``q, k, v [N, H, F, D]`` (arguments validated by the public op).

    Returns ``torch.empty_like(q)`` filled with the result: ``[N, H, F, D]``, ``q``'s dtype. The
    launch configuration comes from :data:`AUTOTUNER` over :func:`candidate_configs`.

    Raises:
        TypeError for float64 inputs; ValueError for ``D > 256``, ``min(W, F) > 32``, relative
        tables with ``D > 64`` or ``min(W, F) > 16``, or the dual pass with ``D > 128`` and
        ``min(W, F) > 16``. All point at ``backend="torch"``.
    """
    reason = unsupported_reason(q, window, rel_k, rel_v, corrected)
    if reason is not None:
        error = TypeError if q.dtype not in _SUPPORTED_DTYPES else ValueError
        raise error(f"{reason}; use backend='torch'")
    batch, num_heads, num_frames, head_dim = q.shape
    layout = frames.windows(num_frames, window, stride)
    out = torch.empty_like(q)
    if out.numel() == 0:
        return out
    has_rel = rel_k is not None or rel_v is not None
    radius = -1
    if has_rel:
        rel_k, radius_k = _effective_table(rel_k, layout.length, q)
        rel_v, radius_v = _effective_table(rel_v, layout.length, q)
        radius = max(radius_k, radius_v)
    else:
        # Never read (HAS_REL is off); any tensor of the right dtype fills the pointer slots.
        rel_k, radius_k, rel_v, radius_v = q[0, 0], 0, q[0, 0], 0
    q_hat, k_hat, v_hat = (q, k, v) if corrected is None else corrected
    align = vector_alignment((q, k, v, q_hat, k_hat, v_hat, out))
    blocks = blocks_for(num_frames, head_dim, window, radius, corrected is not None, align)
    args = dict(
        q_ptr=q, k_ptr=k, v_ptr=v, q_hat_ptr=q_hat, k_hat_ptr=k_hat, v_hat_ptr=v_hat, out_ptr=out,
        rel_k_ptr=rel_k, rel_v_ptr=rel_v,
        num_sequences=batch * num_heads, num_heads=num_heads, num_frames=num_frames, head_dim=head_dim,
        length=layout.length, stride=layout.stride, n_regular=layout.regular, has_tail=int(layout.tail),
        pyramid=int(weighting == "pyramid"), qk_scale=softmax_scale * _LOG2_E,
        blend=0.0 if blend is None else blend, radius_k=radius_k, radius_v=radius_v,
        **_stride_args(q=q, k=k, v=v, q_hat=q_hat, k_hat=k_hat, v_hat=v_hat, o=out, rel_k=rel_k, rel_v=rel_v),
    )
    config = AUTOTUNER.choose(
        (num_frames, q.dtype, q.device, blocks),
        candidate_configs(num_frames, blocks),
        lambda config: _launch(args, blocks, config),
        q.device,
    )
    _launch(args, blocks, config)
    return out


def load_traffic(num_frames: int, window: int, stride: int, block_m: int) -> dict:
    """Rows of one sequence that one pass of the kernel loads and stores (a host-side replay of
    its loops; masked-off rows move no memory).

    Returns ``{"q": F, "kv": rows of K (and as many of V), "out": F}``: ``kv`` counts a window's
    ``min(W, F)`` rows once per query block the window intersects, so ``kv / F`` is the L1/L2
    re-read factor; DRAM sees each row once when the re-reads hit in cache.
    """
    layout = frames.windows(num_frames, window, stride)
    kv_rows = 0
    for m0 in range(0, num_frames, block_m):
        m1 = min(m0 + block_m, num_frames)
        kv_rows += layout.length * sum(1 for start in layout.starts if start < m1 and start + layout.length > m0)
    return {"q": num_frames, "kv": kv_rows, "out": num_frames}


# --- ahead-of-time builds -----------------------------------------------------------------------


def build_label(blocks: Blocks, config: LaunchConfig) -> str:
    """The compile_check label of the kernel a launch with ``blocks`` and ``config`` runs."""
    return (
        f"M{config['block_m']} W{blocks.block_w} D{blocks.block_d} R{blocks.block_r} A{blocks.align} "
        f"S{config['seqs']} w{config.num_warps} {features(blocks)}"
    )


def aot_configurations(dtype: str):
    """Every shipped configuration for ``dtype`` (``"fp16"``, ``"bf16"`` or ``"fp32"``).

    All :data:`CANDIDATES` (per tile shape and feature set) × {aligned rows, unaligned}. RPE
    builds use ``BLOCK_R = 2·BLOCK_W``, the one relative tile the launcher uses with a window tile
    (tables are clipped to ``2·(min(W, F) − 1) + 1`` rows). Integer arguments compile as plain
    ``i32`` and pointers without alignment hints, so loads are scalar here: a worst case for
    registers compared to a real launch, whose 16-byte-aligned pointers let Triton vectorise them.
    """
    signature = aot_signature(windowed_attention_kernel, dtype, floats=("qk_scale", "blend"))
    vector = 4 if dtype == "fp32" else 8
    for block_d, block_w in CANDIDATES:
        for has_rel in (False, True):
            for dual in (False, True):
                for align in (vector, 1):
                    blocks = Blocks(block_w, block_d, 2 * block_w if has_rel else 16, has_rel, dual, align)
                    for config in shipped_configs(blocks):
                        constexprs = dict(
                            BLOCK_M=config["block_m"], BLOCK_W=blocks.block_w, BLOCK_D=blocks.block_d,
                            BLOCK_R=blocks.block_r, SEQS_PER_PROGRAM=config["seqs"],
                            HAS_REL=has_rel, DUAL=dual, ALIGN=align,
                        )
                        yield KernelConfiguration(
                            windowed_attention_kernel, build_label(blocks, config), signature, constexprs,
                            config.num_warps, config.num_stages,
                        )
