"""Q, K, V projections fused with their back-projection onto the key branch (SPEC §3–4): the public op.

``reference.py`` is the readable oracle, ``vectorized.py`` the PyTorch path, ``triton.py`` the
fused GEMM + correction kernel and its launcher (imported on first use), ``layout.py`` the output
layout every backend follows. Only the Triton kernel is registered as a ``torch.library`` custom
op (``zs_kernels::corrected_qkv``, with a fake implementation); the other backends are plain
PyTorch that ``torch.compile`` traces.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import _checks, _dispatch, frames
from . import layout, reference, vectorized

_OP = "corrected_qkv"


def _check_args(h, key_qkv, weight, bias, scale, kv_kind) -> int:
    """Validate the public arguments; return the frame scale."""
    _checks.float_tensor("h", h, ndim=4)
    _checks.float_tensor("weight", weight, ndim=2)
    _checks.float_tensor("key_qkv", key_qkv, ndim=4)
    _checks.same_dtype_and_device("h", h, weight=weight, key_qkv=key_qkv)
    scale = frames.check_scale(scale)
    _checks.choice("kv_kind", kv_kind, frames.OPERATOR_KINDS)
    batch, num_frames, tokens, channels = h.shape
    if weight.shape[0] % 3 or weight.shape[1] != channels:
        raise ValueError(
            f"weight must have shape [3*C_out, C={channels}] (to_q|to_k|to_v stacked), got {tuple(weight.shape)}"
        )
    if bias is not None:
        _checks.float_tensor("bias", bias, ndim=1)
        _checks.same_dtype_and_device("h", h, bias=bias)
        _checks.shape("bias", bias, (weight.shape[0],), "([3*C_out] like weight's rows)")
    if num_frames % scale:
        raise ValueError(f"h has t={num_frames} frames, expected a multiple of scale={scale}")
    _checks.shape(
        "key_qkv",
        key_qkv,
        (batch, num_frames // scale, tokens, weight.shape[0]),
        f"([B, t0 = t/scale = {num_frames // scale}, L, 3*C_out])",
    )
    return scale


@torch.library.custom_op("zs_kernels::corrected_qkv", mutates_args=())
def _triton_op(
    h: torch.Tensor,
    key_qkv: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    scale: int,
    kv_kind: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _dispatch.kernel_module(_OP).corrected_qkv(h, key_qkv, weight, bias, scale, kv_kind)


@_triton_op.register_fake
def _(h, key_qkv, weight, bias, scale, kv_kind):
    return layout.empty_projection(h, weight.shape[0]), layout.empty_projection(h, weight.shape[0])


def corrected_qkv(
    h: torch.Tensor,
    key_qkv: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    scale: int,
    kv_kind: str,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Q, K, V projections of ``h`` and their back-projections onto the key branch (SPEC §4).

    Args:
        h: ``[B, t, L, C]`` attention input of the long branch, any strides (e.g. the temporal
            layout ``[B·L, t, C]`` viewed as ``[B, t, L, C]``).
        key_qkv: ``[B, t0, L, 3 C_out]`` the key branch's projections, ``t = scale · t0``.
        weight: ``[3 C_out, C]``, ``to_q | to_k | to_v`` weights stacked.
        bias: optional ``[3 C_out]``.
        scale: integer frame scale ``n >= 2``.
        kv_kind: operator for K and V: ``"sample" | "box_left" | "box_right"``; Q always uses
            ``"sample"``.
        backend: ``"auto" | "torch" | "triton" | "reference"``; ``"auto"`` takes the Triton
            kernel for CUDA tensors (float64 goes to the torch path: the kernel computes in fp32).

    Returns:
        ``(qkv, qkv_hat)``: original and corrected projections, each of logical shape
        ``[B, t, L, 3 C_out]`` in ``h``'s dtype, laid out in ``h``'s memory order
        (:func:`zs_kernels.corrected_qkv.layout.empty_projection`) on every backend.

    Non-finite inputs: ``qkv`` behaves like ``F.linear`` (a NaN in a row of ``h`` reaches every
    column of that row, one in a weight row or bias entry that column of every row). ``qkv_hat``
    then follows :func:`zs_kernels.back_project` on the ``"torch"`` and ``"triton"`` backends: Q
    columns at key frames take ``key_qkv`` (so ``h``'s key frames do not reach them), a box's
    frames in K and V columns depend on every frame of the box, frames in no box keep ``qkv``;
    nothing else is affected. The ``"reference"`` backend's dense matrices carry a non-finite
    projection to every frame of its (batch, token, column).

    Raises:
        TypeError / ValueError naming the argument for wrong ranks, dtypes or devices, a weight
        that is not ``[3 C_out, C]``, ``key_qkv`` frames ``!= t / scale``, or unknown ``kv_kind``;
        RuntimeError when ``backend`` cannot run here; ``backend="triton"`` raises TypeError for
        float64.
    """
    scale = _check_args(h, key_qkv, weight, bias, scale, kv_kind)
    requested, backend = backend, _dispatch.resolve_backend(backend, h, _OP)
    if backend == "triton" and requested == "auto" and h.dtype == torch.float64:
        backend = "torch"
    if backend == "triton":
        return _triton_op(h, key_qkv, weight, bias, scale, kv_kind)
    if backend == "reference":
        results = reference.corrected_qkv(h, key_qkv, weight, bias, scale, kv_kind)
        return tuple(layout.empty_projection(h, weight.shape[0]).copy_(result) for result in results)
    return vectorized.corrected_qkv(h, key_qkv, weight, bias, scale, kv_kind)
