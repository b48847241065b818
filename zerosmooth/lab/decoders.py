"""Measure what a VAE decoder does to key-frame consistency (issue 11, item 3).

    python -m zerosmooth.lab.decoders DIR [DIR ...] --seeds 16

For each pipeline directory, on held-out world clips (``t0`` key frames at 7 fps and the 2× clip of
the same seed): reconstruction PSNR of the base clip (encode, decode), the same for the 2× clip,
and the decoder's key-frame ceiling — the PSNR between the key frames of the decoded 2× clip and
the decoded base clip when both are encoded from the same real frames, i.e. with exact key latents.
A per-frame decoder gives 100 dB there by construction; a temporal decoder mixes each key frame
with its neighbours, which differ between the two videos. Also the mean absolute frame-to-frame
change of the decoded 2× clip against the real one (flicker shows up as extra change).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from zerosmooth.lab.metrics import psnr
from zerosmooth.lab.world import HELD_OUT_SEED_BASE, WorldConfig, render_clip


@torch.no_grad()
def _round_trip(vae, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents ``[T, 4, h, w]`` (the pipeline's unscaled ``mode()``) and the decoded frames in [0, 1]."""
    latents = vae.encode(frames * 2 - 1).latent_dist.mode()
    decoded = vae.decode(latents, num_frames=frames.shape[0]).sample
    return latents, ((decoded + 1) / 2).clamp(0, 1)


def measure(path: Path, seeds: int, frames: int) -> dict:
    """The decoder's numbers (module docstring) for the pipeline at ``path``, means over ``seeds``."""
    from diffusers import AutoencoderKLTemporalDecoder

    vae = AutoencoderKLTemporalDecoder.from_pretrained(
        Path(path) / "vae", local_files_only=True, low_cpu_mem_usage=False
    ).eval()
    size = vae.config.sample_size
    rows = {"base_psnr": [], "long_psnr": [], "key_ceiling_psnr": [], "flicker_ratio": []}
    for k in range(seeds):
        clip = render_clip(HELD_OUT_SEED_BASE + k, 4 * frames, WorldConfig(size=size))
        base, long = clip.strided(4, frames).frames, clip.strided(2, 2 * frames).frames
        _, base_decoded = _round_trip(vae, base)
        _, long_decoded = _round_trip(vae, long)
        rows["base_psnr"].append(psnr(base_decoded, base))
        rows["long_psnr"].append(psnr(long_decoded, long))
        rows["key_ceiling_psnr"].append(psnr(long_decoded[::2], base_decoded))
        change = (long_decoded[1:] - long_decoded[:-1]).abs().mean() / (long[1:] - long[:-1]).abs().mean()
        rows["flicker_ratio"].append(float(change))
    return {name: sum(values) / len(values) for name, values in rows.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zerosmooth.lab.decoders", description=__doc__.split("\n\n")[0])
    parser.add_argument("pipelines", nargs="+", type=Path, help="exported pipeline directories")
    parser.add_argument("--seeds", type=int, default=16, help="held-out world seeds")
    parser.add_argument("--frames", type=int, default=14, help="key frames per base clip")
    args = parser.parse_args(argv)
    print("| pipeline | base recon PSNR | 2× recon PSNR | key-frame ceiling PSNR | frame change / real |")
    print("|---|---|---|---|---|")
    for path in args.pipelines:
        m = measure(path, args.seeds, args.frames)
        print(f"| {path} | {m['base_psnr']:.2f} | {m['long_psnr']:.2f} | {m['key_ceiling_psnr']:.2f} | "
              f"{m['flicker_ratio']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
