"""QKV projection fused with the back-projection correction (SPEC §3–4), one Triton launch.

    qkv     = [h·W_qᵀ | h·W_kᵀ | h·W_vᵀ] (+ biases)                  [B, t, L, 3·C_out]
    qkv_hat = Q corrected with ``sample``, K and V with ``kv_kind``  [B, t, L, 3·C_out]

against the key branch's projections ``key_qkv [B, t0, L, 3·C_out]``, ``t = n·t0``. The three
weights (and biases) are separate tensors — a module's ``to_q``, ``to_k``, ``to_v`` as they are:
each program projects with one of them, so nothing is stacked per call.

Epilogue, not prologue
----------------------
Projection and frame mixing commute, so the correction can be applied to ``h`` before the GEMM
(prologue, with the key branch's *inputs* ``h_key [B, t0, L, C]``) or to the fp32 accumulator
after it (epilogue, with the key branch's *projections*, which it computes anyway). Bytes moved per
(batch, token) in units of C elements, C_out = C, t = 28, t0 = 14 (SVD 2×), and GEMM work relative
to one projection of ``h``:

    unfused: 2 corrections materialised + 6 projections   2·(t + t0 + t) + 6·(t + t) = 476   2×
    prologue: read h, h_key; write qkv, qkv_hat          t + t0 + 2·3t             = 210   1.83×
    epilogue (this kernel): read h, key_qkv; write both  t + 3·t0 + 2·3t           = 238   1×

The prologue saves 12 % of the bytes but must project the corrected inputs too (K̂, V̂ differ from
K, V in every frame; Q̂ only in key frames): 1.83× the tensor-core work. The epilogue's arithmetic
intensity (fp16) is 3·t·C / 238 ≈ 0.35·C FLOP/byte — 113, 226, 452 at C = 320, 640, 1280 —
against a ridge of ≈ 150 (A100) and ≈ 295 (H100) FLOP/byte, so levels with C ≥ 640 are already
compute-bound, where 1.83× the work would cost up to 1.83× the time. Hence the epilogue: 0.50× the
unfused bytes (goal ≤ 0.6) and exactly the fused minimum — no element is read from or written to
DRAM twice (weights, ≤ 9.8 MB, stay in L2). ``pytest bench/bench_corrected_qkv.py`` prints the
modelled table at SVD sizes (e.g. level 0, B = 2, fp16: 2808 MB vs 5616 MB unfused).

Tiling: frame groups × tokens on the M axis
-------------------------------------------
The box correction of a projection element needs the mean over the frames of its box, so a
program's M tile holds whole boxes: ``BLOCK_M = SLOTS · BLOCK_L`` rows, row ``r`` being frame
``first + r // BLOCK_L`` of one *frame group* and token ``l0 + r % BLOCK_L``. The groups are
:func:`zs_kernels.frames.box_groups` of ``kv_kind``: the run of ``n`` frames ``first_frame + n·g
… first_frame + n·g + n − 1`` (``first_frame = 1 − n`` for ``box_left``, else 0); frames outside
``[0, t)`` are masked, which yields exactly the operators' boxes:

* ``box_right`` / ``sample``: groups ``g = 0 … t0−1`` are the boxes ``n·g … n·g + n − 1``;
* ``box_left``: group 0 is frame 0 alone, groups ``1 … t0−1`` are ``n(g−1)+1 … n·g``, and group
  ``t0`` holds the last ``n − 1`` frames, which belong to no box and stay uncorrected.

The key frame ``n·g`` of every group is one row of it, so the ``sample`` correction of Q (and of
K/V when ``kv_kind == "sample"``) is a per-row select, and a box correction is
``acc + (y_g − mean_box(acc))`` with the mean a reduction over the ``SLOTS`` axis of the
accumulator seen as ``[SLOTS, BLOCK_L, BLOCK_N]`` (a register-only reshape). ``SLOTS =
next_pow2(n)`` up to :data:`MAX_SLOTS` = 8: n = 2, 4, 8 waste nothing, n = 3 leaves a quarter of
the rows masked (no bytes, only tensor-core time). For n > 8 a group is processed in chunks of 8
frames: the first pass stores ``qkv`` and accumulates the box sum, the second re-reads this
program's just-written ``qkv`` (L2-resident; 1× extra output read) to write ``qkv_hat``.

Grid: one axis (axis 0, no 65,535 cap) over ``(batch, group, token block, projection, column
block)`` with the column block fastest, so the programs in flight share their ``h`` rows through L2
and ``h`` is read from DRAM once. A program's columns lie in one projection, so its weight, bias
and operator (``sample`` or box) are scalars chosen once per program (a ``C_out`` that BLOCK_N
does not divide masks the last block of each projection: at C_out = 320 a 64-wide tile wastes
nothing, a 128-wide one 17 %, which the autotuner weighs). The K loop accumulates in
fp32 (fp32 inputs use IEEE products, like PyTorch's default); row offsets are int64, and only
``[BLOCK_M]``/``[BLOCK_N]`` pointer vectors live across the loop (per-element addresses are
transient), which is what keeps the register count down.

Configurations: launches whose pointers are 16-byte aligned and whose channel counts and strides
are multiples of 16 (C ∈ {320, 640, 1280} in either layout) use :data:`ALIGNED_CONFIGS` —
vectorised, software-pipelined loads (the three weights share one channel stride, 1 for any
``nn.Linear`` weight; the launcher copies a weight whose channel stride differs from the others',
an unusual layout, to make it so); all others (odd sizes, offset views) load element by element
and use the smaller :data:`GENERIC_CONFIGS`. The launcher prunes tiles larger than the problem
and :data:`AUTOTUNER` picks among the survivors (timed once per problem key on CUDA;
``AUTOTUNER.pinned`` pins one for tests). :func:`aot_configurations` yields every shipped
variant, built the way its launches are specialised, for :mod:`zs_kernels.compile_check`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import frames
from .._triton_common import Autotuner, KernelConfiguration, LaunchConfig, aot_signature, vector_alignment
from . import layout

def launch_config(block_m: int, block_n: int, block_k: int, num_warps: int, num_stages: int) -> LaunchConfig:
    """The M tile (``block_m`` = frame slots × tokens), the N and K tiles."""
    return LaunchConfig.of(
        block_m=block_m, block_n=block_n, block_k=block_k, num_warps=num_warps, num_stages=num_stages
    )


# Every tl.dot dimension is ≥ 16 (NVIDIA's minimum); each list is ordered by preference.
# Aligned launches — 16-byte aligned pointers, unit channel strides, channel counts and other
# strides multiples of 16 (what Triton's JIT specialises on) — get vectorised, software-pipelined
# loads and can afford large tiles.
ALIGNED_CONFIGS = (
    launch_config(128, 128, 32, 8, 3),
    launch_config(64, 128, 32, 4, 3),
    launch_config(64, 64, 64, 4, 3),
)
# Any other launch (odd channel counts, unaligned views) loads element by element, so its address
# registers cap the tile size.
GENERIC_CONFIGS = (
    launch_config(64, 64, 32, 8, 2),
    launch_config(32, 32, 32, 4, 2),
)
# Frame slots of one M tile: scales 2, 3–4, 5–8 fit one tile; larger scales run in chunks of 8 frames.
MAX_SLOTS = 8

_POINTER_ARGS = ("h_ptr", "wq_ptr", "wk_ptr", "wv_ptr", "bq_ptr", "bk_ptr", "bv_ptr", "key_ptr", "qkv_ptr", "hat_ptr")
_UNIT_STRIDE_ARGS = ("stride_hc", "stride_wc", "stride_kc")
# Integer arguments an aligned launch guarantees to be multiples of 16 (pointers: 16 bytes).
_ALIGNED_INTEGERS = (
    "channels", "c_out", "stride_hb", "stride_ht", "stride_hl", "stride_wqn", "stride_wkn", "stride_wvn",
    "stride_kb", "stride_kt", "stride_kl", "stride_ob", "stride_ot", "stride_ol",
)

# Chooses among the pruned candidates on CUDA; `AUTOTUNER.pinned(config)` forces one (tests).
AUTOTUNER = Autotuner()


def slots(scale: int) -> int:
    """Frame slots per M tile: a group's ``scale`` frames rounded up to a power of two, ≤ :data:`MAX_SLOTS`."""
    return min(triton.next_power_of_2(scale), MAX_SLOTS)


@triton.jit
def _project(
    h_rows, row_ok, w_cols, bias_ptr, cols, col_ok, bias_columns, channels, stride_hc, stride_wc,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """fp32 ``[BLOCK_M, BLOCK_N]``: ``Σ_c h[row m, c] · w[cols[n], c] (+ bias[cols[n]])``.

    ``h_rows`` ``[BLOCK_M]`` pointers to the rows' first channel, ``w_cols`` ``[BLOCK_N]`` pointers
    to the rows ``cols`` of the program's weight; the bias is added to columns below
    ``bias_columns`` (0: the projection has none).
    Only these row/column pointers live through the loop; each step's tile addresses are transient.
    """
    ks = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, channels, BLOCK_K):
        k = k0 + ks
        k_ok = k < channels
        k_offsets = k.to(tl.int64)
        a = tl.load(h_rows[:, None] + k_offsets[None, :] * stride_hc, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_cols[None, :] + k_offsets[:, None] * stride_wc, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION)
    bias = tl.load(bias_ptr + cols, mask=cols < bias_columns, other=0.0)
    return acc + bias.to(tl.float32)[None, :]


@triton.jit
def _per_row(x, SLOTS: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_N: tl.constexpr):
    """``[BLOCK_L, BLOCK_N]`` → ``[SLOTS·BLOCK_L, BLOCK_N]``: row ``s·BLOCK_L + l`` holds ``x[l]``."""
    return tl.reshape(tl.broadcast_to(x[None, :, :], (SLOTS, BLOCK_L, BLOCK_N)), (SLOTS * BLOCK_L, BLOCK_N))


@triton.jit
def _slot_sum(x, SLOTS: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_N: tl.constexpr):
    """``[SLOTS·BLOCK_L, BLOCK_N]`` → ``[BLOCK_L, BLOCK_N]``: the sum over the frame slots."""
    return tl.sum(tl.reshape(x, (SLOTS, BLOCK_L, BLOCK_N)), axis=0)


@triton.jit
def _shift(key_rows, key_ok, out_cols, col_ok, is_box, box_sum, box_count, has_key, stride_kc):
    """``[BLOCK_L, BLOCK_N]`` fp32: ``y − mean_box`` for a box operator (0 when the group is no
    box), ``y`` itself for ``sample``, with ``y`` the key projection (``key_rows`` ``[BLOCK_L]``
    pointers, columns ``out_cols`` of ``3 C_out``). Loaded only now, after the projection, so it
    does not occupy registers in the loop.
    """
    y_ptrs = key_rows[:, None] + out_cols.to(tl.int64)[None, :] * stride_kc
    y = tl.load(y_ptrs, mask=key_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
    return tl.where(is_box, tl.where(has_key, y - box_sum / box_count, 0.0), y)


@triton.jit
def _correct(value, shift, is_key_row, is_box, SLOTS: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_N: tl.constexpr):
    """Corrected ``[BLOCK_M, BLOCK_N]`` tile from the projection tile ``value`` and :func:`_shift`:
    a box operator moves every row by the shift, ``sample`` replaces the key frame's rows by ``y``."""
    shift = _per_row(shift, SLOTS, BLOCK_L, BLOCK_N)
    return tl.where(is_box, value + shift, tl.where(is_key_row[:, None], shift, value))


@triton.jit
def corrected_qkv_kernel(
    h_ptr, wq_ptr, wk_ptr, wv_ptr, bq_ptr, bk_ptr, bv_ptr, key_ptr, qkv_ptr, hat_ptr,
    tokens, frames, key_frames, groups, channels, c_out, box_from, bias_flags, scale, first_frame,
    stride_hb, stride_ht, stride_hl, stride_hc,
    stride_wqn, stride_wkn, stride_wvn, stride_wc,
    stride_kb, stride_kt, stride_kl, stride_kc,
    stride_ob, stride_ot, stride_ol,
    SINGLE_CHUNK: tl.constexpr, SLOTS: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One program: frame group ``g`` of batch ``b``, tokens ``l0 … l0+BLOCK_L−1``, BLOCK_N columns
    of projection ``p`` (0, 1, 2: Q, K, V).

    ``h [B, t, L, C]``, ``key [B, t0, L, 3 C_out]`` with any strides; ``wq``/``wk``/``wv``
    ``[C_out, C]`` with their own row strides and one channel stride ``stride_wc``; ``bq``/``bk``/
    ``bv`` ``[C_out]`` contiguous, read only where bit ``p`` of ``bias_flags`` is set (otherwise any
    valid pointer); ``qkv``/``hat`` ``[B, t, L, 3 C_out]`` with unit column stride and shared
    strides. Group ``g`` starts at frame ``first_frame + scale·g`` (:func:`zs_kernels.frames.box_groups`:
    ``1 − scale`` for ``box_left``, else 0) and ``groups`` of them tile the frames; projections from
    ``box_from`` on (1: K and V, or 3: none) use the box operator, the others ``sample``.
    """
    BLOCK_M: tl.constexpr = SLOTS * BLOCK_L
    pid = tl.program_id(0)
    column_blocks = tl.cdiv(c_out, BLOCK_N)
    token_blocks = tl.cdiv(tokens, BLOCK_L)
    col_block = pid % column_blocks
    rest = pid // column_blocks
    projection = rest % 3
    rest = rest // 3
    token_block = rest % token_blocks
    rest = rest // token_blocks
    group = rest % groups
    batch = rest // groups

    first = first_frame + scale * group
    box_count = (tl.minimum(first + scale, frames) - tl.maximum(first, 0)).to(tl.float32)
    # Only groups below key_frames are boxes (box_left's last group is not). The interpreter
    # rejects masks mixing scalar and tensor booleans, hence a token bound instead of `& has_key`.
    has_key = group < key_frames
    key_frame = scale * group

    # Scalar selects (no branches): this program's weight, bias and operator.
    w_ptr = tl.where(projection == 0, wq_ptr, tl.where(projection == 1, wk_ptr, wv_ptr))
    stride_wn = tl.where(projection == 0, stride_wqn, tl.where(projection == 1, stride_wkn, stride_wvn))
    bias_ptr = tl.where(projection == 0, bq_ptr, tl.where(projection == 1, bk_ptr, bv_ptr))
    bias_columns = tl.where(((bias_flags >> projection) & 1) != 0, c_out, 0)
    is_box = projection >= box_from

    cols = col_block * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < c_out
    out_cols = projection * c_out + cols
    w_cols = w_ptr + cols.to(tl.int64) * stride_wn
    tok = token_block * BLOCK_L + tl.arange(0, BLOCK_L)
    key_ok = tok < tl.where(has_key, tokens, 0)
    key_rows = key_ptr + (
        batch.to(tl.int64) * stride_kb + group.to(tl.int64) * stride_kt + tok.to(tl.int64) * stride_kl
    )

    # Rows of the M tile: slot-major, r = slot·BLOCK_L + token. Row offsets are int64 [BLOCK_M]
    # vectors; columns are added at each access, so no int64 [BLOCK_M, BLOCK_N] tensor stays live.
    rows = tl.arange(0, BLOCK_M)
    row_slot = rows // BLOCK_L
    row_tok = token_block * BLOCK_L + rows % BLOCK_L
    row_tok_ok = row_tok < tokens
    h_base = batch.to(tl.int64) * stride_hb + row_tok.to(tl.int64) * stride_hl
    out_base = batch.to(tl.int64) * stride_ob + row_tok.to(tl.int64) * stride_ol

    if SINGLE_CHUNK:
        row_frame = first + row_slot
        row_ok = (row_slot < scale) & (row_frame >= 0) & (row_frame < frames) & row_tok_ok
        acc = _project(
            h_ptr + (h_base + row_frame.to(tl.int64) * stride_ht), row_ok, w_cols, bias_ptr, cols, col_ok,
            bias_columns, channels, stride_hc, stride_wc, BLOCK_M, BLOCK_N, BLOCK_K, DOT_PRECISION,
        )
        out_rows = out_base + row_frame.to(tl.int64) * stride_ot
        out_ok = row_ok[:, None] & col_ok[None, :]
        tl.store((qkv_ptr + out_rows)[:, None] + out_cols[None, :], acc.to(qkv_ptr.dtype.element_ty), mask=out_ok)
        box_sum = _slot_sum(tl.where(row_ok[:, None], acc, 0.0), SLOTS, BLOCK_L, BLOCK_N)
        shift = _shift(key_rows, key_ok, out_cols, col_ok, is_box, box_sum, box_count, has_key, stride_kc)
        hat = _correct(acc, shift, row_frame == key_frame, is_box, SLOTS, BLOCK_L, BLOCK_N)
        tl.store((hat_ptr + out_rows)[:, None] + out_cols[None, :], hat.to(hat_ptr.dtype.element_ty), mask=out_ok)
    else:
        # The group spans several M tiles: store qkv while summing the box, then correct it.
        box_sum = tl.zeros((BLOCK_L, BLOCK_N), dtype=tl.float32)
        for chunk_first in range(first, first + scale, SLOTS):
            row_frame = chunk_first + row_slot
            row_ok = (row_frame < first + scale) & (row_frame >= 0) & (row_frame < frames) & row_tok_ok
            acc = _project(
                h_ptr + (h_base + row_frame.to(tl.int64) * stride_ht), row_ok, w_cols, bias_ptr, cols, col_ok,
                bias_columns, channels, stride_hc, stride_wc, BLOCK_M, BLOCK_N, BLOCK_K, DOT_PRECISION,
            )
            out_rows = out_base + row_frame.to(tl.int64) * stride_ot
            tl.store(
                (qkv_ptr + out_rows)[:, None] + out_cols[None, :], acc.to(qkv_ptr.dtype.element_ty),
                mask=row_ok[:, None] & col_ok[None, :],
            )
            box_sum += _slot_sum(tl.where(row_ok[:, None], acc, 0.0), SLOTS, BLOCK_L, BLOCK_N)
        shift = _shift(key_rows, key_ok, out_cols, col_ok, is_box, box_sum, box_count, has_key, stride_kc)
        # Make this program's qkv stores visible to all of its threads' loads below.
        tl.debug_barrier()
        for chunk_first in range(first, first + scale, SLOTS):
            row_frame = chunk_first + row_slot
            row_ok = (row_frame < first + scale) & (row_frame >= 0) & (row_frame < frames) & row_tok_ok
            out_rows = out_base + row_frame.to(tl.int64) * stride_ot
            out_ok = row_ok[:, None] & col_ok[None, :]
            value = tl.load((qkv_ptr + out_rows)[:, None] + out_cols[None, :], mask=out_ok, other=0.0)
            hat = _correct(value.to(tl.float32), shift, row_frame == key_frame, is_box, SLOTS, BLOCK_L, BLOCK_N)
            tl.store((hat_ptr + out_rows)[:, None] + out_cols[None, :], hat.to(hat_ptr.dtype.element_ty), mask=out_ok)


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs: IEEE products like torch's default (allow_tf32 = False); ignored for 16-bit inputs.
    return "ieee" if dtype == torch.float32 else "tf32"


def _fits(config: LaunchConfig, scale: int, tokens: int, channels: int, c_out: int) -> bool:
    """Whether no tile dimension exceeds the problem's (rounded up to 32): bigger tiles only add masked work."""
    block_l = config["block_m"] // slots(scale)
    return (
        config["block_n"] <= max(32, triton.next_power_of_2(c_out))
        and config["block_k"] <= max(32, triton.next_power_of_2(channels))
        and block_l <= max(32 // slots(scale), triton.next_power_of_2(tokens))
    )


def _one_channel_stride(weights):
    """The weights with one shared channel stride, as the kernel reads them: unchanged when they
    already share one (every ``nn.Linear`` weight, any row slices of one tensor), else those whose
    channel stride is not 1 are copied contiguous (``[C_out, C]`` each, an unusual layout)."""
    if weights[0].shape[1] <= 1 or len({weight.stride(1) for weight in weights}) == 1:
        return weights
    return tuple(weight if weight.stride(1) == 1 else weight.contiguous() for weight in weights)


def _arguments(h, key_qkv, weights, biases, scale: int, kv_kind: str, qkv, hat) -> dict:
    """The kernel's runtime arguments by name (see :func:`corrected_qkv_kernel`)."""
    batch, num_frames, tokens, channels = h.shape
    w_q, w_k, w_v = _one_channel_stride(weights)
    groups = frames.box_groups(kv_kind, num_frames // scale, scale)
    strides = {
        "stride_hb": h.stride(0), "stride_ht": h.stride(1), "stride_hl": h.stride(2), "stride_hc": h.stride(3),
        "stride_wqn": w_q.stride(0), "stride_wkn": w_k.stride(0), "stride_wvn": w_v.stride(0),
        "stride_wc": w_q.stride(1),
        "stride_kb": key_qkv.stride(0), "stride_kt": key_qkv.stride(1), "stride_kl": key_qkv.stride(2),
        "stride_kc": key_qkv.stride(3),
        "stride_ob": qkv.stride(0), "stride_ot": qkv.stride(1), "stride_ol": qkv.stride(2),
    }
    # The kernel reads a bias with unit stride: a strided view is copied (C_out elements). An
    # absent bias is never read; its projection's weight stands in as a valid pointer.
    b_q, b_k, b_v = (
        weight if bias is None else bias.contiguous() for weight, bias in zip((w_q, w_k, w_v), biases)
    )
    return {
        "h_ptr": h, "wq_ptr": w_q, "wk_ptr": w_k, "wv_ptr": w_v, "bq_ptr": b_q, "bk_ptr": b_k, "bv_ptr": b_v,
        "key_ptr": key_qkv, "qkv_ptr": qkv, "hat_ptr": hat,
        "tokens": tokens, "frames": num_frames, "key_frames": groups.boxes, "groups": groups.count,
        "channels": channels, "c_out": w_q.shape[0], "box_from": 3 if kv_kind == "sample" else 1,
        "bias_flags": sum(1 << index for index, bias in enumerate(biases) if bias is not None),
        "scale": scale, "first_frame": groups.first, **strides,
    }


def _aligned(arguments: dict) -> bool:
    """Whether a launch meets the alignment the :data:`ALIGNED_CONFIGS` variants are built for."""
    tensors = [arguments[name] for name in _POINTER_ARGS]
    return vector_alignment(tensors, [arguments[name] for name in _ALIGNED_INTEGERS]) > 1


def _launch(config: LaunchConfig, arguments: dict) -> None:
    """Launch the kernel with ``config`` on one axis-0 program per (batch, group, token block,
    projection, column block)."""
    scale, tokens, c_out = arguments["scale"], arguments["tokens"], arguments["c_out"]
    frame_slots = slots(scale)
    block_l = config["block_m"] // frame_slots
    batch = arguments["h_ptr"].shape[0]
    column_blocks = 3 * triton.cdiv(c_out, config["block_n"])
    grid = (batch * arguments["groups"] * triton.cdiv(tokens, block_l) * column_blocks,)
    if grid[0] == 0:
        return
    corrected_qkv_kernel[grid](
        **arguments,
        SINGLE_CHUNK=frame_slots >= scale,
        SLOTS=frame_slots,
        BLOCK_L=block_l,
        BLOCK_N=config["block_n"],
        BLOCK_K=config["block_k"],
        DOT_PRECISION=_dot_precision(arguments["h_ptr"].dtype),
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )


def corrected_qkv(h, key_qkv, weights, biases, scale: int, kv_kind: str):
    """Fused projection and correction; arguments validated by :func:`zs_kernels.corrected_qkv`.

    Args:
        h: ``[B, t, L, C]`` any strides; key_qkv: ``[B, t / scale, L, 3 C_out]``;
        weights: ``(w_q, w_k, w_v)``, each ``[C_out, C]`` with any strides; biases: ``(b_q, b_k,
        b_v)``, each ``[C_out]`` or None; all one dtype and device.
        scale: integer ``n >= 2``; kv_kind: ``"sample" | "box_left" | "box_right"``.

    Returns:
        ``(qkv, qkv_hat)``, each ``[B, t, L, 3 C_out]`` laid out in ``h``'s memory order
        (:func:`zs_kernels.corrected_qkv.layout.empty_projection`). The launch configuration is
        :data:`AUTOTUNER`'s choice among the pruned :data:`ALIGNED_CONFIGS` when the launch is
        aligned, else among the :data:`GENERIC_CONFIGS`.

    Raises:
        TypeError for float64 inputs (use ``backend="torch"``).
    """
    if h.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(
            f"the Triton QKV correction supports float16, bfloat16 and float32, got h of dtype {h.dtype}; "
            "use backend='torch'"
        )
    columns = 3 * weights[0].shape[0]
    qkv = layout.empty_projection(h, columns)
    hat = layout.empty_projection(h, columns)
    arguments = _arguments(h, key_qkv, weights, biases, scale, kv_kind, qkv, hat)
    family = ALIGNED_CONFIGS if _aligned(arguments) else GENERIC_CONFIGS
    sizes = (scale, arguments["tokens"], arguments["channels"], arguments["c_out"])
    candidates = [config for config in family if _fits(config, *sizes)] or [family[-1]]
    key = (h.dtype, h.device, tuple(h.shape), h.stride(), family, *sizes, arguments["box_from"])
    key += (arguments["bias_flags"],)
    config = AUTOTUNER.choose(key, candidates, lambda config: _launch(config, arguments), h.device)
    _launch(config, arguments)
    return qkv, hat


def aot_configurations(dtype: str):
    """Every shipped variant: each tile config × (one-tile groups of 2, 4, 8 frame slots, chunked
    groups of 8 slots). :data:`ALIGNED_CONFIGS` are built with the alignment their launches
    guarantee (unit channel strides, pointers and :data:`_ALIGNED_INTEGERS` multiples of 16);
    :data:`GENERIC_CONFIGS` with plain ``i32`` integers and no specialisation, the worst case."""
    precision = "ieee" if dtype == "fp32" else "tf32"
    for family in (ALIGNED_CONFIGS, GENERIC_CONFIGS):
        aligned = family is ALIGNED_CONFIGS
        unit_strides = dict.fromkeys(_UNIT_STRIDE_ARGS, 1) if aligned else {}
        signature = aot_signature(corrected_qkv_kernel, dtype, constants=tuple(unit_strides))
        for config in family:
            for frame_slots, single_chunk in ((2, True), (4, True), (MAX_SLOTS, True), (MAX_SLOTS, False)):
                constexprs = {
                    **unit_strides, "SINGLE_CHUNK": single_chunk, "SLOTS": frame_slots,
                    "BLOCK_L": config["block_m"] // frame_slots, "BLOCK_N": config["block_n"],
                    "BLOCK_K": config["block_k"], "DOT_PRECISION": precision,
                }
                chunked = " chunked" if not single_chunk else ""
                label = f"{'aligned' if aligned else 'generic'} {config.label} slots{frame_slots}{chunked}"
                yield KernelConfiguration(
                    corrected_qkv_kernel, label, signature, constexprs, config.num_warps, config.num_stages,
                    divisible_by_16=_POINTER_ARGS + _ALIGNED_INTEGERS if aligned else (),
                )
