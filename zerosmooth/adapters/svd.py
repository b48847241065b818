"""Stable Video Diffusion (image-to-video, ``UNetSpatioTemporalConditionModel``).

* Spatial attention: ``…attentions.N.transformer_blocks.0.attn{1,2}`` (attn2: cross to the image
  embedding); temporal: ``…temporal_transformer_blocks.0.attn{1,2}`` (attn2: cross).
* Positions: each ``TransformerSpatioTemporalModel`` embeds ``arange(F)`` with ``time_proj``; the
  hook divides those positions by ``n^(s-1)`` so key frame ``n·i`` lands on base position ``i``.
* Per-stage conditions (SPEC §7): fps ``· n^(s-1)`` (the pipeline conditions on ``fps - 1``),
  motion bucket and noise augmentation unchanged, guidance ``linspace(min, max, t_s)``.
* Per-frame guidance at the base stage's positions instead (``key_guidance``, SPEC §10).
* Residual-stream sites: ``SpatioTemporalResBlock`` outputs (``resnets``) and
  ``TransformerSpatioTemporalModel`` outputs (``temporal``).
* Latents ``[B, F, C, h, w]``; Euler (EDM) scheduler, deterministic.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Optional

import PIL.Image
import torch
from diffusers.models.resnet import SpatioTemporalResBlock
from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
    _append_dims,
    retrieve_timesteps,
)
from diffusers.utils.torch_utils import randn_tensor

from ..attention import SPATIAL, TEMPORAL
from ..config import ZeroSmoothConfig
from .base import Adapter, Call, PositionHook, Stage


class _TimeProjPositions(PositionHook):
    """Divides the frame positions fed to a ``TransformerSpatioTemporalModel.time_proj``."""

    def pre_forward(self, module, positions, *args, **kwargs):
        factor = self.factor()
        if factor != 1:
            positions = positions / factor
        return (positions, *args), kwargs


@dataclass(kw_only=True)
class SVDCall(Call):
    image: Any
    height: int
    width: int
    sigmas: Optional[list]
    min_guidance: float
    max_guidance: float
    fps: int
    motion_bucket_id: int
    noise_aug_strength: float
    decode_chunk_size: Optional[int]
    batch_size: int
    videos_per_prompt: int
    image_embeddings: Optional[torch.Tensor] = None  # set by encode()
    image_latents: Optional[torch.Tensor] = None  # set by encode()


@dataclass
class SVDConditions:
    added_time_ids: torch.Tensor  # [unet batch, 3]: fps - 1, motion bucket, noise augmentation
    image_latents: torch.Tensor  # [unet batch, t_s, C, h, w], concatenated to the latents
    guidance: torch.Tensor  # [batch, t_s, 1, 1, 1], per-frame guidance scale


def key_position_guidance(minimum: float, maximum: float, base_frames: int, num_frames: int) -> torch.Tensor:
    """Per-frame guidance of a ``num_frames``-frame stage at the base stage's positions (SPEC §10):
    frame ``f`` sits at position ``f · base_frames / num_frames`` of the base stage, whose guidance
    is ``linspace(minimum, maximum, base_frames)``; values between positions are interpolated and
    frames past the last key frame keep its value. ``[num_frames]`` float64."""
    base = torch.linspace(minimum, maximum, base_frames, dtype=torch.float64)
    positions = torch.arange(num_frames, dtype=torch.float64) * base_frames / num_frames
    left = positions.floor().long().clamp(max=base_frames - 1)
    right = (left + 1).clamp(max=base_frames - 1)
    return torch.lerp(base[left], base[right], positions - left)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class SVDAdapter(Adapter):
    pipeline_class_names = ("StableVideoDiffusionPipeline",)
    latent_frame_dim = 1
    supported_arguments = (
        "image", "height", "width", "num_frames", "num_inference_steps", "sigmas", "min_guidance_scale",
        "max_guidance_scale", "fps", "motion_bucket_id", "noise_aug_strength", "decode_chunk_size",
        "num_videos_per_prompt", "generator", "latents", "output_type",
    )
    residual_site_types = {"resnets": (SpatioTemporalResBlock,), "temporal": (TransformerSpatioTemporalModel,)}

    def attention_axis(self, name: str) -> str:
        return TEMPORAL if ".temporal_transformer_blocks." in name else SPATIAL

    def trained_frames(self) -> int:
        return self.pipe.unet.config.num_frames

    def check_call(self, call: SVDCall) -> None:
        self.check_size(call.height, call.width)
        checks = (
            ("fps", call.fps, lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
            ("motion_bucket_id", call.motion_bucket_id, lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
            ("noise_aug_strength", call.noise_aug_strength, lambda v: _number(v) and v >= 0, "a number >= 0"),
            ("min_guidance_scale", call.min_guidance, _number, "a number"),
            ("max_guidance_scale", call.max_guidance, _number, "a number"),
        )
        for name, value, valid, expected in checks:
            if isinstance(value, bool) or not valid(value):
                raise ValueError(f"{name} must be {expected}, got {value!r}")

    def position_hooks(self, slot):
        return [
            (module.time_proj, _TimeProjPositions(slot))
            for module in self.pipe.unet.modules()
            if isinstance(module, TransformerSpatioTemporalModel)
        ]

    def parse(self, kwargs: dict) -> SVDCall:
        self.check_arguments(kwargs)
        pipe = self.pipe
        if "image" not in kwargs:
            raise TypeError("ZeroSmooth for StableVideoDiffusionPipeline needs image= (the conditioning image)")
        image = kwargs["image"]
        height = kwargs.get("height", self.default("height")) or pipe.unet.config.sample_size * pipe.vae_scale_factor
        width = kwargs.get("width", self.default("width")) or pipe.unet.config.sample_size * pipe.vae_scale_factor
        pipe.check_inputs(image, height, width)
        if isinstance(image, PIL.Image.Image):
            batch_size = 1
        elif isinstance(image, list):
            batch_size = len(image)
        else:
            batch_size = image.shape[0]
        videos_per_prompt = kwargs.get("num_videos_per_prompt") or 1
        max_guidance = kwargs.get("max_guidance_scale", self.default("max_guidance_scale"))
        guided = max_guidance > 1
        num_frames = kwargs.get("num_frames")
        return SVDCall(
            num_frames=pipe.unet.config.num_frames if num_frames is None else num_frames,
            num_inference_steps=kwargs.get("num_inference_steps", self.default("num_inference_steps")),
            output_type=kwargs.get("output_type", self.default("output_type")),
            generator=kwargs.get("generator"),
            latents=kwargs.get("latents"),
            device=pipe._execution_device,
            batch=batch_size * videos_per_prompt,
            unet_batch=batch_size * videos_per_prompt * (2 if guided else 1),
            guided=guided,
            image=image,
            height=height,
            width=width,
            sigmas=kwargs.get("sigmas"),
            min_guidance=kwargs.get("min_guidance_scale", self.default("min_guidance_scale")),
            max_guidance=max_guidance,
            fps=kwargs.get("fps", self.default("fps")),
            motion_bucket_id=kwargs.get("motion_bucket_id", self.default("motion_bucket_id")),
            noise_aug_strength=kwargs.get("noise_aug_strength", self.default("noise_aug_strength")),
            decode_chunk_size=kwargs.get("decode_chunk_size"),
            batch_size=batch_size,
            videos_per_prompt=videos_per_prompt,
        )

    def encode(self, call: SVDCall) -> None:
        # The pipeline's steps 3-4: same calls, same order of generator draws.
        pipe, device = self.pipe, call.device
        pipe._guidance_scale = call.max_guidance
        image_embeddings = pipe._encode_image(call.image, device, call.videos_per_prompt, call.guided)
        image = pipe.video_processor.preprocess(call.image, height=call.height, width=call.width)
        image = image.to(device)
        noise = randn_tensor(image.shape, generator=call.generator, device=device, dtype=image.dtype)
        image = image + call.noise_aug_strength * noise
        needs_upcasting = pipe.vae.dtype == torch.float16 and pipe.vae.config.force_upcast
        if needs_upcasting:
            pipe.vae.to(dtype=torch.float32)
        image_latents = pipe._encode_vae_image(
            image,
            device=device,
            num_videos_per_prompt=call.videos_per_prompt,
            do_classifier_free_guidance=call.guided,
        ).to(image_embeddings.dtype)
        if needs_upcasting:
            pipe.vae.to(dtype=torch.float16)
        call.image_embeddings, call.image_latents = image_embeddings, image_latents
        call.dtype = image_embeddings.dtype

    def latent_shape(self, call: SVDCall, num_frames: int) -> tuple[int, ...]:
        pipe = self.pipe
        return (
            call.batch,
            num_frames,
            pipe.unet.config.in_channels // 2,
            call.height // pipe.vae_scale_factor,
            call.width // pipe.vae_scale_factor,
        )

    def new_scheduler(self, call: SVDCall):
        scheduler = copy.deepcopy(self.pipe.scheduler)
        timesteps, _ = retrieve_timesteps(scheduler, call.num_inference_steps, call.device, None, call.sigmas)
        return scheduler, timesteps

    def new_stage(self, call: SVDCall, index: int, num_frames: int, config: ZeroSmoothConfig) -> Stage:
        pipe = self.pipe
        factor = config.scale ** (index - 1)
        scheduler, timesteps = self.new_scheduler(call)
        # The pipeline conditions on fps - 1; stage s plays n^(s-1) times as many frames per second.
        added_time_ids = pipe._get_add_time_ids(
            call.fps * factor - 1,
            call.motion_bucket_id,
            call.noise_aug_strength,
            call.image_embeddings.dtype,
            call.batch_size,
            call.videos_per_prompt,
            call.guided,
        ).to(call.device)
        if config.key_guidance and index > 1:
            guidance = key_position_guidance(call.min_guidance, call.max_guidance, call.num_frames, num_frames)
            guidance = guidance.to(call.dtype).unsqueeze(0)
        else:
            guidance = torch.linspace(call.min_guidance, call.max_guidance, num_frames).unsqueeze(0)
        guidance = guidance.to(call.device, call.dtype).repeat(call.batch, 1)
        return Stage(
            index=index,
            num_frames=num_frames,
            frame_rate_factor=factor,
            scheduler=scheduler,
            timesteps=timesteps,
            conditions=SVDConditions(
                added_time_ids=added_time_ids,
                image_latents=call.image_latents.unsqueeze(1).repeat(1, num_frames, 1, 1, 1),
                guidance=_append_dims(guidance, 5),
            ),
        )

    def model_output(self, call: SVDCall, stage: Stage, t) -> torch.Tensor:
        conditions = stage.conditions
        model_input = torch.cat([stage.latents] * 2) if call.guided else stage.latents
        model_input = stage.scheduler.scale_model_input(model_input, t)
        model_input = torch.cat([model_input, conditions.image_latents], dim=2)
        noise_pred = self.pipe.unet(
            model_input,
            t,
            encoder_hidden_states=call.image_embeddings,
            added_time_ids=conditions.added_time_ids,
            return_dict=False,
        )[0]
        if call.guided:
            noise_pred_uncond, noise_pred_cond = noise_pred.chunk(2)
            noise_pred = noise_pred_uncond + conditions.guidance * (noise_pred_cond - noise_pred_uncond)
        return noise_pred

    def decode(self, call: SVDCall, stage: Stage, output_type: str):
        if output_type == "latent":
            return stage.latents
        pipe = self.pipe
        if pipe.vae.dtype == torch.float16 and pipe.vae.config.force_upcast:
            pipe.vae.to(dtype=torch.float16)
        chunk = call.decode_chunk_size or stage.num_frames
        frames = pipe.decode_latents(stage.latents, stage.num_frames, chunk)
        return pipe.video_processor.postprocess_video(video=frames, output_type=output_type)
