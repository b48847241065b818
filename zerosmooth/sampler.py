"""The lockstep self-cascade (SPEC §1, §4, §6) as functions over a small plan.

:func:`make_plan` validates everything a call can get wrong before any model runs; :func:`run`
encodes the conditions, draws the shared noise and denoises. Every denoising step runs stage 1, 2,
…, S in order, each with its own scheduler; stage ``s ≥ 2`` reads the states stage ``s - 1``
recorded at the same step, and they are dropped as soon as they are read, so only one step's
states are ever alive (the paper offloads every step's states to the CPU instead).
A pull towards the *finished* previous stage (``method="zerosmooth+ddnm"``, the default, and
``"latent_ddnm"``) needs another order: stage ``p`` runs in a pass after stage ``p − 1`` has
finished, reading stage ``p − 1``'s states of every step held from its own pass when they fit
``ZeroSmoothConfig.key_state_budget``, else recomputed by re-running the earlier stages in lockstep
with it (the same output bit for bit). With ``key_frames="exact"`` the long stages' final latents
are moved, in stage order, so that their key frames are the previous stage's (SPEC §10).
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from diffusers.utils.torch_utils import randn_tensor

from . import baselines, color, noise
from .adapters import Adapter
from .adapters.base import Call, Stage
from .config import ZeroSmoothConfig
from .hooks import SessionSlot
from .residual import correct_key_frames, key_drift
from .state import Session, StageStep

OUTPUT_TYPES = ("pt", "pil", "np", "latent")


@dataclass(frozen=True)
class Plan:
    """One validated call: the config, the adapter, the parsed call and what follows from them."""

    config: ZeroSmoothConfig
    adapter: Adapter
    call: Call
    frame_counts: tuple[int, ...]
    window: int
    stride: int
    longest_shape: tuple[int, ...]


def _positive_integer(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def make_plan(adapter: Adapter, config: ZeroSmoothConfig, kwargs: dict) -> Plan:
    """Parse and check a call's pipeline arguments against ``config`` (no model runs).

    Raises:
        TypeError: an argument the adapter does not support, a missing condition, a bad generator.
        ValueError: any value out of range, named with what was expected.
    """
    call = adapter.parse(dict(kwargs))
    base = call.num_frames
    if isinstance(base, bool) or not isinstance(base, int) or base < 1:
        raise ValueError(f"num_frames (the base frame count) must be an integer >= 1, got {base!r}")
    _positive_integer("num_inference_steps", call.num_inference_steps)
    if call.output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {call.output_type!r}")
    generator = call.generator
    generators = generator if isinstance(generator, list) else [generator]
    if not all(g is None or isinstance(g, torch.Generator) for g in generators):
        raise TypeError(f"generator must be a torch.Generator, a list of them or None, got {generator!r}")
    if isinstance(call.eta, bool) or not isinstance(call.eta, numbers.Real) or call.eta < 0:
        raise ValueError(f"eta must be a number >= 0, got {call.eta!r}")
    adapter.check_call(call)
    trained = adapter.trained_frames()
    if trained is not None and base != trained:
        warnings.warn(
            f"num_frames={base} differs from the {trained} frames this model was trained on; ZeroSmooth's base "
            "stage is meant to run at the trained length", UserWarning, stacklevel=3,
        )
    window, stride = config.temporal_windows_for(base)
    frame_counts = tuple(config.frame_counts(base))
    longest_shape = tuple(adapter.latent_shape(call, frame_counts[-1]))
    if call.latents is not None:
        if not isinstance(call.latents, torch.Tensor) or tuple(call.latents.shape) != longest_shape:
            shape = list(call.latents.shape) if isinstance(call.latents, torch.Tensor) else type(call.latents).__name__
            raise ValueError(
                f"latents must be the longest stage's noise of shape {list(longest_shape)} "
                f"({frame_counts[-1]} = {base}·{config.scale}^{config.stages - 1} frames on dim "
                f"{adapter.latent_frame_dim}), got {shape}"
            )
        if not call.latents.is_floating_point():
            raise ValueError(f"latents must be a floating-point tensor, got dtype {call.latents.dtype}")
    if config.pulls and config.stages > 1:
        baselines.clean_latent_coefficient_supported(adapter.pipe.scheduler)
    return Plan(config, adapter, call, frame_counts, window, stride, longest_shape)


def max_timestep(scheduler, timesteps: torch.Tensor) -> Optional[float]:
    """``T`` for the ``"timestep"`` schedule, None when the timesteps are not training timesteps."""
    if getattr(scheduler.config, "timestep_type", "discrete") == "continuous":
        return None
    total = getattr(scheduler.config, "num_train_timesteps", None)
    if total is None:
        return None
    maximum = float(total - 1)
    values = timesteps.double()
    if bool((values < 0).any()) or bool((values > maximum).any()):
        return None
    return maximum


@dataclass
class Result:
    """What :func:`run` returns (the wrapper turns it into a ``ZeroSmoothOutput``)."""

    videos: list
    noise: torch.Tensor
    step_noise: Optional[list[torch.Tensor]]
    session: Session
    blend_per_step: list[float]
    residual_per_step: list[float]
    ddnm_per_step: list[float]
    key_drift: list[float]


class _Progress:
    """Counts finished stage-steps for a tqdm bar and a ``progress(done, total)`` callback."""

    def __init__(self, total: int, bar: bool, callback: Optional[Callable[[int, int], None]]):
        from tqdm.auto import tqdm

        self.total, self.done, self.callback = total, 0, callback
        self.bar = tqdm(total=total, desc="ZeroSmooth", disable=not bar)

    def extend(self, stage_steps: int) -> None:
        """Add ``stage_steps`` to the total (stages re-run because their states are not held)."""
        if stage_steps:
            self.total += stage_steps
            self.bar.total = self.total
            self.bar.refresh()

    def advance(self) -> None:
        self.done += 1
        self.bar.update()
        if self.callback is not None:
            self.callback(self.done, self.total)

    def close(self) -> None:
        self.bar.close()


def run(plan: Plan, slot: SessionSlot, progress_bar: bool = True,
        progress: Optional[Callable[[int, int], None]] = None) -> Result:
    """Denoise every stage of ``plan`` (in lockstep, or in passes for a pull) with the hooks reading
    ``slot``; set the key frames (``key_frames="exact"``); decode; return the videos."""
    config, call, adapter = plan.config, plan.call, plan.adapter
    adapter.encode(call)
    shared = call.latents
    if shared is None:
        shared = randn_tensor(plan.longest_shape, generator=call.generator, device=call.device, dtype=call.dtype)

    def new_stages(indices) -> list[Stage]:
        """Stages ``indices`` (1-based), each with its own scheduler, at their share of the shared noise."""
        stages = []
        for index in indices:
            stage = adapter.new_stage(call, index, plan.frame_counts[index - 1], config)
            start = noise.stage_noise(shared, adapter.latent_frame_dim, config.scale, config.stages, index)
            stage.latents = start.to(call.device) * stage.scheduler.init_noise_sigma
            stages.append(stage)
        return stages

    # A pull builds its stages pass by pass (below); stage 1 gives the timesteps either way.
    stages = new_stages(range(1, 2 if config.pulls else config.stages + 1))
    timesteps = stages[0].timesteps
    top = max_timestep(stages[0].scheduler, timesteps)
    count = len(timesteps)
    corrects = config.corrects
    blends = [config.blend(k, count, t, top) for k, t in enumerate(timesteps)]
    residuals = [config.residual(k, count, t, top) if corrects else 0.0 for k, t in enumerate(timesteps)]
    pulls = [config.ddnm(k, count, t, top) for k, t in enumerate(timesteps)]
    stochastic = call.eta > 0 and noise.accepts_variance_noise(stages[0].scheduler)
    step_noise = [] if stochastic else None

    def draw_step_noise() -> Optional[torch.Tensor]:
        if step_noise is None:
            return None
        drawn = randn_tensor(plan.longest_shape, generator=call.generator, device=call.device, dtype=call.dtype)
        step_noise.append(drawn)
        return drawn

    def pulled(stage: Stage, output, k: int, t, finished: list[Stage]) -> torch.Tensor:
        """Stage ``stage``'s latents after step ``k``: pulled towards the finished previous stage."""
        if not config.pulls or stage.index == 1:
            return output.prev_sample
        return baselines.ddnm_step(
            output, stage.scheduler, t, finished[stage.index - 2].latents, config.scale, adapter.latent_frame_dim,
            strength=pulls[k], spread=config.pull_spread, backend=_back_project_backend(config),
        )

    def coloured(stage: Stage, latents: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """AdaIN to the key frames of ``previous``, the previous stage's latents after the same step."""
        if not config.colours or stage.index == 1:
            return latents
        return color.adain_to_key_frames(latents, previous, config.scale, adapter.latent_frame_dim)

    session = Session(config, plan.window, plan.stride, torch.Generator().manual_seed(config.seed))
    ticker = _Progress(config.stages * count, progress_bar, progress)
    slot.session = session
    try:
        if config.pulls:
            # Pass p finishes stage p, pulled towards stage p − 1 finished in an earlier pass. It runs
            # stages first..p in lockstep, where stage first − 1 = p − 1 held its states of every
            # step from its own pass if they fit the budget, else first = 1.
            noises = [draw_step_noise() for _ in timesteps]
            finished: list[Stage] = []  # stage s as finished, at [s − 1]
            kv_starts = [session.kv_generator.get_state()]  # where stage s's K/V draws start, at [s − 1]
            first, held_steps = 1, []  # held_steps: stage first − 1's latents after each step, for colour
            for last in range(1, config.stages + 1):
                running = new_stages(range(first, last + 1))
                # Every stage starts its K/V draws where they start when the stages run one by one.
                generators = [torch.Generator().set_state(kv_starts[stage.index - 1]) for stage in running]
                ticker.extend((len(running) - 1) * count)
                session.cache.start_pass()
                hold, last_steps = last < config.stages, []
                for k, t in enumerate(timesteps):
                    for position, (stage, generator) in enumerate(zip(running, generators)):
                        session.kv_generator = generator
                        output = _step(plan, session, stage, k, t, blends, residuals, noises[k])
                        if position:
                            previous = running[position - 1].latents
                        else:
                            previous = held_steps[k] if held_steps else None
                        stage.latents = coloured(stage, pulled(stage, output, k, t, finished), previous)
                        ticker.advance()
                    if hold:  # give up as soon as the stage's states, at this step's rate, cannot fit
                        held = session.cache.bytes_held_by(last)
                        hold = held * count // (k + 1) <= config.key_state_budget
                    if not hold:
                        session.cache.discard(last)
                    elif config.colours:
                        last_steps.append(running[-1].latents)
                unread = len(session.cache) - session.cache.held_by(last)
                if unread:
                    raise RuntimeError(f"{unread} key states were recorded but never read in the pass of stage {last}")
                finished.append(running[-1])
                kv_starts.append(generators[-1].get_state())
                # Held states are read once: a stage not held is re-run from stage 1 in the next pass.
                first, held_steps = (last + 1, last_steps) if hold else (1, [])
            stages = finished
        else:
            for k, t in enumerate(timesteps):
                shared_step_noise = draw_step_noise()
                for stage in stages:
                    output = _step(plan, session, stage, k, t, blends, residuals, shared_step_noise)
                    previous = stages[stage.index - 2].latents if stage.index >= 2 else None
                    stage.latents = coloured(stage, output.prev_sample, previous)
                    ticker.advance()
                if len(session.cache):
                    raise RuntimeError(f"{len(session.cache)} key states were recorded but never read at step {k}")
    finally:
        slot.session = None
        ticker.close()
    drift = [key_drift(stage.latents, stages[stage.index - 2].latents, config.scale, adapter.latent_frame_dim)
             for stage in stages[1:]]
    if corrects and config.key_frames == "exact":
        for stage in stages[1:]:  # in order: stage 3 takes stage 2's exact key frames
            previous = stages[stage.index - 2].latents
            stage.latents = correct_key_frames(stage.latents, previous.to(stage.latents.dtype), config.scale, 1.0,
                                               config.residual_spread, adapter.latent_frame_dim)
    videos = [adapter.decode(call, stage, call.output_type) for stage in stages]
    adapter.finish()
    return Result(videos, shared, step_noise, session, blends, residuals, pulls, drift)


def _back_project_backend(config: ZeroSmoothConfig) -> str:
    """``back_project`` has no Triton kernel: ``auto``/``triton`` take the torch path."""
    return "reference" if config.backend == "reference" else "torch"


def _step(plan: Plan, session: Session, stage: Stage, k: int, t, blends, residuals, shared_step_noise) -> Any:
    """One denoising step of one stage; returns the scheduler output."""
    config, call = plan.config, plan.call
    long_branch = config.corrects and stage.index >= 2
    session.step = StageStep(
        stage=stage.index,
        num_frames=stage.num_frames,
        unet_batch=call.unet_batch,
        step_index=k,
        corrected=long_branch,
        record=config.corrects and stage.index < config.stages,
        blend=blends[k],
        residual=residuals[k],
        windowed=long_branch and config.temporal_windows,
        position_factor=stage.frame_rate_factor if long_branch and config.interpolate_positions else 1,
    )
    try:
        model_output = plan.adapter.model_output(call, stage, t)
    finally:
        session.step = None
    variance_noise = None
    if shared_step_noise is not None:
        variance_noise = noise.stage_noise(
            shared_step_noise, plan.adapter.latent_frame_dim, config.scale, config.stages, stage.index
        )
    return plan.adapter.scheduler_step(call, stage, model_output, t, variance_noise)
