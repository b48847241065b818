"""Closed-form back-projection (SPEC §3) over box groups: the fast path on every device.

Each element moves once, so the op has no Triton kernel. :func:`correct_in_place` is also the
correction step of :func:`zs_kernels.corrected_qkv`'s torch path.
"""

from __future__ import annotations

import torch

from .. import frames


def _shift_boxes(out: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> None:
    """``out, x [boxes, box frames, …]``, ``y [boxes, …]``: move every frame of box ``i`` by
    ``y[i] − mean(x over box i)``, accumulated in at least float32."""
    accumulate = torch.promote_types(out.dtype, torch.float32)
    shift = (y.to(accumulate) - x.to(accumulate).mean(dim=1)).to(out.dtype)
    out.add_(shift.unsqueeze(1))


def correct_in_place(out: torch.Tensor, x: torch.Tensor, y: torch.Tensor, kind: str, scale: int) -> None:
    """Frames-first views ``x [t, …]``, ``y [t0, …]`` and ``out`` (equal to ``x`` on entry):
    replace ``out`` by ``(I − A⁺A) x + A⁺ y``.

    ``sample`` overwrites the key frames with ``y``; a box operator moves every frame of box ``i``
    by ``y[i] − mean(box i)``, over :func:`zs_kernels.frames.box_groups`: the whole groups as one
    ``[boxes, scale, …]`` view, a group clipped by the frame range (``box_left``'s first) alone.
    """
    if kind == "sample":
        out[::scale] = y
        return
    groups = frames.box_groups(kind, y.shape[0], scale)
    whole = groups.whole
    for box in range(whole.start):
        start, stop = groups.span(box)
        _shift_boxes(out[start:stop].unsqueeze(0), x[start:stop].unsqueeze(0), y[box : box + 1])
    if len(whole):
        start = groups.span(whole.start)[0]
        stop = start + len(whole) * scale
        boxes = (len(whole), scale)
        out_boxes, x_boxes = out[start:stop].unflatten(0, boxes), x[start:stop].unflatten(0, boxes)
        _shift_boxes(out_boxes, x_boxes, y[whole.start : whole.stop])


def back_project(x: torch.Tensor, y: torch.Tensor, kind: str, scale: int, frame_dim: int) -> torch.Tensor:
    """Closed-form back-projection along ``frame_dim``; a contiguous tensor of ``x``'s shape."""
    out = x.clone(memory_format=torch.contiguous_format)
    correct_in_place(out.movedim(frame_dim, 0), x.movedim(frame_dim, 0), y.movedim(frame_dim, 0), kind, scale)
    return out
