"""Argument checks shared by every backend.

Each check raises with a message that names the argument, the value received and what was
expected, so a caller never meets a silent wrong answer or an error deep inside a kernel.
"""

from __future__ import annotations

import numbers

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def integer(name: str, value, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` as an int, or raise if it is not an integer within the bounds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def choice(name: str, value, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def float_tensor(name: str, tensor, ndim: int | None = None) -> torch.Tensor:
    """Check that ``tensor`` is a floating-point tensor, optionally of rank ``ndim``."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must have a floating dtype (float16, bfloat16, float32, float64), "
            f"got {tensor.dtype}"
        )
    if ndim is not None and tensor.dim() != ndim:
        raise ValueError(
            f"{name} must have {ndim} dimensions, got shape {tuple(tensor.shape)} ({tensor.dim()} dims)"
        )
    return tensor


def same_dtype_and_device(reference_name: str, reference: torch.Tensor, **others) -> None:
    """Check that every tensor in ``others`` shares ``reference``'s dtype and device."""
    for name, tensor in others.items():
        if tensor.dtype != reference.dtype:
            raise TypeError(f"{name} has dtype {tensor.dtype}, expected {reference.dtype} like {reference_name}")
        if tensor.device != reference.device:
            raise ValueError(f"{name} is on {tensor.device}, expected {reference.device} like {reference_name}")


def shape(name: str, tensor: torch.Tensor, expected: tuple[int, ...], meaning: str) -> None:
    if tuple(tensor.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)} {meaning}, got {tuple(tensor.shape)}")


def frame_dim(dim, ndim: int) -> int:
    dim = integer("frame_dim", dim)
    if not -ndim <= dim < ndim:
        raise ValueError(f"frame_dim must be in [{-ndim}, {ndim - 1}] for a {ndim}-dim tensor, got {dim}")
    return dim % ndim


def back_project_args(x, y, kind, scale, dim) -> tuple[int, int]:
    """Check ``back_project``'s arguments; return ``(scale, frame_dim)`` normalised."""
    from .frames import OPERATOR_KINDS, check_scale

    float_tensor("x", x)
    float_tensor("y", y, ndim=x.dim())
    same_dtype_and_device("x", x, y=y)
    choice("kind", kind, OPERATOR_KINDS)
    scale = check_scale(scale)
    dim = frame_dim(dim, x.dim())
    expected = list(x.shape)
    if x.shape[dim] % scale:
        raise ValueError(
            f"x has {x.shape[dim]} frames along frame_dim={dim}, expected a multiple of scale={scale}"
        )
    expected[dim] = x.shape[dim] // scale
    shape("y", y, tuple(expected), f"(x's shape with frames / scale = {expected[dim]} key frames)")
    return scale, dim


def windowed_attention_args(q, k, v, window, stride, weighting, scale, rel_k, rel_v, corrected, blend):
    """Check ``windowed_attention``'s arguments; return ``(window, stride, scale, blend)`` normalised."""
    from .frames import WEIGHT_SCHEMES

    float_tensor("q", q, ndim=4)
    for name, tensor in (("k", k), ("v", v)):
        float_tensor(name, tensor, ndim=4)
        shape(name, tensor, tuple(q.shape), "([N, H, F, D] like q)")
    same_dtype_and_device("q", q, k=k, v=v)
    window = integer("window", window, minimum=1)
    stride = integer("stride", stride, minimum=1, maximum=window)
    choice("weighting", weighting, WEIGHT_SCHEMES)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    elif isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not scale > 0:
        raise ValueError(f"scale must be a positive number or None, got {scale!r}")
    for name, table in (("rel_k", rel_k), ("rel_v", rel_v)):
        if table is None:
            continue
        float_tensor(name, table, ndim=2)
        same_dtype_and_device("q", q, **{name: table})
        if table.shape[0] % 2 == 0 or table.shape[1] != q.shape[-1]:
            raise ValueError(
                f"{name} must have shape [2R+1, D={q.shape[-1]}] (an odd number of relative distances), "
                f"got {tuple(table.shape)}"
            )
    if corrected is None:
        if blend is not None:
            raise ValueError(f"blend={blend!r} was given without corrected=(q_hat, k_hat, v_hat)")
        return window, stride, float(scale), None
    if not isinstance(corrected, (tuple, list)) or len(corrected) != 3:
        raise ValueError("corrected must be a tuple (q_hat, k_hat, v_hat)")
    for name, tensor in zip(("q_hat", "k_hat", "v_hat"), corrected):
        float_tensor(f"corrected {name}", tensor, ndim=4)
        shape(f"corrected {name}", tensor, tuple(q.shape), "([N, H, F, D] like q)")
        same_dtype_and_device("q", q, **{f"corrected {name}": tensor})
    if isinstance(blend, bool) or not isinstance(blend, numbers.Real):
        raise ValueError(f"blend must be a real number when corrected is given, got {blend!r}")
    return window, stride, float(scale), float(blend)


def corrected_qkv_args(h, key_qkv, weight, bias, scale, kv_kind) -> int:
    """Check ``corrected_qkv``'s arguments; return the frame scale."""
    from .frames import OPERATOR_KINDS, check_scale

    float_tensor("h", h, ndim=4)
    float_tensor("weight", weight, ndim=2)
    float_tensor("key_qkv", key_qkv, ndim=4)
    same_dtype_and_device("h", h, weight=weight, key_qkv=key_qkv)
    scale = check_scale(scale)
    choice("kv_kind", kv_kind, OPERATOR_KINDS)
    batch, frames, tokens, channels = h.shape
    if weight.shape[0] % 3 or weight.shape[1] != channels:
        raise ValueError(
            f"weight must have shape [3*C_out, C={channels}] (to_q|to_k|to_v stacked), got {tuple(weight.shape)}"
        )
    if bias is not None:
        float_tensor("bias", bias, ndim=1)
        same_dtype_and_device("h", h, bias=bias)
        shape("bias", bias, (weight.shape[0],), "([3*C_out] like weight's rows)")
    if frames % scale:
        raise ValueError(f"h has t={frames} frames, expected a multiple of scale={scale}")
    shape(
        "key_qkv",
        key_qkv,
        (batch, frames // scale, tokens, weight.shape[0]),
        f"([B, t0 = t/scale = {frames // scale}, L, 3*C_out])",
    )
    return scale
