"""Corrected projections in PyTorch: the three projections written into one output, then the
closed-form correction in place.

What CPU tensors get through the public op; plain PyTorch, so ``torch.compile`` traces it.
Arguments are validated and normalised by the public op (:func:`zs_kernels.corrected_qkv`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..back_project.vectorized import correct_in_place
from . import layout


def _frames_first(tensor: torch.Tensor, channels: slice) -> torch.Tensor:
    """``[B, t, L, C]`` → a ``[t, B, L, c]`` view of the given channels."""
    return tensor[..., channels].transpose(0, 1)


def _functional(h, weights, biases) -> bool:
    """Whether the projections must be built out of place: ``out=`` GEMMs support neither autograd
    nor ``torch.compile``'s tracing of a strided output."""
    if torch.compiler.is_compiling():
        return True
    tensors = (h, *weights, *(bias for bias in biases if bias is not None))
    return torch.is_grad_enabled() and any(tensor.requires_grad for tensor in tensors)


def project(h, weights, biases) -> torch.Tensor:
    """``[B, t, L, 3 C_out]`` projections of ``h [B, t, L, C]`` by ``weights`` (each ``[C_out, C]``,
    ``biases`` each ``[C_out]`` or None), laid out like ``h``
    (:func:`zs_kernels.corrected_qkv.layout.empty_projection`). ZeroSmooth's attention hook also
    records an uncorrected stage's ``q | k | v`` with it.

    Eager inference writes each projection straight into its column slice of the output (a GEMM
    with a leading dimension of 3 C_out): no stacked weight and no stacked copy of the outputs.
    Otherwise (autograd, tracing) the three ``F.linear`` outputs are concatenated, which Inductor
    fuses. Either way ``h`` is read in its own memory order, without a copy.
    """
    rows = layout.in_memory_order(h)
    if _functional(h, weights, biases):
        projections = [F.linear(rows, weight, bias) for weight, bias in zip(weights, biases)]
        return layout.from_memory_order(torch.cat(projections, dim=-1), h)
    c_out = weights[0].shape[0]
    qkv = layout.empty_projection(h, 3 * c_out)
    rows = rows.reshape(-1, h.shape[-1])
    out = layout.in_memory_order(qkv).view(-1, 3 * c_out)
    for index, (weight, bias) in enumerate(zip(weights, biases)):
        target = out[:, index * c_out : (index + 1) * c_out]
        if bias is None:
            torch.mm(rows, weight.t(), out=target)
        else:
            torch.addmm(bias, rows, weight.t(), out=target)
    return qkv


def corrected_qkv(h, key_qkv, weights, biases, scale: int, kv_kind: str):
    """The projections of ``h [B, t, L, C]`` by ``weights = (w_q, w_k, w_v)`` (each ``[C_out, C]``,
    ``biases`` each ``[C_out]`` or None), then the correction on a copy of them.

    Returns ``(qkv, qkv_hat)`` of logical shape ``[B, t, L, 3 C_out]`` laid out like ``h``
    (:func:`zs_kernels.corrected_qkv.layout.empty_projection`).
    """
    qkv = project(h, weights, biases)
    columns = qkv.shape[-1]
    qkv_hat = layout.empty_projection(h, columns)
    qkv_hat.copy_(qkv)
    c_out = columns // 3
    for channels, kind in ((slice(0, c_out), "sample"), (slice(c_out, None), kv_kind)):
        out, x, y = (_frames_first(tensor, channels) for tensor in (qkv_hat, qkv, key_qkv))
        correct_in_place(out, x, y, kind, scale)
    return qkv, qkv_hat
