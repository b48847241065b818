"""Q, K, V projections fused with their back-projection onto the key branch (SPEC §3–4): the public op.

``reference.py`` is the readable oracle, ``vectorized.py`` the PyTorch path, ``triton.py`` the
fused GEMM + correction kernel and its launcher (imported on first use), ``layout.py`` the output
layout every backend follows. Only the Triton kernel is registered as a ``torch.library`` custom
op (``zs_kernels::corrected_qkv``, with a fake implementation); the other backends are plain
PyTorch that ``torch.compile`` traces.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from .. import _checks, _dispatch, frames
from . import layout, reference, vectorized

_OP = "corrected_qkv"

Projections = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Biases = tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]


def _name(argument: str, index: int) -> str:
    """How messages name one entry of a sequence argument: ``weight[1] (w_k)``, ``bias[2] (b_v)``."""
    return f"{argument}[{index}] ({argument[0]}_{'qkv'[index]})"


def _three(argument: str, value, expected: str) -> tuple:
    """``value`` as a tuple of three, or TypeError naming ``argument``, what came and ``expected``."""
    if not isinstance(value, (tuple, list)) or len(value) != 3:
        got = f"a {type(value).__name__} of length {len(value)}" if isinstance(value, (tuple, list)) else type(
            value
        ).__name__
        raise TypeError(f"{argument} must be {expected}, got {got}")
    return tuple(value)


def _weights(weight, channels: int) -> Projections:
    """``(w_q, w_k, w_v)`` from a sequence of three ``[C_out, C]`` tensors, or views of a stacked
    ``[3 C_out, C]`` one (no copy either way)."""
    if isinstance(weight, torch.Tensor):
        _checks.float_tensor("weight", weight, ndim=2)
        if weight.shape[0] % 3 or weight.shape[1] != channels:
            raise ValueError(
                f"weight must have shape [3*C_out, C={channels}] (to_q|to_k|to_v stacked) or be a sequence "
                f"(w_q, w_k, w_v) of [C_out, C={channels}] tensors, got {tuple(weight.shape)}"
            )
        return weight.chunk(3)
    weights = _three("weight", weight, "a sequence (w_q, w_k, w_v) of three [C_out, C] tensors or a stacked "
                     "[3*C_out, C] tensor")
    for index, projection in enumerate(weights):
        _checks.float_tensor(_name("weight", index), projection, ndim=2)
    c_out = weights[0].shape[0]
    for index, projection in enumerate(weights):
        _checks.shape(
            _name("weight", index), projection, (c_out, channels),
            f"([C_out, C] with C_out = {c_out} from w_q and C = {channels} from h)",
        )
    return weights


def _biases(bias, c_out: int) -> Biases:
    """``(b_q, b_k, b_v)``, each ``[C_out]`` or None, from None, a sequence of three, or views of a
    stacked ``[3 C_out]`` tensor."""
    if bias is None:
        return (None, None, None)
    if isinstance(bias, torch.Tensor):
        _checks.float_tensor("bias", bias, ndim=1)
        _checks.shape("bias", bias, (3 * c_out,), "([3*C_out] like the stacked weight's rows)")
        return bias.chunk(3)
    biases = _three("bias", bias, "None, a stacked [3*C_out] tensor or a sequence (b_q, b_k, b_v) of [C_out] "
                    "tensors or Nones")
    for index, entry in enumerate(biases):
        if entry is not None:
            _checks.float_tensor(_name("bias", index), entry, ndim=1)
            _checks.shape(_name("bias", index), entry, (c_out,), "([C_out] like the weights' rows)")
    return biases


def _check_args(h, key_qkv, weight, bias, scale, kv_kind) -> tuple[Projections, Biases, int]:
    """Validate the public arguments; return the three weights, the three biases (None where a
    projection has none) and the frame scale."""
    _checks.float_tensor("h", h, ndim=4)
    _checks.float_tensor("key_qkv", key_qkv, ndim=4)
    batch, num_frames, tokens, channels = h.shape
    weights = _weights(weight, channels)
    biases = _biases(bias, weights[0].shape[0])
    # Named as the caller passed them: "weight" for a stacked tensor, "weight[i] (w_…)" for a sequence.
    tensors = {"weight": weight} if isinstance(weight, torch.Tensor) else {
        _name("weight", index): projection for index, projection in enumerate(weights)
    }
    if isinstance(bias, torch.Tensor):
        tensors["bias"] = bias
    else:
        tensors.update({_name("bias", index): entry for index, entry in enumerate(biases) if entry is not None})
    _checks.same_dtype_and_device("h", h, key_qkv=key_qkv, **tensors)
    scale = frames.check_scale(scale)
    _checks.choice("kv_kind", kv_kind, frames.OPERATOR_KINDS)
    if num_frames % scale:
        raise ValueError(f"h has t={num_frames} frames, expected a multiple of scale={scale}")
    _checks.shape(
        "key_qkv",
        key_qkv,
        (batch, num_frames // scale, tokens, 3 * weights[0].shape[0]),
        f"([B, t0 = t/scale = {num_frames // scale}, L, 3*C_out])",
    )
    return weights, biases, scale


@torch.library.custom_op("zs_kernels::corrected_qkv", mutates_args=())
def _triton_op(
    h: torch.Tensor,
    key_qkv: torch.Tensor,
    w_q: torch.Tensor,
    w_k: torch.Tensor,
    w_v: torch.Tensor,
    b_q: Optional[torch.Tensor],
    b_k: Optional[torch.Tensor],
    b_v: Optional[torch.Tensor],
    scale: int,
    kv_kind: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _dispatch.kernel_module(_OP).corrected_qkv(h, key_qkv, (w_q, w_k, w_v), (b_q, b_k, b_v), scale, kv_kind)


@_triton_op.register_fake
def _(h, key_qkv, w_q, w_k, w_v, b_q, b_k, b_v, scale, kv_kind):
    return layout.empty_projection(h, 3 * w_q.shape[0]), layout.empty_projection(h, 3 * w_q.shape[0])


def corrected_qkv(
    h: torch.Tensor,
    key_qkv: torch.Tensor,
    weight: Union[Sequence[torch.Tensor], torch.Tensor],
    bias: Union[Sequence[Optional[torch.Tensor]], torch.Tensor, None] = None,
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
        weight: the projections ``(w_q, w_k, w_v)``, each ``[C_out, C]`` with any strides (e.g.
            ``to_q.weight``, ``to_k.weight``, ``to_v.weight``), or one ``[3 C_out, C]`` tensor
            with them stacked (a fused ``to_qkv``); neither form is copied or concatenated.
        bias: None, ``(b_q, b_k, b_v)`` each ``[C_out]`` or None (that projection has no bias),
            or one stacked ``[3 C_out]`` tensor.
        scale: integer frame scale ``n >= 2``.
        kv_kind: operator for K and V: ``"sample" | "box_left" | "box_right"``; Q always uses
            ``"sample"``.
        backend: ``"auto" | "torch" | "triton" | "reference"``; ``"auto"`` takes the Triton
            kernel for CUDA tensors (float64 goes to the torch path: the kernel computes in fp32).

    Returns:
        ``(qkv, qkv_hat)``: original and corrected projections, each of logical shape
        ``[B, t, L, 3 C_out]`` (columns ``q | k | v``) in ``h``'s dtype, laid out in ``h``'s
        memory order (:func:`zs_kernels.corrected_qkv.layout.empty_projection`) on every backend.

    An inference op: it registers no autograd formula, and the torch path writes the projections
    into its outputs in place unless autograd is recording or ``torch.compile`` is tracing.

    Non-finite inputs: ``qkv`` behaves like ``F.linear`` (a NaN in a row of ``h`` reaches every
    column of that row, one in a weight row or bias entry that column of every row). ``qkv_hat``
    then follows :func:`zs_kernels.back_project` on the ``"torch"`` and ``"triton"`` backends: Q
    columns at key frames take ``key_qkv`` (so ``h``'s key frames do not reach them), a box's
    frames in K and V columns depend on every frame of the box, frames in no box keep ``qkv``;
    nothing else is affected. The ``"reference"`` backend's dense matrices carry a non-finite
    projection to every frame of its (batch, token, column).

    Raises:
        TypeError / ValueError naming the argument for wrong ranks, dtypes or devices, weights
        that are not three ``[C_out, C]`` (or one ``[3 C_out, C]``), biases that are not
        ``[C_out]`` (or ``[3 C_out]``), ``key_qkv`` frames ``!= t / scale``, or unknown
        ``kv_kind``; RuntimeError when ``backend`` cannot run here; ``backend="triton"`` raises
        TypeError for float64.
    """
    weights, biases, scale = _check_args(h, key_qkv, weight, bias, scale, kv_kind)
    requested, backend = backend, _dispatch.resolve_backend(backend, h, _OP)
    if backend == "triton" and requested == "auto" and h.dtype == torch.float64:
        backend = "torch"
    if backend == "triton":
        return _triton_op(h, key_qkv, *weights, *biases, scale, kv_kind)
    if backend == "reference":
        results = reference.corrected_qkv(h, key_qkv, weights, biases, scale, kv_kind)
        return tuple(layout.empty_projection(h, 3 * weights[0].shape[0]).copy_(result) for result in results)
    return vectorized.corrected_qkv(h, key_qkv, weights, biases, scale, kv_kind)
