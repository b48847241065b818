"""ZeroSmooth kernels: the frame-axis math and fused attention ops, free of any model library.

Public API (shapes, layouts, non-finite inputs and errors are documented on each function):

* :func:`frame_operator`, :func:`frame_operator_pinv`, :func:`window_starts`,
  :func:`window_weights` — SPEC §3 and §5 math (:mod:`zs_kernels.frames`).
* :func:`back_project`, :func:`windowed_attention`, :func:`corrected_qkv` — the tensor ops, each
  with ``backend=`` one of :data:`BACKENDS`.
* :mod:`zs_kernels.reference` — the same ops computed by their readable pure-PyTorch oracles.

One folder per op (``back_project/``, ``windowed_attention/``, ``corrected_qkv/``) holds its
public wrapper (``__init__.py``), oracle (``reference.py``), vectorised PyTorch path
(``vectorized.py``) and Triton kernel with its launcher (``triton.py``, imported on first use).
The package attributes of the same names are the op functions, which the imports below bind
over the subpackages; import an op's modules as ``from zs_kernels.<op> import triton``.
"""

from ._dispatch import BACKENDS
from .back_project import back_project
from .corrected_qkv import corrected_qkv
from .frames import OPERATOR_KINDS, WEIGHT_SCHEMES, frame_operator, frame_operator_pinv, window_starts, window_weights
from .windowed_attention import windowed_attention

from . import reference  # noqa: E402  (after the ops it wraps)

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
