"""Evaluation smoke test (untrained tiny pipeline, seconds) and the metrics' own properties."""

import math

import pytest
import torch
from PIL import Image

from zerosmooth.lab import evaluate, metrics
from zerosmooth.lab.world import WorldConfig, render_clip


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
    cfg = WorldConfig(min_objects=1, max_objects=1)
    clip = render_clip(1_000_000_123, 32, cfg)
    est = metrics.estimate_positions(clip.frames, clip.colors)
    assert (est - clip.positions).norm(dim=-1).max() < 0.6
    real = metrics.trajectory_metrics(est, 2)
    stutter = metrics.trajectory_metrics(metrics.estimate_positions(evaluate.repeat_frames(clip.frames[::2], 2), clip.colors), 2)
    assert real["lost"] == 0 and real["interp_err"] < 0.6 and stutter["accel"] > 1.5 * real["accel"]


def test_frechet_distance():
    a = torch.randn(50, 4)
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert metrics.frechet_distance(a + 3, a) == pytest.approx(9 * 4 / a.std(0).pow(2).mean().item(), rel=0.2)
    with pytest.raises(ValueError):
        metrics.frechet_distance(a[:1], a)


def test_evaluate_end_to_end(tmp_path):
    rows = evaluate.evaluate(evaluate.parse_args([
        "--model", "tiny", "--out", str(tmp_path), "--seeds", "2", "--scales", "2", "--steps", "1",
        "--frames", "2", "--methods", "no_positions,repeat,blend,direct,zerosmooth", "--threads", "1",
    ]))
    names = [r["method"] for r in rows]
    assert names == ["real", "repeat", "blend", "direct", "zerosmooth", "no_positions"]  # paper rows, then diagnostics
    assert next(r for r in rows if r["method"] == "repeat")["ssim_key"] == pytest.approx(1.0)
    assert not math.isnan(next(r for r in rows if r["method"] == "zerosmooth")["psnr_key"])
    for name in ("table.csv", "per_seed.csv", "table.md", "plot.png", "strips_2x.png"):
        assert (tmp_path / name).is_file()
    assert "| 2× | zerosmooth |" in (tmp_path / "table.md").read_text()
    with Image.open(tmp_path / "strips_2x.png") as strips:  # one 3×-enlarged row per name, real first
        assert strips.size == (110 + 3 * 4 * 32, len(names) * (3 * (2 + 32) + 3))


def test_diagnostics_are_opt_in():
    default = evaluate.parse_args([]).methods.split(",")
    assert default == list(evaluate.METHODS) and not set(default) & set(evaluate.DIAGNOSTICS)


def test_bad_method(tmp_path):
    with pytest.raises(ValueError, match="unknown methods"):
        evaluate.evaluate(evaluate.parse_args(["--model", "tiny", "--out", str(tmp_path), "--methods", "magic"]))
