"""Tiny, untrained diffusers video pipelines built from config, for tests and benchmarks.

Every builder is deterministic in its ``seed``, needs no network (no Hub download, not even for the
tokenizer), runs its plain ``__call__`` on CPU at 32×32 px in a fraction of a second per step, and
survives ``save_pretrained(dir)`` + ``from_pretrained(dir)``. The configs follow diffusers' own fast
pipeline tests (SPEC §9). The weights are random: outputs look like noise, by design.

Every builder draws its weights under ``torch.random.fork_rng`` so that building a pipeline does not
disturb the caller's global RNG stream.
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

import torch
from diffusers import (
    AnimateDiffPipeline,
    AutoencoderKL,
    AutoencoderKLTemporalDecoder,
    DDIMScheduler,
    EulerDiscreteScheduler,
    MotionAdapter,
    StableVideoDiffusionPipeline,
    TextToVideoSDPipeline,
    UNet2DConditionModel,
    UNet3DConditionModel,
    UNetSpatioTemporalConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

try:
    # Without torchvision, transformers maps CLIPImageProcessor to this class anyway (with a warning);
    # naming it directly keeps the saved model_index.json stable and the logs quiet.
    from transformers import CLIPImageProcessorPil as _CLIPImageProcessor
except ImportError:  # older transformers: one CLIPImageProcessor class
    from transformers import CLIPImageProcessor as _CLIPImageProcessor

__all__ = [
    "clip_image_processor",
    "tiny_clip_tokenizer",
    "tiny_clip_vision_encoder",
    "tiny_svd_components",
    "tiny_svd_pipeline",
    "tiny_animatediff_pipeline",
    "tiny_text_to_video_pipeline",
]

# Token ids of the tiny CLIP vocabulary: the text encoder's bos/eos/pad ids must match them, because
# CLIPTextModel pools the hidden state at the eos token.
_BOS_ID = 0
_EOS_ID = 1
# Symbols the tiny vocabulary knows besides the two special tokens; CLIP lower-cases its input and
# maps anything else to the unknown token (<|endoftext|>).
_SYMBOLS = string.ascii_lowercase + string.digits + ".,!?'-"


def _tiny_vocab() -> dict[str, int]:
    """The minimal byte-level-BPE vocabulary: specials, then each symbol alone and word-final."""
    vocab = {"<|startoftext|>": _BOS_ID, "<|endoftext|>": _EOS_ID}
    for symbol in _SYMBOLS:
        vocab[symbol] = len(vocab)
        vocab[symbol + "</w>"] = len(vocab)
    return vocab


def tiny_clip_tokenizer() -> CLIPTokenizer:
    """A CLIPTokenizer built offline from a small ``vocab.json`` and a merge-free ``merges.txt``.

    The files are written to a temporary directory and loaded with ``from_pretrained`` — the same
    path a saved pipeline takes — so the tokenizer saves and reloads like a real one.
    """
    with tempfile.TemporaryDirectory(prefix="zerosmooth-tokenizer-") as tmp:
        folder = Path(tmp)
        (folder / "vocab.json").write_text(json.dumps(_tiny_vocab()), encoding="utf-8")
        (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
        return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)


def _tiny_text_encoder(seed: int) -> CLIPTextModel:
    """A 2-layer CLIP text encoder (hidden size 32) whose special ids match ``tiny_clip_tokenizer``."""
    config = CLIPTextConfig(
        bos_token_id=_BOS_ID,
        eos_token_id=_EOS_ID,
        pad_token_id=_EOS_ID,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(_tiny_vocab()),
        max_position_embeddings=77,
    )
    torch.manual_seed(seed)
    return CLIPTextModel(config).eval()


def _tiny_vae(seed: int) -> AutoencoderKL:
    """A two-level image VAE (spatial factor 2, 4 latent channels) for the text-to-video pipelines."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        sample_size=32,
        norm_num_groups=32,
    ).eval()


def _ddim_scheduler() -> DDIMScheduler:
    """DDIM configured like Stable Diffusion 1.5-based video models (AnimateDiff, ModelScope)."""
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def svd_scheduler() -> EulerDiscreteScheduler:
    """The Euler scheduler of stabilityai/stable-video-diffusion-img2vid(-xt) (its scheduler_config.json)."""
    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        interpolation_type="linear",
        num_train_timesteps=1000,
        prediction_type="v_prediction",
        sigma_max=700.0,
        sigma_min=0.002,
        steps_offset=1,
        timestep_spacing="leading",
        timestep_type="continuous",
        trained_betas=None,
        use_karras_sigmas=True,
    )


CLIP_SIZE = 224  # the SVD pipeline resizes the conditioning image to 224 px for the CLIP tower


def tiny_clip_vision_encoder(seed: int) -> CLIPVisionModelWithProjection:
    """A 2-layer CLIP vision tower (hidden size 32, 224 px input in 32 px patches: 7×7 tokens)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=32,
                projection_dim=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                image_size=CLIP_SIZE,
                intermediate_size=37,
                patch_size=32,
            )
        ).eval()


def clip_image_processor() -> _CLIPImageProcessor:
    """The image processor SVD pipelines carry for their CLIP tower (resize and crop to 224 px)."""
    return _CLIPImageProcessor(crop_size=CLIP_SIZE, size=CLIP_SIZE)


def tiny_svd_components(seed: int = 0, size: int = 32, frames: int = 4) -> dict:
    """Fresh (untrained) components of a tiny Stable Video Diffusion pipeline, as keyword arguments
    of ``StableVideoDiffusionPipeline``.

    UNetSpatioTemporalConditionModel with the SPEC §9 config (``num_frames=frames``), a two-level
    temporal-decoder VAE (spatial factor 2, so ``size``-px frames have ``size/2``-px latents), a
    2-layer CLIP vision tower (:func:`tiny_clip_vision_encoder`) and SVD's own Euler (EDM,
    v-prediction, Karras sigmas) scheduler.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKLTemporalDecoder(
            block_out_channels=(32, 64),
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            latent_channels=4,
            sample_size=size,
        )
        torch.manual_seed(seed + 1)
        unet = UNetSpatioTemporalConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=2,
            sample_size=size // 2,
            in_channels=8,
            out_channels=4,
            down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
            up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
            cross_attention_dim=32,
            num_attention_heads=8,
            projection_class_embeddings_input_dim=96,
            addition_time_embed_dim=32,
            num_frames=frames,
        )
        image_encoder = tiny_clip_vision_encoder(seed + 2)
    return {
        "vae": vae.eval(),
        "image_encoder": image_encoder.eval(),
        "unet": unet.eval(),
        "scheduler": svd_scheduler(),
        "feature_extractor": clip_image_processor(),
    }


def tiny_svd_pipeline(seed: int = 0) -> StableVideoDiffusionPipeline:
    """A tiny untrained Stable Video Diffusion (image-to-video) pipeline built from
    :func:`tiny_svd_components`. Call it with e.g. ``height=32, width=32, num_frames=4``."""
    return StableVideoDiffusionPipeline(**tiny_svd_components(seed))


def tiny_animatediff_pipeline(seed: int = 0) -> AnimateDiffPipeline:
    """A tiny untrained AnimateDiff (text-to-video) pipeline.

    A two-level UNet2DConditionModel plus a MotionAdapter (sinusoidal PE, ``max_seq_length`` 32 as
    in the released adapters), the tiny CLIP text stack and DDIM. The pipeline turns the two into a
    ``UNetMotionModel``. Call it with e.g. ``prompt="a cat", height=32, width=32, num_frames=4``.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=2,
            sample_size=32,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            norm_num_groups=2,
        ).eval()
        torch.manual_seed(seed)
        motion_adapter = MotionAdapter(
            block_out_channels=(32, 64),
            motion_layers_per_block=2,
            motion_norm_num_groups=2,
            motion_num_attention_heads=4,
        ).eval()
        vae = _tiny_vae(seed)
        text_encoder = _tiny_text_encoder(seed)
    return AnimateDiffPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tiny_clip_tokenizer(),
        unet=unet,
        motion_adapter=motion_adapter,
        scheduler=_ddim_scheduler(),
        feature_extractor=None,
        image_encoder=None,
    )


def tiny_text_to_video_pipeline(seed: int = 0) -> TextToVideoSDPipeline:
    """A tiny untrained ModelScope/zeroscope-style (UNet3DConditionModel) text-to-video pipeline.

    Temporal transformers without positional embedding, the tiny CLIP text stack and DDIM. Call it
    with e.g. ``prompt="a cat", height=32, width=32, num_frames=4``.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # UNet3DConditionModel reads attention_head_dim as the number of heads (a diffusers naming
        # quirk): 4 heads of 8 and 16 channels.
        unet = UNet3DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=1,
            sample_size=32,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
            cross_attention_dim=32,
            attention_head_dim=4,
            norm_num_groups=4,
        ).eval()
        vae = _tiny_vae(seed)
        text_encoder = _tiny_text_encoder(seed)
    return TextToVideoSDPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tiny_clip_tokenizer(),
        unet=unet,
        scheduler=_ddim_scheduler(),
    )
