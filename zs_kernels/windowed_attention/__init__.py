"""Windowed temporal attention with FreeNoise fusion (SPEC §5): the public op.

``reference.py`` is the readable oracle, ``vectorized.py`` the PyTorch path, ``triton.py`` the
fused kernel and its launcher (imported on first use). Only the Triton kernel is registered as a
``torch.library`` custom op (``zs_kernels::windowed_attention``, with a fake implementation);
the other backends are plain PyTorch that ``torch.compile`` traces.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch

from .. import _checks, _dispatch, frames
from . import reference, vectorized

_OP = "windowed_attention"
# Distinguishes "scale= not passed" from an explicit scale=None during the deprecation period.
_UNSET = object()


def _check_args(q, k, v, window, stride, weighting, softmax_scale, rel_k, rel_v, corrected, blend):
    """Validate the public arguments; return ``(window, stride, softmax_scale, blend)`` normalised."""
    _checks.float_tensor("q", q, ndim=4)
    for name, tensor in (("k", k), ("v", v)):
        _checks.float_tensor(name, tensor, ndim=4)
        _checks.shape(name, tensor, tuple(q.shape), "([N, H, F, D] like q)")
    _checks.same_dtype_and_device("q", q, k=k, v=v)
    window = _checks.integer("window", window, minimum=1)
    stride = _checks.integer("stride", stride, minimum=1, maximum=window)
    _checks.choice("weighting", weighting, frames.WEIGHT_SCHEMES)
    if softmax_scale is None:
        softmax_scale = q.shape[-1] ** -0.5
    softmax_scale = _checks.real("softmax_scale", softmax_scale, positive=True)
    for name, table in (("rel_k", rel_k), ("rel_v", rel_v)):
        if table is None:
            continue
        _checks.float_tensor(name, table, ndim=2)
        _checks.same_dtype_and_device("q", q, **{name: table})
        if table.shape[0] % 2 == 0 or table.shape[1] != q.shape[-1]:
            raise ValueError(
                f"{name} must have shape [2R+1, D={q.shape[-1]}] (an odd number of relative distances), "
                f"got {tuple(table.shape)}"
            )
    if corrected is None:
        if blend is not None:
            raise ValueError(f"blend={blend!r} was given without corrected=(q_hat, k_hat, v_hat)")
        return window, stride, softmax_scale, None
    if not isinstance(corrected, (tuple, list)) or len(corrected) != 3:
        raise ValueError(f"corrected must be a tuple (q_hat, k_hat, v_hat), got {type(corrected).__name__}")
    for name, tensor in zip(("q_hat", "k_hat", "v_hat"), corrected):
        _checks.float_tensor(f"corrected {name}", tensor, ndim=4)
        _checks.shape(f"corrected {name}", tensor, tuple(q.shape), "([N, H, F, D] like q)")
        _checks.same_dtype_and_device("q", q, **{f"corrected {name}": tensor})
    if blend is None:
        raise ValueError("blend must be a real number when corrected is given, got None")
    return window, stride, softmax_scale, _checks.real("blend", blend)


@torch.library.custom_op("zs_kernels::windowed_attention", mutates_args=())
def _triton_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    stride: int,
    weighting: str,
    softmax_scale: float,
    rel_k: Optional[torch.Tensor],
    rel_v: Optional[torch.Tensor],
    q_hat: Optional[torch.Tensor],
    k_hat: Optional[torch.Tensor],
    v_hat: Optional[torch.Tensor],
    blend: Optional[float],
) -> torch.Tensor:
    corrected = None if q_hat is None else (q_hat, k_hat, v_hat)
    kernel = _dispatch.kernel_module(_OP)
    return kernel.windowed_attention(q, k, v, window, stride, weighting, softmax_scale, rel_k, rel_v, corrected, blend)


@_triton_op.register_fake
def _(q, k, v, window, stride, weighting, softmax_scale, rel_k, rel_v, q_hat, k_hat, v_hat, blend):
    return torch.empty_like(q)


def windowed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    window: int,
    stride: int,
    weighting: str = "pyramid",
    softmax_scale: Optional[float] = None,
    rel_k: Optional[torch.Tensor] = None,
    rel_v: Optional[torch.Tensor] = None,
    corrected: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None,
    blend: Optional[float] = None,
    backend: str = "auto",
    scale=_UNSET,
) -> torch.Tensor:
    """Temporal attention over overlapping windows fused with FreeNoise weights (SPEC §5).

    Every window (:func:`zs_kernels.window_starts`) is an ordinary softmax attention over its own
    frames; frame ``f``'s output is the :func:`zs_kernels.window_weights`-weighted mean of the
    windows holding it.

    Args:
        q, k, v: ``[N, H, F, D]`` (sequences, heads, frames, head dim), any strides, one float
            dtype and device. Half precision is accumulated in float32.
        window: window length ``W >= 1`` (the trained frame count); ``F <= W`` is plain attention.
        stride: distance between window starts, ``1 <= stride <= window``.
        weighting: ``"pyramid"`` (``min(r + 1, W - r)``) or ``"flat"``.
        softmax_scale: scale of the scores before the softmax, default ``D ** -0.5`` (flash-attn's
            name). ``scale=`` is its deprecated former name: it still works for one release, with a
            ``DeprecationWarning`` (``scale`` means the frame factor ``n`` everywhere else).
        rel_k, rel_v: optional relative-position tables ``[2R + 1, D]``: scores gain
            ``q_i · rel_k[clip(j - i, -R, R) + R]`` (before scaling) and outputs gain
            ``Σ_j p_ij rel_v[clip(j - i, -R, R) + R]``.
        corrected: optional ``(q_hat, k_hat, v_hat)`` like ``q``; with ``blend = w`` the result is
            ``o + w (ô - o)`` where ``ô`` is the windowed attention of the corrected inputs (one
            kernel launch on the Triton backend).
        blend: the blend strength, required with ``corrected``.
        backend: ``"auto" | "torch" | "triton" | "reference"``. ``"auto"`` takes the Triton
            kernel for CUDA tensors when it supports the problem, the torch path otherwise.

    Returns:
        ``[N, H, F, D]`` in ``q``'s dtype, laid out like ``torch.empty_like(q)`` (``q``'s strides
        when ``q`` is dense).

    Non-finite inputs (as in ``F.scaled_dot_product_attention``, NaN propagates to the outputs
    that depend on it and no further; ±Inf follows IEEE arithmetic there, e.g. a score of −Inf
    masks its key): a NaN in ``q`` at frame ``f`` makes output frame ``f`` NaN; in ``k`` at frame
    ``j``, every output frame sharing a window with ``j``; in ``v[..., j, d]``, channel ``d`` of
    those frames (the torch backend may write NaN there for ±Inf too). Other sequences, heads and
    frames are unaffected, on every backend. The same holds for ``q_hat, k_hat, v_hat`` (whatever
    ``blend``, since ``0 · NaN`` is NaN). A non-finite row of ``rel_k`` reaches the frames whose
    windows hold a pair at that distance; a non-finite entry of ``rel_v`` reaches those frames on
    the reference backend, and that channel of every output on the torch and Triton backends.

    Raises:
        TypeError / ValueError naming the argument for wrong ranks, shapes, dtypes or devices,
        ``window < 1``, ``stride`` outside ``[1, window]``, unknown ``weighting``, malformed
        tables, a non-positive ``softmax_scale``, ``blend`` without ``corrected`` or the reverse,
        or both ``scale`` and ``softmax_scale``; RuntimeError when ``backend`` cannot run here;
        ``backend="triton"`` raises TypeError / ValueError (pointing at ``"torch"``) for float64,
        ``D > 256``, ``min(W, F) > 32``, or tables / dual pass beyond the kernel's tiles.
    """
    if scale is not _UNSET:
        if softmax_scale is not None:
            raise TypeError(
                "windowed_attention got both softmax_scale= and its deprecated name scale=; pass softmax_scale"
            )
        warnings.warn(
            "windowed_attention(scale=...) is deprecated; pass softmax_scale= (scale means the frame factor n "
            "elsewhere in zs_kernels)",
            DeprecationWarning,
            stacklevel=2,
        )
        softmax_scale = scale
    window, stride, softmax_scale, blend = _check_args(
        q, k, v, window, stride, weighting, softmax_scale, rel_k, rel_v, corrected, blend
    )
    requested, backend = backend, _dispatch.resolve_backend(backend, q, _OP)
    if backend == "triton" and requested == "auto":
        if _dispatch.kernel_module(_OP).unsupported_reason(q, window, rel_k, rel_v, corrected) is not None:
            backend = "torch"
    if backend == "triton":
        q_hat, k_hat, v_hat = (None, None, None) if corrected is None else corrected
        return _triton_op(q, k, v, window, stride, weighting, softmax_scale, rel_k, rel_v, q_hat, k_hat, v_hat, blend)
    arguments = (window, stride, weighting, softmax_scale, rel_k, rel_v, corrected, blend)
    if backend == "reference":
        return torch.empty_like(q).copy_(reference.windowed_attention(q, k, v, *arguments))
    return vectorized.windowed_attention(q, k, v, *arguments)
