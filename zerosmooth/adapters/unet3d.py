"""ModelScope / zeroscope text-to-video (``TextToVideoSDPipeline``, ``UNet3DConditionModel``).

* Spatial attention: ``…attentions.N.transformer_blocks.0.attn{1,2}`` (attn2: cross to the text);
  temporal: ``transformer_in…`` and ``…temp_attentions.N…`` (no encoder states reach them: both
  attn1 and attn2 are temporal self-attention).
* No temporal position embedding: nothing to interpolate ("empty RPE", SPEC §5).
* Residual-stream sites: ``ResnetBlock2D`` outputs (``resnets``); ``TemporalConvLayer`` and
  ``TransformerTemporalModel`` outputs (``temporal``).
* The pipeline steps the scheduler on ``[B·F, C, h, w]`` latents; so does the adapter, including the
  shared per-step noise.
"""

from __future__ import annotations

import torch
from diffusers.models.resnet import ResnetBlock2D, TemporalConvLayer
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

from ..attention import SPATIAL, TEMPORAL
from .base import Stage, TextCall, TextToVideoAdapter


def _frames_to_batch(tensor: torch.Tensor) -> torch.Tensor:
    """``[B, C, F, h, w]`` → ``[B·F, C, h, w]`` as the pipeline reshapes before ``scheduler.step``."""
    batch, channels, frames, height, width = tensor.shape
    return tensor.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, height, width)


def _batch_to_frames(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """Inverse of :func:`_frames_to_batch` (the pipeline's own reshape back)."""
    frames_total, channels, height, width = tensor.shape
    return tensor[None, :].reshape(batch, frames_total // batch, channels, height, width).permute(0, 2, 1, 3, 4)


class UNet3DAdapter(TextToVideoAdapter):
    pipeline_class_names = ("TextToVideoSDPipeline",)
    residual_site_types = {"resnets": (ResnetBlock2D,), "temporal": (TemporalConvLayer, TransformerTemporalModel)}

    def attention_axis(self, name: str) -> str:
        return TEMPORAL if name.startswith("transformer_in.") or ".temp_attentions." in name else SPATIAL

    def check_inputs(self, call: TextCall) -> None:
        self.pipe.check_inputs(
            call.prompt, call.height, call.width, None, call.negative_prompt, call.prompt_embeds,
            call.negative_prompt_embeds,
        )

    def model_output(self, call: TextCall, stage: Stage, t) -> torch.Tensor:
        model_input = torch.cat([stage.latents] * 2) if call.guided else stage.latents
        model_input = stage.scheduler.scale_model_input(model_input, t)
        noise_pred = self.pipe.unet(
            model_input,
            t,
            encoder_hidden_states=stage.conditions.prompt_embeds,
            cross_attention_kwargs=None,
            return_dict=False,
        )[0]
        return self.guide(call, noise_pred)

    def scheduler_step(self, call: TextCall, stage: Stage, model_output, t, variance_noise=None):
        kwargs = dict(stage.step_kwargs)
        if variance_noise is not None:
            kwargs.pop("generator", None)
            kwargs["variance_noise"] = _frames_to_batch(variance_noise)
        batch = stage.latents.shape[0]
        output = stage.scheduler.step(_frames_to_batch(model_output), t, _frames_to_batch(stage.latents), **kwargs)
        output.prev_sample = _batch_to_frames(output.prev_sample, batch)
        if getattr(output, "pred_original_sample", None) is not None:
            output.pred_original_sample = _batch_to_frames(output.pred_original_sample, batch)
        return output

    def decode(self, call: TextCall, stage: Stage, output_type: str):
        if output_type == "latent":
            return stage.latents
        video = self.pipe.decode_latents(stage.latents)
        return self.pipe.video_processor.postprocess_video(video=video, output_type=output_type)
