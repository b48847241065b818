"""Metrics for high-frame-rate videos of the procedural world.

All videos are float tensors ``[T, 3, H, W]`` in [0, 1].

- ``psnr`` / ``ssim``: the paper's consistency metric, applied to the long video's key frames
  ``n·i`` against the base video.
- ``estimate_positions`` + ``trajectory_metrics``: objects are found again by colour (the world's
  object colours are saturated and its backgrounds grey), their centroids tracked per frame.
- ``clip_features`` + ``frechet_distance``: a Fréchet distance between Gaussians fitted to
  hand-crafted spatio-temporal statistics of clips. It is a cheap, documented *proxy* for FVD (no
  pretrained I3D network is available offline), sensitive to appearance, motion energy and
  temporal regularity (e.g. the stutter of frame repetition), not to semantics.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over frames of the PSNR (dB, data range 1) between videos ``a`` and ``b``."""
    mse = ((a.double() - b.double()) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(1 / mse)).mean())


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7, sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al. 2004, data range 1, per channel, Gaussian window) over frames.

    A 7-pixel window rather than the usual 11 because the world's frames are only 32 pixels wide.
    """
    a, b = a.double(), b.double()
    x = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(a.shape[1], 1, window, window)

    def blur(t):
        return F.conv2d(t, kernel, groups=a.shape[1])

    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def estimate_positions(video: torch.Tensor, colors: torch.Tensor, tolerance: float = 0.25,
                       min_pixels: float = 2.0) -> torch.Tensor:
    """Centroid (x, y), in pixel coordinates, of each object colour in every frame.

    video: [T, 3, H, W]; colors: [K, 3]. A pixel belongs to colour ``k`` with weight
    ``max(0, 1 − ‖pixel − colour‖ / tolerance)``. Returns [T, K, 2], NaN where the colour covers
    less than ``min_pixels`` pixels' worth of weight (object lost).
    """
    t, _, h, w = video.shape
    dist = (video[:, None] - colors[None, :, :, None, None]).norm(dim=2)  # [T, K, H, W]
    weight = (1 - dist / tolerance).clamp_min(0)
    mass = weight.sum((2, 3))
    ys = torch.arange(h, dtype=video.dtype) + 0.5
    xs = torch.arange(w, dtype=video.dtype) + 0.5
    cx = (weight * xs[None, None, None, :]).sum((2, 3)) / mass.clamp_min(1e-8)
    cy = (weight * ys[None, None, :, None]).sum((2, 3)) / mass.clamp_min(1e-8)
    pos = torch.stack([cx, cy], dim=-1)
    pos[mass < min_pixels] = float("nan")
    return pos


def trajectory_metrics(positions: torch.Tensor, scale: int) -> dict[str, float]:
    """Trajectory quality of a long video from its tracked object positions [T, K, 2].

    - ``interp_err``: mean distance (px) of each in-between frame's object positions from the
      straight-line motion between its two key frames (frames ``n·i`` and ``n·(i+1)``); frames
      after the last key frame have no second key frame and are skipped.
    - ``accel``: mean magnitude (px/frame²) of the second difference of positions over the whole
      video; smooth motion has small acceleration, stutter (repetition) has large spikes.
    - ``lost``: fraction of (frame, object) pairs where the object was not found.
    NaN positions are left out of every mean.
    """
    t = positions.shape[0]
    errors = []
    for f in range(t):
        i, r = divmod(f, scale)
        if r == 0 or scale * (i + 1) >= t:
            continue
        a, b = positions[scale * i], positions[scale * (i + 1)]
        expected = a + (b - a) * (r / scale)
        errors.append((positions[f] - expected).norm(dim=-1))
    interp = torch.stack(errors) if errors else torch.full((1,), float("nan"))
    accel = (positions[2:] - 2 * positions[1:-1] + positions[:-2]).norm(dim=-1)
    return {
        "interp_err": _nanmean(interp),
        "accel": _nanmean(accel),
        "lost": float(torch.isnan(positions[..., 0]).float().mean()),
    }


def _nanmean(x: torch.Tensor) -> float:
    x = x[~torch.isnan(x)]
    return float(x.mean()) if x.numel() else float("nan")


FEATURE_NAMES = (
    "mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b",
    "spatial_grad", "temporal_diff", "temporal_diff2", "diff_variability", "diff_lag1_corr",
)


def clip_features(video: torch.Tensor) -> torch.Tensor:
    """An 11-dimensional statistics vector of a clip [T, 3, H, W] (see ``FEATURE_NAMES``):
    mean and std of each colour channel, mean spatial gradient magnitude, mean |frame difference|,
    mean |second difference|, the coefficient of variation over time of the per-step mean
    |difference| (high for stutter), and the lag-1 correlation of consecutive difference images
    (high for smooth motion, low or negative for repetition and jitter)."""
    v = video.double()
    d = v[1:] - v[:-1]
    d2 = v[2:] - 2 * v[1:-1] + v[:-2]
    grad = (v[..., 1:, :-1] - v[..., :-1, :-1]).abs() + (v[..., :-1, 1:] - v[..., :-1, :-1]).abs()
    step = d.abs().flatten(1).mean(1)
    flat = d.flatten(1)
    corr = F.cosine_similarity(flat[1:], flat[:-1], dim=1, eps=1e-8).mean()
    return torch.cat([
        v.mean((0, 2, 3)),
        v.std(dim=(0, 2, 3)),
        grad.mean().view(1),
        d.abs().mean().view(1),
        d2.abs().mean().view(1),
        (step.std() / step.mean().clamp_min(1e-8)).view(1),
        corr.view(1),
    ]).float()


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature rows ``a`` [N, D] and ``b`` [M, D]:
    ``‖μa − μb‖² + tr(Σa + Σb − 2 (Σa^½ Σb Σa^½)^½)``, as in FID/FVD. Features are first
    standardised with the real set's (``b``'s) per-dimension std so no statistic dominates by unit.
    """
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("frechet_distance needs at least 2 clips on each side")
    a, b = a.double().numpy(), b.double().numpy()
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")  # e.g. statistics of clips too short to have them
    scale = b.std(0) + 1e-6
    a, b = a / scale, b / scale
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = _sqrtm_psd(cov_a)
    cross = _sqrtm_psd(root_a @ cov_b @ root_a)
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * cross))
    return max(value, 0.0) if math.isfinite(value) else float("nan")


def _sqrtm_psd(m: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative round-off clipped)."""
    vals, vecs = np.linalg.eigh((m + m.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
