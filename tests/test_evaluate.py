"""Evaluation smoke test (untrained tiny pipeline, seconds) and the metrics' own properties."""

import dataclasses
import math
import shlex

import pytest
import torch
from PIL import Image

from zerosmooth.lab import evaluate, metrics
from zerosmooth.lab.evaluate import NO_COLOUR
from zerosmooth.lab.world import HELD_OUT_SEED_BASE, WorldConfig, render_clip


def test_blend_and_repeat_keep_key_frames():
    base = torch.rand(3, 3, 4, 4)
    for f in (evaluate.repeat_frames(base, 2), evaluate.blend_frames(base, 4)):
        assert torch.equal(f[:: f.shape[0] // 3], base)
    blend = evaluate.blend_frames(base, 2)
    assert torch.allclose(blend[1], (base[0] + base[1]) / 2) and torch.equal(blend[-1], base[-1])


def test_psnr_ssim_identity_and_order():
    a = torch.rand(2, 3, 16, 16)
    noisy = (a + 0.1 * torch.randn_like(a)).clamp(0, 1)
    assert metrics.ssim(a, a) == pytest.approx(1.0)
    assert metrics.psnr(a, noisy) < metrics.psnr(a, (a + 0.5 * (noisy - a)))
    assert metrics.ssim(a, noisy) < 1.0


def test_positions_and_trajectory_on_real_clips():
    """On rendered ground truth the colour tracker finds unoccluded objects to ~half a pixel, and
    real motion is smooth; frame repetition is not."""
    cfg = WorldConfig(size=32, min_objects=1, max_objects=1)
    clip = render_clip(HELD_OUT_SEED_BASE + 123, 32, cfg)
    est = metrics.estimate_positions(clip.frames, clip.colors)
    assert (est - clip.positions).norm(dim=-1).max() < 0.6
    real = metrics.trajectory_metrics(est, 2)
    stutter = metrics.trajectory_metrics(metrics.estimate_positions(evaluate.repeat_frames(clip.frames[::2], 2), clip.colors), 2)
    assert real["lost"] == 0 and real["interp_err"] < 0.6 and stutter["accel"] > 1.5 * real["accel"]


def test_frechet_distance():
    a = torch.randn(50, 4)
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert metrics.frechet_distance(a + 3, a) == pytest.approx(9 * 4 / a.std(0).pow(2).mean().item(), rel=0.2)
    assert math.isnan(metrics.frechet_distance(torch.full((3, 4), float("nan")), a))
    with pytest.raises(ValueError):
        metrics.frechet_distance(a[:1], a)


def test_evaluate_end_to_end(tmp_path, capsys):
    """Every row kind at scales 1, 2 and 4 from one 3-stage run per configuration and seed."""
    methods = "no_positions,repeat,blend,direct,latent_ddnm,paper,zerosmooth,exact_keys"
    rows = evaluate.evaluate(evaluate.parse_args([
        "--model", "tiny", "--out", str(tmp_path), "--seeds", "2", "--steps", "1", "--frames", "4", "--size", "32",
        "--methods", methods, "--threads", "1",
    ]))
    runs = [line for line in capsys.readouterr().out.splitlines() if line.startswith("seed 0 ")]
    distinct = {evaluate._settings(evaluate.RUNS[m]) for m in methods.split(",") if evaluate.RUNS[m] is not None}
    assert len(runs) == len(distinct)  # one run per distinct configuration, however its row spells it
    names = [(r["scale"], r["method"]) for r in rows]
    table_rows = ["real", "repeat", "blend", "direct", "latent_ddnm", "paper", "zerosmooth", "exact_keys",
                  "no_positions"]
    assert names == [(1, "real"), (1, "base")] + [(s, m) for s in (2, 4) for m in table_rows]
    row = {(r["scale"], r["method"]): r for r in rows}
    assert row[(2, "repeat")]["ssim_key"] == pytest.approx(1.0)
    assert row[(2, "latent_ddnm")]["latent_key_err"] < row[(2, "direct")]["latent_key_err"]
    assert not math.isnan(row[(4, "paper")]["psnr_key"]) and not math.isnan(row[(4, "paper")]["psnr_alone"])
    assert row[(4, "paper")]["fd_learned"] >= 0  # 16-frame clips: the learned encoder applies
    assert math.isnan(row[(1, "base")]["fd_learned"])  # 4 frames: below the encoder's minimum
    for name in ("table.csv", "per_seed.csv", "table.md", "plot.png", "strips_2x.png", "strips_4x.png"):
        assert (tmp_path / name).is_file()
    assert "| 2× | zerosmooth |" in (tmp_path / "table.md").read_text()
    recorded = {(r["seed"], r["scale"], r["method"]): r
                for r in evaluate._read_rows(tmp_path / "per_seed.csv", evaluate.PER_CLIP)}
    real = render_clip(HELD_OUT_SEED_BASE, 4 * 4, WorldConfig(size=32)).strided(2, 2 * 4).frames
    expected = metrics.clip_features(real).tolist()
    assert [recorded[(str(HELD_OUT_SEED_BASE), 2, "real")][n] for n in metrics.FEATURE_NAMES] == pytest.approx(expected)
    assert all(not math.isnan(r[n]) for r in recorded.values() for n in metrics.FEATURE_NAMES)
    with Image.open(tmp_path / "strips_2x.png") as strips:  # one 2×-enlarged row per table row, real first
        assert strips.size == (110 + 2 * 8 * 32, 8 * (2 * (2 + 32) + 3))


def test_base_video_only(tmp_path):
    """--scales 1 gives the base video's rows and no per-scale plot (there is no upsampled row to plot);
    table.md's command line runs again as written, even with a space in an argument."""
    out = tmp_path / "base only"
    argv = ["--model", "tiny", "--out", str(out), "--seeds", "1", "--steps", "1", "--frames", "4", "--size", "32",
            "--scales", "1", "--methods", "paper", "--threads", "1"]
    rows = evaluate.evaluate(evaluate.parse_args(argv))
    assert [(r["scale"], r["method"]) for r in rows] == [(1, "real"), (1, "base")]
    assert (out / "table.md").is_file() and not (out / "plot.png").exists()
    command = (out / "table.md").read_text().splitlines()[0].removeprefix("Command: `").removesuffix("`")
    assert shlex.split(command) == ["zerosmooth", "evaluate", *argv]


def test_front_sweeps_and_dominance(tmp_path):
    rows = evaluate.evaluate(evaluate.parse_args([
        "--model", "tiny", "--out", str(tmp_path), "--seeds", "2", "--steps", "1", "--frames", "4", "--size", "32",
        "--scales", "2", "--methods", "direct,zerosmooth", "--front", "--threads", "1",
    ]))
    assert {r["method"] for r in rows} >= set(evaluate.FRONT_RUNS)
    assert (tmp_path / "front.png").is_file() and (tmp_path / "front.csv").is_file()
    assert "front dominates latent DDNM's" in (tmp_path / "front.md").read_text()
    assert evaluate.dominates([(30, 10)], [(29, 12), (30, 10)])
    assert not evaluate.dominates([(30, 10)], [(31, 20)])


def test_merge_equals_one_run(tmp_path):
    """Methods split over two runs (sharing one) merge into the table one run of them all gives, with
    the front read from rows of any name (latent_ddnm is the point ddnm 1.0); runs that do not share
    seeds and noise, or a disagreeing shared row, are refused."""
    common = ["--model", "tiny", "--seeds", "2", "--steps", "1", "--frames", "4", "--size", "32", "--scales", "2",
              "--threads", "1"]

    def run(name, methods, *extra):
        evaluate.evaluate(evaluate.parse_args([*common, *extra, "--out", str(tmp_path / name), "--methods", methods]))
        return tmp_path / name

    whole = run("whole", "direct,latent_ddnm,zerosmooth,ddnm 0.5")
    parts = [run("a", "direct,latent_ddnm"), run("b", "direct,zerosmooth,ddnm 0.5")]
    rows = evaluate.merge(parts, tmp_path / "merged")
    expected = evaluate._read_rows(whole / "table.csv", evaluate.COLUMNS)
    assert [(r["scale"], r["method"]) for r in rows] == [(r["scale"], r["method"]) for r in expected]
    assert len(rows) == 5 and all(evaluate._same(a[c], b[c]) for a, b in zip(rows, expected) for c in evaluate.COLUMNS)
    merged = tmp_path / "merged"
    for name in ("table.md", "table.csv", "per_seed.csv", "plot.png", "front.png", "front.csv"):
        assert (merged / name).is_file()
    assert "2×: default front dominates latent DDNM's (key PSNR vs FD-stats ↓)" in (merged / "front.md").read_text()
    assert {p["method"] for p in evaluate.front_points(rows)} == {"direct", "latent_ddnm", "zerosmooth", "ddnm 0.5"}
    assert len(evaluate._read_rows(merged / "per_seed.csv", evaluate.PER_SEED)) == 2 * 5

    other_steps = run("steps", "direct", "--steps", "2")
    with pytest.raises(ValueError, match="--steps 2"):
        evaluate.merge([parts[0], other_steps], tmp_path / "x")
    # --first-seed 1 runs the second seed of the 2-seed runs, with the same noise; merging it is refused.
    second = run("second", "direct", "--first-seed", "1", "--seeds", "1")
    direct = [r for r in evaluate._read_rows(whole / "per_seed.csv", evaluate.PER_SEED) if r["method"] == "direct"]
    alone = [r for r in evaluate._read_rows(second / "per_seed.csv", evaluate.PER_SEED) if r["method"] == "direct"]
    assert [r["seed"] for r in alone] == [r["seed"] for r in direct[1:]] == [str(evaluate.HELD_OUT_SEED_BASE + 1)]
    assert all(evaluate._same(a[c], b[c]) for a, b in zip(alone, direct[1:]) for c in evaluate.PER_SEED)
    with pytest.raises(ValueError, match="--first-seed 1"):
        evaluate.merge([parts[0], second], tmp_path / "x")
    table = (parts[1] / "table.csv").read_text().replace("\n2,direct,", "\n2,direct,1", 1)
    (parts[1] / "table.csv").write_text(table)
    with pytest.raises(ValueError, match="direct' row .* differs"):
        evaluate.merge(parts, tmp_path / "x")
    with pytest.raises(ValueError, match="has no table.md"):
        evaluate.merge([parts[0], tmp_path], tmp_path / "x")
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--merge", str(parts[0]), str(parts[1]), "--methods", "direct"])


def test_diagnostics_are_opt_in():
    default = evaluate.parse_args([]).methods.split(",")
    assert default == list(evaluate.METHODS) and not set(default) & set(evaluate.DIAGNOSTICS)


def _changed_fields(settings, reference) -> list[str]:
    return [f.name for f in dataclasses.fields(settings) if getattr(settings, f.name) != getattr(reference, f.name)]


def test_plot_shows_the_table_rows_and_leaves_sweep_points_to_the_front():
    rows = [{"scale": 2, "method": name} for name in ("real", "direct", "zerosmooth", "ddnm 0.5", "lockstep",
                                                     "paper w 0.4", "no_positions")]
    assert evaluate.plotted_rows(rows) == ["real", "direct", "zerosmooth", "lockstep", "no_positions"]


def test_default_variants_change_one_knob():
    """Every row's overrides make a valid config; ``lockstep`` is the default without the pull,
    ``lockstep no colour`` that with colour correction off, and each ``no colour …`` diagnostic is
    that with exactly one more field changed, so its row measures that knob alone."""
    for overrides in evaluate.RUNS.values():
        if overrides is not None:
            evaluate._settings(overrides)
    lockstep = evaluate._settings(evaluate.RUNS["lockstep"])
    assert _changed_fields(lockstep, evaluate._settings({})) == ["method"]
    no_colour = evaluate._settings(evaluate.DIAGNOSTICS["lockstep no colour"])
    assert _changed_fields(no_colour, lockstep) == ["color_correction"]
    variants = [name for name in evaluate.DIAGNOSTICS if name.startswith("no colour ")]
    assert len(variants) == 4
    for name in variants:
        changed = _changed_fields(evaluate._settings(evaluate.DIAGNOSTICS[name]), no_colour)
        assert changed == [key for key in evaluate.DIAGNOSTICS[name] if key not in NO_COLOUR], name


def test_bad_method(tmp_path):
    with pytest.raises(ValueError, match="unknown methods"):
        evaluate.evaluate(evaluate.parse_args(["--model", "tiny", "--out", str(tmp_path), "--methods", "magic"]))
