"""A learned video feature for a Fréchet distance on the procedural world (an offline FVD analogue).

FD-stats (``zerosmooth.lab.metrics.clip_features``) compares 11 hand-made statistics. FVD compares
features of a video network (I3D) that has seen a lot of real video; none is available offline.
The world, however, knows its own ground truth (object positions, colours, shapes, radii for every
rendered frame), so a small encoder is trained here on that ground truth, and the Fréchet distance
between Gaussians fitted to its embeddings of generated and real clips is reported: ``learned_fd``.

API (clips are float tensors in [0, 1]; ``[T, 3, H, W]`` for one clip, ``[B, T, 3, H, W]`` for a
batch, or a list of ``[T, 3, H, W]`` clips; any H×W is resized to 64×64; T ≥ 8, trained on 8–64):

- ``load_encoder(path=None)``: the shipped encoder (``video_features.safetensors`` beside this file),
  on CPU, in eval mode.
- ``video_features(clips, encoder=None) -> [B, EMBED_DIM]`` (no grad, batched, deterministic).
- ``learned_fd(generated_clips, real_clips) -> float``: ``metrics.frechet_distance`` on those
  features (standardised by the real set's std). Compare sets at the same frame rate.

Architecture (``VideoEncoder``, 0.44 M parameters, 1.8 MB float32; no batch norm, so a clip's
feature does not depend on the other clips of its batch):

1. per step ``t`` (frames ``t − 1, t, t + 1``, for ``t = 1 … T − 2``): 9 input channels, frame
   ``t`` and the differences ``t + 1 − t`` and ``t − (t − 1)``, mapped to [−1, 1]. Motion is made
   explicit (as in two-stream networks), and so is its consistency: smooth motion makes the two
   differences nearly equal, shuffles, pauses, stutter and jumps do not (in a 300-step pilot this
   input took shuffled-frame clips from FD ≈ real to ≈ 20× real; with one difference they were
   not separated);
2. a 2-D CNN per step: 4×4 patchify conv (stride 4) → 2 stride-2 3×3 convs (GroupNorm, GELU) →
   a 4×4×64 map, read two ways and summed: flattened → linear (where things are) and max over
   space → linear (what is there) → LayerNorm → 128-d step feature;
3. three residual temporal 1-D convs (kernel 3, dilation 1, 2, 4: a 15-step receptive field) over
   the ``T − 2`` step features;
4. a still branch for appearance: a 4-layer CNN at 32×32 → 8×8 on the first, middle and last
   frame, max over space, mean over the three frames → 64-d (cheap: 3 frames per clip; the patchify
   step CNN sees shapes only coarsely);
5. mean and std over time of the step features (length-agnostic; the std sees stutter and
   bursts) and the still features → linear → the ``EMBED_DIM`` = 64-d embedding, linear (no
   activation) so no feature dimension is dead and every one has variance for the Fréchet
   distance's standardisation.

Training (``train``): on clips of training seeds (< ``HELD_OUT_SEED_BASE``) at strides 1, 2 and 4
(28, 14, 7 fps: one encoder for all three rates) with random start times and lengths 8–64, heads
on the embedding and on the step features learn:

- **corruption class** (8-way, from the embedding): ``CORRUPTIONS`` — a real clip, or one of
  ``shuffle`` (whole clip or a window permuted), ``freeze`` (one frame repeated, or the video stops
  or pauses part-way), ``stutter`` (each frame shown 2–4 times: the ``repeat`` baseline's look),
  ``blend`` (in-betweens as cross-fades of key frames: the ``blend`` baseline's ghosting),
  ``colour`` (an object switches or drifts to another colour), ``pop`` (an object vanishes for a
  while, or fades), ``jitter`` (positions shake or an object teleports). The object corruptions are
  exact re-renders: the background is recovered from the rendered frames (un-compositing where the
  analytic object coverage lets light through) and the scene re-composited with altered colours,
  visibility or positions. A multi-class rather than real/fake target, so different failures land
  in different regions of the embedding and a Fréchet distance sees which;
- **appearance** (from the embedding, for clips whose objects are intact): per palette colour,
  presence (so colour and count), shape and radius;
- **motion** (real clips only): per palette colour, from the embedding, the clip's mean position,
  mean velocity, mean speed and mean |acceleration| in px/frame at the clip's own rate; and per
  step, from the step features, each object's position and velocity.

Losses: cross-entropy (class, shape), BCE (presence), smooth-L1 (the rest, targets scaled to ~1),
summed with weight 1, each masked to the clips and colours where its target is defined.

The shipped weights (``video_features.safetensors``, record in ``video_features.json`` with the
settings, final losses and held-out separation) were trained on CPU with one thread by::

    python -m zerosmooth.lab.video_features --train --out zerosmooth/lab \
        --steps 1000 --batch-frames 768 --seed 0 --lr 2e-3

760 s of CPU time (23 min wall on a 2-core box shared with other jobs). Training is deterministic
in ``--seed`` (numpy and torch generators seeded, one torch thread). Final losses (mean of the last
100 steps): class 0.48 (chance 2.08), presence 0.014, radius 0.026, motion 0.029, step 0.066; the
shape head was barely learned (1.066, chance 1.099: the still branch's shape features emerge late,
as in a shape-only probe that sat at chance for ~200 steps before learning), so the feature's
sensitivity to shape is weak — a longer run is the remedy if shape errors matter.

Held-out separation (``--check``: 32 real clips of 56 frames from held-out seeds against 32
others; FD of the others as they are, shuffled, frozen on their first frame, or with a training
corruption), at 7 / 14 / 28 fps: real 17.2 / 17.3 / 17.5; shuffled 215 / 241 / 272; frozen 206 /
180 / 147; stutter 559 / 529 / 464; blend 435 / 304 / 177; colour 49 / 54 / 62; pop 183 / 216 /
236; jitter 28 / 47 / 72. With 16 clips a side (the evaluation's seed count) real-vs-real rises to
~37 (a 64-d Gaussian fitted to 16 points), shuffled 251–336, frozen 179–240. Features of 64 clips
of 56 frames take ~4.6 s on one thread. ``python -m zerosmooth.lab.video_features --check``
prints the table for the weights at ``--weights`` (default: shipped).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from functools import lru_cache
from pathlib import Path
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from zerosmooth.lab.metrics import frechet_distance
from zerosmooth.lab.world import HELD_OUT_SEED_BASE, PALETTE, RENDER_FPS, SHAPES, Clip, _signed_distance, render_frames

SIZE = 64
"""Frame size the encoder works at; other sizes are resized to it."""
MIN_FRAMES = 8
MAX_TRAIN_FRAMES = 64
STRIDES = (1, 2, 4)
"""Rendered-frame strides trained on: 28, 14 and 7 fps."""
EMBED_DIM = 64
STEP_DIM = 128
STILL_DIM = 64
CORRUPTIONS = ("real", "shuffle", "freeze", "stutter", "blend", "colour", "pop", "jitter")
INTACT_OBJECTS = {"real", "shuffle", "freeze", "stutter", "blend", "jitter"}
"""Corruptions that leave every object's presence, shape, radius and colour as rendered."""
REAL_FRACTION = 0.3
"""Share of real clips in a training batch; the rest is spread evenly over the corruptions."""
SLOTS = len(PALETTE)
# Clip-level head layout (from the embedding): name -> width.
CLIP_HEAD = {
    "class": len(CORRUPTIONS),
    "presence": SLOTS,
    "shape": SLOTS * len(SHAPES),
    "radius": SLOTS,
    "position": SLOTS * 2,
    "velocity": SLOTS * 2,
    "speed": SLOTS,
    "accel": SLOTS,
}
STEP_HEAD = SLOTS * 4  # per step and palette colour: position (x, y) and velocity (x, y)
VELOCITY_SCALE = 4.0
"""px/frame that maps to 1 (the fastest object moves ~8.7 px per frame at 7 fps)."""
EXTRA_SECONDS = (15, 23, 31, 39, 47, 55)
"""Times of the extra frames rendered to recover a background (objects are elsewhere by then)."""
CHUNK = 8
"""Clips per forward pass in ``video_features`` (bounds memory for long clips)."""

WEIGHTS = Path(__file__).with_name("video_features.safetensors")


class VideoEncoder(nn.Module):
    """Clips ``[B, T, 3, 64, 64]`` in [0, 1] → embedding ``[B, EMBED_DIM]`` (see module docstring)."""

    def __init__(self):
        super().__init__()
        self.frame = nn.Sequential(
            nn.Conv2d(9, 32, 4, stride=4), nn.GroupNorm(8, 32), nn.GELU(),  # 16×16
            nn.Conv2d(32, 48, 3, stride=2, padding=1), nn.GroupNorm(8, 48), nn.GELU(),  # 8×8
            nn.Conv2d(48, 64, 3, stride=2, padding=1), nn.GroupNorm(8, 64), nn.GELU(),  # 4×4
        )
        self.where = nn.Linear(64 * 4 * 4, STEP_DIM)
        self.what = nn.Linear(64, STEP_DIM)
        self.step_norm = nn.LayerNorm(STEP_DIM)
        self.temporal = nn.ModuleList(
            nn.Conv1d(STEP_DIM, STEP_DIM, 3, padding=d, dilation=d, padding_mode="replicate") for d in (1, 2, 4)
        )
        self.still = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.GroupNorm(8, 32), nn.GELU(),  # 32×32
            nn.Conv2d(32, 48, 3, stride=2, padding=1), nn.GroupNorm(8, 48), nn.GELU(),  # 16×16
            nn.Conv2d(48, 64, 3, stride=2, padding=1), nn.GroupNorm(8, 64), nn.GELU(),  # 8×8
            nn.Conv2d(64, STILL_DIM, 3, stride=1, padding=1),
        )
        self.embed = nn.Linear(2 * STEP_DIM + STILL_DIM, EMBED_DIM)
        self.clip_head = nn.Linear(EMBED_DIM, sum(CLIP_HEAD.values()))
        self.step_head = nn.Conv1d(STEP_DIM, STEP_HEAD, 1)

    def steps(self, clips: torch.Tensor) -> torch.Tensor:
        """``[B, T, 3, 64, 64]`` → step features ``[B, STEP_DIM, T − 2]``."""
        b, t = clips.shape[:2]
        x = clips * 2 - 1
        steps = torch.cat([x[:, 1:-1], x[:, 2:] - x[:, 1:-1], x[:, 1:-1] - x[:, :-2]], dim=2)  # [B, T-2, 9, H, W]
        m = self.frame(steps.flatten(0, 1))  # [B·(T-2), 64, 4, 4]
        h = self.step_norm(self.where(m.flatten(1)) + self.what(m.amax((2, 3))))
        h = h.view(b, t - 2, STEP_DIM).transpose(1, 2)
        for conv in self.temporal:
            h = h + F.gelu(conv(h))
        return h

    def stills(self, clips: torch.Tensor) -> torch.Tensor:
        """``[B, T, 3, 64, 64]`` → ``[B, STILL_DIM]``: the mean over the first, middle and last
        frame of a higher-resolution CNN's features, max-pooled over space (what is there, not
        where: shapes and colours)."""
        x = clips[:, [0, clips.shape[1] // 2, -1]] * 2 - 1
        return self.still(x.flatten(0, 1)).amax((2, 3)).view(clips.shape[0], 3, STILL_DIM).mean(1)

    def forward(self, clips: torch.Tensor):
        """Returns (embedding [B, EMBED_DIM], clip-head outputs [B, sum(CLIP_HEAD)],
        step-head outputs [B, STEP_HEAD, T − 2])."""
        h = self.steps(clips)
        e = self.embed(torch.cat([h.mean(2), h.std(2), self.stills(clips)], dim=1))
        return e, self.clip_head(e), self.step_head(h)


# ----------------------------------------------------------------------------------------- API


def load_encoder(path: str | Path | None = None) -> VideoEncoder:
    """The encoder with the weights at ``path`` (default: the shipped ones), on CPU, in eval mode,
    gradients off."""
    model = VideoEncoder()
    model.load_state_dict(load_file(str(path or WEIGHTS)))
    return model.eval().requires_grad_(False)


@lru_cache(maxsize=1)
def _shipped_encoder() -> VideoEncoder:
    return load_encoder()


def video_features(clips, encoder: VideoEncoder | None = None) -> torch.Tensor:
    """Embeddings ``[B, EMBED_DIM]`` (float32, CPU) of ``clips``: ``[T, 3, H, W]`` (B = 1),
    ``[B, T, 3, H, W]`` or a list of ``[T, 3, H, W]`` (lengths may differ), floats in [0, 1],
    T ≥ 8. ``encoder`` defaults to the shipped one."""
    return _features(clips, "clips", encoder)


def learned_fd(generated_clips, real_clips, encoder: VideoEncoder | None = None) -> float:
    """Fréchet distance (``metrics.frechet_distance``, standardised by the real set) between the
    learned features of ``generated_clips`` and ``real_clips`` (each as for ``video_features``,
    at least 2 clips, both at the same frame rate)."""
    return frechet_distance(
        _features(generated_clips, "generated_clips", encoder), _features(real_clips, "real_clips", encoder)
    )


def _features(clips, name: str, encoder: VideoEncoder | None) -> torch.Tensor:
    if isinstance(clips, (list, tuple)):
        batches = [_validated(c, f"{name}[{i}]", rank=4) for i, c in enumerate(clips)]
        if not batches:
            raise ValueError(f"{name} is empty")
    else:
        batches = [_validated(clips, name, rank=None)]
    model = encoder or _shipped_encoder()
    with torch.inference_mode():
        out = [model(b[i : i + CHUNK])[0] for b in batches for i in range(0, b.shape[0], CHUNK)]
    return torch.cat(out).float()


def _validated(clips, name: str, rank: int | None) -> torch.Tensor:
    """Check ``clips`` ([T, 3, H, W] or [B, T, 3, H, W]; ``rank`` 4 insists on the former) and
    return it as float32 ``[B, T, 3, 64, 64]`` on CPU; errors name the argument."""
    shapes = "[T, 3, H, W]" if rank == 4 else "[T, 3, H, W] or [B, T, 3, H, W]"
    if not isinstance(clips, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {shapes}, got {type(clips).__name__}")
    if clips.dim() not in ((4,) if rank == 4 else (4, 5)):
        raise ValueError(f"{name} must have shape {shapes}, got {tuple(clips.shape)} (rank {clips.dim()})")
    if not clips.is_floating_point():
        raise TypeError(f"{name} must be a float tensor with values in [0, 1], got dtype {clips.dtype}")
    x = clips[None] if clips.dim() == 4 else clips
    b, t, c, h, w = x.shape
    if c != 3:
        raise ValueError(f"{name} must have 3 colour channels (dim -3), got shape {tuple(clips.shape)}")
    if b == 0:
        raise ValueError(f"{name} holds no clips")
    if t < MIN_FRAMES:
        raise ValueError(f"{name} has {t} frames; the encoder needs at least {MIN_FRAMES}")
    if h == 0 or w == 0:
        raise ValueError(f"{name} has empty frames, shape {tuple(clips.shape)}")
    x = x.detach().to("cpu", torch.float32)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if (h, w) != (SIZE, SIZE):
        x = F.interpolate(x.flatten(0, 1), size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
        x = x.view(b, t, 3, SIZE, SIZE)
    return x


# ------------------------------------------------------------------------ world re-rendering


def _coverage(positions: np.ndarray, radii: np.ndarray, shapes: list[str], size: int) -> np.ndarray:
    """Each object's anti-aliased coverage ``[T, K, H, W]`` (float32), computed as the world does."""
    centres = np.arange(size, dtype=np.float64) + 0.5
    out = np.empty((positions.shape[0], len(shapes), size, size), dtype=np.float32)
    for k, shape in enumerate(shapes):
        dx = centres[None, None, :] - positions[:, k, 0, None, None]
        dy = centres[None, :, None] - positions[:, k, 1, None, None]
        out[:, k] = np.clip(0.5 - _signed_distance(shape, dx, dy, radii[k]), 0.0, 1.0)
    return out


def _composite(background: np.ndarray, alpha: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Objects over a background, in list order, as the world draws them.

    background: [3, H, W]; alpha: [T, K, H, W]; colours: [T, K, 3]. Returns [T, 3, H, W] float32.
    """
    frames = np.broadcast_to(background.astype(np.float32), (alpha.shape[0],) + background.shape).copy()
    for k in range(alpha.shape[1]):
        a = alpha[:, k, None]
        frames = frames * (1 - a) + colours[:, k, :, None, None].astype(np.float32) * a
    return frames


def _recover_background(clip: Clip) -> np.ndarray:
    """The background ``[3, H, W]`` of a rendered clip: per pixel, from the frame where the objects
    let the most of it through, with their analytic contribution removed (exact where any frame
    leaves the pixel uncovered; pixels covered in every frame take the mean of the rest)."""
    frames = clip.frames.numpy().astype(np.float64)
    colours = np.broadcast_to(clip.colors.numpy(), (frames.shape[0],) + tuple(clip.colors.shape))
    alpha = _coverage(clip.positions.numpy(), clip.radii.numpy(), clip.shapes, frames.shape[-1])
    through = np.prod(1 - alpha.astype(np.float64), axis=1)  # [T, H, W]
    objects = _composite(np.zeros(frames.shape[1:]), alpha, colours)
    best = through.argmax(0)
    rows, cols = np.indices(best.shape)
    light = through[best, rows, cols]
    background = (frames[best, :, rows, cols] - objects[best, :, rows, cols]) / np.maximum(light, 1e-6)[..., None]
    background = background.transpose(2, 0, 1)  # [3, H, W]
    hidden = light < 1e-3
    if hidden.any():
        background[:, hidden] = background[:, ~hidden].mean(1)[:, None] if (~hidden).any() else 0.5
    return np.clip(background, 0.0, 1.0)


# -------------------------------------------------------------------------------- corruptions


def _corrupt(kind: str, clip: Clip, background: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """Frames ``[T, 3, H, W]`` (numpy float32) of ``clip`` with corruption ``kind`` (one of
    ``CORRUPTIONS``). ``colour``, ``pop`` and ``jitter`` re-composite the scene over
    ``background``; the others rearrange or mix the rendered frames."""
    frames = clip.frames.numpy()
    t = frames.shape[0]
    if kind == "real":
        return frames
    if kind == "shuffle":
        if rng.random() < 0.5:
            order = rng.permutation(t)
            while (order == np.arange(t)).all():
                order = rng.permutation(t)
        else:  # a window of 3–8 frames out of order
            n = int(rng.integers(3, min(8, t) + 1))
            s = int(rng.integers(0, t - n + 1))
            order = np.arange(t)
            if rng.random() < 0.5:  # rotated: one frame moved to the other end of the window
                window = np.roll(order[s : s + n], int(rng.integers(1, n)))
            else:
                window = rng.permutation(order[s : s + n])
            if (window == order[s : s + n]).all():
                window = window[::-1].copy()
            order[s : s + n] = window
        return frames[order]
    if kind == "freeze":
        mode = rng.integers(3)
        if mode == 0:  # one frame for the whole clip
            return frames[np.full(t, rng.integers(t))]
        start = int(rng.integers(1, t - 2))
        if mode == 1:  # the video stops
            return frames[np.minimum(np.arange(t), start)]
        stop = int(rng.integers(start + 2, t + 1))  # a pause of at least 2 steps, then it jumps on
        order = np.arange(t)
        order[start:stop] = start
        return frames[order]
    if kind == "stutter":
        r = int(rng.integers(2, 5))
        return frames[(np.arange(t) // r) * r]
    if kind == "blend":
        r = int(rng.choice([2, 4]))
        key = (np.arange(t) // r) * r
        nxt = np.minimum(key + r, (t - 1) // r * r)  # the last key frame is held
        u = ((np.arange(t) - key) / r).astype(np.float32)[:, None, None, None]
        return frames[key] * (1 - u) + frames[nxt] * u
    positions = clip.positions.numpy().astype(np.float64)
    colours = np.repeat(clip.colors.numpy()[None], t, axis=0)
    visible = np.ones((t, len(clip.shapes)), dtype=np.float32)
    k = int(rng.integers(len(clip.shapes)))
    start = int(rng.integers(1, t - 1))
    if kind == "colour":
        others = [c for c in PALETTE if np.abs(c - clip.colors[k].numpy()).max() > 0.2]
        new = others[int(rng.integers(len(others)))] * rng.uniform(0.9, 1.0)
        if rng.random() < 0.5:  # switches at ``start``
            colours[start:, k] = new
        else:  # drifts over the whole clip
            u = np.linspace(0, 1, t)[:, None]
            colours[:, k] = colours[:, k] * (1 - u) + new * u
    elif kind == "pop":
        if rng.random() < 0.7:  # gone for a while (popping out and, if it ends early, back in)
            stop = int(rng.integers(start + 1, t + 1))
            visible[start:stop, k] = 0
        else:  # fades to a ghost
            visible[:, k] = np.linspace(1, rng.uniform(0, 0.4), t)
    elif kind == "jitter":
        if rng.random() < 0.5:
            positions[:, k] += rng.normal(0, rng.uniform(0.7, 2.0), size=(t, 2))
        else:  # teleports at ``start``
            distance = rng.uniform(8, 20)
            angle = rng.uniform(0, 2 * np.pi)
            positions[start:, k] += distance * np.array([math.cos(angle), math.sin(angle)])
        r = float(clip.radii[k])
        positions[:, k] = np.clip(positions[:, k], r, frames.shape[-1] - r)
    else:
        raise ValueError(f"unknown corruption {kind!r}; expected one of {CORRUPTIONS}")
    alpha = _coverage(positions, clip.radii.numpy(), clip.shapes, frames.shape[-1]) * visible[:, :, None, None]
    return _composite(background, alpha, colours)


# ----------------------------------------------------------------------------------- training


def _slots(clip: Clip) -> np.ndarray:
    """The palette index of each of the clip's objects [K] (colours are palette colours × 0.9–1)."""
    c = clip.colors.numpy()
    unit = PALETTE / np.linalg.norm(PALETTE, axis=1, keepdims=True)
    return (c @ unit.T).argmax(1)


def _targets(clip: Clip, kind: str) -> dict[str, np.ndarray]:
    """Ground-truth targets of one clip, per palette slot, scaled to about unit range, with masks
    (``appearance``: presence/shape/radius defined; ``motion``: positions/velocities defined)."""
    t = clip.frames.shape[0]
    size = clip.frames.shape[-1]
    slots = _slots(clip)
    pos = clip.positions.numpy().astype(np.float64)
    vel = pos[1:] - pos[:-1]
    acc = vel[1:] - vel[:-1]
    out = {
        "class": np.int64(CORRUPTIONS.index(kind)),
        "presence": np.zeros(SLOTS, np.float32),
        "shape": np.zeros(SLOTS, np.int64),
        "radius": np.zeros(SLOTS, np.float32),
        "position": np.zeros((SLOTS, 2), np.float32),
        "velocity": np.zeros((SLOTS, 2), np.float32),
        "speed": np.zeros(SLOTS, np.float32),
        "accel": np.zeros(SLOTS, np.float32),
        "step": np.zeros((SLOTS, 4, t - 2), np.float32),
        "appearance": np.float32(kind in INTACT_OBJECTS),
        "motion": np.float32(kind == "real"),
    }
    for k, s in enumerate(slots):
        out["presence"][s] = 1
        out["shape"][s] = SHAPES.index(clip.shapes[k])
        out["radius"][s] = (float(clip.radii[k]) / size - 0.135) / 0.035
        out["position"][s] = pos[:, k].mean(0) / size * 2 - 1
        out["velocity"][s] = vel[:, k].mean(0) / VELOCITY_SCALE
        out["speed"][s] = np.linalg.norm(vel[:, k], axis=1).mean() / VELOCITY_SCALE
        out["accel"][s] = np.linalg.norm(acc[:, k], axis=1).mean() / VELOCITY_SCALE
        out["step"][s, :2] = (pos[1:-1, k] / size * 2 - 1).T  # step t: frame t and its velocity to t + 1
        out["step"][s, 2:] = (vel[1:, k] / VELOCITY_SCALE).T
    return out


def _sample(rng: np.random.Generator, seed: int, stride: int, frames: int, kind: str, offset: int):
    """One clip of world ``seed``, corrupted by ``kind``: (frames [T, 3, 64, 64], targets)."""
    index = offset + stride * np.arange(frames)
    needs_background = kind in ("colour", "pop", "jitter")
    extra = [RENDER_FPS * s for s in EXTRA_SECONDS] if needs_background else []
    full = render_frames(seed, list(index) + extra)
    clip = Clip(full.frames[:frames], full.positions[:frames], full.colors, full.radii, full.shapes)
    background = _recover_background(full) if needs_background else None
    return _corrupt(kind, clip, background, rng), _targets(clip, kind)


def make_batch(rng: np.random.Generator, batch: int, frames: int):
    """A training batch: clips ``[B, T, 3, 64, 64]`` and stacked targets (see ``_targets``).

    Seeds are training seeds (below ``HELD_OUT_SEED_BASE``), strides from ``STRIDES``, start frames
    from the first 4 s, corruptions ``REAL_FRACTION`` real and the rest evenly."""
    p = np.full(len(CORRUPTIONS), (1 - REAL_FRACTION) / (len(CORRUPTIONS) - 1))
    p[0] = REAL_FRACTION
    kinds = [CORRUPTIONS[i] for i in rng.choice(len(CORRUPTIONS), size=batch, p=p)]
    clips, targets = [], []
    for kind in kinds:
        seed = int(rng.integers(0, HELD_OUT_SEED_BASE))
        stride = int(rng.choice(STRIDES))
        offset = int(rng.integers(0, 4 * RENDER_FPS))
        x, y = _sample(rng, seed, stride, frames, kind, offset)
        clips.append(torch.from_numpy(x))
        targets.append(y)
    stacked = {key: torch.from_numpy(np.stack([y[key] for y in targets])) for key in targets[0]}
    return torch.stack(clips), stacked


def losses(model: VideoEncoder, clips: torch.Tensor, y: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The training loss terms of a batch (each a scalar; their sum is minimised)."""
    _, out, step = model(clips)
    head = dict(zip(CLIP_HEAD, out.split(list(CLIP_HEAD.values()), dim=1)))
    b = clips.shape[0]
    present = y["presence"]  # [B, SLOTS]
    look = y["appearance"][:, None] * present
    move = y["motion"][:, None] * present

    def masked(err: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.expand_as(err)
        return (err * mask).sum() / mask.sum().clamp_min(1)

    def smooth(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked(F.smooth_l1_loss(pred, target, reduction="none"), mask)

    shape_err = F.cross_entropy(head["shape"].reshape(b * SLOTS, len(SHAPES)), y["shape"].flatten(), reduction="none")
    presence_err = F.binary_cross_entropy_with_logits(head["presence"], present, reduction="none")
    return {
        "class": F.cross_entropy(head["class"], y["class"]),
        "presence": masked(presence_err, y["appearance"][:, None]),
        "shape": masked(shape_err.view(b, SLOTS), look),
        "radius": smooth(head["radius"], y["radius"], look),
        "motion": smooth(
            torch.cat([head["position"], head["velocity"], head["speed"], head["accel"]], 1),
            torch.cat([y["position"].flatten(1), y["velocity"].flatten(1), y["speed"], y["accel"]], 1),
            torch.cat([move.repeat_interleave(2, 1), move.repeat_interleave(2, 1), move, move], 1),
        ),
        "step": smooth(step.view(b, SLOTS, 4, -1), y["step"], move[:, :, None, None]),
    }


def train(out: Path, steps: int, batch_frames: int, seed: int, lr: float, log_every: int = 50) -> dict:
    """Train an encoder from scratch on one CPU thread and write ``out/video_features.safetensors``
    and ``out/video_features.json`` (settings, final losses, held-out check); returns the record.

    Each step draws a clip length T in [8, 64] and ``batch_frames // T`` clips (8 to 32), so long
    clips are seen without making every step as costly as the longest."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = VideoEncoder()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps))
    )
    history: dict[str, list[float]] = {}
    start, cpu_start = time.time(), time.process_time()
    for i in range(steps):
        frames = int(rng.integers(MIN_FRAMES, MAX_TRAIN_FRAMES + 1))
        clips, y = make_batch(rng, min(32, max(8, batch_frames // frames)), frames)
        terms = losses(model, clips, y)
        total = sum(terms.values())
        opt.zero_grad(set_to_none=True)
        total.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        for k, v in terms.items():
            history.setdefault(k, []).append(v.item())
        history.setdefault("total", []).append(total.item())
        if (i + 1) % log_every == 0 or i + 1 == steps:
            recent = {k: np.mean(v[-log_every:]) for k, v in history.items()}
            terms_text = " ".join(f"{k} {v:.3f}" for k, v in recent.items())
            print(f"step {i + 1}/{steps} {time.time() - start:.0f}s {terms_text}", flush=True)
    seconds, cpu_seconds = time.time() - start, time.process_time() - cpu_start
    model.eval().requires_grad_(False)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / WEIGHTS.name))
    tail = min(100, steps)
    record = {
        "command": f"python -m zerosmooth.lab.video_features --train --out {out} --steps {steps} "
                   f"--batch-frames {batch_frames} --seed {seed} --lr {lr}",
        "settings": {
            "steps": steps, "batch_frames": batch_frames, "clips_per_step": "batch_frames // T, clamped to 8..32",
            "seed": seed, "lr": lr, "weight_decay": 1e-4, "warmup_steps": warmup,
            "schedule": "linear warm-up then cosine to 0", "grad_clip": 1.0, "torch_threads": 1,
            "frames": [MIN_FRAMES, MAX_TRAIN_FRAMES], "strides": list(STRIDES), "real_fraction": REAL_FRACTION,
            "corruptions": list(CORRUPTIONS), "embed_dim": EMBED_DIM, "torch": torch.__version__,
        },
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(seconds, 1),
        "train_cpu_seconds": round(cpu_seconds, 1),  # wall time also counts waiting on a busy machine
        f"final_losses_mean_last_{tail}_steps": {k: round(float(np.mean(v[-tail:])), 4) for k, v in history.items()},
        "held_out_check": check(model),
    }
    (out / WEIGHTS.with_suffix(".json").name).write_text(json.dumps(record, indent=2) + "\n")
    return record


# -------------------------------------------------------------------------------------- check


def held_out_clips(first_seed: int, count: int, stride: int, frames: int) -> torch.Tensor:
    """Real clips ``[count, frames, 3, 64, 64]`` of held-out seeds ``HELD_OUT_SEED_BASE +
    first_seed + i``, rendered frames ``0, stride, 2·stride, …`` (as the evaluation cuts them)."""
    index = stride * np.arange(frames)
    return torch.stack([render_frames(HELD_OUT_SEED_BASE + first_seed + i, index).frames for i in range(count)])


def shuffled(clips: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Each clip of ``[B, T, ...]`` with its frames in a random (seeded) order."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([c[torch.randperm(c.shape[0], generator=g)] for c in clips])


def frozen(clips: torch.Tensor) -> torch.Tensor:
    """Each clip of ``[B, T, ...]`` as its first frame repeated T times."""
    return clips[:, :1].expand_as(clips).contiguous()


def check(encoder: VideoEncoder | None = None, count: int = 32, frames: int = 56) -> dict[str, dict[str, float]]:
    """Learned FD against ``count`` real held-out clips (set A) at 7, 14 and 28 fps of: other real
    held-out clips (set B), set B shuffled, frozen, and with each other training corruption;
    ``frames`` frames per clip. Returns ``{"7fps": {"real": …, "shuffle": …, …}, …}``."""
    rng = np.random.default_rng(12345)
    result = {}
    for stride in (4, 2, 1):
        a = held_out_clips(0, count, stride, frames)
        b = held_out_clips(10_000, count, stride, frames)
        fa = video_features(a, encoder)
        row = {"real": frechet_distance(video_features(b, encoder), fa),
               "shuffled_frames": frechet_distance(video_features(shuffled(b), encoder), fa),
               "frozen_frame": frechet_distance(video_features(frozen(b), encoder), fa)}
        for kind in CORRUPTIONS[1:]:
            corrupt = [torch.from_numpy(_sample(rng, HELD_OUT_SEED_BASE + 10_000 + i, stride, frames, kind, 0)[0])
                       for i in range(count)]
            row[kind] = frechet_distance(video_features(torch.stack(corrupt), encoder), fa)
        result[f"{RENDER_FPS // stride}fps"] = {k: round(v, 2) for k, v in row.items()}
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--train", action="store_true", help="train an encoder and write its weights and record")
    mode.add_argument("--check", action="store_true", help="print the held-out separation of the encoder at --weights")
    p.add_argument("--out", type=Path, default=Path("out/video_features"), help="--train: output folder")
    p.add_argument("--weights", type=Path, default=None, help="--check: weights file (default: shipped)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-frames", type=int, default=768, help="frames per step (clips = this // T, 8..32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=2e-3)
    args = p.parse_args(argv)
    if args.train:
        record = train(args.out, args.steps, args.batch_frames, args.seed, args.lr)
        print(json.dumps(record["held_out_check"], indent=2))
    else:
        torch.set_num_threads(1)
        print(json.dumps(check(load_encoder(args.weights)), indent=2))


if __name__ == "__main__":
    main()
