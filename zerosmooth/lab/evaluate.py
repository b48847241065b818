"""Evaluate ZeroSmooth, its baselines and its ablations on held-out seeds of the procedural world.

    zerosmooth evaluate --out out/eval                       # the embedded model
    zerosmooth evaluate --model tiny --seeds 2 --steps 2     # untrained tiny pipeline (smoke)

For every held-out world seed, the first rendered frame is the conditioning image; each method makes
an ``s``× video (``s`` = 2: scale 2, 2 stages; ``s`` = 4: scale 2, 3 stages) from the same noise, so
all rows share one base video. Rows (the paper's Tables 1 and 3):

- ``repeat``: every base frame shown ``s`` times; ``blend``: linear blending of consecutive base
  frames (the last one held). Both copy the base video's key frames, so their key-frame PSNR/SSIM are
  perfect by construction; they are the floor for smoothness.
- ``direct``: the base model run at ``s·t0`` frames; ``latent_ddnm``: back-projection of the
  predicted clean latent onto the base video's latents after every step (SPEC §8).
- ``zerosmooth`` and its ablations: ``spatial_only`` (``correct_temporal=False``),
  ``temporal_only`` (``correct_spatial=False``), ``kv_sample`` (K/V corrected with ``sample``
  instead of the boxes), ``no_blend`` (constant strength 1: corrected attention only).

Diagnostic rows (only when named in ``--methods``) take one piece away at a time:
``no_correction`` (no back-projection anywhere; windows and interpolated positions kept),
``no_positions`` (``interpolate_positions=False``), ``full_window`` (temporal attention over all
frames), ``constant_strength`` (``w = w_max`` at every step), ``color`` (AdaIN colour correction on).

Columns (see ``zerosmooth.lab.metrics``): key-frame PSNR/SSIM against the base video; ``interp_err``
(px) of in-between frames from the straight motion between their key frames and ``accel``
(px/frame²) from colour-tracked object centroids, plus ``lost`` (fraction of untracked objects);
``fd_stats``: a Fréchet distance between 11 hand-crafted spatio-temporal statistics
(``zerosmooth.lab.metrics.clip_features``) of generated clips and of the world's real rendered clips at the same
frame rate — a proxy for FVD, not FVD (no I3D network offline). A ``real`` row gives the metrics of
the rendered ground truth. Saves per-seed and aggregated CSV, a markdown table, a plot and, per scale, a sheet of the first
seed's frames with one row per method (``strips_2x.png``, ``strips_4x.png``) into ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from zerosmooth.lab.metrics import clip_features, estimate_positions, frechet_distance, psnr, ssim, trajectory_metrics

from zerosmooth.lab.world import HELD_OUT_SEED_BASE, WorldConfig, render_clip

# Row name -> ZeroSmoothConfig overrides (None: computed from the base video, no model run).
METHODS: dict[str, dict | None] = {
    "repeat": None,
    "blend": None,
    "direct": {"method": "direct"},
    "latent_ddnm": {"method": "latent_ddnm"},
    "zerosmooth": {},
    "spatial_only": {"correct_temporal": False},
    "temporal_only": {"correct_spatial": False},
    "kv_sample": {"kv_operator": "sample"},
    "no_blend": {"strength": 1.0, "strength_schedule": "constant"},
}
# Diagnostic rows, run only when named in --methods: which part of ZeroSmooth does the work.
DIAGNOSTICS: dict[str, dict] = {
    "no_correction": {"correct_spatial": False, "correct_temporal": False, "correct_cross": False},
    "no_positions": {"interpolate_positions": False},
    "full_window": {"temporal_windows": False},
    "constant_strength": {"strength_schedule": "constant"},
    "color": {"color_correction": True},
}
RUNS: dict[str, dict | None] = {**METHODS, **DIAGNOSTICS}
COLUMNS = ("psnr_key", "ssim_key", "interp_err", "accel", "lost", "fd_stats")


def repeat_frames(base: torch.Tensor, factor: int) -> torch.Tensor:
    """[t0, ...] -> [factor·t0, ...], each frame shown ``factor`` times."""
    return base.repeat_interleave(factor, dim=0)


def blend_frames(base: torch.Tensor, factor: int) -> torch.Tensor:
    """[t0, ...] -> [factor·t0, ...]: frame ``factor·i + r`` is ``(1 − r/factor)·base[i] +
    (r/factor)·base[i+1]``; after the last key frame, which has no successor, it is held."""
    nxt = torch.cat([base[1:], base[-1:]])
    out = [torch.lerp(base, nxt, r / factor) for r in range(factor)]
    return torch.stack(out, dim=1).flatten(0, 1)


def load_pipeline(model: str):
    """``embedded`` (the shipped model), ``tiny`` (untrained tiny SVD pipeline) or a directory."""
    if model == "embedded":
        from zerosmooth.demo import load_embedded_pipeline

        return load_embedded_pipeline()
    if model == "tiny":
        from zerosmooth.lab.tiny import tiny_svd_pipeline

        pipe = tiny_svd_pipeline(0)
    else:
        from diffusers import StableVideoDiffusionPipeline

        pipe = StableVideoDiffusionPipeline.from_pretrained(model, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, overrides: dict, factor: int, image: Image.Image, args, seed: int):
    """Run one ZeroSmooth configuration; returns (long video, base video), each [T, 3, H, W]."""
    from zerosmooth import ZeroSmooth, ZeroSmoothConfig

    stages = 1 + int(round(math.log2(factor)))
    config = ZeroSmoothConfig(scale=2, stages=stages, **overrides)
    out = ZeroSmooth(pipe, config)(
        progress_bar=False,
        image=image,
        height=args.size,
        width=args.size,
        num_frames=args.frames,
        num_inference_steps=args.steps,
        fps=args.fps,
        generator=torch.Generator().manual_seed(seed),
        output_type="pt",
    )
    return out.frames[0].float().clamp(0, 1), out.stages[0][0].float().clamp(0, 1)


def evaluate(args: argparse.Namespace) -> list[dict]:
    """Run every method on every seed and scale; write the outputs; return the aggregated rows."""
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(args.model)
    if args.frames is None:
        args.frames = pipe.unet.config.num_frames
    world = WorldConfig(size=args.size)
    methods = [m for m in args.methods.split(",")]
    unknown = set(methods) - set(RUNS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {list(RUNS)}")
    if "zerosmooth" not in methods and any(RUNS[m] is None for m in methods):
        methods = ["zerosmooth"] + methods  # repeat/blend need the base video of a cascade run
    scales = [int(s) for s in args.scales.split(",")]
    for s in scales:
        if s < 2 or s & (s - 1) or 4 % s:
            raise ValueError(f"scales must be 2 or 4 (the 28 fps world renders 4 frames per key frame), got {s}")

    per_seed: list[dict] = []
    features: dict[tuple[int, str], list[torch.Tensor]] = {}
    strips: dict[tuple[int, str], torch.Tensor] = {}
    for k in range(args.seeds):
        seed = HELD_OUT_SEED_BASE + k
        clip = render_clip(seed, 4 * args.frames, world)
        image = Image.fromarray((clip.frames[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        for factor in scales:
            real = clip.strided(4 // factor, factor * args.frames).frames
            videos = {"real": real}
            base = None
            for name in sorted(methods, key=lambda m: RUNS[m] is None):  # model runs first
                t = time.time()
                if RUNS[name] is None:
                    videos[name] = repeat_frames(base, factor) if name == "repeat" else blend_frames(base, factor)
                else:
                    videos[name], run_base = generate(pipe, RUNS[name], factor, image, args, seed)
                    base = run_base if base is None else base
                print(f"seed {k} {factor}x {name}: {time.time() - t:.1f}s", flush=True)
            for name, video in videos.items():
                key = video[::factor]
                row = {"seed": seed, "scale": factor, "method": name}
                row["psnr_key"] = psnr(key, base) if name != "real" else float("nan")
                row["ssim_key"] = ssim(key, base) if name != "real" else float("nan")
                row.update(trajectory_metrics(estimate_positions(video, clip.colors), factor))
                per_seed.append(row)
                features.setdefault((factor, name), []).append(clip_features(video))
                if k == 0:
                    strips[(factor, name)] = video

    rows = _aggregate(per_seed, features, scales, ["real"] + [m for m in RUNS if m in methods])
    _write(args.out, per_seed, rows, strips, args)
    return rows


def _aggregate(per_seed, features, scales, names) -> list[dict]:
    """Mean over seeds per (scale, method), and the Fréchet distance of each method's clip
    features against the real clips' features at the same scale."""
    rows = []
    for factor in scales:
        real = torch.stack(features[(factor, "real")])
        for name in names:
            sel = [r for r in per_seed if r["scale"] == factor and r["method"] == name]
            row = {"scale": factor, "method": name}
            for col in ("psnr_key", "ssim_key", "interp_err", "accel", "lost"):
                vals = [r[col] for r in sel if not math.isnan(r[col])]
                row[col] = float(np.mean(vals)) if vals else float("nan")
            feats = torch.stack(features[(factor, name)])
            row["fd_stats"] = frechet_distance(feats, real) if len(feats) >= 2 else float("nan")
            rows.append(row)
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The aggregated rows as a markdown table (↑ higher is better, ↓ lower is better)."""
    head = "| scale | method | key PSNR ↑ | key SSIM ↑ | interp err px ↓ | accel px/f² ↓ | lost ↓ | FD-stats ↓ |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        cells = [f"{r['scale']}×", r["method"]] + [
            "–" if math.isnan(r[c]) else f"{r[c]:.3f}" for c in COLUMNS
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _write(out: Path, per_seed, rows, strips, args) -> None:
    fields = ["seed", "scale", "method", "psnr_key", "ssim_key", "interp_err", "accel", "lost"]
    with open(out / "per_seed.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(per_seed)
    with open(out / "table.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["scale", "method", *COLUMNS])
        writer.writeheader()
        writer.writerows(rows)
    command = "zerosmooth evaluate " + " ".join(args.argv)
    table = markdown_table(rows)
    (out / "table.md").write_text(f"Command: `{command}`\n\n{table}\n")
    print(table)
    _plot(out / "plot.png", rows)
    for factor in sorted({factor for factor, _ in strips}):
        videos = {name: strips[(factor, name)] for name in ["real", *RUNS] if (factor, name) in strips}
        _strip_sheet(videos, factor).save(out / f"strips_{factor}x.png")


def _strip_sheet(videos: dict[str, torch.Tensor], factor: int, zoom: int = 3) -> Image.Image:
    """One labelled row of frames per method, key frames (every ``factor``-th) marked by a white
    bar above them, so the methods' in-between frames can be compared column by column."""
    from PIL import ImageDraw, ImageFont

    rows = []
    for video in videos.values():
        frames = []
        for f, frame in enumerate(video):
            bar = torch.full((3, 2, frame.shape[2]), 1.0 if f % factor == 0 else 0.0)
            frames.append(torch.cat([bar, frame], dim=1))
        rows.append(torch.cat(frames, dim=2))
    label_width, gap = 110, 3
    height, width = rows[0].shape[1] * zoom, rows[0].shape[2] * zoom
    sheet = Image.new("RGB", (label_width + width, len(rows) * (height + gap)), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    for r, (name, row) in enumerate(zip(videos, rows)):
        img = Image.fromarray((row.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        top = r * (height + gap)
        sheet.paste(img.resize((width, height), Image.NEAREST), (label_width, top))
        draw.text((4, top + height // 2 - 6), name, fill=(235, 235, 235), font=ImageFont.load_default())
    return sheet


def _plot(path: Path, rows: list[dict]) -> None:
    """One bar chart per column, methods on the x axis, one bar colour per scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = sorted({r["scale"] for r in rows})
    names = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(2, 3, figsize=(15, 7))
    for ax, col in zip(axes.flat, COLUMNS):
        for j, factor in enumerate(scales):
            vals = [next(r[col] for r in rows if r["scale"] == factor and r["method"] == n) for n in names]
            x = np.arange(len(names)) + j * 0.8 / len(scales)
            ax.bar(x, np.nan_to_num(vals), width=0.8 / len(scales), label=f"{factor}×")
        ax.set_xticks(np.arange(len(names)) + 0.4 - 0.4 / len(scales))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
        ax.set_title(col)
    axes.flat[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    argv = list(argv) if argv is not None else None
    p = argparse.ArgumentParser(prog="zerosmooth evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="embedded", help="'embedded', 'tiny' (untrained) or a pipeline directory")
    p.add_argument("--out", type=Path, default=Path("out/eval"))
    p.add_argument("--seeds", type=int, default=8, help="number of held-out world seeds")
    p.add_argument("--scales", default="2,4")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"rows to run (default: the paper's table); diagnostics: {','.join(DIAGNOSTICS)}")
    p.add_argument("--steps", type=int, default=12, help="denoising steps")
    p.add_argument("--size", type=int, default=32, help="frame size in pixels")
    p.add_argument("--frames", type=int, default=None, help="t0 (default: the UNet's num_frames)")
    p.add_argument("--fps", type=int, default=7, help="SVD fps condition of the base video")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    import sys

    args.argv = argv if argv is not None else sys.argv[1:]
    if args.seeds < 1:
        p.error("--seeds must be >= 1")
    return args


def main(argv=None) -> int:
    evaluate(parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
