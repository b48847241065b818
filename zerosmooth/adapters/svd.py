"""Stable Video Diffusion (image-to-video, ``UNetSpatioTemporalConditionModel``).

* Spatial attention: ``…attentions.N.transformer_blocks.0.attn{1,2}`` (attn2: cross to the image
  embedding); temporal: ``…temporal_transformer_blocks.0.attn{1,2}`` (attn2: cross).
* Positions: each ``TransformerSpatioTemporalModel`` embeds ``arange(F)`` with ``time_proj``; the
  hook divides those positions by ``n^(s-1)`` so key frame ``n·i`` lands on base position ``i``.
* Per-stage conditions (SPEC §7): fps ``· n^(s-1)`` (the pipeline conditions on ``fps - 1``),
  motion bucket and noise augmentation unchanged, guidance ``linspace(min, max, t_s)``.
* Latents ``[B, F, C, h, w]``; Euler (EDM) scheduler, deterministic.
"""

from __future__ import annotations

import copy

import PIL.Image
import torch
from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
    _append_dims,
    retrieve_timesteps,
)
from diffusers.utils.torch_utils import randn_tensor

from ..attention import SPATIAL, TEMPORAL
from .base import Adapter, Call, PositionHook, Stage


class _TimeProjPositions(PositionHook):
    """Divides the frame positions fed to a ``TransformerSpatioTemporalModel.time_proj``."""

    def pre_forward(self, module, positions, *args, **kwargs):
        factor = self.state.position_factor
        if factor != 1:
            positions = positions / factor
        return (positions, *args), kwargs


class SVDAdapter(Adapter):
    pipeline_class_names = ("StableVideoDiffusionPipeline",)
    latent_frame_dim = 1
    supported_arguments = (
        "image", "height", "width", "num_frames", "num_inference_steps", "sigmas", "min_guidance_scale",
        "max_guidance_scale", "fps", "motion_bucket_id", "noise_aug_strength", "decode_chunk_size",
        "num_videos_per_prompt", "generator", "latents", "output_type",
    )

    def attention_axis(self, name: str) -> str:
        return TEMPORAL if ".temporal_transformer_blocks." in name else SPATIAL

    def position_hooks(self, state):
        return [
            (module.time_proj, _TimeProjPositions(state))
            for module in self.pipe.unet.modules()
            if isinstance(module, TransformerSpatioTemporalModel)
        ]

    def parse(self, kwargs: dict) -> Call:
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
        return Call(
            num_frames=pipe.unet.config.num_frames if num_frames is None else num_frames,
            num_inference_steps=kwargs.get("num_inference_steps", self.default("num_inference_steps")),
            output_type=kwargs.get("output_type", self.default("output_type")),
            generator=kwargs.get("generator"),
            latents=kwargs.get("latents"),
            device=pipe._execution_device,
            batch=batch_size * videos_per_prompt,
            unet_batch=batch_size * videos_per_prompt * (2 if guided else 1),
            options=dict(
                image=image,
                height=height,
                width=width,
                sigmas=kwargs.get("sigmas"),
                guided=guided,
                min_guidance=kwargs.get("min_guidance_scale", self.default("min_guidance_scale")),
                max_guidance=max_guidance,
                fps=kwargs.get("fps", self.default("fps")),
                motion_bucket_id=kwargs.get("motion_bucket_id", self.default("motion_bucket_id")),
                noise_aug_strength=kwargs.get("noise_aug_strength", self.default("noise_aug_strength")),
                decode_chunk_size=kwargs.get("decode_chunk_size"),
                batch_size=batch_size,
                videos_per_prompt=videos_per_prompt,
            ),
        )

    def encode(self, call: Call) -> None:
        # The pipeline's steps 3-4: same calls, same order of generator draws.
        pipe, options, device = self.pipe, call.options, call.device
        pipe._guidance_scale = options["max_guidance"]
        image_embeddings = pipe._encode_image(options["image"], device, options["videos_per_prompt"], options["guided"])
        image = pipe.video_processor.preprocess(options["image"], height=options["height"], width=options["width"])
        image = image.to(device)
        noise = randn_tensor(image.shape, generator=call.generator, device=device, dtype=image.dtype)
        image = image + options["noise_aug_strength"] * noise
        needs_upcasting = pipe.vae.dtype == torch.float16 and pipe.vae.config.force_upcast
        if needs_upcasting:
            pipe.vae.to(dtype=torch.float32)
        image_latents = pipe._encode_vae_image(
            image,
            device=device,
            num_videos_per_prompt=options["videos_per_prompt"],
            do_classifier_free_guidance=options["guided"],
        ).to(image_embeddings.dtype)
        if needs_upcasting:
            pipe.vae.to(dtype=torch.float16)
        options.update(image_embeddings=image_embeddings, image_latents=image_latents)
        call.dtype = image_embeddings.dtype

    def latent_shape(self, call: Call, num_frames: int) -> tuple[int, ...]:
        pipe, options = self.pipe, call.options
        return (
            call.batch,
            num_frames,
            pipe.unet.config.in_channels // 2,
            options["height"] // pipe.vae_scale_factor,
            options["width"] // pipe.vae_scale_factor,
        )

    def new_scheduler(self, call: Call):
        scheduler = copy.deepcopy(self.pipe.scheduler)
        timesteps, _ = retrieve_timesteps(
            scheduler, call.num_inference_steps, call.device, None, call.options["sigmas"]
        )
        return scheduler, timesteps

    def new_stage(self, call: Call, index: int, num_frames: int, frame_rate_factor: int) -> Stage:
        pipe, options = self.pipe, call.options
        scheduler, timesteps = self.new_scheduler(call)
        # The pipeline conditions on fps - 1; stage s plays n^(s-1) times as many frames per second.
        added_time_ids = pipe._get_add_time_ids(
            options["fps"] * frame_rate_factor - 1,
            options["motion_bucket_id"],
            options["noise_aug_strength"],
            options["image_embeddings"].dtype,
            options["batch_size"],
            options["videos_per_prompt"],
            options["guided"],
        ).to(call.device)
        guidance = torch.linspace(options["min_guidance"], options["max_guidance"], num_frames).unsqueeze(0)
        guidance = guidance.to(call.device, call.dtype).repeat(call.batch, 1)
        return Stage(
            index=index,
            num_frames=num_frames,
            frame_rate_factor=frame_rate_factor,
            scheduler=scheduler,
            timesteps=timesteps,
            conditions=dict(
                added_time_ids=added_time_ids,
                image_latents=options["image_latents"].unsqueeze(1).repeat(1, num_frames, 1, 1, 1),
                guidance=_append_dims(guidance, 5),
            ),
        )

    def model_output(self, call: Call, stage: Stage, t) -> torch.Tensor:
        guided, conditions = call.options["guided"], stage.conditions
        model_input = torch.cat([stage.latents] * 2) if guided else stage.latents
        model_input = stage.scheduler.scale_model_input(model_input, t)
        model_input = torch.cat([model_input, conditions["image_latents"]], dim=2)
        noise_pred = self.pipe.unet(
            model_input,
            t,
            encoder_hidden_states=call.options["image_embeddings"],
            added_time_ids=conditions["added_time_ids"],
            return_dict=False,
        )[0]
        if guided:
            noise_pred_uncond, noise_pred_cond = noise_pred.chunk(2)
            noise_pred = noise_pred_uncond + conditions["guidance"] * (noise_pred_cond - noise_pred_uncond)
        return noise_pred

    def decode(self, call: Call, stage: Stage, output_type: str):
        if output_type == "latent":
            return stage.latents
        pipe = self.pipe
        if pipe.vae.dtype == torch.float16 and pipe.vae.config.force_upcast:
            pipe.vae.to(dtype=torch.float16)
        chunk = call.options["decode_chunk_size"] or stage.num_frames
        frames = pipe.decode_latents(stage.latents, stage.num_frames, chunk)
        return pipe.video_processor.postprocess_video(video=frames, output_type=output_type)
