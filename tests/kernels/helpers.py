"""Helpers shared by the kernel test modules."""

import re

import pytest

from zs_kernels import frames


def raises(error, *words):
    """``pytest.raises`` that also requires every word in the message."""
    return pytest.raises(error, match="(?s)" + "".join(f"(?=.*{re.escape(word)})" for word in words))


def closed_form_dependents(kind: str, num_key_frames: int, scale: int, source: str, frame: int) -> set[int]:
    """The output frames that SPEC §3's closed form makes depend on frame ``frame`` of ``source``:
    ``"x"`` (the long branch) or ``"y"`` (the key frames). ``sample`` key frames take ``y`` (their
    ``x`` reaches nothing), a box's frames depend on all of its ``x`` frames and its ``y``, frames in
    no box keep ``x``."""
    boxes = frames.box_ranges(kind, num_key_frames, scale)
    if source == "y":
        return set(range(*boxes[frame]))
    if kind == "sample":
        return set() if frame % scale == 0 else {frame}
    for start, stop in boxes:
        if start <= frame < stop:
            return set(range(start, stop))
    return {frame}
