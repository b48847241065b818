"""Where a model loses key-frame consistency, and how much its temporal layers do.

* :func:`key_frame_drift` runs a ZeroSmooth call with probes on every attention module, every
  residual-stream site (ResNet blocks, temporal layers) and the UNet's output, and reports, at the
  chosen denoising steps, how far the long branch's key-frame rows are from the key branch's
  values of the same module at the same step: the relative drift ``‖A h − h₀‖ / ‖h₀‖`` (``A`` =
  ``sample``, over every key frame, token and channel; 0 = pinned). Probes only read.
* :func:`mixer_report` lists every spatial/temporal mixer (diffusers ``AlphaBlender``) of a model
  with its spatial weight ``α`` and the temporal share of its output measured on a plain run,
  ``‖out − x_spatial‖ / ‖out‖`` — how much the temporal branch changes what the block passes on.

``zerosmooth diagnose`` (:func:`main`) writes both as tables, and the drift as a plot when
matplotlib (the ``lab`` extra) is installed.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from .api import ZeroSmooth
from .attention import TEMPORAL
from .config import RESIDUAL_SITES, ZeroSmoothConfig
from .hooks import SessionSlot, ZeroSmoothHook, install, remove


@dataclass(frozen=True)
class Drift:
    """One measurement: ``module`` (qualified name, or ``"unet output"``) of ``kind``
    (``"spatial attention"``, ``"temporal attention"``, ``"resnets"``, ``"temporal"``,
    ``"output"``), its position in forward order, at denoising step ``step``."""

    module: str
    kind: str
    order: int
    step: int
    drift: float


def _relative_drift(long: torch.Tensor, key: torch.Tensor, scale: int) -> float:
    """``‖long[:, ::n] − key‖ / ‖key‖`` over frames-on-dim-1 views, in float64."""
    rows = long[:, ::scale].double()
    key = key.double()
    return float((rows - key).norm() / key.norm().clamp_min(1e-30))


class _Probe(ZeroSmoothHook):
    """Keeps stage 1's output of one module at the chosen steps and measures stage 2 against it."""

    def __init__(self, slot: SessionSlot, name: str, kind: str, order: int, frames_view, steps, results: list):
        super().__init__(slot)
        self.name, self.kind, self.order = name, kind, order
        self.frames_view = frames_view  # (output, StageStep) -> [B, t, …] with frames on dim 1
        self.steps, self.results = steps, results
        self.kept: dict[int, torch.Tensor] = {}  # step → stage 1's output (latent DDNM runs stage 1 to the end first)

    def post_forward(self, module, output):
        session = self.slot.session
        step = None if session is None else session.step
        if step is None or step.step_index not in self.steps or step.stage > 2:
            return output
        frames = self.frames_view(output[0] if isinstance(output, tuple) else output, step)
        if step.stage == 1:
            self.kept[step.step_index] = frames.detach().clone()
        elif step.step_index in self.kept:
            drift = _relative_drift(frames, self.kept.pop(step.step_index), session.config.scale)
            self.results.append(Drift(self.name, self.kind, self.order, step.step_index, drift))
        return output


def _batch_frames(output, step):
    return output.unflatten(0, (step.unet_batch, step.num_frames))


def _attention_frames(axis: str):
    def view(output, step):
        if axis == TEMPORAL:  # [B·L, t, C]
            return output.unflatten(0, (step.unet_batch, -1)).transpose(1, 2)
        return _batch_frames(output, step)
    return view


def key_frame_drift(pipe, config: Optional[ZeroSmoothConfig] = None, steps: Sequence[int] = (0,),
                    **pipeline_kwargs) -> tuple[list[Drift], object]:
    """Per-module key-frame drift of stage 2 against stage 1 at denoising ``steps`` (0-based).

    Runs ``ZeroSmooth(pipe, config)(**pipeline_kwargs)`` (``config.stages`` is at least 2) with read-only
    probes. Returns the measurements (forward order, then step) and the call's ``ZeroSmoothOutput``.

    Raises:
        ValueError: a step outside ``[0, num_inference_steps)``.
    """
    config = config or ZeroSmoothConfig()
    if config.stages < 2:
        raise ValueError(f"key_frame_drift compares stage 2 with stage 1: config.stages must be >= 2, got {config.stages}")
    smoother = ZeroSmooth(pipe, config)
    adapter, slot = smoother.adapter, smoother.slot
    wanted = set(steps)
    results: list[Drift] = []
    probes = []
    for name, module, axis in adapter.attention_modules():
        probes.append((name, module, f"{axis} attention", _attention_frames(axis)))
    for site in RESIDUAL_SITES:
        for name, module in adapter.residual_sites((site,)):
            probes.append((name, module, site, _batch_frames))
    frame_dim = adapter.latent_frame_dim

    def unet_frames(output, step):
        return output.movedim(frame_dim, 1)

    probes.append(("unet output", pipe.unet, "output", unet_frames))
    order = {name: index for index, (name, _) in enumerate(pipe.unet.named_modules())}
    order["unet output"] = len(order)
    pairs = [(module, _Probe(slot, name, kind, order[name], view, wanted, results))
             for name, module, kind, view in probes]
    count = pipeline_kwargs.get("num_inference_steps", adapter.default("num_inference_steps"))
    if not wanted or any(not 0 <= k < count for k in wanted):
        raise ValueError(f"steps must be denoising steps in [0, {count}), got {sorted(wanted)}")
    # The probes go on after the wrapper's own hooks, so they wrap them and see corrected outputs.
    smoother.enable()
    installed = install(pairs, name=PROBE_HOOK_NAME)
    try:
        output = smoother(progress_bar=False, **pipeline_kwargs)
    finally:
        remove(installed, name=PROBE_HOOK_NAME)
        smoother.disable()
    results.sort(key=lambda d: (d.order, d.step))
    return results, output


PROBE_HOOK_NAME = "zerosmooth_probe"


def mixer_report(pipe, **pipeline_kwargs) -> list[dict]:
    """Every ``AlphaBlender`` of the pipeline's UNet with its spatial weight and measured temporal share.

    Runs the plain pipeline with ``pipeline_kwargs`` and averages, over its UNet calls, each mixer's
    ``‖out − x_spatial‖ / ‖out‖``. Rows: ``{"mixer", "spatial_weight", "temporal_share"}``; empty for
    models without mixers (AnimateDiff, ModelScope add their temporal layers residually).
    """
    from diffusers.models.resnet import AlphaBlender

    shares: dict[str, list[float]] = {}
    weights: dict[str, float] = {}
    handles = []
    for name, module in pipe.unet.named_modules():
        if not isinstance(module, AlphaBlender):
            continue
        alpha = float(torch.sigmoid(module.mix_factor.detach().float()).reshape(-1)[0])
        weights[name] = 1.0 - alpha if module.switch_spatial_to_temporal_mix else alpha

        def hook(module, args, kwargs, output, name=name):
            spatial = kwargs.get("x_spatial", args[0] if args else None)
            share = (output.double() - spatial.double()).norm() / output.double().norm().clamp_min(1e-30)
            shares.setdefault(name, []).append(float(share))

        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            pipe(**pipeline_kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return [
        {"mixer": name, "spatial_weight": weights[name], "temporal_share": sum(values) / len(values)}
        for name, values in shares.items()
    ]
