"""Evaluate ZeroSmooth, its baselines, ablations and extensions on held-out seeds of the procedural world.

    zerosmooth evaluate --out out/eval                          # the embedded model, the paper's table
    zerosmooth evaluate --front --out out/front                 # + the consistency/quality front
    zerosmooth evaluate --model tiny --seeds 2 --steps 2        # untrained tiny pipeline (smoke)
    zerosmooth evaluate --merge out/a out/b --out out/ab        # one table from runs split by method

For every held-out world seed the first rendered frame is the conditioning image, and every
configuration runs ONE cascade of ``1 + log2(max scale)`` stages at scale 2 from the same noise:
its stage 2 is the 2× video and its stage 3 the 4× video (a 2-stage run's stage 2 would only differ
by its noise draw), so all rows of a seed share one base video. Rows:

- ``real``: the rendered ground truth at each frame rate; at scale 1, ``base`` is the base video
  itself against real 1× clips (how good the model is before any frame-rate multiplication).
- ``repeat`` / ``blend``: every base frame shown ``s`` times / linear blending of consecutive base
  frames. They copy the base video's key frames, so their key-frame scores are perfect by
  construction; they are the floor for smoothness.
- ``direct``: the base model run at ``s·t0`` frames; ``latent_ddnm``: back-projection of the
  predicted clean latent onto the base video's latents after every step (SPEC §8).
- ``paper``: ZeroSmooth as the paper specifies (attention correction only), and its ablations
  ``spatial_only``, ``temporal_only``, ``kv_sample``, ``no_blend``; ``zerosmooth``: the library's
  default configuration (see the README for how it was chosen); ``lockstep``: the default without
  latent DDNM's pull, ``method="zerosmooth"`` (the default before the pull was measured).
- ``exact_keys``: a ceiling — the ``paper`` row's long latents with their key-frame rows replaced by
  the base video's latents, decoded: what perfect key latents give through the VAE decoder.

Diagnostic rows (only when named in ``--methods``) take one piece away at a time: ``no_correction``,
``no_positions``, ``full_window``, ``constant_strength``, ``color`` (on the paper's configuration),
``key_guidance`` (the default with SVD's guidance at key positions, SPEC §10), ``residual_only``
(the residual correction alone, with neither the default's final move of the key frames nor its
colour correction: how well it holds them), ``ddnm_linear`` (latent DDNM with the default's linear
spread, a fair baseline), ``lockstep no colour`` (``lockstep`` without colour correction, the
default before colour correction was measured) and that with one other knob changed (``no colour
+temporal sites``, ``no colour no positions``, ``no colour full window``, ``no colour overlap 10``).
``--front`` adds sweeps of each method's strength/schedule (:data:`FRONT`; the ``default`` family is
the default and its corrections windowed to the first quarter or half of the steps) and plots key
PSNR against the quality columns.

Columns (see :mod:`zerosmooth.lab.metrics`): key-frame PSNR/SSIM against the base video; ``interp
err`` (px) of in-between frames from the straight motion between their key frames and ``accel``
(px/frame²), both from colour-tracked object centroids, and ``lost`` (fraction of untracked
objects); ``FD-stats``, a Fréchet distance between 11 hand-made statistics of generated and real
clips at the same frame rate (a proxy, not FVD); ``FD-learned``, the same on a small video encoder
trained on the world (:mod:`zerosmooth.lab.video_features`, an offline FVD analogue); ``latent key
err``, the relative distance of the long video's key-frame latents from the base video's;
``PSNR alone``, the key-frame PSNR when the long video's key latents are decoded on their own
(differs from key PSNR only with a decoder that mixes frames). Outputs in ``--out``: per-seed CSV
(with every clip's 11 FD-stats statistics, :data:`PER_CLIP`) and aggregated CSV, a markdown table,
a bar plot, per scale a sheet of the first seed's frames with one row per method
(``strips_2x.png``…), and with ``--front`` ``front.csv`` and ``front.png``.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from zerosmooth.config import PAPER
from zerosmooth.lab.metrics import (FEATURE_NAMES, clip_features, estimate_positions, frechet_distance, psnr, ssim,
                                    trajectory_metrics)
from zerosmooth.lab.world import HELD_OUT_SEED_BASE, RENDER_FPS, WorldConfig, render_clip

# The method alone, stages in lockstep: the default before latent DDNM's pull was added.
LOCKSTEP = {"method": "zerosmooth"}


# Row name -> ZeroSmoothConfig overrides (None: computed from the base video, no model run).
METHODS: dict[str, dict | None] = {
    "repeat": None,
    "blend": None,
    "direct": {"method": "direct"},
    "latent_ddnm": {"method": "latent_ddnm"},
    "paper": PAPER,
    "spatial_only": {**PAPER, "correct_temporal": False},
    "temporal_only": {**PAPER, "correct_spatial": False},
    "kv_sample": {**PAPER, "kv_operator": "sample"},
    "no_blend": {**PAPER, "strength": 1.0, "strength_schedule": "constant"},
    "zerosmooth": {},
    "lockstep": LOCKSTEP,
    "exact_keys": None,
}


def _residual(strength: float, stop: float, sites=("resnets",), spread: str = "keys") -> dict:
    """The residual correction alone: key frames as denoised, no final move onto the base video, no
    colour correction, no pull."""
    return {**LOCKSTEP, "residual_strength": strength, "residual_schedule": "constant",
            "residual_window": (0.0, stop), "residual_sites": tuple(sites), "residual_spread": spread,
            "key_frames": "free", "color_correction": False}


# The lockstep default before colour correction was switched on: the settings the screen below varied.
NO_COLOUR = {**LOCKSTEP, "color_correction": False}


# Diagnostic rows, run only when named in --methods: which part of ZeroSmooth does the work.
DIAGNOSTICS: dict[str, dict] = {
    "no_correction": {**PAPER, "correct_spatial": False, "correct_temporal": False, "correct_cross": False},
    "no_positions": {**PAPER, "interpolate_positions": False},
    "full_window": {**PAPER, "temporal_windows": False},
    "constant_strength": {**PAPER, "strength_schedule": "constant"},
    "color": {**PAPER, "color_correction": True},
    "key_guidance": {"key_guidance": True},
    "residual_only": _residual(1.0, 1.0, spread="linear"),
    "ddnm_linear": {"method": "latent_ddnm", "ddnm_spread": "linear"},
    "lockstep no colour": NO_COLOUR,
    # The lockstep default without colour correction and one other knob changed (the screen that chose
    # colour correction): does anything but the residual correction matter?
    "no colour +temporal sites": {**NO_COLOUR, "residual_sites": ("resnets", "temporal")},
    "no colour no positions": {**NO_COLOUR, "interpolate_positions": False},
    "no colour full window": {**NO_COLOUR, "temporal_windows": False},
    "no colour overlap 10": {**NO_COLOUR, "overlap": 10},
}

# --front: each method family's knob swept; the family's points form its front.
FRONT: dict[str, dict[str, dict]] = {
    "latent_ddnm": {
        "ddnm 0.25": {"method": "latent_ddnm", "ddnm_strength": 0.25},
        "ddnm 0.5": {"method": "latent_ddnm", "ddnm_strength": 0.5},
        "ddnm 1.0 first quarter": {"method": "latent_ddnm", "ddnm_window": (0.0, 0.25)},
        "ddnm 1.0 early": {"method": "latent_ddnm", "ddnm_window": (0.0, 0.5)},
        "ddnm 1.0": {"method": "latent_ddnm"},
        "ddnm 1.0 linear": {"method": "latent_ddnm", "ddnm_spread": "linear"},
    },
    "paper": {
        "paper w 0.4": {**PAPER, "strength": 0.4},
        "paper w 0.8": PAPER,
        "paper w 1.0": {**PAPER, "strength": 1.0, "strength_schedule": "constant"},
    },
    "residual": {
        "residual 0.5 first 25%": _residual(0.5, 0.25),
        "residual 1.0 first 25%": _residual(1.0, 0.25),
        "residual 1.0 first 50%": _residual(1.0, 0.5),
        "residual 0.5 all": _residual(0.5, 1.0),
        "residual 1.0 all": _residual(1.0, 1.0),
        "residual+temporal 1.0 first 50%": _residual(1.0, 0.5, ("resnets", "temporal")),
    },
    "residual linear": {
        "linear 0.5 all": _residual(0.5, 1.0, spread="linear"),
        "linear 1.0 all": _residual(1.0, 1.0, spread="linear"),
    },
    "lockstep": {  # the method alone (the default before the pull) and its own knob; exact key frames either way
        "lockstep residual 0.5": {**LOCKSTEP, "residual_strength": 0.5},
        "lockstep": LOCKSTEP,
    },
    "default": {  # the library's default (the method plus latent DDNM's pull) and its schedules towards free key
        # frames: the pull alone over the first half; the pull and the residual correction over the first quarter or
        # half, the attention blend too over the first half, each with the key frames as denoised (late steps free)
        "zerosmooth first quarter": {"ddnm_window": (0.0, 0.25), "residual_window": (0.0, 0.25), "key_frames": "free"},
        "zerosmooth first half": {"ddnm_window": (0.0, 0.5), "residual_window": (0.0, 0.5), "key_frames": "free"},
        "zerosmooth all first half": {"strength_window": (0.0, 0.5), "ddnm_window": (0.0, 0.5),
                                      "residual_window": (0.0, 0.5), "key_frames": "free"},
        "zerosmooth pull early": {"ddnm_window": (0.0, 0.5)},
        "zerosmooth": {},
    },
}
FRONT_RUNS = {name: overrides for family in FRONT.values() for name, overrides in family.items()}
RUNS: dict[str, dict | None] = {**METHODS, **DIAGNOSTICS, **FRONT_RUNS}
COLUMNS = ("psnr_key", "ssim_key", "interp_err", "accel", "lost", "fd_stats", "fd_learned", "latent_key_err",
           "psnr_alone")
HEADERS = ("key PSNR ↑", "key SSIM ↑", "interp err px ↓", "accel px/f² ↓", "lost ↓", "FD-stats ↓",
           "FD-learned ↓", "latent key err ↓", "PSNR alone ↑")
PER_SEED = ("psnr_key", "ssim_key", "interp_err", "accel", "lost", "latent_key_err", "psnr_alone")
PER_CLIP = (*PER_SEED, *FEATURE_NAMES)
"""per_seed.csv's columns: the per-seed metrics, then each clip's FD-stats statistics, which show
what a row's FD-stats is made of (empty in files written before they were recorded)."""


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

        pipe = StableVideoDiffusionPipeline.from_pretrained(model, local_files_only=True, low_cpu_mem_usage=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def decode(pipe, latents: torch.Tensor) -> torch.Tensor:
    """Frames ``[T, 3, H, W]`` in [0, 1] of one video's latents ``[1, T, C, h, w]``, decoded as the
    SVD pipeline decodes (every frame in one chunk)."""
    frames = pipe.decode_latents(latents, latents.shape[1], latents.shape[1])
    return pipe.video_processor.postprocess_video(video=frames, output_type="pt")[0].float().clamp(0, 1)


def generate(pipe, overrides: dict, stages: int, image: Image.Image, args, seed: int) -> list[torch.Tensor]:
    """Latents ``[1, t_s, C, h, w]`` of every stage of one ZeroSmooth run at scale 2."""
    from zerosmooth import ZeroSmooth, ZeroSmoothConfig

    config = ZeroSmoothConfig(scale=2, stages=stages, **overrides)
    out = ZeroSmooth(pipe, config)(
        progress_bar=False, image=image, height=args.size, width=args.size, num_frames=args.frames,
        num_inference_steps=args.steps, fps=args.fps, generator=torch.Generator().manual_seed(seed),
        output_type="latent",
    )
    return out.stages


def _stages(scales: str) -> int:
    """The stages of every configuration's one run for ``--scales`` (its largest factor, 2 at least)."""
    return 1 + int(math.log2(max(max(int(s) for s in scales.split(",")), 2)))


def _settings(overrides: dict):
    """The full configuration a row's overrides give: rows that differ only in how they spell the
    defaults (``{}`` and the same fields spelt out) share one run."""
    from zerosmooth import ZeroSmoothConfig

    return ZeroSmoothConfig(**overrides)


def _video_row(video: torch.Tensor, base: torch.Tensor, clip, factor: int) -> dict:
    row = {"psnr_key": psnr(video[::factor], base), "ssim_key": ssim(video[::factor], base)}
    row.update(trajectory_metrics(estimate_positions(video, clip.colors), factor))
    return row


def evaluate(args: argparse.Namespace) -> list[dict]:
    """Run every row on every seed and scale; write the outputs; return the aggregated rows."""
    from zerosmooth.residual import key_drift  # imports diffusers: not at `zerosmooth evaluate --help`

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    methods = args.methods.split(",")
    unknown = set(methods) - set(RUNS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {list(RUNS)}")
    if args.front:
        methods += [name for name in FRONT_RUNS if name not in methods]
    model_runs = [m for m in methods if RUNS[m] is not None]
    if not model_runs or ("exact_keys" in methods and "paper" not in model_runs):
        model_runs.insert(0, "paper")  # the base video (and the exact_keys ceiling) come from a model run
    scales = [int(s) for s in args.scales.split(",")]
    for s in scales:
        if s not in (1, 2, 4):
            raise ValueError(f"scales must be 1, 2 or 4 (the 28 fps world renders 4 frames per key frame), got {s}")
    pipe = load_pipeline(args.model)
    args.frames = args.frames or pipe.unet.config.num_frames
    args.size = args.size or pipe.unet.config.sample_size * pipe.vae_scale_factor
    world = WorldConfig(size=args.size)
    stages = _stages(args.scales)

    per_seed: list[dict] = []
    videos_by_row: dict[tuple[int, str], list[torch.Tensor]] = {}
    strips: dict[tuple[int, str], torch.Tensor] = {}
    for k in range(args.first_seed, args.first_seed + args.seeds):
        seed = HELD_OUT_SEED_BASE + k
        clip = render_clip(seed, 4 * args.frames, world)
        image = Image.fromarray((clip.frames[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        latents, videos, done = {}, {}, {}
        for name in model_runs:
            key = _settings(RUNS[name])  # rows with the same settings share one run
            if key not in done:
                started = time.time()
                stage_latents = generate(pipe, RUNS[name], stages, image, args, seed)
                done[key] = stage_latents, [decode(pipe, stage) for stage in stage_latents]
                print(f"seed {k} {name}: {time.time() - started:.1f}s", flush=True)
            latents[name], videos[name] = done[key]
        base_latents, base = latents[model_runs[0]][0], videos[model_runs[0]][0]
        rows = {}
        for factor in scales:
            real = clip.strided(4 // factor, factor * args.frames).frames
            found = {"real": real}
            if factor == 1:
                found["base"] = base
            else:
                stage = int(math.log2(factor))
                for name in methods:
                    if name in ("repeat", "blend"):
                        found[name] = (repeat_frames if name == "repeat" else blend_frames)(base, factor)
                    elif name == "exact_keys":
                        pinned = latents["paper"][stage].clone()
                        pinned[:, ::factor] = base_latents
                        found[name] = decode(pipe, pinned)
                    else:
                        found[name] = videos[name][stage]
            for name, video in found.items():
                row = {"seed": seed, "scale": factor, "method": name}
                if name == "real" or factor == 1:
                    row.update(trajectory_metrics(estimate_positions(video, clip.colors), max(factor, 1)))
                else:
                    row.update(_video_row(video, base, clip, factor))
                if name in latents:
                    long = latents[name][int(math.log2(factor))]
                    row["latent_key_err"] = key_drift(long, base_latents, factor)
                    row["psnr_alone"] = psnr(decode(pipe, long[:, ::factor]), base)
                row.update(zip(FEATURE_NAMES, clip_features(video).tolist()))
                rows[(factor, name)] = row
                videos_by_row.setdefault((factor, name), []).append(video)
                if k == args.first_seed:
                    strips[(factor, name)] = video
        per_seed.extend(rows.values())
    rows = _aggregate(per_seed, videos_by_row, scales, ["real", "base"] + [m for m in RUNS if m in methods])
    command = "zerosmooth evaluate " + shlex.join(args.argv)  # quoted: row names may hold spaces
    _write(args.out, per_seed, rows, f"Command: `{command}`", front=args.front)
    for factor in sorted({factor for factor, _ in strips if factor > 1}):
        names = ["real", *[m for m in METHODS if m in methods]]
        videos = {name: strips[(factor, name)] for name in names if (factor, name) in strips}
        _strip_sheet(videos, factor).save(args.out / f"strips_{factor}x.png")
    return rows


def _aggregate(per_seed, videos_by_row, scales, names) -> list[dict]:
    """Mean over seeds per (scale, row), and each row's Fréchet distances against the real clips
    at the same scale (NaN with fewer than 2 clips, and FD-learned for clips shorter than the
    encoder's minimum)."""
    from zerosmooth.lab.video_features import MIN_FRAMES, learned_fd

    rows = []
    for factor in scales:
        real = videos_by_row[(factor, "real")]
        real_stats = _clip_statistics([r for r in per_seed if r["scale"] == factor and r["method"] == "real"])
        for name in names:
            if (factor, name) not in videos_by_row:
                continue
            selected = [r for r in per_seed if r["scale"] == factor and r["method"] == name]
            row = {"scale": factor, "method": name}
            for column in PER_SEED:
                values = [r[column] for r in selected if not math.isnan(r.get(column, math.nan))]
                row[column] = float(np.mean(values)) if values else math.nan
            videos = videos_by_row[(factor, name)]
            enough = len(videos) >= 2
            row["fd_stats"] = frechet_distance(_clip_statistics(selected), real_stats) if enough else math.nan
            long_enough = enough and videos[0].shape[0] >= MIN_FRAMES
            row["fd_learned"] = learned_fd(torch.stack(videos), torch.stack(real)) if long_enough else math.nan
            rows.append(row)
    return rows


def _clip_statistics(rows: list[dict]) -> torch.Tensor:
    """[len(rows), 11]: the FD-stats statistics (:func:`clip_features`) these per-seed rows recorded."""
    return torch.tensor([[r[n] for n in FEATURE_NAMES] for r in rows], dtype=torch.float64)


def markdown_table(rows: list[dict]) -> str:
    """The aggregated rows as a markdown table (↑ higher is better, ↓ lower is better)."""
    lines = ["| scale | method | " + " | ".join(HEADERS) + " |", "|" + "---|" * (len(HEADERS) + 2)]
    for r in rows:
        cells = [f"{r['scale']}×", r["method"]] + ["–" if math.isnan(r[c]) else f"{r[c]:.3f}" for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _write(out: Path, per_seed, rows, heading: str, front: bool) -> None:
    """per_seed.csv, table.csv, table.md (``heading`` above the table), plot.png and, if ``front``,
    the front's files."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "per_seed.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["seed", "scale", "method", *PER_CLIP], restval="")
        writer.writeheader()
        writer.writerows(per_seed)
    with open(out / "table.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["scale", "method", *COLUMNS])
        writer.writeheader()
        writer.writerows(rows)
    table = markdown_table(rows)
    (out / "table.md").write_text(f"{heading}\n\n{table}\n")
    print(table)
    upsampled = [r for r in rows if r["scale"] > 1]
    if upsampled:
        _plot(out / "plot.png", upsampled)
    if front:
        _front(out, rows)


def _strip_sheet(videos: dict[str, torch.Tensor], factor: int, zoom: int = 2) -> Image.Image:
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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plotted_rows(rows: list[dict]) -> list[str]:
    """The rows of plot.png, in table order: every row but the front's sweep points, which have the
    front's plot (a sweep point that is also a table row, such as the default, stays)."""
    return list(dict.fromkeys(r["method"] for r in rows if r["method"] in METHODS or r["method"] not in FRONT_RUNS))


def _plot(path: Path, rows: list[dict]) -> None:
    """One bar chart per column, rows on the x axis, one bar colour per scale."""
    plt = _pyplot()
    scales = sorted({r["scale"] for r in rows})
    names = plotted_rows(rows)
    fig, axes = plt.subplots(3, 3, figsize=(16, 11))
    for ax, column, header in zip(axes.flat, COLUMNS, HEADERS):
        for j, factor in enumerate(scales):
            values = [next((r[column] for r in rows if r["scale"] == factor and r["method"] == n), math.nan)
                      for n in names]
            x = np.arange(len(names)) + j * 0.8 / len(scales)
            ax.bar(x, np.nan_to_num(values), width=0.8 / len(scales), label=f"{factor}×")
        ax.set_xticks(np.arange(len(names)) + 0.4 - 0.4 / len(scales))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
        ax.set_title(header)
    axes.flat[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def dominates(front: list[tuple[float, float]], other: list[tuple[float, float]]) -> bool:
    """Whether every point of ``other`` is matched or beaten by some point of ``front`` in both
    key PSNR (first, higher is better) and quality distance (second, lower is better)."""
    return all(any(p >= q and d <= e for p, d in front) for q, e in other)


QUALITY = (("fd_stats", "FD-stats ↓"), ("fd_learned", "FD-learned ↓"), ("interp_err", "interp err px ↓"))


def front_points(rows: list[dict]) -> list[dict]:
    """The rows that are points of a front family (:data:`FRONT`, plus ``direct``), each with its
    ``family``. A row belongs to a family when its configuration is one of the family's, however
    the row is named (``latent_ddnm`` is the point ``ddnm 1.0``); each configuration is one point
    per scale."""
    families = {**FRONT, "direct": {"direct": RUNS["direct"]}}
    family_of = {_settings(overrides): family for family, members in families.items()
                 for overrides in members.values()}
    points, seen = [], set()
    for r in rows:
        overrides = RUNS.get(r["method"])
        if r["scale"] == 1 or overrides is None:
            continue
        settings = _settings(overrides)
        if settings in family_of and (r["scale"], settings) not in seen:
            seen.add((r["scale"], settings))
            points.append(dict(r, family=family_of[settings]))
    return points


def _front(out: Path, rows: list[dict]) -> None:
    """front.csv (every front point), front.png (key PSNR against each quality column, per scale)
    and front.md (whether each family's front dominates latent DDNM's, per scale and column)."""
    plt = _pyplot()
    points = front_points(rows)
    families = list(dict.fromkeys(p["family"] for p in points))
    with open(out / "front.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["family", "scale", "method", *COLUMNS])
        writer.writeheader()
        writer.writerows(points)
    scales = sorted({p["scale"] for p in points})
    fig, axes = plt.subplots(len(scales), len(QUALITY), figsize=(16, 5 * len(scales)), squeeze=False)
    for row_axes, factor in zip(axes, scales):
        for ax, (column, header) in zip(row_axes, QUALITY):
            for family in families:
                members = sorted((p for p in points if p["family"] == family and p["scale"] == factor),
                                 key=lambda p: p[column])
                if members:
                    ax.plot([p[column] for p in members], [p["psnr_key"] for p in members], "o-", label=family)
                    for p in members:
                        ax.annotate(p["method"], (p[column], p["psnr_key"]), fontsize=6, alpha=0.7)
            ax.set_xlabel(header)
            ax.set_ylabel("key PSNR ↑")
            ax.set_title(f"{factor}×")
        row_axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "front.png", dpi=70)
    plt.close(fig)
    lines = []
    for factor, (column, header), family in itertools.product(scales, QUALITY, families):
        mine, ddnm = ([(p["psnr_key"], p[column]) for p in points if p["family"] == name and p["scale"] == factor]
                      for name in (family, "latent_ddnm"))
        if family != "latent_ddnm" and mine and ddnm:
            lines.append(f"{factor}×: {family} front dominates latent DDNM's (key PSNR vs {header}): "
                         f"{dominates(mine, ddnm)}")
    (out / "front.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


# What makes two evaluations' rows comparable: the same seeds, model, denoising and stage count.
SAME_RUN_OPTIONS = ("model", "first_seed", "seeds", "steps", "size", "frames", "fps")


def _read_rows(path: Path, numeric: tuple[str, ...]) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["scale"] = int(row["scale"])
        for column in numeric:
            if column in row:  # a column the file predates stays absent
                row[column] = float(row[column]) if row[column] else math.nan
    return rows


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def merge(sources: list[Path], out: Path) -> list[dict]:
    """One table (and front, and plot) from the outputs of several ``zerosmooth evaluate`` runs over
    the same seeds, model, steps and stage count, e.g. different methods run in parallel. Each row
    is computed from its own videos and the real clips, so rows of runs that share seeds and noise
    combine as they are; a row present in several runs (``real``, or any method run twice) must
    agree to 1e-6, which checks that they do. Writes what ``evaluate`` writes except the strips."""
    commands, tables, per_seed = [], [], []
    for source in sources:
        for name in ("table.md", "table.csv", "per_seed.csv"):
            if not (source / name).is_file():
                raise ValueError(f"--merge: {source} has no {name}; expected the output directory of a "
                                 "`zerosmooth evaluate` run")
        heading = (source / "table.md").read_text().splitlines()[0]
        if not heading.startswith("Command: `zerosmooth evaluate ") or "--merge" in heading:
            raise ValueError(f"--merge: {source}/table.md does not start with the command of one evaluate run")
        command = heading.removeprefix("Command: `").removesuffix("`")
        commands.append((source, command, parse_args(shlex.split(command)[2:])))
        tables.append(_read_rows(source / "table.csv", COLUMNS))
        per_seed.extend(_read_rows(source / "per_seed.csv", PER_CLIP))
    first_source, _, first = commands[0]
    for source, _, args in commands[1:]:
        for option in SAME_RUN_OPTIONS:
            if getattr(args, option) != getattr(first, option):
                flag = "--" + option.replace("_", "-")
                raise ValueError(f"--merge: {source} ran with {flag} {getattr(args, option)}, {first_source} "
                                 f"with {getattr(first, option)}; merged rows must share seeds, model and noise")
        if _stages(args.scales) != _stages(first.scales):
            raise ValueError(f"--merge: {source} ran {_stages(args.scales)} stages (--scales {args.scales}), "
                             f"{first_source} {_stages(first.scales)} (--scales {first.scales}): their noise differs")
    merged: dict[tuple[int, str], dict] = {}
    order = ["real", "base", *RUNS]
    for (source, _, _), table in zip(commands, tables):
        for row in table:
            if row["method"] not in order:
                raise ValueError(f"--merge: {source} has a row {row['method']!r}; known rows: {order}")
            key = (row["scale"], row["method"])
            if key in merged and not all(_same(merged[key][c], row[c]) for c in COLUMNS):
                raise ValueError(f"--merge: the {row['scale']}× {row['method']!r} row of {source} differs from "
                                 "another run's: the runs do not share seeds and noise")
            merged.setdefault(key, row)
    rows = sorted(merged.values(), key=lambda r: (r["scale"], order.index(r["method"])))
    unique_seed_rows = {(r["seed"], r["scale"], r["method"]): r for r in reversed(per_seed)}
    per_seed = sorted(unique_seed_rows.values(), key=lambda r: (r["seed"], r["scale"], order.index(r["method"])))
    sources_text = "\n".join(f"- `{source}`: `{command}`" for source, command, _ in commands)
    heading = (f"Command: `zerosmooth evaluate --merge {shlex.join(map(str, sources))} --out {shlex.quote(str(out))}`"
               f"\n\nMerged from:\n\n{sources_text}")
    _write(out, per_seed, rows, heading, front=bool(front_points(rows)))
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    argv = list(argv) if argv is not None else sys.argv[1:]
    p = argparse.ArgumentParser(prog="zerosmooth evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="embedded", help="'embedded', 'tiny' (untrained) or a pipeline directory")
    p.add_argument("--out", type=Path, default=Path("out/eval"), help="output directory")
    p.add_argument("--seeds", type=int, default=8, help="number of held-out world seeds")
    p.add_argument("--first-seed", type=int, default=0,
                   help="index of the first held-out seed (e.g. choose settings on --first-seed 16, report on 0)")
    p.add_argument("--scales", default="1,2,4", help="frame-rate factors to report (1: the base video)")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"rows to run (default: the paper's table); diagnostics: {','.join(DIAGNOSTICS)}; "
                        "'exact_keys' adds the decoder ceiling")
    p.add_argument("--front", action="store_true", help="also sweep each method's knob and plot the fronts")
    p.add_argument("--steps", type=int, default=12, help="denoising steps")
    p.add_argument("--size", type=int, default=None, help="frame size in pixels (default: the model's)")
    p.add_argument("--frames", type=int, default=None, help="t0 (default: the UNet's num_frames)")
    p.add_argument("--fps", type=int, default=RENDER_FPS // 4, help="SVD fps condition of the base video")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--merge", type=Path, nargs="+", metavar="DIR",
                   help="instead of running, combine the outputs of evaluate runs over the same seeds, model, "
                        "steps and stages (e.g. methods split across processes) into --out")
    args = p.parse_args(argv)
    args.argv = argv
    if args.merge:
        others = [a for a in argv if a.startswith("--") and a.split("=")[0] not in ("--merge", "--out")]
        if others:
            p.error(f"--merge takes only --out, got {' '.join(others)}")
        if len(args.merge) < 2:
            p.error(f"--merge needs at least two directories, got {len(args.merge)}")
    if args.seeds < 1:
        p.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.first_seed < 0:
        p.error(f"--first-seed must be >= 0, got {args.first_seed}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.merge:
        merge(args.merge, args.out)
    else:
        evaluate(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
