"""Leaf argument checks shared by every op.

Each check raises with a message that names the argument, the value received and what was
expected, so a caller never meets a silent wrong answer or an error deep inside a kernel. This
module imports nothing of ours: the ops' own validation composes these checks.
"""

from __future__ import annotations

import numbers

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def integer(name: str, value, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` as an int, or raise if it is not an integer within the bounds.

    Raises:
        TypeError for a non-integer (``bool`` included); ValueError outside ``[minimum, maximum]``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def real(name: str, value, *, positive: bool = False) -> float:
    """Return ``value`` as a float, or raise ValueError if it is not a real number (> 0 if ``positive``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or (positive and not value > 0):
        expected = "a positive real number" if positive else "a real number"
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return float(value)


def choice(name: str, value, allowed: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``allowed``, else raise ValueError listing them."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def float_tensor(name: str, tensor, ndim: int | None = None) -> torch.Tensor:
    """Check that ``tensor`` is a floating-point tensor, optionally of rank ``ndim``.

    Raises:
        TypeError for a non-tensor or a non-float dtype; ValueError for the wrong rank.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must have a floating dtype (float16, bfloat16, float32, float64), got {tensor.dtype}"
        )
    if ndim is not None and tensor.dim() != ndim:
        raise ValueError(
            f"{name} must have {ndim} dimensions, got shape {tuple(tensor.shape)} ({tensor.dim()} dims)"
        )
    return tensor


def same_dtype_and_device(reference_name: str, reference: torch.Tensor, **others: torch.Tensor) -> None:
    """Check that every tensor in ``others`` shares ``reference``'s dtype (TypeError) and device (ValueError)."""
    for name, tensor in others.items():
        if tensor.dtype != reference.dtype:
            raise TypeError(f"{name} has dtype {tensor.dtype}, expected {reference.dtype} like {reference_name}")
        if tensor.device != reference.device:
            raise ValueError(f"{name} is on {tensor.device}, expected {reference.device} like {reference_name}")


def shape(name: str, tensor: torch.Tensor, expected: tuple[int, ...], meaning: str) -> None:
    """Raise ValueError unless ``tensor`` has shape ``expected``; ``meaning`` says where it comes from."""
    if tuple(tensor.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)} {meaning}, got {tuple(tensor.shape)}")


def dimension(name: str, dim, ndim: int) -> int:
    """Normalise a dimension index of an ``ndim``-dim tensor to ``[0, ndim)``; negative counts from the end."""
    dim = integer(name, dim)
    if not -ndim <= dim < ndim:
        raise ValueError(f"{name} must be in [{-ndim}, {ndim - 1}] for a {ndim}-dim tensor, got {dim}")
    return dim % ndim
