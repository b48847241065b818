"""AnimateDiff (text-to-video, ``UNetMotionModel``).

* Spatial attention: the image UNet's ``…attentions.N.transformer_blocks.0.attn{1,2}``; temporal:
  ``…motion_modules.N.transformer_blocks.0.attn{1,2}`` (``double_self_attention``: both are
  temporal self-attention).
* Positions: the motion modules' ``SinusoidalPositionalEmbedding`` is a fixed integer buffer of
  ``max_seq_length`` rows; the hook replaces it by the same formula at fractional positions
  ``f / n^(s-1)`` (bit-identical to the buffer at integer positions, any sequence length).
* The pipeline repeats the prompt embedding once per frame; each stage repeats it ``t_s`` times.
* Residual-stream sites: the image UNet's ``ResnetBlock2D`` outputs (``resnets``) and the motion
  modules' outputs (``temporal``).
"""

from __future__ import annotations

import math

import torch
from diffusers.models.embeddings import SinusoidalPositionalEmbedding
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

from ..attention import SPATIAL, TEMPORAL
from .base import PositionHook, Stage, TextCall, TextToVideoAdapter


def sinusoidal_embedding(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """``SinusoidalPositionalEmbedding``'s table at arbitrary (fractional) positions.

    ``pe[p, 0::2] = sin(p·div)``, ``pe[p, 1::2] = cos(p·div)``, ``div = exp(arange(0, D, 2)·(-ln 10⁴/D))``,
    computed in float32 exactly as diffusers builds its buffer, so integer positions reproduce it bit
    for bit.

    Args:
        positions: ``[P]`` float positions.
        dim: embedding width ``D`` (even).

    Returns:
        ``[P, D]`` float32 on ``positions``' device.
    """
    div_term = torch.exp(torch.arange(0, dim, 2, device=positions.device) * (-math.log(10000.0) / dim))
    angles = positions.to(torch.float32)[:, None] * div_term
    table = torch.empty(positions.shape[0], dim, device=positions.device)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles)
    return table


class _FractionalPositions(PositionHook):
    """Replaces ``SinusoidalPositionalEmbedding.forward`` during a call: adds the table at positions
    ``f / factor`` (any sequence length); outside a call the module's own forward runs."""

    def new_forward(self, module, x):
        if self.slot.session is None:
            return self.fn_ref.original_forward(x)
        positions = torch.arange(x.shape[1], device=x.device, dtype=torch.float32)
        factor = self.factor()
        if factor != 1:
            positions = positions / factor
        pe = sinusoidal_embedding(positions, module.pe.shape[-1]).to(module.pe.dtype)
        return x + pe[None]


class AnimateDiffAdapter(TextToVideoAdapter):
    pipeline_class_names = ("AnimateDiffPipeline",)
    supported_arguments = TextToVideoAdapter.supported_arguments + ("decode_chunk_size",)
    residual_site_types = {"resnets": (ResnetBlock2D,), "temporal": (AnimateDiffTransformer3D,)}

    def attention_axis(self, name: str) -> str:
        return TEMPORAL if ".motion_modules." in name else SPATIAL

    def position_hooks(self, slot):
        return [
            (module, _FractionalPositions(slot))
            for name, module in self.pipe.unet.named_modules()
            if isinstance(module, SinusoidalPositionalEmbedding) and ".motion_modules." in name
        ]

    def check_inputs(self, call: TextCall) -> None:
        pipe = self.pipe
        if pipe.free_noise_enabled or pipe.free_init_enabled:
            raise TypeError("ZeroSmooth cannot wrap an AnimateDiffPipeline with FreeNoise or FreeInit enabled")
        pipe.check_inputs(
            call.prompt, call.height, call.width, None, call.negative_prompt, call.prompt_embeds,
            call.negative_prompt_embeds,
        )
        # encode_prompt and the pipeline's properties read these.
        pipe._guidance_scale = call.guidance_scale
        pipe._clip_skip = call.clip_skip
        pipe._cross_attention_kwargs = None
        pipe._interrupt = False

    def parse(self, kwargs: dict) -> TextCall:
        call = super().parse(kwargs)
        call.decode_chunk_size = kwargs.get("decode_chunk_size", self.default("decode_chunk_size"))
        return call

    def stage_prompt_embeds(self, call: TextCall, num_frames: int) -> torch.Tensor:
        return call.encoded_prompt.repeat_interleave(repeats=num_frames, dim=0)

    def model_output(self, call: TextCall, stage: Stage, t) -> torch.Tensor:
        model_input = torch.cat([stage.latents] * 2) if call.guided else stage.latents
        model_input = stage.scheduler.scale_model_input(model_input, t)
        noise_pred = self.pipe.unet(
            model_input,
            t,
            encoder_hidden_states=stage.conditions.prompt_embeds,
            cross_attention_kwargs=None,
            added_cond_kwargs=None,
        ).sample
        return self.guide(call, noise_pred)

    def decode(self, call: TextCall, stage: Stage, output_type: str):
        if output_type == "latent":
            return stage.latents
        video = self.pipe.decode_latents(stage.latents, call.decode_chunk_size)
        return self.pipe.video_processor.postprocess_video(video=video, output_type=output_type)
