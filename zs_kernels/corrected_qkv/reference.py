"""Readable oracle of the corrected projections: ``F.linear``, then the dense back-projection
of Q with ``sample`` and of K, V with ``kv_kind`` (SPEC §4).

Computes in the dtype it is given, so tests call it with float64 inputs for the ground truth.
Arguments are validated and normalised by the public op (:func:`zs_kernels.corrected_qkv`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..back_project import reference as back_project_reference


def corrected_qkv(h, key_qkv, weight, bias, scale: int, kv_kind: str):
    """``(qkv, qkv_hat)``, each ``[B, t, L, 3·C_out]``, from ``h [B, t, L, C]`` and ``key_qkv
    [B, t / scale, L, 3·C_out]``."""
    qkv = F.linear(h, weight, bias)
    c_out = weight.shape[0] // 3
    q_hat = back_project_reference.back_project(qkv[..., :c_out], key_qkv[..., :c_out], "sample", scale, 1)
    kv_hat = back_project_reference.back_project(qkv[..., c_out:], key_qkv[..., c_out:], kv_kind, scale, 1)
    return qkv, torch.cat([q_hat, kv_hat], dim=-1)
