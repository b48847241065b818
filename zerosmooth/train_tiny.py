"""Train a tiny Stable-Video-Diffusion-style image-to-video model on the procedural world.

    python -m zerosmooth.train_tiny --out /tmp/tiny_world_run            # the shipped model's settings (2 CPU cores, ~85 min)
    python -m zerosmooth.train_tiny --out /tmp/tiny_world_run --steps 1500   # a weaker model in ~1 hour
    python -m zerosmooth.train_tiny --out /tmp/run --export zerosmooth/data/tiny_world_svd

Two phases, both deterministic from ``--seed``:

1. VAE: an ``AutoencoderKLTemporalDecoder`` (spatial factor 2) trained on single world frames with
   an L1 + MSE reconstruction loss and a small KL term. Its latent scale (``scaling_factor``) is
   then set to ``1 / std`` of the latents, as Stable Diffusion's was chosen. Then (1b) the decoder
   alone is refined with the encoder frozen (``train_decoder``).
2. UNet: a ``UNetSpatioTemporalConditionModel`` trained exactly as SVD's sampler will use it:
   EDM preconditioning with σ_data = 1 and v-prediction, which is what diffusers'
   ``EulerDiscreteScheduler(prediction_type="v_prediction", timestep_type="continuous")`` inverts:
   input ``x_σ / √(σ²+1)``, timestep ``0.25·ln σ``, denoised ``D = x_σ/(σ²+1) − σ/√(σ²+1)·F``. The
   loss is the EDM one, ``|F − (x₀ − c_skip·x_σ)/c_out|²`` (EDM weighting λ = 1/c_out² makes the
   F-space loss unweighted), with ln σ ~ N(P_mean, P_std²). Conditioning matches
   ``StableVideoDiffusionPipeline``: the first frame's VAE latent (``latent_dist.mode()``, unscaled,
   after Gaussian noise augmentation) concatenated to every frame, the first frame's CLIP image
   embedding for cross-attention, and ``added_time_ids = [fps − 1, motion_bucket_id, noise_aug]``.
   Both conditions are dropped together 10 % of the time so classifier-free guidance works (the
   pipeline's unconditional branch uses zeros for both).

The image encoder is a small random CLIP vision tower, fixed (never trained): the key information
reaches the UNet through the concatenated image latent. Training clips are ``--frames`` key frames
at stride 4 (7 fps) with probability ``1 − --stride2-prob``, else at stride 2 (14 fps), so the fps
condition means something when ZeroSmooth doubles it for stage 2 (SPEC §7).

Checkpoints (``--out``/vae.pt after phase 1, vae_decoder.pt after 1b, ``--out``/unet.pt every ``--save-every`` steps) hold
model, EMA, optimiser and RNG state; rerunning the same command resumes from them. Training clip
seeds are ``seed·10⁷ + index`` (< 10⁹); evaluation uses seeds from ``HELD_OUT_SEED_BASE`` upward.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from zerosmooth.data.world import RENDER_FPS, WorldConfig, render_clip
from zerosmooth.tiny import CLIP_SIZE, tiny_svd_components

HELD_OUT_SEED_BASE = 1_000_000_000
"""World seeds from here up are never used for training (training uses seed·10⁷ + index < 10⁹)."""

MOTION_BUCKET_ID = 127  # SVD pipeline default; constant here (the world has no motion-amount label)


def clip_batch(seeds: list[int], frames: int, strides: list[int], world: WorldConfig) -> torch.Tensor:
    """Key-frame clips [B, frames, 3, H, W] in [0, 1], clip ``b`` at ``strides[b]``."""
    clips = [render_clip(s, frames * st, world).strided(st, frames).frames for s, st in zip(seeds, strides)]
    return torch.stack(clips)


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


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1 - decay)


def _rng_state(gen: torch.Generator) -> dict:
    return {"generator": gen.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(gen: torch.Generator, state: dict) -> None:
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch"])


def train_vae(vae, args, world: WorldConfig, out: Path, log) -> None:
    """Phase 1. Saves ``out/vae.pt`` (weights, scaling factor) when done; skipped if it exists."""
    path = out / "vae.pt"
    if path.exists():
        state = torch.load(path, weights_only=True)
        vae.load_state_dict(state["vae"])
        vae.register_to_config(scaling_factor=state["scaling_factor"])
        log(f"vae: loaded {path}")
        return
    gen = torch.Generator().manual_seed(args.seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    vae.train()
    clips_per_step = max(1, args.vae_batch // 4)
    bar = tqdm(range(args.vae_steps), desc="vae", dynamic_ncols=True)
    for step in bar:
        seeds = [args.seed * 10_000_000 + 5_000_000 + step * clips_per_step + i for i in range(clips_per_step)]
        # Four frames per clip, at stride 4: the batch is images, the decoder sees them as one video
        # per clip so its temporal layers train on real motion.
        x = clip_batch(seeds, 4, [4] * clips_per_step, world).flatten(0, 1) * 2 - 1
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=gen)
        recon = vae.decode(z, num_frames=4).sample
        kl = posterior.kl().mean() / x[0].numel()
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + args.vae_kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % 50 == 0 or step == args.vae_steps - 1:
            log(f"vae step {step} loss {loss.item():.5f}")
    vae.eval()
    # Latent scale: 1/std of the latent means over held-aside training clips.
    with torch.no_grad():
        x = clip_batch([args.seed * 10_000_000 + 9_000_000 + i for i in range(16)], 4, [4] * 16, world)
        std = vae.encode(x.flatten(0, 1) * 2 - 1).latent_dist.mode().std().item()
    vae.register_to_config(scaling_factor=1.0 / std)
    torch.save({"vae": vae.state_dict(), "scaling_factor": 1.0 / std}, path)
    log(f"vae: done, latent std {std:.4f}, scaling_factor {1 / std:.4f}")


def train_decoder(vae, args, world: WorldConfig, out: Path, log) -> None:
    """Phase 1b: refine the VAE decoder with the encoder frozen. Saves ``out/vae_decoder.pt``;
    skipped (loaded) if it exists.

    The UNet only ever sees encoder latents, so this phase is independent of phase 2 and may run
    before, after or beside it with the same result; a briefly trained VAE's decoder is what limits
    colour fidelity, and decoding is what the metrics look at.
    """
    path = out / "vae_decoder.pt"
    if path.exists():
        vae.decoder.load_state_dict(torch.load(path, weights_only=True))
        log(f"vae decoder: loaded {path}")
        return
    if args.decoder_steps == 0:
        return
    opt = torch.optim.AdamW(vae.decoder.parameters(), lr=args.vae_lr, weight_decay=0.0)
    vae.decoder.train()
    bar = tqdm(range(args.decoder_steps), desc="decoder", dynamic_ncols=True)
    for step in bar:
        seeds = [args.seed * 10_000_000 + 7_000_000 + step * 2 + i for i in range(2)]
        x = clip_batch(seeds, 4, [4, 4], world).flatten(0, 1) * 2 - 1
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mode()
        recon = vae.decode(z, num_frames=4).sample
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % 50 == 0 or step == args.decoder_steps - 1:
            log(f"decoder step {step} loss {loss.item():.5f}")
    vae.decoder.eval()
    torch.save(vae.decoder.state_dict(), path)
    log("vae decoder: done")


def unet_loss(unet, vae, image_encoder, feature_extractor, videos, strides, args, gen) -> torch.Tensor:
    """EDM/v-prediction loss of one batch of key-frame videos [B, T, 3, H, W] in [0, 1]."""
    b, t = videos.shape[:2]
    with torch.no_grad():
        x0 = vae.encode(videos.flatten(0, 1) * 2 - 1).latent_dist.mode() * vae.config.scaling_factor
        x0 = x0.unflatten(0, (b, t))
        first = videos[:, 0]
        embeds = clip_embeddings(image_encoder, feature_extractor, first)
        noise_aug = torch.rand(b, generator=gen) * args.max_noise_aug
        noisy_first = first * 2 - 1 + noise_aug.view(b, 1, 1, 1) * torch.randn(first.shape, generator=gen)
        cond_latent = vae.encode(noisy_first).latent_dist.mode()  # unscaled, as the pipeline does
        keep = (torch.rand(b, generator=gen) >= args.cond_drop).float()
        embeds = embeds * keep.view(b, 1, 1)
        cond_latent = cond_latent * keep.view(b, 1, 1, 1)
    fps_id = torch.tensor([RENDER_FPS / s - 1 for s in strides])
    time_ids = torch.stack([fps_id, torch.full((b,), float(MOTION_BUCKET_ID)), noise_aug], dim=1)

    sigma = torch.exp(args.p_mean + args.p_std * torch.randn(b, generator=gen)).view(b, 1, 1, 1, 1)
    x_noisy = x0 + sigma * torch.randn(x0.shape, generator=gen)
    c_in = 1 / (sigma**2 + 1).sqrt()
    c_skip = 1 / (sigma**2 + 1)
    c_out = -sigma / (sigma**2 + 1).sqrt()
    model_in = torch.cat([x_noisy * c_in, cond_latent.unsqueeze(1).expand(-1, t, -1, -1, -1)], dim=2)
    pred = unet(model_in, 0.25 * sigma.flatten().log(), encoder_hidden_states=embeds, added_time_ids=time_ids).sample
    target = (x0 - c_skip * x_noisy) / c_out
    return F.mse_loss(pred, target)


def train_unet(unet, vae, image_encoder, feature_extractor, args, world: WorldConfig, out: Path, log):
    """Phase 2. Returns the EMA UNet. Resumes from ``out/unet.pt``."""
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed + 1)
    start = 0
    history = []
    path = out / "unet.pt"
    if path.exists():
        state = torch.load(path, weights_only=False)
        unet.load_state_dict(state["unet"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        _set_rng_state(gen, state["rng"])
        start, history = state["step"], state["history"]
        log(f"unet: resumed at step {start}")
    unet.train()
    bar = tqdm(range(start, args.steps), desc="unet", dynamic_ncols=True, initial=start, total=args.steps)
    running = None
    for step in bar:
        lr = args.lr * min(1.0, (step + 1) / args.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        seeds = [args.seed * 10_000_000 + step * args.batch + i for i in range(args.batch)]
        strides = [2 if torch.rand((), generator=gen) < args.stride2_prob else 4 for _ in seeds]
        videos = clip_batch(seeds, args.frames, strides, world)
        loss = unet_loss(unet, vae, image_encoder, feature_extractor, videos, strides, args, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        _ema_update(ema, unet, min(args.ema, (1 + step) / (10 + step)))
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.set_postfix(loss=f"{running:.4f}")
        if step % 25 == 0:
            history.append((step, running))
            log(f"unet step {step} loss {loss.item():.5f} avg {running:.5f} lr {lr:.2e}")
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            tmp = out / "unet.pt.tmp"  # write then rename: a killed run never leaves a torn checkpoint
            torch.save(
                {"unet": unet.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                 "rng": _rng_state(gen), "step": step + 1, "history": history},
                tmp,
            )
            tmp.replace(path)
    return ema, history


def export_pipeline(vae, unet, image_encoder, feature_extractor, scheduler, path: Path, meta: dict) -> None:
    """Save a ``StableVideoDiffusionPipeline`` (safetensors) loadable offline with ``from_pretrained``."""
    from diffusers import StableVideoDiffusionPipeline

    pipe = StableVideoDiffusionPipeline(
        vae=vae.eval(), image_encoder=image_encoder, unet=unet.eval(), scheduler=scheduler,
        feature_extractor=feature_extractor,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    (Path(path) / "zerosmooth_training.json").write_text(json.dumps(meta, indent=2) + "\n")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m zerosmooth.train_tiny", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="run directory (checkpoints, log, pipeline/)")
    p.add_argument("--export", type=Path, default=None, help="also save the final pipeline here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=32, help="frame size in pixels (latents are size/2)")
    p.add_argument("--frames", type=int, default=8, help="t0, the trained number of frames")
    p.add_argument("--vae-steps", type=int, default=1500)
    p.add_argument("--vae-batch", type=int, default=8, help="frames per VAE step")
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--vae-kl", type=float, default=1e-4)
    p.add_argument("--decoder-steps", type=int, default=300, help="decoder refinement steps (0: none)")
    p.add_argument("--steps", type=int, default=2500, help="UNet optimisation steps")
    p.add_argument("--batch", type=int, default=4, help="clips per UNet step")
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--p-mean", type=float, default=0.0, help="ln σ mean of the training noise levels")
    p.add_argument("--p-std", type=float, default=1.4, help="ln σ std of the training noise levels")
    p.add_argument("--max-noise-aug", type=float, default=0.1)
    p.add_argument("--cond-drop", type=float, default=0.1)
    p.add_argument("--stride2-prob", type=float, default=0.3)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return p.parse_args(argv)


def train(args: argparse.Namespace) -> Path:
    """Run (or resume) both phases and export the pipeline; returns the pipeline directory."""
    if args.size % 2 or args.size < 16:
        raise ValueError(f"--size must be an even number >= 16, got {args.size}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    log_file = open(args.out / "train.log", "a")

    def log(msg: str) -> None:
        log_file.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
        log_file.flush()

    world = WorldConfig(size=args.size)
    parts = tiny_svd_components(args.seed, args.size, args.frames)
    vae, unet, image_encoder, feature_extractor = parts["vae"], parts["unet"], parts["image_encoder"], parts["feature_extractor"]
    t_start = time.time()
    train_vae(vae, args, world, args.out, log)
    train_decoder(vae, args, world, args.out, log)
    vae.requires_grad_(False)
    ema, history = train_unet(unet, vae, image_encoder, feature_extractor, args, world, args.out, log)
    meta = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "render_fps": RENDER_FPS,
        "fps_argument": RENDER_FPS // 4,
        "loss_history": history,
        "seconds_this_session": round(time.time() - t_start, 1),
    }
    targets = [args.out / "pipeline"] + ([args.export] if args.export else [])
    for target in targets:
        export_pipeline(vae, ema, image_encoder, feature_extractor, parts["scheduler"], target, meta)
    log(f"exported to {', '.join(map(str, targets))}")
    log_file.close()
    return targets[-1]


def main(argv=None) -> int:
    train(parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
