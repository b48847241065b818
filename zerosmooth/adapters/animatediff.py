"""AnimateDiff (text-to-video, ``UNetMotionModel``).

* Spatial attention: the image UNet's ``…attentions.N.transformer_blocks.0.attn{1,2}``; temporal:
  ``…motion_modules.N.transformer_blocks.0.attn{1,2}`` (``double_self_attention``: both are
  temporal self-attention).
* Positions: the motion modules' ``SinusoidalPositionalEmbedding`` is a fixed integer buffer of
  ``max_seq_length`` rows; the hook replaces it by the same formula at fractional positions
  ``f / n^(s-1)`` (bit-identical to the buffer at integer positions, any sequence length).
* The pipeline repeats the prompt embedding once per frame; each stage repeats it ``t_s`` times.
"""

from __future__ import annotations

import math

import torch
from diffusers.models.embeddings import SinusoidalPositionalEmbedding

from ..attention import SPATIAL, TEMPORAL
from .base import Call, PositionHook, Stage, TextToVideoAdapter


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
    """Replaces ``SinusoidalPositionalEmbedding.forward``: adds the table at positions ``f / factor``."""

    def new_forward(self, module, x):
        positions = torch.arange(x.shape[1], device=x.device, dtype=torch.float32)
        factor = self.state.position_factor
        if factor != 1:
            positions = positions / factor
        pe = sinusoidal_embedding(positions, module.pe.shape[-1]).to(module.pe.dtype)
        return x + pe[None]


class AnimateDiffAdapter(TextToVideoAdapter):
    pipeline_class_names = ("AnimateDiffPipeline",)
    supported_arguments = TextToVideoAdapter.supported_arguments + ("decode_chunk_size",)

    def attention_axis(self, name: str) -> str:
        return TEMPORAL if ".motion_modules." in name else SPATIAL

    def position_hooks(self, state):
        return [
            (module, _FractionalPositions(state))
            for name, module in self.pipe.unet.named_modules()
            if isinstance(module, SinusoidalPositionalEmbedding) and ".motion_modules." in name
        ]

    def check_inputs(self, call: Call) -> None:
        pipe, options = self.pipe, call.options
        if pipe.free_noise_enabled or pipe.free_init_enabled:
            raise TypeError("ZeroSmooth cannot wrap an AnimateDiffPipeline with FreeNoise or FreeInit enabled")
        pipe.check_inputs(
            options["prompt"], options["height"], options["width"], None, options["negative_prompt"],
            options["prompt_embeds"], options["negative_prompt_embeds"],
        )
        # encode_prompt and the pipeline's properties read these.
        pipe._guidance_scale = options["guidance_scale"]
        pipe._clip_skip = options["clip_skip"]
        pipe._cross_attention_kwargs = None
        pipe._interrupt = False

    def parse(self, kwargs: dict) -> Call:
        call = super().parse(kwargs)
        call.options["decode_chunk_size"] = kwargs.get("decode_chunk_size", self.default("decode_chunk_size"))
        return call

    def stage_prompt_embeds(self, call: Call, num_frames: int) -> torch.Tensor:
        return call.options["encoded_prompt"].repeat_interleave(repeats=num_frames, dim=0)

    def model_output(self, call: Call, stage: Stage, t) -> torch.Tensor:
        model_input = torch.cat([stage.latents] * 2) if call.options["guided"] else stage.latents
        model_input = stage.scheduler.scale_model_input(model_input, t)
        noise_pred = self.pipe.unet(
            model_input,
            t,
            encoder_hidden_states=stage.conditions["prompt_embeds"],
            cross_attention_kwargs=None,
            added_cond_kwargs=None,
        ).sample
        return self.guide(call, noise_pred)

    def decode(self, call: Call, stage: Stage, output_type: str):
        if output_type == "latent":
            return stage.latents
        video = self.pipe.decode_latents(stage.latents, call.options["decode_chunk_size"])
        return self.pipe.video_processor.postprocess_video(video=video, output_type=output_type)
