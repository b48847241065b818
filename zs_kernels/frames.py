"""Frame-axis math shared by every backend (SPEC §3 and §5).

A ``t0``-frame stage with scale ``n`` becomes ``n * t0`` frames; key frame ``i`` sits at frame
``n * i``. The frame operators map the ``n * t0`` long-branch frames to the ``t0`` key frames:

* ``sample``    row ``i`` is ``e_{n i}``
* ``box_left``  row ``i`` is the mean of frames ``max(0, n i - n + 1) .. n i``
* ``box_right`` row ``i`` is the mean of frames ``n i .. n i + n - 1``

Every operator has orthogonal rows, so ``A A⁺ = I`` and back-projection has a closed form that
only needs each key frame's *box* (the frames its row averages). The fast paths apply it over
*box groups* (:func:`box_groups`): runs of ``n`` consecutive frames, one per box, which is how
both the vectorised path and the fused QKV kernel tile the frame axis.

Temporal attention of the long branch runs over overlapping windows; :func:`windows` lays them
out, :func:`window_weights` and :func:`fusion_weights` give their FreeNoise fusion weights.

Everything here is plain Python or float64 tensors built on the host; it imports nothing of ours
but the leaf checks.
"""

from __future__ import annotations

import dataclasses

import torch

from . import _checks

OPERATOR_KINDS = ("sample", "box_left", "box_right")
WEIGHT_SCHEMES = ("pyramid", "flat")
SPREADS = ("keys", "linear")


def check_scale(scale) -> int:
    """Validate a frame scale ``n`` (an integer >= 2) and return it as an int."""
    return _checks.integer("scale", scale, minimum=2)


@dataclasses.dataclass(frozen=True)
class BoxGroups:
    """Operator ``kind``'s boxes as groups of ``scale`` consecutive frames.

    Group ``g`` covers frames ``first + scale·g … first + scale·g + scale − 1`` clipped to
    ``[0, num_frames)``; key frame ``scale·g`` lies in group ``g``. Groups ``0 … boxes − 1`` hold
    the boxes: for ``box_left``/``box_right`` the group *is* the box, for ``sample`` the box is the
    key frame alone. ``box_left`` starts ``scale − 1`` frames early (``first < 0``, so group 0 is
    frame 0 alone) and has one more group, its last ``scale − 1`` frames, which belong to no box.
    """

    first: int
    count: int
    boxes: int
    scale: int
    num_frames: int

    def span(self, group: int) -> tuple[int, int]:
        """Half-open frame range ``[start, stop)`` of ``group``, clipped to the frames."""
        start = self.first + self.scale * group
        return max(start, 0), min(start + self.scale, self.num_frames)

    @property
    def whole(self) -> range:
        """The box groups that lie wholly inside the frames, ``whole.start … boxes − 1``: their
        frames form one run of ``len(whole) · scale`` frames from ``span(whole.start)[0]``. The
        boxes before ``whole.start`` (``box_left``'s first) are clipped by the frame range."""
        return range(0 if self.first >= 0 else 1, self.boxes)


def box_groups(kind: str, num_key_frames: int, scale: int) -> BoxGroups:
    """The box groups of operator ``kind`` over ``scale · num_key_frames`` frames (see :class:`BoxGroups`)."""
    _checks.choice("kind", kind, OPERATOR_KINDS)
    t0 = _checks.integer("num_key_frames", num_key_frames, minimum=1)
    n = check_scale(scale)
    if kind == "box_left":
        return BoxGroups(first=1 - n, count=t0 + 1, boxes=t0, scale=n, num_frames=n * t0)
    return BoxGroups(first=0, count=t0, boxes=t0, scale=n, num_frames=n * t0)


def box_ranges(kind: str, num_key_frames: int, scale: int) -> list[tuple[int, int]]:
    """Half-open frame range ``[start, stop)`` that row ``i`` of operator ``kind`` averages.

    ``sample`` boxes hold one frame. Under ``box_left`` the last ``scale - 1`` frames belong to
    no box; under ``box_right`` every frame belongs to exactly one box.
    """
    groups = box_groups(kind, num_key_frames, scale)
    if kind == "sample":
        return [(groups.scale * i, groups.scale * i + 1) for i in range(groups.boxes)]
    return [groups.span(i) for i in range(groups.boxes)]


def frame_operator(kind: str, num_key_frames: int, scale: int) -> torch.Tensor:
    """Dense operator ``A`` of shape ``[num_key_frames, scale * num_key_frames]``, float64.

    Raises:
        ValueError / TypeError naming the argument for an unknown ``kind``, ``num_key_frames < 1``
        or a ``scale`` that is not an integer ``>= 2``.
    """
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


def key_spread(spread: str, num_key_frames: int, scale: int) -> torch.Tensor:
    """A right inverse ``P`` of ``sample`` (``A P = I``), float64 ``[scale * num_key_frames, num_key_frames]``:
    how a correction ``d`` made at the key frames reaches every frame as ``P d``.

    ``"keys"`` is ``A⁺``: the key frames take ``d`` and the other frames nothing. ``"linear"``
    interpolates between consecutive key frames: frame ``n i + r`` takes
    ``(1 - r/n) d_i + (r/n) d_{i+1}``, and the ``n - 1`` frames after the last key frame, which has
    no successor, take ``d_{t0-1}``. Either way ``A P d = d``: the key frames are corrected exactly.
    """
    _checks.choice("spread", spread, SPREADS)
    if spread == "keys":
        return frame_operator_pinv("sample", num_key_frames, scale)
    t0 = _checks.integer("num_key_frames", num_key_frames, minimum=1)
    n = check_scale(scale)
    operator = torch.zeros(n * t0, t0, dtype=torch.float64)
    for frame in range(n * t0):
        i, r = divmod(frame, n)
        if i + 1 < t0:
            operator[frame, i], operator[frame, i + 1] = 1 - r / n, r / n
        else:
            operator[frame, i] = 1.0
    return operator


@dataclasses.dataclass(frozen=True)
class Windows:
    """The temporal-attention windows over ``num_frames`` frames (SPEC §5).

    Every window is ``length = min(window, num_frames)`` frames long; ``regular`` windows start at
    ``0, stride, …, (regular − 1)·stride``, and when ``tail`` one more, right-aligned, starts at
    ``num_frames − length``.
    """

    num_frames: int
    length: int
    stride: int
    regular: int
    tail: bool

    @property
    def starts(self) -> list[int]:
        starts = [self.stride * w for w in range(self.regular)]
        return starts + [self.num_frames - self.length] if self.tail else starts


def windows(num_frames: int, window: int, stride: int) -> Windows:
    """Lay out the windows: starts ``0, stride, 2 stride, …`` while ``start + window <= num_frames``;
    if the last of these ends before ``num_frames`` a right-aligned tail window is added. With
    ``num_frames <= window`` there is one window ``[0, num_frames)``.

    Raises:
        ValueError / TypeError naming the argument unless ``num_frames, window >= 1`` and
        ``1 <= stride <= window`` are integers.
    """
    num_frames = _checks.integer("num_frames", num_frames, minimum=1)
    window = _checks.integer("window", window, minimum=1)
    stride = _checks.integer("stride", stride, minimum=1, maximum=window)
    length = min(window, num_frames)
    regular = (num_frames - length) // stride + 1
    return Windows(num_frames, length, stride, regular, (regular - 1) * stride + length < num_frames)


def window_starts(num_frames: int, window: int, stride: int) -> list[int]:
    """Start frames of the temporal-attention windows (SPEC §5; see :func:`windows`)."""
    return windows(num_frames, window, stride).starts


def window_weights(window: int, scheme: str = "pyramid") -> torch.Tensor:
    """FreeNoise fusion weight of each offset ``r`` in a window, float64 ``[window]``.

    ``pyramid``: ``min(r + 1, window - r)``; ``flat``: all ones.
    """
    window = _checks.integer("window", window, minimum=1)
    _checks.choice("weighting", scheme, WEIGHT_SCHEMES)
    offsets = torch.arange(window, dtype=torch.float64)
    if scheme == "flat":
        return torch.ones(window, dtype=torch.float64)
    return torch.minimum(offsets + 1, window - offsets)


def fusion_weights(
    num_frames: int, window: int, stride: int, scheme: str = "pyramid"
) -> tuple[list[int], torch.Tensor]:
    """Window starts and each window's normalised contribution to its frames.

    Returns ``(starts, weights)`` with ``weights`` float64 of shape ``[len(starts), w]`` where
    ``w = min(window, num_frames)``: ``weights[j, r] = ω(r) / Σ_{windows u ∋ f} ω(f - s_u)`` for
    frame ``f = starts[j] + r``, so the fused output is ``Σ_j weights[j, r] · o_j[r]``.
    """
    layout = windows(num_frames, window, stride)
    omega = window_weights(layout.length, scheme)
    total = torch.zeros(num_frames, dtype=torch.float64)
    for start in layout.starts:
        total[start : start + layout.length] += omega
    weights = torch.stack([omega / total[start : start + layout.length] for start in layout.starts])
    return layout.starts, weights


def relative_positions(length: int, table_rows: int) -> torch.Tensor:
    """Row index into a relative-position table for every (query i, key j) of a window.

    ``index[i, j] = clip(j - i, -R, R) + R`` with ``R = (table_rows - 1) // 2``, int64
    ``[length, length]``. Relative distance does not depend on where the window starts.
    """
    radius = (table_rows - 1) // 2
    offsets = torch.arange(length)
    return (offsets[None, :] - offsets[:, None]).clamp(-radius, radius) + radius
