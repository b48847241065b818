"""Readable oracle of the corrected projections: one ``F.linear`` per projection, then the dense
back-projection of Q with ``sample`` and of K, V with ``kv_kind`` (SPEC §4).

Computes in the dtype it is given, so tests call it with float64 inputs for the ground truth.
Arguments are validated and normalised by the public op (:func:`zs_kernels.corrected_qkv`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..back_project import reference as back_project_reference


def corrected_qkv(h, key_qkv, weights, biases, scale: int, kv_kind: str):
    """``(qkv, qkv_hat)``, each ``[B, t, L, 3·C_out]``, from ``h [B, t, L, C]``, ``weights =
    (w_q, w_k, w_v)`` each ``[C_out, C]``, ``biases`` each ``[C_out]`` or None, and ``key_qkv
    [B, t / scale, L, 3·C_out]``."""
    projections = [F.linear(h, weight, bias) for weight, bias in zip(weights, biases)]
    keys = key_qkv.chunk(3, dim=-1)
    kinds = ("sample", kv_kind, kv_kind)
    corrected = [
        back_project_reference.back_project(x, y, kind, scale, 1) for x, y, kind in zip(projections, keys, kinds)
    ]
    return torch.cat(projections, dim=-1), torch.cat(corrected, dim=-1)
