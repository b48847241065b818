"""The lockstep self-cascade (SPEC §1, §4, §6) and the public :class:`ZeroSmooth` wrapper.

Every denoising step runs stage 1, 2, …, S in order, each with its own scheduler. Stage ``s ≥ 2``
reads the key states stage ``s - 1`` recorded at the same step and they are dropped as soon as they
are read, so only one step's key states are ever alive (the paper offloads every step's states to
the CPU instead). ``method="latent_ddnm"`` is the exception: it needs the finished previous stage,
so its stages run one after another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from . import baselines, color, noise
from .adapters import adapter_for
from .adapters.base import Adapter, Call, Stage, install_hooks, remove_hooks
from .attention import CascadeState, ZeroSmoothAttnProcessor
from .config import ZeroSmoothConfig

OUTPUT_TYPES = ("pt", "pil", "np", "latent")


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
        key_state_peak_bytes: most bytes the key-state cache held at once.
        key_state_offload_bytes: bytes of every step's key states together, what offloading them
            all (the paper's approach) would hold.
        blend_weights: the blend strength ``w`` used at every step.
    """

    frames: Any
    stages: list
    noise: torch.Tensor
    step_noise: Optional[list[torch.Tensor]]
    num_frames: list[int]
    key_state_peak_bytes: int
    key_state_offload_bytes: int
    blend_weights: list[float]


class ZeroSmooth:
    """Training-free frame-rate multiplication for a diffusers video pipeline.

    ``ZeroSmooth(pipe, config)(**pipeline_kwargs)`` takes the wrapped pipeline's own keyword
    arguments (``image=`` for SVD, ``prompt=`` for text-to-video, ``num_frames`` = the base frame
    count, ``num_inference_steps``, ``generator``, ``output_type``, ``latents=`` = the longest
    stage's initial noise in the pipeline's latent layout, …) plus ``progress_bar=True`` (a tqdm
    bar over stages × steps) and ``progress=None`` (a callable ``progress(done, total)``), and
    returns a :class:`ZeroSmoothOutput`.

    Processors and position hooks are installed by :meth:`enable` (or ``with ZeroSmooth(…):``)
    and removed by :meth:`disable`; a call on a disabled wrapper installs them for its duration.
    While enabled, calling the pipeline directly runs the original processors.

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
        self.state = CascadeState()
        self._originals: Optional[dict] = None
        self._hooked: list = []

    # --- installation ---------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return self._originals is not None

    def enable(self) -> "ZeroSmooth":
        """Install the ZeroSmooth processor on every attention module and the position hooks."""
        if self.enabled:
            return self
        modules = self.adapter.attention_modules()
        if any(isinstance(module.processor, ZeroSmoothAttnProcessor) for _, module, _ in modules):
            raise RuntimeError("another ZeroSmooth wrapper is enabled on this pipeline; disable it first")
        self._originals = {}
        for name, module, axis in modules:
            self._originals[name] = (module, module.processor)
            module.set_processor(ZeroSmoothAttnProcessor(name, axis, self.state, module.processor))
        self._hooked = install_hooks(self.adapter.position_hooks(self.state))
        return self

    def disable(self) -> "ZeroSmooth":
        """Restore the original processors and remove the hooks; the pipeline is as before."""
        if not self.enabled:
            return self
        for module, processor in self._originals.values():
            module.set_processor(processor)
        remove_hooks(self._hooked)
        self._originals, self._hooked = None, []
        return self

    def __enter__(self) -> "ZeroSmooth":
        return self.enable()

    def __exit__(self, *exc_info) -> None:
        self.disable()

    # --- generation -----------------------------------------------------------------------------

    def __call__(self, *, progress_bar: bool = True, progress: Optional[Callable[[int, int], None]] = None,
                 **pipeline_kwargs) -> ZeroSmoothOutput:
        was_enabled = self.enabled
        self.enable()
        try:
            with torch.no_grad():
                return _Run(self, pipeline_kwargs, progress_bar, progress).execute()
        finally:
            self.state.mode = None
            self.state.cache.clear()
            if not was_enabled:
                self.disable()


class _Run:
    """One ZeroSmooth call: validation, shared noise, the stage loop and decoding."""

    def __init__(self, owner: ZeroSmooth, kwargs: dict, progress_bar: bool, progress):
        self.config = owner.config
        self.adapter = owner.adapter
        self.state = owner.state
        self.progress_bar = progress_bar
        self.progress = progress
        self.call: Call = self.adapter.parse(dict(kwargs))
        self._validate()

    def _validate(self) -> None:
        """Every check that can fail, before any model runs."""
        call, config = self.call, self.config
        base = call.num_frames
        if isinstance(base, bool) or not isinstance(base, int) or base < 1:
            raise ValueError(f"num_frames (the base frame count) must be an integer >= 1, got {base!r}")
        self.window, self.stride = config.temporal_windows_for(base)
        self.frame_counts = config.frame_counts(base)
        steps = call.num_inference_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {steps!r}")
        if call.output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {call.output_type!r}")
        self.longest_shape = tuple(self.adapter.latent_shape(call, self.frame_counts[-1]))
        if call.latents is not None and tuple(call.latents.shape) != self.longest_shape:
            frame_dim = self.adapter.latent_frame_dim
            raise ValueError(
                f"latents must be the longest stage's noise of shape {list(self.longest_shape)} "
                f"({self.frame_counts[-1]} = {base}·{config.scale}^{config.stages - 1} frames on dim {frame_dim}), "
                f"got {list(call.latents.shape)}"
            )
        if config.method == "latent_ddnm" and config.stages > 1:
            baselines.clean_latent_coefficient_supported(self.adapter.pipe.scheduler)

    # --- setup ----------------------------------------------------------------------------------

    def _stages(self, shared: torch.Tensor) -> list[Stage]:
        config, call = self.config, self.call
        stages = []
        for offset, frames in enumerate(self.frame_counts):
            stage = self.adapter.new_stage(call, offset + 1, frames, config.scale**offset)
            start = noise.stage_noise(shared, self.adapter.latent_frame_dim, config.scale, config.stages, offset + 1)
            stage.latents = start.to(call.device) * stage.scheduler.init_noise_sigma
            stages.append(stage)
        return stages

    def _max_timestep(self, scheduler, timesteps: torch.Tensor) -> Optional[float]:
        """``T`` for the ``"timestep"`` strength schedule, None when timesteps are not training timesteps."""
        if getattr(scheduler.config, "timestep_type", "discrete") == "continuous":
            return None
        total = getattr(scheduler.config, "num_train_timesteps", None)
        if total is None:
            return None
        maximum = float(total - 1)
        values = timesteps.double()
        if bool((values < 0).any()) or bool((values > maximum).any()):
            return None
        return maximum

    def _configure(self, stage: Stage, weight: float) -> None:
        """Point the processors at ``stage`` (SPEC §4: stage 1 plain, stages ≥ 2 corrected)."""
        config, state = self.config, self.state
        zerosmooth = config.method == "zerosmooth"
        long_branch = stage.index >= 2
        state.mode = "corrected" if zerosmooth and long_branch else "plain"
        state.stage = stage.index
        state.batch = self.call.unet_batch
        state.num_frames = stage.num_frames
        state.record = zerosmooth and stage.index < config.stages
        state.weight = weight
        state.windowed = zerosmooth and long_branch and config.temporal_windows
        state.position_factor = stage.frame_rate_factor if zerosmooth and config.interpolate_positions else 1

    def _reset_state(self) -> None:
        config, state = self.config, self.state
        state.cache.clear()
        state.cache.peak_bytes = state.cache.recorded_bytes = 0
        state.scale = config.scale
        state.window, state.stride = self.window, self.stride
        state.weighting = config.weighting
        state.correct_spatial = config.correct_spatial
        state.correct_temporal = config.correct_temporal
        state.correct_cross = config.correct_cross
        state.kv_kind = config.kv_kind
        state.kv_left_probability = config.kv_left_probability
        state.backend = config.backend
        state.kv_generator = torch.Generator().manual_seed(config.seed)

    # --- the loop -------------------------------------------------------------------------------

    def execute(self) -> ZeroSmoothOutput:
        config, call, adapter = self.config, self.call, self.adapter
        adapter.encode(call)
        shared = call.latents
        if shared is None:
            shared = randn_tensor(self.longest_shape, generator=call.generator, device=call.device, dtype=call.dtype)
        stages = self._stages(shared)
        timesteps = stages[0].timesteps
        max_timestep = self._max_timestep(stages[0].scheduler, timesteps)
        stochastic = call.eta > 0 and noise.accepts_variance_noise(stages[0].scheduler)
        self._reset_state()
        self.step_noise = [] if stochastic else None
        self.weights = [config.blend_weight(k, len(timesteps), t, max_timestep) for k, t in enumerate(timesteps)]

        total = len(stages) * len(timesteps)
        self.done = 0
        with tqdm(total=total, desc="ZeroSmooth", disable=not self.progress_bar) as self.bar:
            self.total = total
            if config.method == "latent_ddnm":
                self._sequential(stages, timesteps)
            else:
                self._lockstep(stages, timesteps)
        self.state.mode = None

        videos = [adapter.decode(call, stage, call.output_type) for stage in stages]
        adapter.finish()
        cache = self.state.cache
        return ZeroSmoothOutput(
            frames=videos[-1],
            stages=videos,
            noise=shared,
            step_noise=self.step_noise,
            num_frames=list(self.frame_counts),
            key_state_peak_bytes=cache.peak_bytes,
            key_state_offload_bytes=cache.recorded_bytes,
            blend_weights=self.weights,
        )

    def _advance(self) -> None:
        self.done += 1
        self.bar.update()
        if self.progress is not None:
            self.progress(self.done, self.total)

    def _draw_step_noise(self) -> Optional[torch.Tensor]:
        if self.step_noise is None:
            return None
        call = self.call
        drawn = randn_tensor(self.longest_shape, generator=call.generator, device=call.device, dtype=call.dtype)
        self.step_noise.append(drawn)
        return drawn

    def _step(self, stage: Stage, k: int, t, shared_step_noise: Optional[torch.Tensor]):
        """One denoising step of one stage; returns the scheduler output."""
        config, call = self.config, self.call
        self._configure(stage, self.weights[k])
        model_output = self.adapter.model_output(call, stage, t)
        variance_noise = None
        if shared_step_noise is not None:
            variance_noise = noise.stage_noise(
                shared_step_noise, self.adapter.latent_frame_dim, config.scale, config.stages, stage.index
            )
        return self.adapter.scheduler_step(call, stage, model_output, t, variance_noise)

    def _lockstep(self, stages: list[Stage], timesteps) -> None:
        config = self.config
        for k, t in enumerate(timesteps):
            shared_step_noise = self._draw_step_noise()
            for stage in stages:
                latents = self._step(stage, k, t, shared_step_noise).prev_sample
                if config.color_correction and stage.index >= 2:
                    previous = stages[stage.index - 2].latents
                    latents = color.adain_to_key_frames(latents, previous, config.scale, self.adapter.latent_frame_dim)
                stage.latents = latents
                self._advance()
            if len(self.state.cache):
                raise RuntimeError(f"{len(self.state.cache)} key states were recorded but never read at step {k}")

    def _sequential(self, stages: list[Stage], timesteps) -> None:
        """Latent-space DDNM: each stage runs to the end before the next starts (SPEC §8)."""
        config = self.config
        step_noises = [self._draw_step_noise() for _ in timesteps]
        for stage in stages:
            for k, t in enumerate(timesteps):
                output = self._step(stage, k, t, step_noises[k])
                if stage.index >= 2:
                    reference = stages[stage.index - 2].latents
                    stage.latents = baselines.ddnm_step(
                        output, stage.scheduler, t, reference, config.scale, self.adapter.latent_frame_dim
                    )
                else:
                    stage.latents = output.prev_sample
                self._advance()
