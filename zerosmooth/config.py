"""Every knob of a ZeroSmooth run, validated once (SPEC §4–7).

The config knows nothing about the wrapped pipeline. Checks that need the base frame count
(``window`` may not exceed it) run in :meth:`ZeroSmoothConfig.temporal_windows_for`, which the
cascade calls before any denoising starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

STRENGTH_SCHEDULES = ("timestep", "progress", "constant")
KV_KINDS = ("box", "sample")
METHODS = ("zerosmooth", "direct", "latent_ddnm")
WEIGHTINGS = ("pyramid", "flat")
BACKENDS = ("auto", "torch", "triton", "reference")


def _integer(name: str, value, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        expected = f"an integer >= {minimum}" + (" or None" if allow_none else "")
        raise ValueError(f"ZeroSmoothConfig.{name} must be {expected}, got {value!r}")


def _fraction(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0 or math.isnan(value):
        raise ValueError(f"ZeroSmoothConfig.{name} must be a number in [0, 1], got {value!r}")


def _choice(name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"ZeroSmoothConfig.{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _flag(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"ZeroSmoothConfig.{name} must be True or False, got {value!r}")


@dataclass(frozen=True)
class ZeroSmoothConfig:
    """Settings of a ZeroSmooth cascade.

    Attributes:
        scale: frame-rate factor ``n`` per stage, an integer ``>= 2``.
        stages: number of stages ``S >= 1``; stage 1 is the plain base model, so the last stage has
            ``n^(S-1) · t0`` frames. ``stages=1`` runs the base model only.
        window: temporal-attention window ``W`` of the long branches; default (``None``) the base
            frame count ``t0`` (the trained length). Must not exceed ``t0``.
        overlap: overlap of consecutive windows, ``0 <= overlap < W``; default ``⌊W/2⌋``.
        strength: the blend strength ``w_max`` in ``[0, 1]`` (SPEC §4, Eq. 15).
        strength_schedule: ``"timestep"``: ``w = w_max · t/T`` (``T`` the largest training
            timestep); schedulers whose timesteps are not training timesteps (``timestep_type
            "continuous"`` such as SVD's EDM Euler, or values outside ``[0, T]``) fall back to
            ``"progress"``: ``w = w_max · (1 - k/N)`` at step ``k`` of ``N``; ``"constant"``:
            ``w = w_max`` at every step.
        kv_left_probability: probability ``p`` of ``box_left`` for spatial K/V (else ``box_right``),
            drawn for every attention call. The paper's literal rule (a standard Gaussian draw
            ``> 0.5``) corresponds to ``p ≈ 0.3085``.
        color_correction: AdaIN every long-branch frame to its key frame after each step (SPEC §7).
        seed: seed of the generator drawing the spatial K/V operators.
        weighting: fusion of overlapping temporal windows, ``"pyramid"`` or ``"flat"``.
        correct_spatial, correct_temporal, correct_cross: apply the correction to spatial
            self-attention, temporal self-attention and cross-attention (ablations).
        kv_kind: ``"box"`` (K/V with ``box_left``/``box_right``, SPEC §4) or ``"sample"``.
        temporal_windows: run the long branches' temporal attention over windows of ``W`` frames
            (SPEC §5); ``False`` attends over all frames at once.
        interpolate_positions: give frame ``f`` of stage ``s`` the position ``f / n^(s-1)`` (SPEC §5);
            ``False`` keeps integer positions.
        method: ``"zerosmooth"`` (the method), ``"direct"`` (the base model run at every stage's
            frame count with no correction, windows or interpolation) or ``"latent_ddnm"``
            (after every step, back-project the predicted clean latent onto the finished previous
            stage's latents with ``sample``; stages run one after another).
        backend: ``zs_kernels`` backend, ``"auto" | "torch" | "triton" | "reference"``.
    """

    scale: int = 2
    stages: int = 2
    window: Optional[int] = None
    overlap: Optional[int] = None
    strength: float = 0.8
    strength_schedule: str = "timestep"
    kv_left_probability: float = 0.5
    color_correction: bool = False
    seed: int = 0
    weighting: str = "pyramid"
    correct_spatial: bool = True
    correct_temporal: bool = True
    correct_cross: bool = True
    kv_kind: str = "box"
    temporal_windows: bool = True
    interpolate_positions: bool = True
    method: str = "zerosmooth"
    backend: str = "auto"

    def __post_init__(self):
        _integer("scale", self.scale, 2)
        _integer("stages", self.stages, 1)
        _integer("window", self.window, 1, allow_none=True)
        _integer("overlap", self.overlap, 0, allow_none=True)
        if self.window is not None and self.overlap is not None and self.overlap >= self.window:
            raise ValueError(
                f"ZeroSmoothConfig.overlap must be smaller than window={self.window}, got {self.overlap!r}"
            )
        _fraction("strength", self.strength)
        _choice("strength_schedule", self.strength_schedule, STRENGTH_SCHEDULES)
        _fraction("kv_left_probability", self.kv_left_probability)
        _integer("seed", self.seed, 0)
        _choice("weighting", self.weighting, WEIGHTINGS)
        for name in ("color_correction", "correct_spatial", "correct_temporal", "correct_cross"):
            _flag(name, getattr(self, name))
        for name in ("temporal_windows", "interpolate_positions"):
            _flag(name, getattr(self, name))
        _choice("kv_kind", self.kv_kind, KV_KINDS)
        _choice("method", self.method, METHODS)
        _choice("backend", self.backend, BACKENDS)

    def frame_counts(self, base_frames: int) -> list[int]:
        """Frames of every stage: ``[t0, n·t0, n²·t0, …]``."""
        return [base_frames * self.scale**stage for stage in range(self.stages)]

    def temporal_windows_for(self, base_frames: int) -> tuple[int, int]:
        """``(window, stride)`` of the long branches' temporal attention for ``base_frames`` frames.

        Raises:
            ValueError: ``window`` exceeds ``base_frames`` or ``overlap`` is not below the window.
        """
        window = base_frames if self.window is None else self.window
        if window > base_frames:
            raise ValueError(
                f"ZeroSmoothConfig.window must not exceed the base frame count num_frames={base_frames} "
                f"(the trained length), got window={window}"
            )
        overlap = window // 2 if self.overlap is None else self.overlap
        if overlap >= window:
            raise ValueError(f"ZeroSmoothConfig.overlap must be smaller than the window {window}, got {overlap}")
        return window, window - overlap

    def blend_weight(self, step: int, num_steps: int, timestep: float, max_timestep: Optional[float]) -> float:
        """Blend strength ``w`` at denoising step ``step`` of ``num_steps`` with timestep ``timestep``.

        ``max_timestep`` is the largest training timestep ``T``, or None when the scheduler's
        timesteps are not training timesteps (then ``"timestep"`` falls back to ``"progress"``).
        """
        if self.strength_schedule == "constant":
            return float(self.strength)
        if self.strength_schedule == "timestep" and max_timestep is not None:
            return float(self.strength) * min(max(float(timestep) / max_timestep, 0.0), 1.0)
        return float(self.strength) * (1.0 - step / num_steps)
