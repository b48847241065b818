"""ZeroSmooth kernels: the frame-axis math and fused attention ops, free of any model library.

Public API (shapes and errors are documented on each function):

* :func:`frame_operator`, :func:`window_starts`, :func:`window_weights` — SPEC §3 and §5 math.
* :func:`back_project`, :func:`windowed_attention`, :func:`corrected_qkv` — the tensor ops, each
  with ``backend="auto" | "torch" | "triton" | "reference"``.
* :mod:`zs_kernels.reference` — the same ops as a readable pure-PyTorch oracle.
"""

from . import reference
from .frames import OPERATOR_KINDS, WEIGHT_SCHEMES, frame_operator, frame_operator_pinv, window_starts, window_weights
from .ops import BACKENDS, back_project, corrected_qkv, windowed_attention

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "OPERATOR_KINDS",
    "WEIGHT_SCHEMES",
    "back_project",
    "corrected_qkv",
    "frame_operator",
    "frame_operator_pinv",
    "reference",
    "window_starts",
    "window_weights",
    "windowed_attention",
]
