"""Train the embedded model the way real video models are built: an image model first, temporal
layers added on top.

    zerosmooth train-tiny --out RUN_DIR --export zerosmooth/demo/world_svd       # all phases
    zerosmooth train-tiny --out RUN_DIR --resume-from zerosmooth/demo/world_svd \\
        --export zerosmooth/demo/world_svd                                      # a later sitting

The model is a small Stable-Video-Diffusion-style image-to-video pipeline (64×64 px frames, 14
frames at 7 fps, ~36 MB of safetensors) trained on the procedural world (:mod:`zerosmooth.lab.world`).
Phases, each deterministic in ``--seed`` and resumable from its checkpoint in ``--out``:

1. ``vae`` — an ``AutoencoderKLTemporalDecoder`` with spatial factor 4 (64 px frames → 16×16×4
   latents) trained on single frames (L1 + MSE + a small KL term). Its decoder's temporal layers
   are held at identity (mixers pinned to "spatial only", ``time_conv_out`` the identity), so every
   frame decodes on its own: a key frame decodes to the same pixels whatever frames surround it.
   ``scaling_factor`` is then set to 1/std of the latents, as Stable Diffusion's was chosen.
2. ``vae_temporal`` (optional, ``--temporal-decoder-steps``) — SVD's temporal decoder: the
   decoder's temporal layers trained on clips with everything else frozen (zero-initialised, so
   training starts from the per-frame decoder). Kept for measuring one decoder against the other.
3. ``image`` — the UNet's spatial network trained on single frames: frame ``k`` of a clip is
   generated from the clip's first frame (the SVD conditioning). Every temporal mixer is pinned to
   "spatial only" and every temporal layer is frozen, so this is an image model run per frame.
4. ``video`` — temporal layers switched on with zero-initialised output projections (each block
   starts as the image model exactly: :func:`start_temporal_layers`), mixers at diffusers' initial
   value and learnable; trained on clips at the trained frame rate (stride 4, 7 fps) and on
   strided clips (stride 2 and 1: 14 and 28 fps, so the fps condition means something when
   ZeroSmooth multiplies it); spatial layers at ``--spatial-lr-factor`` × the learning rate
   (0 freezes them).

The UNet is trained as SVD's sampler uses it: EDM preconditioning with σ_data = 1 and
v-prediction, which diffusers' ``EulerDiscreteScheduler(prediction_type="v_prediction",
timestep_type="continuous")`` inverts: input ``x_σ / √(σ²+1)``, timestep ``0.25·ln σ``, denoised
``D = x_σ/(σ²+1) − σ/√(σ²+1)·F``. The loss is EDM's, ``|F − (x₀ − c_skip·x_σ)/c_out|²``, with
ln σ ~ N(P_mean, P_std²). Conditioning matches ``StableVideoDiffusionPipeline``: the first frame's
VAE latent (``latent_dist.mode()``, unscaled, after Gaussian noise augmentation) concatenated to
every frame, its CLIP image embedding for cross-attention, ``added_time_ids = [fps − 1,
motion_bucket_id, noise_aug]``; both conditions are dropped together ``--cond-drop`` of the time
so classifier-free guidance works. The CLIP tower is small, random and fixed: the image reaches
the UNet through the concatenated latent.

Checkpoints (``RUN_DIR/<phase>.pt``: model, EMA, optimiser, RNG, step, loss history) are written
every ``--save-every`` steps by write-then-rename; rerunning the same command resumes. Between
sittings the run directory may be lost: ``--resume-from DIR`` continues from an exported pipeline
and its training record (``zerosmooth_training.json``: every sitting's settings, steps, seconds
and losses), with a fresh optimiser. Training clip seeds are ``seed·10⁷ + offset + index`` < 10⁹;
evaluation seeds start at :data:`~zerosmooth.lab.world.HELD_OUT_SEED_BASE`.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from tqdm import tqdm

from zerosmooth.lab.tiny import CLIP_SIZE, clip_image_processor, svd_scheduler, tiny_clip_vision_encoder
from zerosmooth.lab.world import RENDER_FPS, WorldConfig, render_frames

PHASES = ("vae", "vae_temporal", "image", "video")
RECORD_NAME = "zerosmooth_training.json"
MOTION_BUCKET_ID = 127  # SVD pipeline default; constant here (the world has no motion-amount label)
# Clip seeds: seed·10⁷ + offset + index, disjoint per use (each use draws far fewer than 10⁶).
SEED_OFFSETS = {"video": 0, "image": 2_000_000, "vae": 5_000_000, "vae_temporal": 7_000_000,
                "validation": 9_000_000, "scale": 9_500_000}
# A mixer logit whose sigmoid is exactly 1.0 (or 0.0) in float32: a pinned mixer passes one branch
# through and multiplies the other by exactly zero.
PINNED_LOGIT = 40.0
MIXER_INIT = 0.5  # diffusers' initial mix_factor for the UNet's blenders (SVD's own value)
INFERENCE_STEPS = 12  # the Euler steps the evaluation runs the model with (25, SVD's default, adds nothing here)
TEMPORAL_PARTS = ("temporal_res_block", "temporal_transformer_blocks", "time_pos_embed", "time_mixer",
                  "time_conv_out")


# --- architecture ---------------------------------------------------------------------------------


def world_svd_components(seed: int, size: int, frames: int, unet_channels=(64, 96, 128),
                         vae_channels=(32, 64, 64)) -> dict:
    """Fresh components of the embedded model, keyword arguments of ``StableVideoDiffusionPipeline``.

    A VAE with ``len(vae_channels)`` levels (spatial factor ``2^(levels − 1)``), a UNet with one
    block per entry of ``unet_channels`` (cross-attention in all but the lowest-resolution down
    block, one layer per block, head dim 16), the tiny CLIP tower and SVD's Euler scheduler.
    """
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel

    levels = len(unet_channels)
    factor = 2 ** (len(vae_channels) - 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKLTemporalDecoder(
            block_out_channels=tuple(vae_channels),
            down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
            layers_per_block=1,
            latent_channels=4,
            sample_size=size,
        )
        torch.manual_seed(seed + 1)
        unet = UNetSpatioTemporalConditionModel(
            block_out_channels=tuple(unet_channels),
            layers_per_block=1,
            sample_size=size // factor,
            in_channels=8,
            out_channels=4,
            down_block_types=("CrossAttnDownBlockSpatioTemporal",) * (levels - 1) + ("DownBlockSpatioTemporal",),
            up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * (levels - 1),
            cross_attention_dim=32,
            num_attention_heads=tuple(max(1, channels // 16) for channels in unet_channels),
            projection_class_embeddings_input_dim=96,
            addition_time_embed_dim=32,
            num_frames=frames,
        )
    return {
        "vae": vae,
        "unet": unet,
        "image_encoder": tiny_clip_vision_encoder(seed + 2),
        "feature_extractor": clip_image_processor(),
        "scheduler": svd_scheduler(),
    }


def is_temporal(name: str) -> bool:
    """Whether parameter or module ``name`` belongs to a temporal layer (or a spatial/temporal mixer)."""
    return any(part in TEMPORAL_PARTS for part in name.split("."))


def pin_spatial_only(model: torch.nn.Module) -> None:
    """Pin every ``AlphaBlender`` of ``model`` so its output is exactly the spatial branch."""
    from diffusers.models.resnet import AlphaBlender

    for module in model.modules():
        if isinstance(module, AlphaBlender):
            module.mix_factor.data.fill_(-PINNED_LOGIT if module.switch_spatial_to_temporal_mix else PINNED_LOGIT)


def _zero(layer: torch.nn.Module) -> None:
    torch.nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        torch.nn.init.zeros_(layer.bias)


def _last_linear(feed_forward) -> torch.nn.Linear:
    return [layer for layer in feed_forward.net if isinstance(layer, torch.nn.Linear)][-1]


def start_temporal_layers(unet: torch.nn.Module) -> None:
    """Zero every temporal output projection of a UNet and reset its mixers to ``MIXER_INIT``.

    Afterwards each temporal branch returns its input (temporal ResNet blocks add ``conv2(…) = 0``
    to their input; temporal transformer blocks add zero attention and feed-forward outputs to
    their input, whose position embedding ``time_pos_embed`` is now zero), so whatever the mixers
    say, the UNet computes what the image model computes, frame by frame.
    """
    from diffusers.models.attention import TemporalBasicTransformerBlock
    from diffusers.models.resnet import AlphaBlender, TemporalResnetBlock
    from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel

    for module in unet.modules():
        if isinstance(module, TemporalResnetBlock):
            _zero(module.conv2)
        elif isinstance(module, TemporalBasicTransformerBlock):
            for attention in (module.attn1, module.attn2):
                if attention is not None:
                    _zero(attention.to_out[0])
            _zero(_last_linear(module.ff))
            if module.ff_in is not None:
                _zero(_last_linear(module.ff_in))
        elif isinstance(module, TransformerSpatioTemporalModel):
            _zero(module.time_pos_embed.linear_2)
        elif isinstance(module, AlphaBlender):
            module.mix_factor.data.fill_(MIXER_INIT)


def contiguous_temporal_norms(model: torch.nn.Module) -> None:
    """Make the inputs of the temporal ResNet blocks' GroupNorms contiguous.

    Those blocks normalise a permuted ``[B, C, F, H, W]`` view; for some shapes torch 2.13's CPU
    GroupNorm takes its channels-last backward kernel on it and crashes (segmentation fault, seen
    at 4×4 px feature maps). A copy before the norm costs little and avoids that kernel.
    """
    from diffusers.models.resnet import TemporalResnetBlock

    for module in model.modules():
        if isinstance(module, TemporalResnetBlock):
            for norm in (module.norm1, module.norm2):
                norm.register_forward_pre_hook(lambda _, inputs: (inputs[0].contiguous(),))


def per_frame_decoder(vae: torch.nn.Module) -> None:
    """Make the temporal decoder decode every frame on its own: mixers pinned to "spatial only",
    ``time_conv_out`` the identity (centre tap 1, other taps and bias 0)."""
    pin_spatial_only(vae.decoder)
    conv = vae.decoder.time_conv_out
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        for channel in range(conv.out_channels):
            conv.weight[channel, channel, conv.kernel_size[0] // 2] = 1.0


def start_temporal_decoder(vae: torch.nn.Module) -> None:
    """Switch the decoder's temporal layers on from the per-frame decoder: temporal ResNet blocks
    zero-initialised, mixers at diffusers' initial value (0: half spatial, half temporal),
    ``time_conv_out`` still the identity."""
    from diffusers.models.resnet import AlphaBlender, TemporalResnetBlock

    for module in vae.decoder.modules():
        if isinstance(module, TemporalResnetBlock):
            _zero(module.conv2)
        elif isinstance(module, AlphaBlender):
            module.mix_factor.data.fill_(0.0)


# --- data -----------------------------------------------------------------------------------------


def clip_seed(args, use: str, index: int) -> int:
    return args.seed * 10_000_000 + SEED_OFFSETS[use] + index


def key_frame_clips(seeds: list[int], frames: int, strides: list[int], world: WorldConfig) -> torch.Tensor:
    """Clips ``[B, frames, 3, H, W]`` in [0, 1]: clip ``b`` is rendered frames ``0, s_b, 2 s_b, …``."""
    return torch.stack([render_frames(seed, range(0, frames * stride, stride), world).frames
                        for seed, stride in zip(seeds, strides)])


def draw_strides(count: int, args, gen: torch.Generator) -> list[int]:
    """Per clip: stride 4 (the trained 7 fps) or a denser one, with ``--stride-probs``."""
    probabilities = torch.tensor(args.stride_probs)
    return [(4, 2, 1)[int(i)] for i in torch.multinomial(probabilities, count, replacement=True, generator=gen)]


@dataclass
class Batch:
    """Training targets ``videos [B, T, 3, H, W]`` in [0, 1], their conditioning frames
    ``first [B, 3, H, W]`` and each clip's stride at ``RENDER_FPS``."""

    videos: torch.Tensor
    first: torch.Tensor
    strides: list[int]


@dataclass
class Noise:
    """The random parts of one loss evaluation (drawn by :func:`draw_noise`, fixed for validation)."""

    sigma: torch.Tensor  # [B]
    latent_noise: torch.Tensor  # like the target latents
    noise_aug: torch.Tensor  # [B] conditioning-frame noise level
    aug_noise: torch.Tensor  # like the conditioning frames
    keep: torch.Tensor  # [B] 1: conditions kept, 0: dropped


def draw_noise(batch: Batch, latent_shape, args, gen: torch.Generator, drop: bool = True) -> Noise:
    b = batch.videos.shape[0]
    return Noise(
        sigma=torch.exp(args.p_mean + args.p_std * torch.randn(b, generator=gen)),
        latent_noise=torch.randn(latent_shape, generator=gen),
        noise_aug=torch.rand(b, generator=gen) * args.max_noise_aug,
        aug_noise=torch.randn(batch.first.shape, generator=gen),
        keep=(torch.rand(b, generator=gen) >= (args.cond_drop if drop else 0.0)).float(),
    )


# --- the UNet loss --------------------------------------------------------------------------------


@torch.no_grad()
def clip_embeddings(image_encoder, feature_extractor, images: torch.Tensor) -> torch.Tensor:
    """[B, 1, D] image embeddings of images [B, 3, H, W] in [0, 1], computed as
    ``StableVideoDiffusionPipeline._encode_image`` does for PIL input (antialiased resize to 224 px
    in [-1, 1], then CLIP normalisation)."""
    from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing

    x = _resize_with_antialiasing(images * 2 - 1, (CLIP_SIZE, CLIP_SIZE))
    x = (x + 1) / 2
    mean = torch.tensor(feature_extractor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(feature_extractor.image_std).view(1, 3, 1, 1)
    return image_encoder((x - mean) / std).image_embeds.unsqueeze(1)


@torch.no_grad()
def encode_latents(vae, videos: torch.Tensor) -> torch.Tensor:
    """Scaled latents ``[B, T, 4, h, w]`` of videos ``[B, T, 3, H, W]`` in [0, 1]."""
    b, t = videos.shape[:2]
    latents = vae.encode(videos.flatten(0, 1) * 2 - 1).latent_dist.mode() * vae.config.scaling_factor
    return latents.unflatten(0, (b, t))


def unet_loss(unet, parts: dict, batch: Batch, noise: Noise, x0: torch.Tensor) -> torch.Tensor:
    """EDM/v-prediction loss of the UNet on ``batch`` (target latents ``x0 [B, T, 4, h, w]``)."""
    vae = parts["vae"]
    b, t = x0.shape[:2]
    with torch.no_grad():
        embeds = clip_embeddings(parts["image_encoder"], parts["feature_extractor"], batch.first)
        noisy_first = batch.first * 2 - 1 + noise.noise_aug.view(b, 1, 1, 1) * noise.aug_noise
        cond_latent = vae.encode(noisy_first).latent_dist.mode()  # unscaled, as the pipeline does
        embeds = embeds * noise.keep.view(b, 1, 1)
        cond_latent = cond_latent * noise.keep.view(b, 1, 1, 1)
    fps_id = torch.tensor([RENDER_FPS / stride - 1 for stride in batch.strides])
    time_ids = torch.stack([fps_id, torch.full((b,), float(MOTION_BUCKET_ID)), noise.noise_aug], dim=1)
    sigma = noise.sigma.view(b, 1, 1, 1, 1)
    x_noisy = x0 + sigma * noise.latent_noise
    c_in = 1 / (sigma**2 + 1).sqrt()
    c_skip = 1 / (sigma**2 + 1)
    c_out = -sigma / (sigma**2 + 1).sqrt()
    model_in = torch.cat([x_noisy * c_in, cond_latent.unsqueeze(1).expand(-1, t, -1, -1, -1)], dim=2)
    pred = unet(model_in, 0.25 * noise.sigma.log(), encoder_hidden_states=embeds, added_time_ids=time_ids).sample
    return F.mse_loss(pred, (x0 - c_skip * x_noisy) / c_out)


def image_batch(args, step: int, world: WorldConfig, gen: torch.Generator) -> Batch:
    """``--image-batch`` single frames: frame ``k`` (uniform over the clip) of a clip, conditioned
    on the clip's first frame; returned as one-frame videos."""
    count = args.image_batch
    strides = draw_strides(count, args, gen)
    offsets = torch.randint(0, args.frames, (count,), generator=gen).tolist()
    firsts, targets = [], []
    for i, (stride, k) in enumerate(zip(strides, offsets)):
        clip = render_frames(clip_seed(args, "image", step * count + i), [0, k * stride], world).frames
        firsts.append(clip[0])
        targets.append(clip[1])
    return Batch(videos=torch.stack(targets)[:, None], first=torch.stack(firsts), strides=strides)


def video_batch(args, step: int, world: WorldConfig, gen: torch.Generator) -> Batch:
    """``--batch`` clips of ``--frames`` key frames at the drawn strides."""
    strides = draw_strides(args.batch, args, gen)
    seeds = [clip_seed(args, "video", step * args.batch + i) for i in range(args.batch)]
    videos = key_frame_clips(seeds, args.frames, strides, world)
    return Batch(videos=videos, first=videos[:, 0], strides=strides)


def validation_set(args, world: WorldConfig, vae, single_frames: bool):
    """Fixed held-aside clips (stride 4) with fixed noise at four σ quantiles of the training
    distribution, for a loss comparable between runs and phases. Returns ``(batch, latents, noises)``."""
    seeds = [clip_seed(args, "validation", i) for i in range(args.validation_clips)]
    videos = key_frame_clips(seeds, args.frames, [4] * len(seeds), world)
    first = videos[:, 0]
    if single_frames:
        videos = videos[:, args.frames // 2 : args.frames // 2 + 1]
    batch = Batch(videos=videos, first=first, strides=[4] * len(seeds))
    x0 = encode_latents(vae, videos)
    gen = torch.Generator().manual_seed(args.seed + 17)
    noises = []
    for z in (-1.5, -0.5, 0.5, 1.5):
        noise = draw_noise(batch, x0.shape, args, gen, drop=False)
        noise.sigma = torch.full_like(noise.sigma, math.exp(args.p_mean + args.p_std * z))
        noise.noise_aug = torch.full_like(noise.noise_aug, 0.02)
        noises.append(noise)
    return batch, x0, noises


@torch.no_grad()
def validation_loss(unet, parts: dict, validation) -> float:
    batch, x0, noises = validation
    was_training = unet.training
    unet.eval()
    loss = sum(unet_loss(unet, parts, batch, noise, x0).item() for noise in noises) / len(noises)
    unet.train(was_training)
    return loss


# --- the training loop ----------------------------------------------------------------------------


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1 - decay)


def _save(payload: dict, path: Path) -> None:
    """Write then rename: a killed run never leaves a torn checkpoint."""
    tmp = path.with_suffix(".pt.tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


@dataclass
class Phase:
    """One optimisation phase over ``model`` (``ema`` tracked if given)."""

    name: str
    model: torch.nn.Module
    param_groups: list
    steps: int
    lr: float
    loss: Callable[[int, torch.Generator], torch.Tensor]
    ema: Optional[torch.nn.Module] = None
    validate: Optional[Callable[[torch.nn.Module], float]] = None


def run_phase(phase: Phase, args, run, start: dict | None) -> dict:
    """Optimise ``phase`` from ``start`` (a checkpoint dict, or None) to ``phase.steps`` steps.

    Returns the final checkpoint dict (model, EMA, step, loss and validation history). Checkpoints
    go to ``RUN_DIR/<phase>.pt`` every ``--save-every`` steps and at the end, each followed by the
    training record.
    """
    path = args.out / f"{phase.name}.pt"
    opt = torch.optim.AdamW(phase.param_groups, lr=phase.lr, weight_decay=0.0)
    for group in opt.param_groups:
        group["base_lr"] = group["lr"]
    gen = torch.Generator().manual_seed(args.seed * 1000 + PHASES.index(phase.name))
    state = {"step": 0, "history": [], "validation": []}
    if start is not None:
        if not start.get("weights"):  # a run-directory checkpoint; exported weights are loaded already
            phase.model.load_state_dict(start["model"])
            if phase.ema is not None:
                phase.ema.load_state_dict(start["ema"])
        if start.get("opt") is not None:
            opt.load_state_dict(start["opt"])
            gen.set_state(start["rng"])
        else:  # resumed from exported weights: a fresh optimiser, a generator seeded by the step
            gen.manual_seed(args.seed * 1000 + PHASES.index(phase.name) + 7919 * start["step"])
        state.update(step=start["step"], history=start["history"], validation=start["validation"])
        run.log(f"{phase.name}: resumed at step {state['step']}")
    first_step = state["step"]
    warm_from = first_step if start is not None and start.get("opt") is None else 0
    phase.model.train()
    started = time.time()
    bar = tqdm(range(first_step, phase.steps), desc=phase.name, initial=first_step, total=phase.steps,
               dynamic_ncols=True, disable=not args.progress)
    running = state["history"][-1][1] if state["history"] else None

    def checkpoint(step: int) -> dict:
        state["step"] = step
        payload = {"model": phase.model.state_dict(), "ema": None if phase.ema is None else phase.ema.state_dict(),
                   "opt": opt.state_dict(), "rng": gen.get_state(), **state}
        _save(payload, path)
        # The record follows every checkpoint, so a sitting killed mid-phase still lists its steps.
        run.note_phase(phase.name, first_step, step, time.time() - started, state)
        return payload

    payload = None
    for step in bar:
        scale = min(1.0, (step + 1 - warm_from) / args.warmup)
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * scale
        loss = phase.loss(step, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in phase.param_groups for p in g["params"]], 1.0)
        opt.step()
        if phase.ema is not None:
            _ema_update(phase.ema, phase.model, min(args.ema, (1 + step) / (10 + step)))
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.set_postfix(loss=f"{running:.4f}")
        if step % 25 == 0:
            state["history"].append((step, round(running, 6)))
            run.log(f"{phase.name} step {step} loss {loss.item():.5f} avg {running:.5f}")
        done = step + 1
        if phase.validate is not None and (done % args.validate_every == 0 or done == phase.steps):
            value = phase.validate(phase.ema if phase.ema is not None else phase.model)
            state["validation"].append((done, round(value, 6)))
            run.log(f"{phase.name} step {done} validation loss {value:.5f}")
        if done % args.save_every == 0 or done == phase.steps:
            payload = checkpoint(done)
        if args.export_every and done % args.export_every == 0 and done < phase.steps:
            run.export(f"{phase.name} step {done}")
    phase.model.eval()
    if payload is None:
        payload = checkpoint(max(first_step, phase.steps))
    return payload


class Run:
    """The run directory, its log, the components and the training record of this sitting."""

    def __init__(self, args):
        self.args = args
        args.out.mkdir(parents=True, exist_ok=True)
        self._log = open(args.out / "train.log", "a")
        self.world = WorldConfig(size=args.size)
        self.record_path = args.out / RECORD_NAME
        if args.resume_from is not None:
            self.parts, self.record = load_exported(args.resume_from)
        else:
            self.parts = world_svd_components(args.seed, args.size, args.frames, args.unet_channels, args.vae_channels)
            self.record = {"progress": {}, "sittings": [], "loss_history": {}, "validation_history": {}}
            if self.record_path.is_file():  # an earlier sitting in this run directory
                self.record = json.loads(self.record_path.read_text())
        self.sitting = {
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "phases": {},
        }
        self.record["sittings"].append(self.sitting)

    def log(self, message: str) -> None:
        self._log.write(f"{time.strftime('%H:%M:%S')} {message}\n")
        self._log.flush()

    def note_phase(self, name: str, first: int, last: int, seconds: float, state: dict) -> None:
        self.record["progress"][name] = last
        self.record["loss_history"][name] = state["history"]
        self.record["validation_history"][name] = state["validation"]
        if last > first:
            self.sitting["phases"][name] = {
                "steps": [first, last], "seconds": round(seconds, 1),
                "final_loss": state["history"][-1][1] if state["history"] else None,
                "final_validation": state["validation"][-1][1] if state["validation"] else None,
            }
        self.record_path.write_text(json.dumps(self.record, indent=1) + "\n")

    def export(self, reason: str) -> None:
        """Save the pipeline (EMA UNet) to ``RUN_DIR/pipeline`` and ``--export``, record included."""
        targets = [self.args.out / "pipeline"] + ([self.args.export] if self.args.export else [])
        self.record["architecture"] = {
            "unet_channels": list(self.parts["unet"].config.block_out_channels),
            "vae_channels": list(self.parts["vae"].config.block_out_channels),
            "size": self.args.size, "frames": self.parts["unet"].config.num_frames, "render_fps": RENDER_FPS,
        }
        # Read by the command line (zerosmooth.batch.ModelSpec): the fps condition of the base video
        # (key frames every 4th rendered frame) and the denoising steps to run it with.
        self.record["fps_argument"] = RENDER_FPS // 4
        self.record["inference_steps"] = INFERENCE_STEPS
        self.record["exported_after"] = reason
        for target in targets:
            export_pipeline(self.parts, target, self.record)
        self.log(f"exported ({reason}) to {', '.join(map(str, targets))}")


def export_pipeline(parts: dict, path: Path, record: dict) -> None:
    """Save a ``StableVideoDiffusionPipeline`` (safetensors) loadable offline with ``from_pretrained``."""
    from diffusers import StableVideoDiffusionPipeline

    exported = {**parts, "unet": parts.get("ema_unet", parts["unet"])}
    exported.pop("ema_unet", None)
    pipe = StableVideoDiffusionPipeline(**{k: v.eval() if hasattr(v, "eval") else v for k, v in exported.items()})
    pipe.save_pretrained(path, safe_serialization=True)
    (Path(path) / RECORD_NAME).write_text(json.dumps(record, indent=1) + "\n")


def load_exported(path: Path) -> tuple[dict, dict]:
    """Components and training record of an exported pipeline (to resume from it)."""
    from diffusers import StableVideoDiffusionPipeline

    record_path = Path(path) / RECORD_NAME
    if not record_path.is_file():
        raise FileNotFoundError(f"--resume-from {path}: no {RECORD_NAME} there (not an exported training run)")
    pipe = StableVideoDiffusionPipeline.from_pretrained(path, local_files_only=True, low_cpu_mem_usage=False)
    parts = {name: getattr(pipe, name) for name in ("vae", "unet", "image_encoder", "feature_extractor", "scheduler")}
    return parts, json.loads(record_path.read_text())


def phase_start(args, run: Run, name: str) -> dict | None:
    """Where phase ``name`` starts: its run-directory checkpoint, else the exported weights at the
    step the record gives (``--resume-from``: ``"weights": True`` means the components already hold
    them), else None (a fresh start)."""
    path = args.out / f"{name}.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    step = run.record["progress"].get(name)
    if step is None:
        return None
    return {"weights": True, "opt": None, "step": step, "history": run.record["loss_history"].get(name, []),
            "validation": run.record["validation_history"].get(name, [])}


def _started(args, run: Run, name: str) -> bool:
    return name in run.record["progress"] or (args.out / f"{name}.pt").exists()


# --- the phases -----------------------------------------------------------------------------------


def train_vae(args, run: Run) -> None:
    vae = run.parts["vae"]
    start = phase_start(args, run, "vae")
    if start is None:
        per_frame_decoder(vae)
    for name, parameter in vae.named_parameters():
        parameter.requires_grad_(not is_temporal(name))

    def loss(step: int, gen: torch.Generator) -> torch.Tensor:
        count = args.vae_batch
        frames = torch.cat([
            render_frames(clip_seed(args, "vae", step * count + i), [int(index)], run.world).frames
            for i, index in enumerate(torch.randint(0, 4 * args.frames, (count,), generator=gen))
        ])
        x = frames * 2 - 1
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen), num_frames=1).sample
        kl = posterior.kl().mean() / x[0].numel()
        return F.l1_loss(recon, x) + F.mse_loss(recon, x) + args.vae_kl * kl

    params = [p for p in vae.parameters() if p.requires_grad]
    run_phase(Phase("vae", vae, [{"params": params}], args.vae_steps, args.vae_lr, loss), args, run, start)
    vae.requires_grad_(False)
    if "scaling_factor" not in run.record:
        with torch.no_grad():
            seeds = [clip_seed(args, "scale", i) for i in range(16)]
            x = key_frame_clips(seeds, 4, [4] * 16, run.world)
            std = vae.encode(x.flatten(0, 1) * 2 - 1).latent_dist.mode().std().item()
        run.record["scaling_factor"] = 1.0 / std
        run.log(f"vae: latent std {std:.4f}, scaling_factor {1 / std:.4f}")
    vae.register_to_config(scaling_factor=run.record["scaling_factor"])


def train_temporal_decoder(args, run: Run) -> None:
    """Optional phase: SVD's temporal decoder, from the per-frame one, encoder and spatial decoder frozen."""
    if args.temporal_decoder_steps == 0:
        return
    vae = run.parts["vae"]
    start = phase_start(args, run, "vae_temporal")
    if start is None:
        start_temporal_decoder(vae)
    params = [p for name, p in vae.decoder.named_parameters() if is_temporal(name)]
    for parameter in params:
        parameter.requires_grad_(True)

    def loss(step: int, gen: torch.Generator) -> torch.Tensor:
        seeds = [clip_seed(args, "vae_temporal", step * 2 + i) for i in range(2)]
        x = key_frame_clips(seeds, 8, draw_strides(2, args, gen), run.world).flatten(0, 1) * 2 - 1
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mode()
        recon = vae.decode(z, num_frames=8).sample
        return F.l1_loss(recon, x) + F.mse_loss(recon, x)

    run_phase(Phase("vae_temporal", vae, [{"params": params}], args.temporal_decoder_steps, args.vae_lr, loss),
              args, run, start)
    vae.requires_grad_(False)


def _unet_phase(args, run: Run, name: str, steps: int, make_batch, param_groups, start, validation) -> None:
    unet = run.parts["unet"]
    ema = run.parts.setdefault("ema_unet", copy.deepcopy(unet).requires_grad_(False))
    ema.load_state_dict(unet.state_dict())
    vae = run.parts["vae"]

    def loss(step: int, gen: torch.Generator) -> torch.Tensor:
        batch = make_batch(args, step, run.world, gen)
        x0 = encode_latents(vae, batch.videos)
        return unet_loss(unet, run.parts, batch, draw_noise(batch, x0.shape, args, gen), x0)

    phase = Phase(name, unet, param_groups, steps, args.lr, loss, ema=ema,
                  validate=lambda model: validation_loss(model, run.parts, validation))
    result = run_phase(phase, args, run, start)
    # The next phase (or the export) starts from the EMA weights.
    unet.load_state_dict(result["ema"])


def train_image(args, run: Run) -> None:
    unet = run.parts["unet"]
    if _started(args, run, "video"):
        run.log("image: superseded by the video phase of an earlier sitting")
        return
    start = phase_start(args, run, "image")
    if start is None:
        pin_spatial_only(unet)
    spatial = []
    for name, parameter in unet.named_parameters():
        parameter.requires_grad_(not is_temporal(name))
        if not is_temporal(name):
            spatial.append(parameter)
    validation = validation_set(args, run.world, run.parts["vae"], single_frames=True)
    _unet_phase(args, run, "image", args.image_steps, image_batch, [{"params": spatial}], start, validation)


def train_video(args, run: Run) -> None:
    unet = run.parts["unet"]
    if args.video_steps == 0:
        return
    start = phase_start(args, run, "video")
    if start is None:
        start_temporal_layers(unet)
        run.log("video: temporal layers started (zero output projections)")
    temporal, spatial = [], []
    for name, parameter in unet.named_parameters():
        (temporal if is_temporal(name) else spatial).append(parameter)
        parameter.requires_grad_(is_temporal(name) or args.spatial_lr_factor > 0)
    groups = [{"params": temporal}]
    if args.spatial_lr_factor > 0:
        groups.append({"params": spatial, "lr": args.lr * args.spatial_lr_factor})
    validation = validation_set(args, run.world, run.parts["vae"], single_frames=False)
    _unet_phase(args, run, "video", args.video_steps, video_batch, groups, start, validation)


def train(args: argparse.Namespace) -> Path:
    """Run (or resume) every phase and export the pipeline; returns the pipeline directory."""
    check_args(args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    run = Run(args)
    run.parts["image_encoder"].requires_grad_(False)
    contiguous_temporal_norms(run.parts["vae"])
    contiguous_temporal_norms(run.parts["unet"])
    train_vae(args, run)
    train_temporal_decoder(args, run)
    if args.vae_only:
        run.parts["unet"].requires_grad_(False)
    else:
        train_image(args, run)
        train_video(args, run)
    run.export("end of sitting")
    return args.export or args.out / "pipeline"


def check_args(args) -> None:
    if args.size % 16 or args.size < 16:
        raise ValueError(f"--size must be a multiple of 16 (VAE factor 4 × UNet factor 4), got {args.size}")
    if not 0 <= args.seed < 100:
        raise ValueError(f"--seed must be in [0, 99] (training seeds stay below 10⁹), got {args.seed}")
    if len(args.stride_probs) != 3 or min(args.stride_probs) < 0 or sum(args.stride_probs) <= 0:
        raise ValueError(f"--stride-probs must be three non-negative weights, got {args.stride_probs}")
    if args.resume_from is not None and not Path(args.resume_from).is_dir():
        raise ValueError(f"--resume-from must be an exported pipeline directory, got {args.resume_from}")


def _channels(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="zerosmooth train-tiny", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="run directory (checkpoints, log, pipeline/)")
    p.add_argument("--export", type=Path, default=None, help="also save the pipeline here")
    p.add_argument("--resume-from", type=Path, default=None,
                   help="continue from an exported pipeline and its training record (a later sitting)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, data and noise (0-99)")
    p.add_argument("--size", type=int, default=64, help="frame size in pixels (latents are size/4)")
    p.add_argument("--frames", type=int, default=14, help="t0, the trained number of frames")
    p.add_argument("--unet-channels", type=_channels, default=(64, 96, 128), help="UNet block widths")
    p.add_argument("--vae-channels", type=_channels, default=(32, 64, 64), help="VAE block widths")
    p.add_argument("--vae-steps", type=int, default=2000)
    p.add_argument("--vae-batch", type=int, default=16, help="frames per VAE step")
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--vae-kl", type=float, default=1e-4)
    p.add_argument("--vae-only", action="store_true", help="train the VAE phases only")
    p.add_argument("--temporal-decoder-steps", type=int, default=0,
                   help="steps of the temporal-decoder phase (0: the per-frame decoder is shipped)")
    p.add_argument("--image-steps", type=int, default=2000, help="UNet steps on single frames")
    p.add_argument("--image-batch", type=int, default=32, help="frames per image step")
    p.add_argument("--video-steps", type=int, default=1300, help="UNet steps on clips")
    p.add_argument("--batch", type=int, default=3, help="clips per video step")
    p.add_argument("--spatial-lr-factor", type=float, default=0.1,
                   help="learning rate of the spatial layers in the video phase, relative to --lr (0: frozen)")
    p.add_argument("--stride-probs", type=float, nargs=3, default=(0.6, 0.25, 0.15),
                   help="probabilities of clips at stride 4, 2, 1 (7, 14, 28 fps)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ema", type=float, default=0.997)
    p.add_argument("--p-mean", type=float, default=0.0, help="ln σ mean of the training noise levels")
    p.add_argument("--p-std", type=float, default=1.4, help="ln σ std of the training noise levels")
    p.add_argument("--max-noise-aug", type=float, default=0.1)
    p.add_argument("--cond-drop", type=float, default=0.1)
    p.add_argument("--validation-clips", type=int, default=6)
    p.add_argument("--validate-every", type=int, default=250)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--export-every", type=int, default=500, help="export every N steps too (0: at the end only)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    train(parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
