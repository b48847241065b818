"""The public wrapper :class:`ZeroSmooth` and its result :class:`ZeroSmoothOutput`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from . import hooks, sampler
from .adapters import Adapter, adapter_for
from .attention import AttentionHook
from .config import ZeroSmoothConfig


@dataclass
class ZeroSmoothOutput:
    """Result of a ZeroSmooth call.

    Attributes:
        frames: the last stage's video in the requested ``output_type``: ``[B, t_S, C, H, W]``
            tensor for ``"pt"``, a list (per video) of PIL image lists for ``"pil"``, ``[B, t_S, H, W, C]``
            array for ``"np"``, latents in the pipeline's layout for ``"latent"``.
        stages: every stage's video in the same format; ``stages[0]`` is the base video.
        noise: the longest stage's initial noise (given as ``latents=`` or drawn), pipeline layout.
        step_noise: the longest stage's per-step noise of a stochastic sampler (one tensor per
            step), or None when the sampler adds none.
        num_frames: frames of every stage.
        key_state_peak_bytes: most bytes the key-state cache held at once (attention projections
            and residual-stream outputs: one step's in lockstep; with a pull, a whole stage's when
            they fit ``ZeroSmoothConfig.key_state_budget``).
        key_state_offload_bytes: bytes of every step's key states together, what offloading them
            all (the paper's approach) would hold.
        blend_per_step: the attention blend ``w`` at every step.
        residual_per_step: the residual-stream correction's strength at every step.
        ddnm_per_step: the latent-DDNM pull at every step (used by ``method="latent_ddnm"`` and
            ``"zerosmooth+ddnm"``).
        key_drift: per long stage (2, 3, …), the relative distance ``‖A x_s − x_{s−1}‖ / ‖x_{s−1}‖``
            of its key-frame latents from the previous stage's after the last step, before
            ``key_frames="exact"`` makes it 0: how well the run held the key frames by itself.
    """

    frames: Any
    stages: list
    noise: torch.Tensor
    step_noise: Optional[list[torch.Tensor]]
    num_frames: list[int]
    key_state_peak_bytes: int
    key_state_offload_bytes: int
    blend_per_step: list[float]
    residual_per_step: list[float]
    ddnm_per_step: list[float]
    key_drift: list[float]


class ZeroSmooth:
    """Training-free frame-rate multiplication for a diffusers video pipeline.

    ``ZeroSmooth(pipe, config)(**pipeline_kwargs)`` takes the wrapped pipeline's own keyword
    arguments (``image=`` for SVD, ``prompt=`` for text-to-video, ``num_frames`` = the base frame
    count, ``num_inference_steps``, ``generator``, ``output_type``, ``latents=`` = the longest
    stage's initial noise in the pipeline's latent layout, …) plus ``progress_bar=True`` (a tqdm
    bar over stages × steps) and ``progress=None`` (a callable ``progress(done, total)``; ``total``
    grows when a pull re-runs earlier stages whose states exceed ``key_state_budget``), and
    returns a :class:`ZeroSmoothOutput`. Every argument is checked before any model runs.

    Hooks (attention, positions, residual-stream sites) are installed by :meth:`enable` (or
    ``with ZeroSmooth(…):``) and removed by :meth:`disable`; a call on a disabled wrapper installs
    them for its duration. Between calls the hooks pass every module through, so calling the
    pipeline directly while enabled runs it as before.

    Raises:
        TypeError: ``pipe`` is not a supported pipeline (the message names the supported ones) or
            ``config`` is not a :class:`ZeroSmoothConfig`.
    """

    def __init__(self, pipe, config: Optional[ZeroSmoothConfig] = None):
        if config is None:
            config = ZeroSmoothConfig()
        if not isinstance(config, ZeroSmoothConfig):
            raise TypeError(f"config must be a ZeroSmoothConfig or None, got {type(config).__name__}")
        self.pipe = pipe
        self.config = config
        self.adapter: Adapter = adapter_for(pipe)
        self.slot = hooks.SessionSlot()
        self._hooked: Optional[list] = None

    @property
    def enabled(self) -> bool:
        return self._hooked is not None

    def enable(self) -> "ZeroSmooth":
        """Install the hooks on the pipeline's UNet."""
        if self.enabled:
            return self
        adapter, slot = self.adapter, self.slot
        pairs = [(module, AttentionHook(slot, name, axis)) for name, module, axis in adapter.attention_modules()]
        pairs += adapter.position_hooks(slot)
        if self.config.residual_strength > 0:
            pairs += adapter.residual_hooks(slot, self.config.residual_sites)
        self._hooked = hooks.install(pairs)
        return self

    def disable(self) -> "ZeroSmooth":
        """Remove the hooks; the pipeline computes exactly what it did before."""
        if self.enabled:
            hooks.remove(self._hooked)
            self._hooked = None
        return self

    def __enter__(self) -> "ZeroSmooth":
        return self.enable()

    def __exit__(self, *exc_info) -> None:
        self.disable()

    def __call__(self, *, progress_bar: bool = True, progress: Optional[Callable[[int, int], None]] = None,
                 **pipeline_kwargs) -> ZeroSmoothOutput:
        plan = sampler.make_plan(self.adapter, self.config, pipeline_kwargs)
        was_enabled = self.enabled
        self.enable()
        try:
            with torch.no_grad():
                result = sampler.run(plan, self.slot, progress_bar, progress)
        finally:
            if not was_enabled:
                self.disable()
        cache = result.session.cache
        return ZeroSmoothOutput(
            frames=result.videos[-1],
            stages=result.videos,
            noise=result.noise,
            step_noise=result.step_noise,
            num_frames=list(plan.frame_counts),
            key_state_peak_bytes=cache.peak_bytes,
            key_state_offload_bytes=cache.recorded_bytes,
            blend_per_step=result.blend_per_step,
            residual_per_step=result.residual_per_step,
            ddnm_per_step=result.ddnm_per_step,
            key_drift=result.key_drift,
        )
