"""Frame-axis math shared by every backend (SPEC §3 and §5).

A ``t0``-frame stage with scale ``n`` becomes ``n * t0`` frames; key frame ``i`` sits at frame
``n * i``. The frame operators map the ``n * t0`` long-branch frames to the ``t0`` key frames:

* ``sample``    row ``i`` is ``e_{n i}``
* ``box_left``  row ``i`` is the mean of frames ``max(0, n i - n + 1) .. n i``
* ``box_right`` row ``i`` is the mean of frames ``n i .. n i + n - 1``

Every operator has orthogonal rows, so ``A A⁺ = I`` and back-projection has a closed form that
only needs each key frame's *box* (the frames its row averages): see :func:`box_ranges`.

Temporal attention of the long branch runs over overlapping windows; :func:`window_starts` and
:func:`window_weights` define them and their FreeNoise fusion weights.
"""

from __future__ import annotations

import torch

from . import _validate

OPERATOR_KINDS = ("sample", "box_left", "box_right")
WEIGHT_SCHEMES = ("pyramid", "flat")


def check_scale(scale) -> int:
    """Validate a frame scale ``n`` (an integer >= 2) and return it as an int."""
    return _validate.integer("scale", scale, minimum=2)


def box_ranges(kind: str, num_key_frames: int, scale: int) -> list[tuple[int, int]]:
    """Half-open frame range ``[start, stop)`` that row ``i`` of operator ``kind`` averages.

    ``sample`` boxes hold one frame. Under ``box_left`` the last ``scale - 1`` frames belong to
    no box; under ``box_right`` every frame belongs to exactly one box.
    """
    _validate.choice("kind", kind, OPERATOR_KINDS)
    t0 = _validate.integer("num_key_frames", num_key_frames, minimum=1)
    n = check_scale(scale)
    if kind == "sample":
        return [(n * i, n * i + 1) for i in range(t0)]
    if kind == "box_left":
        return [(max(0, n * i - n + 1), n * i + 1) for i in range(t0)]
    return [(n * i, n * i + n) for i in range(t0)]


def frame_operator(kind: str, num_key_frames: int, scale: int) -> torch.Tensor:
    """Dense operator ``A`` of shape ``[num_key_frames, scale * num_key_frames]``, float64."""
    boxes = box_ranges(kind, num_key_frames, scale)
    operator = torch.zeros(len(boxes), scale * len(boxes), dtype=torch.float64)
    for i, (start, stop) in enumerate(boxes):
        operator[i, start:stop] = 1.0 / (stop - start)
    return operator


def frame_operator_pinv(kind: str, num_key_frames: int, scale: int) -> torch.Tensor:
    """Pseudo-inverse ``A⁺ = Aᵀ diag(1 / ‖row_i‖²)``, shape ``[scale * num_key_frames, num_key_frames]``.

    Because the rows are orthogonal this is the Moore-Penrose inverse; ``A⁺`` copies key frame
    ``y_i`` onto every frame of box ``i``.
    """
    operator = frame_operator(kind, num_key_frames, scale)
    return operator.T / (operator * operator).sum(dim=1)


def window_starts(num_frames: int, window: int, stride: int) -> list[int]:
    """Start frames of the temporal-attention windows (SPEC §5).

    Starts are ``0, stride, 2 stride, …`` while ``start + window <= num_frames``; if the last of
    these ends before ``num_frames`` a right-aligned tail window ``num_frames - window`` is added.
    With ``num_frames <= window`` there is one window ``[0, num_frames)``.
    """
    num_frames = _validate.integer("num_frames", num_frames, minimum=1)
    window = _validate.integer("window", window, minimum=1)
    stride = _validate.integer("stride", stride, minimum=1, maximum=window)
    if num_frames <= window:
        return [0]
    starts = list(range(0, num_frames - window + 1, stride))
    if starts[-1] + window < num_frames:
        starts.append(num_frames - window)
    return starts


def window_weights(window: int, scheme: str = "pyramid") -> torch.Tensor:
    """FreeNoise fusion weight of each offset ``r`` in a window, float64 ``[window]``.

    ``pyramid``: ``min(r + 1, window - r)``; ``flat``: all ones.
    """
    window = _validate.integer("window", window, minimum=1)
    _validate.choice("weighting", scheme, WEIGHT_SCHEMES)
    offsets = torch.arange(window, dtype=torch.float64)
    if scheme == "flat":
        return torch.ones(window, dtype=torch.float64)
    return torch.minimum(offsets + 1, window - offsets)


def fusion_weights(num_frames: int, window: int, stride: int, scheme: str = "pyramid") -> tuple[list[int], torch.Tensor]:
    """Window starts and each window's normalised contribution to its frames.

    Returns ``(starts, weights)`` with ``weights`` float64 of shape ``[len(starts), w]`` where
    ``w = min(window, num_frames)``: ``weights[j, r] = ω(r) / Σ_{windows u ∋ f} ω(f - s_u)`` for
    frame ``f = starts[j] + r``, so the fused output is ``Σ_j weights[j, r] · o_j[r]``.
    """
    starts = window_starts(num_frames, window, stride)
    length = min(window, num_frames)
    omega = window_weights(length, scheme)
    total = torch.zeros(num_frames, dtype=torch.float64)
    for start in starts:
        total[start : start + length] += omega
    weights = torch.stack([omega / total[start : start + length] for start in starts])
    return starts, weights


def relative_positions(length: int, table_rows: int) -> torch.Tensor:
    """Row index into a relative-position table for every (query i, key j) of a window.

    ``index[i, j] = clip(j - i, -R, R) + R`` with ``R = (table_rows - 1) // 2``, int64
    ``[length, length]``. Relative distance does not depend on where the window starts.
    """
    radius = (table_rows - 1) // 2
    offsets = torch.arange(length)
    return (offsets[None, :] - offsets[:, None]).clamp(-radius, radius) + radius
