"""Public ops: validation, backend dispatch, and registration as PyTorch custom ops.

Backends:

* ``"torch"``     the vectorised PyTorch path (:mod:`zs_kernels.torch_path`), any device;
* ``"triton"``    the Triton kernels (:mod:`zs_kernels.triton`): CUDA tensors, or CPU tensors when
  the Triton interpreter is on (``TRITON_INTERPRET=1``), which is how tests run them;
* ``"reference"`` the readable oracle (:mod:`zs_kernels.reference`);
* ``"auto"``      Triton for CUDA tensors when Triton is installed and the kernel supports the
  problem (dtype, head dim, window length), the torch path otherwise.

Each op is a ``torch.library.custom_op`` with a fake implementation, so models that call them
compile with ``torch.compile(fullgraph=True)``. The ops are for inference (sampling): they
register no autograd formula.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Optional

import torch

from . import _validate, layout, torch_path

BACKENDS = ("auto", "torch", "triton", "reference")


def triton_interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def resolve_backend(backend: str, tensor: torch.Tensor, op: str) -> str:
    """The concrete backend for ``op`` on ``tensor``'s device; raises if ``backend`` cannot run it."""
    _validate.choice("backend", backend, BACKENDS)
    if backend == "auto":
        return "triton" if tensor.is_cuda and _triton_installed() else "torch"
    if backend == "triton":
        if not _triton_installed():
            raise RuntimeError(f"backend='triton' for {op} needs the triton package, which is not installed")
        if not (tensor.is_cuda or (tensor.device.type == "cpu" and triton_interpreter_enabled())):
            raise RuntimeError(
                f"backend='triton' for {op} needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 "
                f"set before triton is imported; got tensors on {tensor.device}"
            )
    return backend


def _kernel_module(name: str):
    """Import ``zs_kernels.triton.<name>`` on first use, so CPU-only users never import triton."""
    return importlib.import_module(f"zs_kernels.triton.{name}")


# --- back_project ---------------------------------------------------------------------------


@torch.library.custom_op("zs_kernels::back_project", mutates_args=())
def _back_project_op(x: torch.Tensor, y: torch.Tensor, kind: str, scale: int, frame_dim: int, backend: str) -> torch.Tensor:
    if backend == "reference":
        from . import reference

        return reference.back_project(x, y, kind, scale, frame_dim).contiguous()
    return torch_path.back_project(x, y, kind, scale, frame_dim).contiguous()


@_back_project_op.register_fake
def _(x, y, kind, scale, frame_dim, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def back_project(x: torch.Tensor, y: torch.Tensor, kind: str, scale: int, frame_dim: int = 1, *, backend: str = "auto") -> torch.Tensor:
    """Back-project ``x`` onto key frames ``y`` along ``frame_dim``: ``(I - A⁺A) x + A⁺ y`` (SPEC §3).

    Args:
        x: long-branch tensor with ``scale * t0`` frames along ``frame_dim``; any float dtype.
        y: key-branch tensor, ``x``'s shape with ``t0`` frames along ``frame_dim``; same dtype/device.
        kind: ``"sample"``, ``"box_left"`` or ``"box_right"`` (:mod:`zs_kernels.frames`).
        scale: integer frame scale ``n >= 2``.
        frame_dim: the frame axis (negative values count from the end).
        backend: ``"auto"``/``"torch"`` (closed form, any device) or ``"reference"`` (dense
            matrices). The op moves each element once, so it has no Triton kernel and
            ``"triton"`` raises.

    Returns:
        A contiguous tensor of ``x``'s shape and dtype.

    Raises:
        TypeError / ValueError naming the argument for non-float tensors, mismatched shapes,
        dtypes or devices, unknown ``kind``, or a ``scale`` that is not an integer ``>= 2``.
    """
    scale, frame_dim = _validate.back_project_args(x, y, kind, scale, frame_dim)
    # A single elementwise pass: the torch path is the fast path on every device.
    backend = resolve_backend("torch" if backend == "auto" else backend, x, "back_project")
    if backend == "triton":
        raise ValueError("back_project has no Triton kernel (it is a single elementwise pass); use backend='torch'")
    return _back_project_op(x, y, kind, scale, frame_dim, backend)


# --- windowed_attention ---------------------------------------------------------------------


@torch.library.custom_op("zs_kernels::windowed_attention", mutates_args=())
def _windowed_attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    stride: int,
    weighting: str,
    scale: float,
    rel_k: Optional[torch.Tensor],
    rel_v: Optional[torch.Tensor],
    q_hat: Optional[torch.Tensor],
    k_hat: Optional[torch.Tensor],
    v_hat: Optional[torch.Tensor],
    blend: Optional[float],
    backend: str,
) -> torch.Tensor:
    corrected = None if q_hat is None else (q_hat, k_hat, v_hat)
    if backend == "reference":
        from . import reference

        out = reference.windowed_attention(
            q, k, v, window=window, stride=stride, weighting=weighting, scale=scale,
            rel_k=rel_k, rel_v=rel_v, corrected=corrected, blend=blend,
        )
        return torch.empty_like(q).copy_(out)
    implementation = torch_path if backend == "torch" else _kernel_module("windowed_attention")
    return implementation.windowed_attention(q, k, v, window, stride, weighting, scale, rel_k, rel_v, corrected, blend)


@_windowed_attention_op.register_fake
def _(q, k, v, window, stride, weighting, scale, rel_k, rel_v, q_hat, k_hat, v_hat, blend, backend):
    return torch.empty_like(q)


def windowed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    window: int,
    stride: int,
    weighting: str = "pyramid",
    scale: Optional[float] = None,
    rel_k: Optional[torch.Tensor] = None,
    rel_v: Optional[torch.Tensor] = None,
    corrected: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None,
    blend: Optional[float] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Temporal attention over overlapping windows fused with FreeNoise weights (SPEC §5).

    Every window (starts from :func:`zs_kernels.frames.window_starts`) is an ordinary softmax
    attention over its own frames; frame ``f``'s output is the ``window_weights``-weighted mean
    of the windows holding it.

    Args:
        q, k, v: ``[N, H, F, D]`` (sequences, heads, frames, head dim), any strides, one float
            dtype and device. Half precision is accumulated in float32.
        window: window length ``W >= 1`` (the trained frame count); ``F <= W`` is plain attention.
        stride: distance between window starts, ``1 <= stride <= window``.
        weighting: ``"pyramid"`` (``min(r + 1, W - r)``) or ``"flat"``.
        scale: softmax scale, default ``D ** -0.5``.
        rel_k, rel_v: optional relative-position tables ``[2R + 1, D]``: scores gain
            ``q_i · rel_k[clip(j - i, -R, R) + R]`` (before scaling) and outputs gain
            ``Σ_j p_ij rel_v[clip(j - i, -R, R) + R]``.
        corrected: optional ``(q_hat, k_hat, v_hat)`` like ``q``; with ``blend = w`` the result is
            ``o + w (ô - o)`` where ``ô`` is the windowed attention of the corrected inputs.
        blend: the blend strength, required with ``corrected``.
        backend: ``"auto" | "torch" | "triton" | "reference"`` (see :mod:`zs_kernels.ops`).

    Returns:
        ``[N, H, F, D]`` in ``q``'s dtype, with ``q``'s strides when ``q`` is dense.

    Raises:
        TypeError / ValueError naming the argument for wrong ranks, shapes, dtypes or devices,
        ``window < 1``, ``stride`` outside ``[1, window]``, unknown ``weighting``, malformed
        tables, or ``blend`` without ``corrected``; RuntimeError when ``backend`` cannot run here.
    """
    window, stride, scale, blend = _validate.windowed_attention_args(
        q, k, v, window, stride, weighting, scale, rel_k, rel_v, corrected, blend
    )
    requested, backend = backend, resolve_backend(backend, q, "windowed_attention")
    if requested == "auto" and backend == "triton":
        kernel = _kernel_module("windowed_attention")
        if kernel.unsupported_reason(q, window, rel_k, rel_v, corrected) is not None:
            backend = "torch"
    q_hat, k_hat, v_hat = (None, None, None) if corrected is None else corrected
    return _windowed_attention_op(
        q, k, v, window, stride, weighting, scale, rel_k, rel_v, q_hat, k_hat, v_hat, blend, backend
    )


# --- corrected_qkv --------------------------------------------------------------------------


@torch.library.custom_op("zs_kernels::corrected_qkv", mutates_args=())
def _corrected_qkv_op(
    h: torch.Tensor,
    key_qkv: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    scale: int,
    kv_kind: str,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    if backend == "reference":
        from . import reference

        results = reference.corrected_qkv(h, key_qkv, weight, bias, scale=scale, kv_kind=kv_kind)
        return tuple(layout.empty_projection(h, weight.shape[0]).copy_(result) for result in results)
    implementation = torch_path if backend == "torch" else _kernel_module("qkv_correction")
    return implementation.corrected_qkv(h, key_qkv, weight, bias, scale, kv_kind)


@_corrected_qkv_op.register_fake
def _(h, key_qkv, weight, bias, scale, kv_kind, backend):
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
        backend: ``"auto" | "torch" | "triton" | "reference"``.

    Returns:
        ``(qkv, qkv_hat)``: original and corrected projections, each of logical shape
        ``[B, t, L, 3 C_out]`` in ``h``'s dtype, laid out in ``h``'s memory order
        (:func:`zs_kernels.layout.empty_projection`).

    Raises:
        TypeError / ValueError naming the argument for wrong ranks, dtypes or devices, a weight
        that is not ``[3 C_out, C]``, ``key_qkv`` frames ``!= t / scale``, or unknown ``kv_kind``.
    """
    scale = _validate.corrected_qkv_args(h, key_qkv, weight, bias, scale, kv_kind)
    requested, backend = backend, resolve_backend(backend, h, "corrected_qkv")
    if requested == "auto" and h.dtype == torch.float64:
        backend = "torch"  # the kernel computes in fp32 at most
    return _corrected_qkv_op(h, key_qkv, weight, bias, scale, kv_kind, backend)
