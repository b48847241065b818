"""The procedural video world: determinism, shapes, ground-truth positions, stride semantics."""

import numpy as np
import pytest
import torch

from zerosmooth.lab.world import RENDER_FPS, WorldConfig, render_clip, render_frames


def test_deterministic_and_seed_dependent():
    a, b, c = render_clip(3, 16), render_clip(3, 16), render_clip(4, 16)
    assert torch.equal(a.frames, b.frames) and torch.equal(a.positions, b.positions)
    assert not torch.equal(a.frames, c.frames)


def test_shapes_and_range():
    cfg = WorldConfig(size=24, min_objects=2, max_objects=3)
    clip = render_clip(0, 10, cfg)
    k = len(clip.shapes)
    assert clip.frames.shape == (10, 3, 24, 24) and clip.frames.dtype == torch.float32
    assert clip.positions.shape == (10, k, 2) and clip.colors.shape == (k, 3) and clip.radii.shape == (k,)
    assert 0.0 <= clip.frames.min() and clip.frames.max() <= 1.0


def test_longer_render_extends_shorter():
    """The scene does not depend on the clip length, so key frames are a prefix-stable subset."""
    short, long = render_clip(7, 12), render_clip(7, 40)
    assert torch.equal(short.frames, long.frames[:12])
    assert torch.equal(short.positions, long.positions[:12])


@pytest.mark.parametrize("seed", range(6))
def test_positions_match_rendered_pixels(seed):
    """With a single object on a flat background, the object's pixel centroid is its true centre."""
    cfg = WorldConfig(size=32, min_objects=1, max_objects=1, texture_prob=0.0)
    clip = render_clip(seed, 24, cfg)
    frames = clip.frames.numpy()
    background = frames[:, :, 0, 0]  # the corner is never covered (radius < size/4 from walls)
    for t in range(0, 24, 5):
        coverage = np.abs(frames[t] - background[t][:, None, None]).sum(0)
        coverage /= coverage.max()
        ys, xs = np.mgrid[0:32, 0:32] + 0.5
        centroid = np.array([(coverage * xs).sum(), (coverage * ys).sum()]) / coverage.sum()
        assert np.abs(centroid - clip.positions[t, 0].numpy()).max() < 0.35


def test_objects_stay_inside_and_move_smoothly():
    clip = render_clip(11, 200, WorldConfig(size=32, max_speed=1.0))
    pos, r = clip.positions, clip.radii[None, :, None]
    assert (pos >= r - 1e-4).all() and (pos <= 32 - r + 1e-4).all()
    step = (pos[1:] - pos[:-1]).norm(dim=-1)
    assert step.max() <= 1.0 * 32 / RENDER_FPS * 1.5 + 1e-4  # about max speed per frame, never a jump


def test_stride_semantics():
    full = render_clip(5, 32, WorldConfig(size=32))
    key = full.strided(4, 8)
    assert key.frames.shape[0] == 8
    for i in range(8):
        assert torch.equal(key.frames[i], full.frames[4 * i])
        assert torch.equal(key.positions[i], full.positions[4 * i])
    assert torch.equal(full.strided(2).frames, full.frames[0::2])
    with pytest.raises(ValueError, match="requested"):
        full.strided(4, 9)


def test_render_frames_equals_the_same_frames_of_a_clip():
    """Training renders only the frames it needs; they must be the clip's frames bit for bit."""
    world = WorldConfig(size=24)
    clip = render_clip(9, 41, world)
    picked = render_frames(9, [40, 0, 13, 13], world)
    assert torch.equal(picked.frames, clip.frames[[40, 0, 13, 13]])
    assert torch.equal(picked.positions, clip.positions[[40, 0, 13, 13]])
    with pytest.raises(ValueError, match="frame_indices"):
        render_frames(9, [], world)


def test_bad_config():
    with pytest.raises(ValueError):
        WorldConfig(size=4)
    with pytest.raises(ValueError):
        WorldConfig(min_objects=3, max_objects=2)
    with pytest.raises(ValueError):
        render_clip(0, 0)
