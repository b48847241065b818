"""A procedural video world: a few coloured shapes moving smoothly over a background.

Everything is deterministic from an integer seed. Clips are rendered at a high frame rate
(``RENDER_FPS``); a model is trained on key frames taken every ``stride``-th rendered frame, so
the rendered in-between frames are exact ground truth for frame interpolation, and the objects'
true centres are known for every rendered frame.

Rendering is vectorised over frames, objects and pixels with numpy (anti-aliased signed-distance
shapes), so a 64-frame 32×32 clip takes a few milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

RENDER_FPS = 28
"""Frame rate at which clips are rendered. Key frames at stride ``s`` play at ``RENDER_FPS / s``:
stride 4 gives 7 fps, SVD's default ``fps`` argument, so the shipped model's base video is plain SVD usage."""

HELD_OUT_SEED_BASE = 1_000_000_000
"""World seeds from here up are never used for training (training seeds stay below 10⁹): evaluation
and the command line's default input frames come from them."""

SHAPES = ("circle", "square", "diamond")

# Saturated, mutually distant object colours. Backgrounds are kept grey-ish and darker, so an
# object's pixels can be found again by colour (see ``zerosmooth.metrics.estimate_positions``).
PALETTE = np.array(
    [
        [0.95, 0.20, 0.20],  # red
        [0.20, 0.85, 0.25],  # green
        [0.25, 0.35, 0.95],  # blue
        [0.95, 0.85, 0.15],  # yellow
        [0.90, 0.25, 0.90],  # magenta
        [0.15, 0.85, 0.90],  # cyan
    ],
    dtype=np.float32,
)


@dataclass(frozen=True)
class WorldConfig:
    """Knobs of the world. The defaults are what the shipped model was trained on."""

    size: int = 64
    """Frame height and width in pixels."""
    min_objects: int = 1
    max_objects: int = 3
    min_radius: float = 0.10
    """Object radius range, as a fraction of ``size``."""
    max_radius: float = 0.17
    min_speed: float = 0.4
    """Speed range in frame-widths per second (at ``RENDER_FPS``)."""
    max_speed: float = 0.95
    texture_prob: float = 0.5
    """Probability that the background is a soft texture rather than a flat colour."""
    ease_prob: float = 0.4
    """Probability that an object eases between waypoints rather than bouncing off the walls."""
    ease_seconds: float = 0.75
    """Time between easing waypoints."""

    def __post_init__(self):
        if self.size < 8:
            raise ValueError(f"size must be >= 8, got {self.size}")
        if not 1 <= self.min_objects <= self.max_objects <= len(PALETTE):
            raise ValueError(
                f"need 1 <= min_objects <= max_objects <= {len(PALETTE)}, "
                f"got {self.min_objects}, {self.max_objects}"
            )
        if not 0 < self.min_radius <= self.max_radius < 0.5:
            raise ValueError("need 0 < min_radius <= max_radius < 0.5")
        if not 0 <= self.min_speed <= self.max_speed:
            raise ValueError("need 0 <= min_speed <= max_speed")


@dataclass
class Clip:
    """One rendered clip.

    frames:    float32 tensor [T, 3, H, W] in [0, 1], at ``RENDER_FPS``.
    positions: float32 tensor [T, K, 2], each object's true centre (x, y) in pixel coordinates
               (pixel ``j`` has its centre at ``j + 0.5``), drawn in list order (later on top).
    colors:    float32 tensor [K, 3], each object's colour.
    radii:     float32 tensor [K], in pixels.
    shapes:    the K shape names.
    """

    frames: torch.Tensor
    positions: torch.Tensor
    colors: torch.Tensor
    radii: torch.Tensor
    shapes: list[str]

    def strided(self, stride: int, num_frames: int | None = None, offset: int = 0) -> "Clip":
        """The clip played at ``RENDER_FPS / stride``: rendered frames ``offset + stride·i``.

        With ``num_frames`` the result is cut to that many frames (and it is an error if the clip is
        too short for them).
        """
        if stride < 1 or offset < 0:
            raise ValueError(f"stride must be >= 1 and offset >= 0, got {stride}, {offset}")
        index = torch.arange(offset, self.frames.shape[0], stride)
        if num_frames is not None:
            if len(index) < num_frames:
                raise ValueError(
                    f"clip of {self.frames.shape[0]} frames has only {len(index)} frames at "
                    f"stride {stride}, offset {offset}; {num_frames} requested"
                )
            index = index[:num_frames]
        return Clip(self.frames[index], self.positions[index], self.colors, self.radii, self.shapes)


def _bounce(start: np.ndarray, velocity: np.ndarray, t: np.ndarray, lo: np.ndarray, hi: np.ndarray):
    """Positions of points moving at constant velocity and reflecting off the walls [lo, hi].

    start, velocity, lo, hi: [K, 2]; t: [T] seconds. Returns [T, K, 2]. Reflection is a triangle
    wave of the unfolded coordinate, which is exact for any number of bounces.
    """
    span = hi - lo
    unfolded = start - lo + velocity * t[:, None, None]
    phase = np.mod(unfolded, 2 * span)
    return lo + np.where(phase <= span, phase, 2 * span - phase)


def _ease(waypoints: np.ndarray, t: np.ndarray, seconds_per_leg: float):
    """Positions that move between successive waypoints with smoothstep easing (zero velocity at
    each waypoint, so the path is continuously differentiable).

    waypoints: [M, K, 2]; t: [T] seconds. Returns [T, K, 2].
    """
    leg = t / seconds_per_leg
    index = np.minimum(np.floor(leg).astype(np.int64), len(waypoints) - 2)
    u = np.clip(leg - index, 0.0, 1.0)
    u = u * u * (3 - 2 * u)  # smoothstep
    a, b = waypoints[index], waypoints[index + 1]
    return a + (b - a) * u[:, None, None]


def _background(rng: np.random.Generator, cfg: WorldConfig) -> np.ndarray:
    """A [3, H, W] background: a dark flat grey-ish colour, or a soft low-contrast texture made of
    a few random plane waves. Kept unsaturated so objects stay separable by colour."""
    size = cfg.size
    base = rng.uniform(0.08, 0.35) + rng.uniform(-0.04, 0.04, size=3)
    bg = np.broadcast_to(base[:, None, None], (3, size, size)).astype(np.float32).copy()
    if rng.random() < cfg.texture_prob:
        yy, xx = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
        pattern = np.zeros((size, size), dtype=np.float64)
        for _ in range(3):
            freq = rng.uniform(1.0, 4.0) * 2 * np.pi / size
            angle = rng.uniform(0, np.pi)
            pattern += np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy) + rng.uniform(0, 2 * np.pi))
        tint = 0.05 + rng.uniform(-0.02, 0.02, size=3)
        bg = bg + (tint[:, None, None] * pattern[None]).astype(np.float32)
    return np.clip(bg, 0.0, 1.0)


def _signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray, radius: float) -> np.ndarray:
    """Signed distance in pixels (negative inside) to a shape centred at the origin."""
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - radius
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - radius * 0.85
    if shape == "diamond":
        return (np.abs(dx) + np.abs(dy) - radius * 1.2) / np.sqrt(2.0)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render_clip(seed: int, num_frames: int, config: WorldConfig | None = None) -> Clip:
    """Render ``num_frames`` frames at ``RENDER_FPS`` of the world defined by ``seed``.

    The scene (objects, trajectories, background) depends only on ``seed`` and ``config``, never on
    ``num_frames``: a longer render of the same seed extends the shorter one frame for frame.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return render_frames(seed, range(num_frames), config)


def render_frames(seed: int, frame_indices, config: WorldConfig | None = None) -> Clip:
    """Render the given frames (indices at ``RENDER_FPS``, any order) of the world of ``seed``.

    ``render_frames(seed, [i, j])`` equals frames ``i`` and ``j`` of ``render_clip(seed, n)``
    exactly, without rendering the frames in between (training draws strided clips this way).
    """
    indices = np.asarray(list(frame_indices), dtype=np.int64)
    if indices.size == 0 or indices.min() < 0:
        raise ValueError(f"frame_indices must be a non-empty sequence of indices >= 0, got {indices.tolist()}")
    num_frames = len(indices)
    cfg = config or WorldConfig()
    rng = np.random.default_rng(seed)
    size = cfg.size

    # Scene. Every random draw happens before anything that depends on num_frames.
    num_objects = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    color_index = rng.choice(len(PALETTE), size=num_objects, replace=False)
    colors = PALETTE[color_index] * rng.uniform(0.9, 1.0, size=(num_objects, 1)).astype(np.float32)
    shapes = [SHAPES[i] for i in rng.integers(0, len(SHAPES), size=num_objects)]
    radii = rng.uniform(cfg.min_radius, cfg.max_radius, size=num_objects) * size
    lo = np.repeat(radii[:, None], 2, axis=1)
    hi = size - lo
    start = rng.uniform(lo, hi)
    speed = rng.uniform(cfg.min_speed, cfg.max_speed, size=num_objects) * size
    angle = rng.uniform(0, 2 * np.pi, size=num_objects)
    velocity = speed[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    easing = rng.random(num_objects) < cfg.ease_prob
    # Enough waypoints for a long clip (64 s); each leg moves by about speed · leg time.
    num_legs = 64 * int(np.ceil(1.0 / cfg.ease_seconds)) + 1
    steps = rng.normal(size=(num_legs, num_objects, 2))
    steps *= (speed * cfg.ease_seconds)[None, :, None] / np.linalg.norm(steps, axis=2, keepdims=True)
    waypoints = np.clip(start[None] + np.cumsum(np.concatenate([np.zeros_like(steps[:1]), steps]), 0), lo, hi)
    background = _background(rng, cfg)

    # Trajectories.
    t = indices / RENDER_FPS
    if t.max() > 60:
        raise ValueError(f"clips longer than 60 s are not supported, got frame {indices.max()}")
    positions = np.where(
        easing[None, :, None], _ease(waypoints, t, cfg.ease_seconds), _bounce(start, velocity, t, lo, hi)
    )

    # Rendering: coverage of each object at each pixel from its signed distance (1 px anti-alias).
    centres = np.arange(size, dtype=np.float64) + 0.5
    frames = np.broadcast_to(background, (num_frames, 3, size, size)).copy()
    for k in range(num_objects):
        dx = centres[None, None, :] - positions[:, k, 0, None, None]
        dy = centres[None, :, None] - positions[:, k, 1, None, None]
        alpha = np.clip(0.5 - _signed_distance(shapes[k], dx, dy, radii[k]), 0.0, 1.0).astype(np.float32)
        alpha = alpha[:, None]
        frames = frames * (1 - alpha) + colors[k][None, :, None, None] * alpha

    return Clip(
        frames=torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32)),
        positions=torch.from_numpy(positions.astype(np.float32)),
        colors=torch.from_numpy(colors.astype(np.float32)),
        radii=torch.from_numpy(radii.astype(np.float32)),
        shapes=shapes,
    )
