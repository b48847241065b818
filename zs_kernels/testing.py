"""Helpers for checking and benchmarking the ops: the error rule, NaN-filled allocations, and the
peers the benches compare against (each tested against the oracle in ``tests/kernels``).

The error rule is FlashAttention's: compared with a float64 oracle, a kernel's largest error may
be at most twice the largest error of the same computation done by PyTorch in the same low
precision, plus a floor for outputs PyTorch happens to get exactly right. The floor is one unit
in the last place of the largest output, ``eps(dtype) · max|oracle|``: rounding the result to
``dtype`` alone costs up to half of that, so no correct kernel can promise less.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F

from . import frames
from .back_project import back_project


def error_floor(oracle: torch.Tensor, dtype: torch.dtype) -> float:
    """One ulp of the largest output: ``eps(dtype) · max|oracle|``."""
    return torch.finfo(dtype).eps * oracle.abs().max().item()


def assert_within_error_rule(
    result: torch.Tensor, low_precision: torch.Tensor, oracle: torch.Tensor, *, name: str = "output"
) -> tuple[float, float]:
    """Assert ``max|result − oracle| ≤ 2 · max|low_precision − oracle| + eps(dtype) · max|oracle|``.

    Args:
        result: the op's output, in the dtype under test (``result.dtype``).
        low_precision: the same computation by PyTorch (the reference) in that dtype.
        oracle: the reference in float64 on the same inputs upcast.
        name: what the message calls the output.

    Returns:
        ``(error, pytorch_error)``, the two maxima, for reports.

    Raises:
        AssertionError when ``result`` has a non-finite element (e.g. a NaN-filled allocation left
        unwritten), when its shape differs from the oracle's, or when the bound fails.
    """
    assert result.shape == oracle.shape, f"{name}: shape {tuple(result.shape)}, expected {tuple(oracle.shape)}"
    assert torch.isfinite(result).all(), f"{name}: non-finite elements (unwritten output, or overflow)"
    error = (result.double() - oracle).abs().max().item()
    pytorch_error = (low_precision.double() - oracle).abs().max().item()
    floor = error_floor(oracle, result.dtype)
    assert error <= 2 * pytorch_error + floor, (
        f"{name} ({result.dtype}): error {error:.3g} > 2 × PyTorch's {pytorch_error:.3g} + floor {floor:.3g}"
    )
    return error, pytorch_error


@contextlib.contextmanager
def nan_filled_allocations() -> Iterator[None]:
    """Inside the block every uninitialised floating allocation (``torch.empty``,
    ``torch.empty_like``, ``Tensor.new_empty``) starts as NaN, so an op that leaves part of its
    output unwritten fails any comparison."""
    originals = torch.empty, torch.empty_like, torch.Tensor.new_empty

    def fill(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.fill_(float("nan")) if tensor.is_floating_point() else tensor

    empty, empty_like, new_empty = originals
    torch.empty = lambda *args, **kwargs: fill(empty(*args, **kwargs))
    torch.empty_like = lambda *args, **kwargs: fill(empty_like(*args, **kwargs))
    torch.Tensor.new_empty = lambda self, *args, **kwargs: fill(new_empty(self, *args, **kwargs))
    try:
        yield
    finally:
        torch.empty, torch.empty_like, torch.Tensor.new_empty = originals


def per_window_loop(q, k, v, window: int, stride: int, weighting: str = "pyramid"):
    """The diffusers FreeNoise pattern, as a peer: per window, slice (views), attend with
    ``F.scaled_dot_product_attention``, accumulate the weighted result into a zero-initialised
    buffer; then divide by the summed weights. ``q, k, v [N, H, F, D]``; windows and weights
    from :mod:`zs_kernels.frames` (so with a tail window it computes SPEC §5, unlike diffusers'
    own block), including ``F < window``."""
    layout = frames.windows(q.shape[2], window, stride)
    weights = frames.window_weights(layout.length, weighting).to(q.device, q.dtype)[:, None]
    accumulated = torch.zeros_like(q)
    total = torch.zeros(q.shape[2], 1, device=q.device, dtype=q.dtype)
    for start in layout.starts:
        span = slice(start, start + layout.length)
        attended = F.scaled_dot_product_attention(q[:, :, span], k[:, :, span], v[:, :, span])
        accumulated[:, :, span] += weights * attended
        total[span] += weights
    return accumulated / total


def sdpa_per_window(q, k, v, window: int, stride: int) -> None:
    """Plain ``F.scaled_dot_product_attention`` on every window, outputs discarded: the
    attention cost alone, the floor under any per-window implementation."""
    layout = frames.windows(q.shape[2], window, stride)
    for start in layout.starts:
        span = slice(start, start + layout.length)
        F.scaled_dot_product_attention(q[:, :, span], k[:, :, span], v[:, :, span])


def unfused_corrected_qkv(h, h_key, weight, bias, *, scale: int, kv_kind: str):
    """What a straightforward implementation of SPEC §4 does, as a peer: back-project the
    attention input twice (``sample`` for Q, ``kv_kind`` for K and V, each materialised), then
    six projections (Q, K, V of ``h`` and of the corrected inputs).

    ``h [B, t, L, C]``, ``h_key [B, t / scale, L, C]`` (the key branch's *inputs*), ``weight
    [3 C_out, C]``, ``bias [3 C_out]`` or None. Returns ``(plain, corrected)``, each the list of
    the three ``[B, t, L, C_out]`` projections Q, K, V.
    """
    weights = weight.chunk(3)
    biases = (None, None, None) if bias is None else bias.chunk(3)
    q_input = back_project(h, h_key, "sample", scale, frame_dim=1, backend="torch")
    kv_input = back_project(h, h_key, kv_kind, scale, frame_dim=1, backend="torch")
    plain = [F.linear(h, w, b) for w, b in zip(weights, biases)]
    corrected = [F.linear(x, w, b) for x, w, b in zip((q_input, kv_input, kv_input), weights, biases)]
    return plain, corrected
