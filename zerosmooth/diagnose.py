"""Where a model loses key-frame consistency, and how much its temporal layers do.

* :func:`key_frame_drift` runs a ZeroSmooth call with probes on every attention module, every
  residual-stream site (ResNet blocks, temporal layers) and the UNet's output, and reports, at the
  chosen denoising steps, how far the long branch's key-frame rows are from the key branch's
  values of the same module at the same step: the relative drift ``‖A h − h₀‖ / ‖h₀‖`` (``A`` =
  ``sample``, over every key frame, token and channel; 0 = pinned). Probes only read.
* :func:`mixer_report` lists every spatial/temporal mixer (diffusers ``AlphaBlender``) of a model
  with its spatial weight ``α`` and the temporal share of its output measured on a plain run,
  ``‖out − x_spatial‖ / ‖out‖`` — how much the temporal branch changes what the block passes on.

``zerosmooth diagnose`` (:func:`write_report`) writes both as tables, and the drift as a plot when
matplotlib (the ``lab`` extra) is installed.
"""

from __future__ import annotations

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


def default_steps(pipe) -> int:
    """The denoising steps the pipeline's ``__call__`` runs by default."""
    import inspect

    return inspect.signature(type(pipe).__call__).parameters["num_inference_steps"].default


def drift_table(drifts: list[Drift]) -> str:
    """Markdown: one row per module in forward order, one drift column per measured step."""
    steps = sorted({d.step for d in drifts})
    rows: dict[tuple[int, str, str], dict[int, float]] = {}
    for d in drifts:
        rows.setdefault((d.order, d.module, d.kind), {})[d.step] = d.drift
    lines = ["| module | kind | " + " | ".join(f"drift at step {k}" for k in steps) + " |",
             "|---|---|" + "---|" * len(steps)]
    for (_, module, kind), values in sorted(rows.items()):
        lines.append(f"| {module} | {kind} | " + " | ".join(f"{values.get(k, float('nan')):.4f}" for k in steps) + " |")
    return "\n".join(lines)


def mixer_table(rows: list[dict]) -> str:
    lines = ["| mixer | spatial weight α | temporal share of the output |", "|---|---|---|"]
    lines += [f"| {r['mixer']} | {r['spatial_weight']:.3f} | {r['temporal_share']:.3f} |" for r in rows]
    return "\n".join(lines)


def _plot_drift(drifts: list[Drift], path: Path) -> bool:
    """Drift per module (forward order) and step; False when matplotlib (the lab extra) is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    orders = sorted({d.order for d in drifts})
    position = {order: index for index, order in enumerate(orders)}
    fig, ax = plt.subplots(figsize=(14, 5))
    for step in sorted({d.step for d in drifts}):
        points = sorted((position[d.order], d.drift) for d in drifts if d.step == step)
        ax.plot(*zip(*points), "-", alpha=0.6, label=f"step {step}")
    markers = {"spatial attention": "o", "temporal attention": "s", "resnets": "^", "temporal": "D", "output": "*"}
    for kind, marker in markers.items():
        points = [(position[d.order], d.drift) for d in drifts if d.kind == kind]
        if points:
            ax.scatter(*zip(*points), marker=marker, s=18, color="black", label=kind)
    ax.set_xlabel("module, in forward order")
    ax.set_ylabel("key-frame drift ‖A h − h₀‖ / ‖h₀‖")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def write_report(pipe, config: ZeroSmoothConfig, steps: Sequence[int], pipeline_kwargs: dict, out: Path) -> list[Path]:
    """Measure drift (at ``steps``) and the mixers for one call and write ``out``/drift.md, drift.csv,
    drift.png (when matplotlib is installed) and mixers.md (models with mixers). Returns the files."""
    out.mkdir(parents=True, exist_ok=True)
    kwargs = dict(pipeline_kwargs, output_type="latent")
    generator = kwargs.get("generator")
    state = None if generator is None else generator.get_state()
    drifts, _ = key_frame_drift(pipe, config, steps=steps, **kwargs)
    written = [out / "drift.md", out / "drift.csv"]
    written[0].write_text(drift_table(drifts) + "\n")
    with open(written[1], "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["module", "kind", "order", "step", "drift"])
        writer.writerows((d.module, d.kind, d.order, d.step, d.drift) for d in drifts)
    if _plot_drift(drifts, out / "drift.png"):
        written.append(out / "drift.png")
    if state is not None:
        generator.set_state(state)  # the mixers are measured on the same noise
    mixers = mixer_report(pipe, **kwargs)
    if mixers:
        (out / "mixers.md").write_text(mixer_table(mixers) + "\n")
        written.append(out / "mixers.md")
    return written
