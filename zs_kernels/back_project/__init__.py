"""Back-projection onto key frames along a frame axis (SPEC §3): the public op.

``reference.py`` is the dense-matrix oracle, ``vectorized.py`` the closed form. The op moves
each element once, so it has no Triton kernel and nothing to register as a custom op: both
backends are plain PyTorch that ``torch.compile`` traces.
"""

from __future__ import annotations

import torch

from .. import _checks, _dispatch, frames
from . import reference, vectorized


def _check_args(x, y, kind, scale, frame_dim) -> tuple[int, int]:
    """Validate ``back_project``'s arguments; return ``(scale, frame_dim)`` normalised."""
    _checks.float_tensor("x", x)
    _checks.float_tensor("y", y, ndim=x.dim())
    _checks.same_dtype_and_device("x", x, y=y)
    _checks.choice("kind", kind, frames.OPERATOR_KINDS)
    scale = frames.check_scale(scale)
    frame_dim = _checks.dimension("frame_dim", frame_dim, x.dim())
    if x.shape[frame_dim] % scale:
        raise ValueError(
            f"x has {x.shape[frame_dim]} frames along frame_dim={frame_dim}, expected a multiple of scale={scale}"
        )
    expected = list(x.shape)
    expected[frame_dim] = x.shape[frame_dim] // scale
    _checks.shape("y", y, tuple(expected), f"(x's shape with frames / scale = {expected[frame_dim]} key frames)")
    return scale, frame_dim


def back_project(
    x: torch.Tensor, y: torch.Tensor, kind: str, scale: int, frame_dim: int = 1, *, backend: str = "auto"
) -> torch.Tensor:
    """Back-project ``x`` onto key frames ``y`` along ``frame_dim``: ``(I - A⁺A) x + A⁺ y`` (SPEC §3).

    Args:
        x: long-branch tensor with ``scale * t0`` frames along ``frame_dim``; any float dtype,
            any strides.
        y: key-branch tensor, ``x``'s shape with ``t0`` frames along ``frame_dim``; same dtype/device.
        kind: ``"sample"``, ``"box_left"`` or ``"box_right"`` (:mod:`zs_kernels.frames`).
        scale: integer frame scale ``n >= 2``.
        frame_dim: the frame axis (negative values count from the end).
        backend: ``"auto"``/``"torch"`` (closed form, any device) or ``"reference"`` (dense
            matrices). There is no Triton kernel: ``"triton"`` raises.

    Returns:
        A contiguous tensor of ``x``'s shape and dtype.

    Non-finite inputs: on the ``"torch"`` backend each output element depends on the same
    position and channel of ``x`` and ``y`` only, along the frames as the closed form says:
    ``sample`` key frames take ``y`` (``x``'s key frames do not reach the output) and other frames
    keep ``x``; a box's frames all depend on every frame of the box in ``x`` and on its ``y``;
    frames in no box keep ``x``. NaN reaches those outputs and no others (±Inf follows IEEE
    arithmetic there). The ``"reference"`` backend multiplies dense matrices, so a non-finite
    value reaches every frame of its position and channel (``0 · NaN = NaN``).

    Raises:
        TypeError / ValueError naming the argument for non-float tensors, mismatched shapes,
        dtypes or devices, unknown ``kind`` or ``backend``, a ``scale`` that is not an integer
        ``>= 2``, or ``backend="triton"``.
    """
    scale, frame_dim = _check_args(x, y, kind, scale, frame_dim)
    _checks.choice("backend", backend, _dispatch.BACKENDS)
    if backend == "triton":
        raise ValueError("back_project has no Triton kernel (it is a single elementwise pass); use backend='torch'")
    if backend == "reference":
        return reference.back_project(x, y, kind, scale, frame_dim).contiguous()
    return vectorized.back_project(x, y, kind, scale, frame_dim)
