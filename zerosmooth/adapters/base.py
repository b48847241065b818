"""What the cascade needs from a model family (one subclass per family, one file each).

An adapter reproduces its pipeline's ``__call__`` step by step — same helper methods, same order of
random draws, same arithmetic — so that a stage run without corrections is bit-identical to the
pipeline itself. It also says which attention modules are spatial or temporal, how frame positions
are interpolated and where the residual-stream correction may act.

The adapters call a few of the pipelines' private helpers (``_encode_image``, ``_get_add_time_ids``,
``_execution_device``, …) to reproduce them exactly; that is why ``diffusers`` is pinned to the
release range they were verified on (pyproject.toml).
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from diffusers.models.attention_processor import Attention

from ..config import ZeroSmoothConfig
from ..hooks import SessionSlot, ZeroSmoothHook
from ..residual import ResidualHook


@dataclass(kw_only=True)
class Call:
    """One call's arguments after validation, common to every family; subclasses add theirs.

    ``batch`` is the latent batch (videos), ``unet_batch`` the UNet's (doubled by guidance).
    """

    num_frames: int
    num_inference_steps: int
    output_type: str
    generator: Any
    latents: Optional[torch.Tensor]
    device: torch.device
    batch: int
    unet_batch: int
    guided: bool
    eta: float = 0.0
    dtype: torch.dtype = torch.float32


@dataclass
class Stage:
    """One stage's sampler state: its own scheduler, latents and per-stage conditions (a family's
    own dataclass). ``index`` is 1-based; ``frame_rate_factor`` is ``n^(index-1)``."""

    index: int
    num_frames: int
    frame_rate_factor: int
    scheduler: Any
    timesteps: torch.Tensor
    conditions: Any
    latents: Optional[torch.Tensor] = None
    step_kwargs: dict = field(default_factory=dict)


class Adapter:
    """Base class: subclasses set ``pipeline_class_names``, ``latent_frame_dim``,
    ``supported_arguments`` and ``residual_site_types`` and implement :meth:`attention_axis`,
    :meth:`parse`, :meth:`encode`, :meth:`latent_shape`, :meth:`new_stage`, :meth:`model_output`
    and :meth:`decode`; :meth:`position_hooks` and :meth:`scheduler_step` have defaults.
    """

    pipeline_class_names: tuple[str, ...] = ()
    latent_frame_dim: int = 2
    # Keyword arguments of the pipeline's __call__ the adapter reproduces; anything else is rejected.
    supported_arguments: tuple[str, ...] = ()
    # Module classes whose outputs are residual-stream sites, per site name of config.RESIDUAL_SITES.
    residual_site_types: dict[str, tuple[type, ...]] = {}

    def __init__(self, pipe):
        self.pipe = pipe

    @classmethod
    def supports(cls, pipe) -> bool:
        return type(pipe).__name__ in cls.pipeline_class_names

    # --- model structure ----------------------------------------------------------------------

    def attention_axis(self, name: str) -> str:
        """``"spatial"`` or ``"temporal"`` for the UNet's ``Attention`` module called ``name``."""
        raise NotImplementedError

    def attention_modules(self) -> list[tuple[str, Attention, str]]:
        """Every ``Attention`` module of the UNet as ``(name, module, axis)``."""
        return [
            (name, module, self.attention_axis(name))
            for name, module in self.pipe.unet.named_modules()
            if isinstance(module, Attention)
        ]

    def position_hooks(self, slot: SessionSlot) -> list[tuple[torch.nn.Module, ZeroSmoothHook]]:
        """Hooks that interpolate frame positions by the step's ``position_factor`` (none by default)."""
        return []

    def residual_sites(self, sites: tuple[str, ...]) -> list[tuple[str, torch.nn.Module]]:
        """``(name, module)`` of every UNet module whose output is a residual-stream site of one of
        ``sites``. Every site's output holds the frames in its batch dimension (``[B·F, …]``)."""
        types = tuple(t for site in sites for t in self.residual_site_types[site])
        return [(name, module) for name, module in self.pipe.unet.named_modules() if type(module) in types]

    def residual_hooks(self, slot: SessionSlot, sites: tuple[str, ...]) -> list[tuple[torch.nn.Module, ZeroSmoothHook]]:
        return [(module, ResidualHook(slot, name)) for name, module in self.residual_sites(sites)]

    def size_multiple(self) -> int:
        """What frame heights and widths must be multiples of: the VAE's downsampling times the
        UNet's (one factor 2 per down block but the last)."""
        levels = len(self.pipe.unet.config.block_out_channels)
        return self.pipe.vae_scale_factor * 2 ** (levels - 1)

    def trained_frames(self) -> Optional[int]:
        """The frame count the model was trained on, where its config says (else None)."""
        return None

    # --- one call -----------------------------------------------------------------------------

    def check_call(self, call: Call) -> None:
        """Family-specific checks of a parsed call beyond the pipeline's own (none by default)."""

    def check_size(self, height, width) -> None:
        multiple = self.size_multiple()
        for name, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < multiple or value % multiple:
                raise ValueError(
                    f"{name} must be a positive multiple of {multiple} for this model (VAE factor "
                    f"{self.pipe.vae_scale_factor} × UNet downsampling {multiple // self.pipe.vae_scale_factor}), "
                    f"got {value!r}"
                )

    def check_arguments(self, kwargs: dict) -> None:
        unknown = sorted(set(kwargs) - set(self.supported_arguments))
        if unknown:
            raise TypeError(
                f"ZeroSmooth for {type(self.pipe).__name__} does not support the argument(s) {', '.join(unknown)}; "
                f"supported: {', '.join(self.supported_arguments)}"
            )

    def default(self, name: str):
        """The default of argument ``name`` of the wrapped pipeline's ``__call__``."""
        return inspect.signature(type(self.pipe).__call__).parameters[name].default

    def parse(self, kwargs: dict) -> Call:
        """Validate the pipeline arguments and fill in the pipeline's defaults; computes nothing."""
        raise NotImplementedError

    def encode(self, call: Call) -> None:
        """Encode the conditions shared by every stage into ``call`` (and set ``call.dtype``),
        drawing from the generator exactly as the pipeline does before its initial latents."""
        raise NotImplementedError

    def latent_shape(self, call: Call, num_frames: int) -> tuple[int, ...]:
        raise NotImplementedError

    def new_scheduler(self, call: Call) -> tuple[Any, torch.Tensor]:
        """A private copy of the pipeline's scheduler with timesteps set as the pipeline sets them."""
        scheduler = copy.deepcopy(self.pipe.scheduler)
        scheduler.set_timesteps(call.num_inference_steps, device=call.device)
        return scheduler, scheduler.timesteps

    def new_stage(self, call: Call, index: int, num_frames: int, config: ZeroSmoothConfig) -> Stage:
        raise NotImplementedError

    def model_output(self, call: Call, stage: Stage, t) -> torch.Tensor:
        """The guided model output for ``stage.latents`` at timestep ``t``."""
        raise NotImplementedError

    def scheduler_step(self, call: Call, stage: Stage, model_output, t, variance_noise=None):
        """``stage.scheduler.step`` on the pipeline's layout; returns the scheduler's output
        (``prev_sample``, ``pred_original_sample``) in the latent layout."""
        kwargs = dict(stage.step_kwargs)
        if variance_noise is not None:
            kwargs.pop("generator", None)
            kwargs["variance_noise"] = variance_noise
        return stage.scheduler.step(model_output, t, stage.latents, **kwargs)

    def decode(self, call: Call, stage: Stage, output_type: str):
        """Frames of ``stage.latents`` in ``output_type`` (the pipeline's post-processing)."""
        raise NotImplementedError

    def finish(self) -> None:
        """Release whatever the pipeline holds after a call (offloading hooks)."""
        self.pipe.maybe_free_model_hooks()


class PositionHook(ZeroSmoothHook):
    """Base for position-interpolating hooks: :meth:`factor` is the step's ``position_factor``
    (1 outside a ZeroSmooth call)."""

    def factor(self) -> float:
        session = self.slot.session
        return 1 if session is None or session.step is None else session.step.position_factor


@dataclass(kw_only=True)
class TextCall(Call):
    """A text-to-video call (AnimateDiff, ModelScope/zeroscope)."""

    prompt: Any
    negative_prompt: Any
    prompt_embeds: Optional[torch.Tensor]
    negative_prompt_embeds: Optional[torch.Tensor]
    clip_skip: Optional[int]
    height: int
    width: int
    guidance_scale: float
    decode_chunk_size: Optional[int] = None
    encoded_prompt: Optional[torch.Tensor] = None  # set by encode()


@dataclass
class TextConditions:
    prompt_embeds: torch.Tensor  # the encoder hidden states of a stage's UNet call


class TextToVideoAdapter(Adapter):
    """Shared parts of the text-to-video pipelines (AnimateDiff, ModelScope/zeroscope UNet3D):
    prompt encoding, latents ``[B, C, F, h, w]``, schedulers stepped with ``eta``/``generator``."""

    latent_frame_dim = 2
    supported_arguments = (
        "prompt", "num_frames", "height", "width", "num_inference_steps", "guidance_scale", "negative_prompt",
        "eta", "generator", "latents", "prompt_embeds", "negative_prompt_embeds", "output_type", "clip_skip",
    )

    def check_inputs(self, call: TextCall) -> None:
        raise NotImplementedError

    def check_call(self, call: TextCall) -> None:
        self.check_size(call.height, call.width)
        scale = call.guidance_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise ValueError(f"guidance_scale must be a number, got {scale!r}")

    def parse(self, kwargs: dict) -> TextCall:
        self.check_arguments(kwargs)
        pipe = self.pipe
        prompt, prompt_embeds = kwargs.get("prompt"), kwargs.get("prompt_embeds")
        height = kwargs.get("height") or pipe.unet.config.sample_size * pipe.vae_scale_factor
        width = kwargs.get("width") or pipe.unet.config.sample_size * pipe.vae_scale_factor
        guidance_scale = kwargs.get("guidance_scale", self.default("guidance_scale"))
        if prompt is not None and isinstance(prompt, (str, dict)):
            batch_size = 1
        elif prompt is not None and isinstance(prompt, list):
            batch_size = len(prompt)
        elif prompt_embeds is not None:
            batch_size = prompt_embeds.shape[0]
        else:
            raise TypeError(f"ZeroSmooth for {type(pipe).__name__} needs prompt= or prompt_embeds=")
        guided = guidance_scale > 1.0
        num_frames = kwargs.get("num_frames", self.default("num_frames"))
        call = TextCall(
            num_frames=self.default("num_frames") if num_frames is None else num_frames,
            num_inference_steps=kwargs.get("num_inference_steps", self.default("num_inference_steps")),
            output_type=kwargs.get("output_type", self.default("output_type")),
            generator=kwargs.get("generator"),
            latents=kwargs.get("latents"),
            device=pipe._execution_device,
            batch=batch_size,
            unet_batch=batch_size * (2 if guided else 1),
            guided=guided,
            eta=kwargs.get("eta", 0.0),
            prompt=prompt,
            negative_prompt=kwargs.get("negative_prompt"),
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=kwargs.get("negative_prompt_embeds"),
            clip_skip=kwargs.get("clip_skip"),
            height=height,
            width=width,
            guidance_scale=guidance_scale,
        )
        self.check_inputs(call)
        return call

    def encode(self, call: TextCall) -> None:
        prompt_embeds, negative_prompt_embeds = self.pipe.encode_prompt(
            call.prompt,
            call.device,
            1,
            call.guided,
            call.negative_prompt,
            prompt_embeds=call.prompt_embeds,
            negative_prompt_embeds=call.negative_prompt_embeds,
            lora_scale=None,
            clip_skip=call.clip_skip,
        )
        if call.guided:
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])
        call.encoded_prompt = prompt_embeds
        call.dtype = prompt_embeds.dtype

    def latent_shape(self, call: TextCall, num_frames: int) -> tuple[int, ...]:
        pipe = self.pipe
        return (
            call.batch,
            pipe.unet.config.in_channels,
            num_frames,
            call.height // pipe.vae_scale_factor,
            call.width // pipe.vae_scale_factor,
        )

    def new_stage(self, call: TextCall, index: int, num_frames: int, config: ZeroSmoothConfig) -> Stage:
        scheduler, timesteps = self.new_scheduler(call)
        return Stage(
            index=index,
            num_frames=num_frames,
            frame_rate_factor=config.scale ** (index - 1),
            scheduler=scheduler,
            timesteps=timesteps,
            step_kwargs=self.pipe.prepare_extra_step_kwargs(call.generator, call.eta),
            conditions=TextConditions(prompt_embeds=self.stage_prompt_embeds(call, num_frames)),
        )

    def stage_prompt_embeds(self, call: TextCall, num_frames: int) -> torch.Tensor:
        """The encoder hidden states the UNet gets for a ``num_frames``-frame stage."""
        return call.encoded_prompt

    def guide(self, call: TextCall, noise_pred: torch.Tensor) -> torch.Tensor:
        if not call.guided:
            return noise_pred
        noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
        return noise_pred_uncond + call.guidance_scale * (noise_pred_text - noise_pred_uncond)
