"""What the cascade needs from a model family (one subclass per family, one file each).

An adapter reproduces its pipeline's ``__call__`` step by step — same helper methods, same order of
random draws, same arithmetic — so that a stage run with the plain processors is bit-identical to
the pipeline itself. It also says which attention modules are spatial or temporal and how frame
positions are interpolated.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.models.attention_processor import Attention

from ..attention import CascadeState


@dataclass
class Call:
    """One call's arguments after validation, and the conditions shared by every stage.

    ``batch`` is the latent batch (videos), ``unet_batch`` the UNet's (doubled by guidance).
    """

    num_frames: int
    num_inference_steps: int
    output_type: str
    generator: Any
    latents: Optional[torch.Tensor]
    device: torch.device
    dtype: torch.dtype = torch.float32
    batch: int = 1
    unet_batch: int = 1
    eta: float = 0.0
    options: dict = field(default_factory=dict)


@dataclass
class Stage:
    """One stage's sampler state: its own scheduler, latents and per-stage conditions.

    ``index`` is 1-based; ``frame_rate_factor`` is ``n^(index-1)``.
    """

    index: int
    num_frames: int
    frame_rate_factor: int
    scheduler: Any
    timesteps: torch.Tensor
    latents: Optional[torch.Tensor] = None
    step_kwargs: dict = field(default_factory=dict)
    conditions: dict = field(default_factory=dict)


class Adapter:
    """Base class: subclasses set ``pipeline_class_names`` and ``latent_frame_dim`` and implement
    :meth:`attention_axis`, :meth:`parse`, :meth:`encode`, :meth:`latent_shape`, :meth:`new_stage`,
    :meth:`model_output` and :meth:`decode`; :meth:`position_hooks` and :meth:`scheduler_step` have defaults.
    """

    pipeline_class_names: tuple[str, ...] = ()
    latent_frame_dim: int = 2
    # Keyword arguments of the pipeline's __call__ the adapter reproduces; anything else is rejected.
    supported_arguments: tuple[str, ...] = ()

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

    def position_hooks(self, state: CascadeState) -> list[tuple[torch.nn.Module, ModelHook]]:
        """Hooks that interpolate frame positions by ``state.position_factor`` (none by default)."""
        return []

    # --- one call -----------------------------------------------------------------------------

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
        """Encode the conditions shared by every stage into ``call.options`` (and set ``call.dtype``),
        drawing from the generator exactly as the pipeline does before its initial latents."""
        raise NotImplementedError

    def latent_shape(self, call: Call, num_frames: int) -> tuple[int, ...]:
        raise NotImplementedError

    def new_scheduler(self, call: Call) -> tuple[Any, torch.Tensor]:
        """A private copy of the pipeline's scheduler with timesteps set as the pipeline sets them."""
        scheduler = copy.deepcopy(self.pipe.scheduler)
        scheduler.set_timesteps(call.num_inference_steps, device=call.device)
        return scheduler, scheduler.timesteps

    def new_stage(self, call: Call, index: int, num_frames: int, frame_rate_factor: int) -> Stage:
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


class PositionHook(ModelHook):
    """Base for position-interpolating hooks; reads the factor from the shared state."""

    def __init__(self, state: CascadeState):
        super().__init__()
        self.state = state


HOOK_NAME = "zerosmooth_positions"


def install_hooks(pairs: list[tuple[torch.nn.Module, ModelHook]]) -> list[tuple[torch.nn.Module, bool]]:
    """Register each hook on its module under :data:`HOOK_NAME`.

    Returns ``(module, pristine)`` pairs; ``pristine`` says the module had neither a hook registry
    nor an instance-level ``forward`` before, so removal may delete both.
    """
    installed = []
    for module, hook in pairs:
        pristine = not hasattr(module, "_diffusers_hook") and "forward" not in module.__dict__
        HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, HOOK_NAME)
        installed.append((module, pristine))
    return installed


def remove_hooks(installed: list[tuple[torch.nn.Module, bool]]) -> None:
    """Undo :func:`install_hooks`, leaving pristine modules exactly as they were."""
    for module, pristine in installed:
        registry = module._diffusers_hook
        registry.remove_hook(HOOK_NAME, recurse=False)
        if pristine and not registry.hooks:
            del module._diffusers_hook
            module.__dict__.pop("forward", None)


class TextToVideoAdapter(Adapter):
    """Shared parts of the text-to-video pipelines (AnimateDiff, ModelScope/zeroscope UNet3D):
    prompt encoding, latents ``[B, C, F, h, w]``, schedulers stepped with ``eta``/``generator``."""

    latent_frame_dim = 2
    supported_arguments = (
        "prompt", "num_frames", "height", "width", "num_inference_steps", "guidance_scale", "negative_prompt",
        "eta", "generator", "latents", "prompt_embeds", "negative_prompt_embeds", "output_type", "clip_skip",
    )

    def check_inputs(self, call: Call) -> None:
        raise NotImplementedError

    def parse(self, kwargs: dict) -> Call:
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
        call = Call(
            num_frames=self.default("num_frames") if num_frames is None else num_frames,
            num_inference_steps=kwargs.get("num_inference_steps", self.default("num_inference_steps")),
            output_type=kwargs.get("output_type", self.default("output_type")),
            generator=kwargs.get("generator"),
            latents=kwargs.get("latents"),
            device=pipe._execution_device,
            batch=batch_size,
            unet_batch=batch_size * (2 if guided else 1),
            eta=kwargs.get("eta", 0.0),
            options=dict(
                prompt=prompt,
                negative_prompt=kwargs.get("negative_prompt"),
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=kwargs.get("negative_prompt_embeds"),
                clip_skip=kwargs.get("clip_skip"),
                height=height,
                width=width,
                guidance_scale=guidance_scale,
                guided=guided,
            ),
        )
        self.check_inputs(call)
        return call

    def encode(self, call: Call) -> None:
        options = call.options
        prompt_embeds, negative_prompt_embeds = self.pipe.encode_prompt(
            options["prompt"],
            call.device,
            1,
            options["guided"],
            options["negative_prompt"],
            prompt_embeds=options["prompt_embeds"],
            negative_prompt_embeds=options["negative_prompt_embeds"],
            lora_scale=None,
            clip_skip=options["clip_skip"],
        )
        if options["guided"]:
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])
        options["encoded_prompt"] = prompt_embeds
        call.dtype = prompt_embeds.dtype

    def latent_shape(self, call: Call, num_frames: int) -> tuple[int, ...]:
        pipe, options = self.pipe, call.options
        return (
            call.batch,
            pipe.unet.config.in_channels,
            num_frames,
            options["height"] // pipe.vae_scale_factor,
            options["width"] // pipe.vae_scale_factor,
        )

    def new_stage(self, call: Call, index: int, num_frames: int, frame_rate_factor: int) -> Stage:
        scheduler, timesteps = self.new_scheduler(call)
        return Stage(
            index=index,
            num_frames=num_frames,
            frame_rate_factor=frame_rate_factor,
            scheduler=scheduler,
            timesteps=timesteps,
            step_kwargs=self.pipe.prepare_extra_step_kwargs(call.generator, call.eta),
            conditions=dict(prompt_embeds=self.stage_prompt_embeds(call, num_frames)),
        )

    def stage_prompt_embeds(self, call: Call, num_frames: int) -> torch.Tensor:
        """The encoder hidden states the UNet gets for a ``num_frames``-frame stage."""
        return call.options["encoded_prompt"]

    def guide(self, call: Call, noise_pred: torch.Tensor) -> torch.Tensor:
        if not call.options["guided"]:
            return noise_pred
        noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
        return noise_pred_uncond + call.options["guidance_scale"] * (noise_pred_text - noise_pred_uncond)
