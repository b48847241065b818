"""Every knob of a ZeroSmooth run, validated once (docs/SPEC.md §4–§7, §10).

The config knows nothing about the wrapped pipeline. Checks that need the base frame count
(``window`` may not exceed it) run in :meth:`ZeroSmoothConfig.temporal_windows_for`, which the
sampler calls before any denoising starts.

Three corrections share one schedule vocabulary (:func:`schedule_value`): the paper's attention
blend (``strength``…), the residual-stream correction (``residual_strength``…, SPEC §10, on by
default) and the latent-DDNM baseline's pull (``ddnm_strength``…).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

SCHEDULES = ("timestep", "progress", "constant", "cosine")
KV_OPERATORS = ("random_box", "sample", "box_left", "box_right")
METHODS = ("zerosmooth", "direct", "latent_ddnm", "zerosmooth+ddnm")
WEIGHTINGS = ("pyramid", "flat")
BACKENDS = ("auto", "torch", "triton", "reference")
RESIDUAL_SITES = ("resnets", "temporal")
"""Where the residual-stream correction may act: ``"resnets"``, the outputs of the UNet's ResNet
blocks (SVD's spatio-temporal ones, the 2-D ones of AnimateDiff and ModelScope); ``"temporal"``, the
outputs of its temporal layers (SVD's spatio-temporal transformers, AnimateDiff's motion modules,
ModelScope's temporal convolutions and temporal transformers)."""
SPREADS = ("keys", "linear")
"""How a correction made at the key frames (residual stream, latent DDNM) reaches the others
(:func:`zs_kernels.frames.key_spread`, whose names these are; kept here so that the config imports
no torch): ``"keys"``, not at all (``A⁺``); ``"linear"``, interpolated between the two nearest key
frames."""
KEY_FRAMES = ("exact", "free")
"""What the long stages' key frames end as (``ZeroSmoothConfig.key_frames``)."""


PAPER = {"method": "zerosmooth", "residual_strength": 0.0, "key_frames": "free", "color_correction": False}
"""The fields that turn the library's default into the paper's method (:meth:`ZeroSmoothConfig.paper`)."""


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


def _window(name: str, value) -> None:
    valid = (
        isinstance(value, tuple) and len(value) == 2
        and all(not isinstance(v, bool) and isinstance(v, (int, float)) for v in value)
        and 0.0 <= value[0] < value[1] <= 1.0
    )
    if not valid:
        raise ValueError(
            f"ZeroSmoothConfig.{name} must be a tuple (start, stop) of denoising progress with "
            f"0 <= start < stop <= 1, got {value!r}"
        )


def _sites(name: str, value) -> None:
    if not isinstance(value, tuple) or not value or any(site not in RESIDUAL_SITES for site in value):
        raise ValueError(
            f"ZeroSmoothConfig.{name} must be a non-empty tuple of {', '.join(map(repr, RESIDUAL_SITES))}, got {value!r}"
        )


def schedule_value(curve: str, maximum: float, window: tuple[float, float], step: int, num_steps: int,
                   timestep: float, max_timestep: Optional[float]) -> float:
    """A correction's strength at denoising step ``step`` of ``num_steps`` (timestep ``timestep``).

    Zero outside ``window`` (a range of denoising progress ``k/N``). Inside it: ``"constant"``
    gives ``maximum``; ``"timestep"`` gives ``maximum · t/T`` with ``T = max_timestep`` the largest
    training timestep (the paper's Eq. 15), falling back to ``"progress"`` when the scheduler's
    timesteps are not training timesteps (``max_timestep`` None, e.g. SVD's EDM Euler);
    ``"progress"`` decays linearly from ``maximum`` at the window's start to 0 at its stop;
    ``"cosine"`` decays along half a cosine over the window.
    """
    progress = step / num_steps
    start, stop = window
    if not start <= progress < stop:
        return 0.0
    if curve == "constant":
        return float(maximum)
    if curve == "timestep" and max_timestep is not None:
        return float(maximum) * min(max(float(timestep) / max_timestep, 0.0), 1.0)
    through = (progress - start) / (stop - start)
    if curve == "cosine":
        return float(maximum) * 0.5 * (1.0 + math.cos(math.pi * through))
    return float(maximum) * (1.0 - through)


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
        strength: the attention blend's maximum ``w_max`` in ``[0, 1]`` (SPEC §4, Eq. 15): every
            attention module's output is ``o + w (ô - o)``.
        strength_schedule: how the blend ``w`` evolves over denoising (:func:`schedule_value`):
            ``"timestep"`` (the paper: ``w_max · t/T``), ``"progress"``, ``"constant"``, ``"cosine"``.
        strength_window: the range ``(start, stop)`` of denoising progress where the blend acts.
        residual_strength: maximum of the residual-stream correction (SPEC §10): at every site the
            long branch's key-frame rows move towards the previous stage's output,
            ``h ← h + w_r P(h₀ − A h)`` with ``A = sample`` and ``P`` per ``residual_spread``. The
            default, 1 at every step on the ResNet blocks with the linear spread, is the measured
            front's point that holds the key frames at no quality cost against direct inference
            (README, "The embedded model and the evaluation"); 0, with ``key_frames="free"``, gives
            the paper's method (:meth:`paper`, which also turns ``color_correction`` and the pull
            off).
        residual_schedule, residual_window: its schedule, as for the blend.
        residual_sites: where it acts, a tuple of :data:`RESIDUAL_SITES`.
        residual_spread: how the correction reaches the in-between frames (:data:`SPREADS`):
            ``"keys"`` moves the key-frame rows only; ``"linear"`` also moves every in-between frame
            by the linear interpolation of its two key frames' corrections (SPEC §10), so the key
            frames are corrected exactly as before and their neighbours move with them.
        ddnm_strength, ddnm_schedule, ddnm_window: the latent-DDNM pull towards the finished
            previous stage's latents (1, constant, every step: the full back-projection of SPEC §8),
            of the ``"latent_ddnm"`` baseline and of ``"zerosmooth+ddnm"``.
        ddnm_spread: how the baseline's key-frame correction reaches the other frames, as
            ``residual_spread`` (``"keys"``: the plain back-projection of SPEC §8);
            ``"zerosmooth+ddnm"`` spreads its pull as the method spreads every correction, by
            ``residual_spread``.
        key_frames: ``"exact"``: after the last denoising step each long stage's latents move by
            ``P (x_{s−1} − A x_s)`` (``P`` per ``residual_spread``), so its key frames are the
            previous stage's latents exactly and, with ``"linear"``, its in-between frames move with
            them (SPEC §10); ``"free"``: the latents stay as denoised (the paper). The move is small
            when the residual correction holds the key frames (``ZeroSmoothOutput.key_drift``).
        key_guidance: SVD only: long frame ``f`` takes the per-frame guidance the base stage gives
            position ``f / n^(s-1)`` (interpolated) instead of a linspace over its own frames (SPEC §10).
        kv_left_probability: probability ``p`` of ``box_left`` for spatial K/V under
            ``kv_operator="random_box"``, drawn for every attention call. The paper's literal rule
            (a standard Gaussian draw ``> 0.5``) corresponds to ``p ≈ 0.3085``.
        kv_operator: frame operator of spatial K/V: ``"random_box"`` (``box_left`` with probability
            ``p`` else ``box_right``, drawn per call; SPEC §4), or always ``"sample"``,
            ``"box_left"`` or ``"box_right"``.
        color_correction: AdaIN every long-branch frame to its key frame after each step (SPEC §7).
            On by default: on three sets of held-out seeds it lowered the learned-feature distance
            at no measurable cost (README); the paper leaves it optional. The baselines
            (``"direct"``, ``"latent_ddnm"``) never apply it.
        seed: seed of the generator drawing the spatial K/V operators.
        weighting: fusion of overlapping temporal windows, ``"pyramid"`` or ``"flat"``.
        correct_spatial, correct_temporal, correct_cross: apply the attention correction to spatial
            self-attention, temporal self-attention and cross-attention (ablations).
        temporal_windows: run the long branches' temporal attention over windows of ``W`` frames
            (SPEC §5); ``False`` attends over all frames at once.
        interpolate_positions: give frame ``f`` of stage ``s`` the position ``f / n^(s-1)`` (SPEC §5);
            ``False`` keeps integer positions.
        method: ``"zerosmooth+ddnm"`` (the default): the method with latent DDNM's pull towards
            the finished previous stage added (SPEC §10; chosen on held-out seeds, README; see
            ``key_state_budget`` for how its stages run); ``"zerosmooth"``: the method alone, its
            stages in lockstep (the paper's order: one step's states, never a re-run);
            ``"direct"``: the base model run at every stage's frame count with no correction,
            windows or interpolation;
            ``"latent_ddnm"``: after every step, back-project the predicted clean latent onto the
            finished previous stage's latents with ``sample`` (the baseline; stages run one after
            another).
        key_state_budget: bytes of key states a cascade with a pull may hold for a whole stage
            (default 2 GiB). A pull needs the *finished* previous stage, so stage ``p`` runs in a
            pass after stage ``p − 1`` has finished; it reads stage ``p − 1``'s states of the same
            step, which are held from stage ``p − 1``'s own pass when every step's fit in the
            budget, else recomputed by re-running the earlier stages in lockstep with it (SPEC
            §10). The output is the same bit for bit either way; the budget trades memory (at most
            the budget plus one step's states) against compute (up to ``1 + 2 + … + S`` stage runs
            instead of ``S``). 0 always re-runs: one step's states, as the lockstep cascade.
        backend: ``zs_kernels`` backend, ``"auto" | "torch" | "triton" | "reference"``.
    """

    scale: int = 2
    stages: int = 2
    window: Optional[int] = None
    overlap: Optional[int] = None
    strength: float = 0.8
    strength_schedule: str = "timestep"
    strength_window: tuple[float, float] = (0.0, 1.0)
    residual_strength: float = 1.0
    residual_schedule: str = "constant"
    residual_window: tuple[float, float] = (0.0, 1.0)
    residual_sites: tuple[str, ...] = ("resnets",)
    residual_spread: str = "linear"
    ddnm_strength: float = 1.0
    ddnm_schedule: str = "constant"
    ddnm_window: tuple[float, float] = (0.0, 1.0)
    ddnm_spread: str = "keys"
    key_frames: str = "exact"
    key_guidance: bool = False
    kv_left_probability: float = 0.5
    kv_operator: str = "random_box"
    color_correction: bool = True
    seed: int = 0
    weighting: str = "pyramid"
    correct_spatial: bool = True
    correct_temporal: bool = True
    correct_cross: bool = True
    temporal_windows: bool = True
    interpolate_positions: bool = True
    method: str = "zerosmooth+ddnm"
    key_state_budget: int = 2 * 2**30
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
        for prefix in ("strength", "residual", "ddnm"):
            strength = "strength" if prefix == "strength" else f"{prefix}_strength"
            _fraction(strength, getattr(self, strength))
            _choice(f"{prefix}_schedule", getattr(self, f"{prefix}_schedule"), SCHEDULES)
            _window(f"{prefix}_window", getattr(self, f"{prefix}_window"))
        _sites("residual_sites", self.residual_sites)
        _choice("residual_spread", self.residual_spread, SPREADS)
        _choice("ddnm_spread", self.ddnm_spread, SPREADS)
        _choice("key_frames", self.key_frames, KEY_FRAMES)
        _fraction("kv_left_probability", self.kv_left_probability)
        _choice("kv_operator", self.kv_operator, KV_OPERATORS)
        _integer("seed", self.seed, 0)
        _integer("key_state_budget", self.key_state_budget, 0)
        _choice("weighting", self.weighting, WEIGHTINGS)
        for name in ("key_guidance", "color_correction", "correct_spatial", "correct_temporal", "correct_cross",
                     "temporal_windows", "interpolate_positions"):
            _flag(name, getattr(self, name))
        _choice("method", self.method, METHODS)
        _choice("backend", self.backend, BACKENDS)

    @classmethod
    def paper(cls, **overrides) -> "ZeroSmoothConfig":
        """The paper's method (SPEC §1–§7): attention correction only, stages in lockstep, key frames
        as denoised; ``overrides`` set any other field."""
        return cls(**{**PAPER, **overrides})

    @property
    def corrects(self) -> bool:
        """Whether the long branches are corrected at all (the method, not a baseline)."""
        return self.method in ("zerosmooth", "zerosmooth+ddnm")

    @property
    def colours(self) -> bool:
        """Whether the long branches get colour correction: only the method's, never a baseline's."""
        return self.corrects and self.color_correction

    @property
    def pulls(self) -> bool:
        """Whether a long stage is pulled towards the finished previous stage (latent DDNM's pull):
        then stage ``p`` runs after stage ``p − 1`` has finished (``key_state_budget``), where the
        lockstep cascade runs every stage's step ``k`` together."""
        return self.method in ("latent_ddnm", "zerosmooth+ddnm")

    @property
    def pull_spread(self) -> str:
        """How the latent-DDNM pull reaches the in-between frames (``ddnm_spread`` for the baseline,
        the method's ``residual_spread`` for ``"zerosmooth+ddnm"``)."""
        return self.ddnm_spread if self.method == "latent_ddnm" else self.residual_spread

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

    def blend(self, step: int, num_steps: int, timestep: float, max_timestep: Optional[float]) -> float:
        """The attention blend ``w`` at a denoising step (see :func:`schedule_value`)."""
        return schedule_value(self.strength_schedule, self.strength, self.strength_window, step, num_steps,
                              timestep, max_timestep)

    def residual(self, step: int, num_steps: int, timestep: float, max_timestep: Optional[float]) -> float:
        """The residual-stream correction's strength ``w_r`` at a denoising step."""
        return schedule_value(self.residual_schedule, self.residual_strength, self.residual_window, step,
                              num_steps, timestep, max_timestep)

    def ddnm(self, step: int, num_steps: int, timestep: float, max_timestep: Optional[float]) -> float:
        """The latent-DDNM baseline's pull at a denoising step."""
        return schedule_value(self.ddnm_schedule, self.ddnm_strength, self.ddnm_window, step, num_steps,
                              timestep, max_timestep)
