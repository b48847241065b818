"""Baselines of SPEC §8, selected with ``ZeroSmoothConfig.method``.

* ``"direct"``: the base model run at every stage's frame count with no correction, no temporal
  windows and integer positions (the cascade runs those stages with plain processors).
* ``"latent_ddnm"``: stages run one after another; after every denoising step of stage ``s ≥ 2``
  the predicted clean latent ``x̂0`` is back-projected with ``sample`` onto the *finished* latents
  of stage ``s - 1`` and the step's result moves with it (:func:`ddnm_step`); ``ddnm_spread="linear"``
  also moves the in-between frames with their key frames, as the residual correction's spread does.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler

import zs_kernels

from .residual import correct_key_frames


def clean_latent_coefficient(scheduler, timestep) -> float:
    """How much a step's ``prev_sample`` moves per unit change of its predicted clean latent.

    Call right after ``scheduler.step(…, timestep, …)``. DDIM (keeping the predicted noise, as
    DDNM does): ``√ᾱ_prev``; Euler: ``1 - σ_next / σ``.

    Raises:
        TypeError: for schedulers other than ``DDIMScheduler`` and ``EulerDiscreteScheduler``.
    """
    if isinstance(scheduler, DDIMScheduler):
        previous = int(timestep) - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
        alpha = scheduler.alphas_cumprod[previous] if previous >= 0 else scheduler.final_alpha_cumprod
        return float(alpha) ** 0.5
    if isinstance(scheduler, EulerDiscreteScheduler):
        index = scheduler.step_index  # already advanced past this step
        sigma, sigma_next = scheduler.sigmas[index - 1], scheduler.sigmas[index]
        return float(1 - sigma_next / sigma)
    raise TypeError(
        f"method='latent_ddnm' supports DDIMScheduler and EulerDiscreteScheduler, got {type(scheduler).__name__}"
    )


def ddnm_step(step_output, scheduler, timestep, reference: torch.Tensor, scale: int, frame_dim: int,
              strength: float = 1.0, spread: str = "keys", backend: str = "torch") -> torch.Tensor:
    """``prev_sample`` of ``step_output`` with its clean latent back-projected onto ``reference``.

    Args:
        step_output: the scheduler's output for the long stage (``prev_sample`` and
            ``pred_original_sample``, latent layout with ``n·t0`` frames along ``frame_dim``).
        scheduler: the long stage's scheduler, just stepped with ``timestep``.
        reference: the previous stage's finished latents, ``t0`` frames along ``frame_dim``.
        strength: how far the clean latent moves towards its back-projection (1: all the way, the
            plain DDNM step; 0: the step is unchanged) — the baseline's knob (SPEC §10).
        spread: how the key frames' correction reaches the other frames, as for the residual
            correction: ``"keys"`` (``A⁺``, the plain back-projection) or ``"linear"``
            (:func:`zs_kernels.frames.key_spread`).
        backend: ``zs_kernels.back_project`` backend (``spread="keys"``).
    """
    clean = step_output.pred_original_sample
    if strength == 0:
        return step_output.prev_sample
    reference = reference.to(clean.dtype)
    if spread == "keys":
        projected = zs_kernels.back_project(clean, reference, "sample", scale, frame_dim, backend=backend)
    else:
        projected = correct_key_frames(clean, reference, scale, 1.0, spread, frame_dim)
    return step_output.prev_sample + strength * clean_latent_coefficient(scheduler, timestep) * (projected - clean)


def clean_latent_coefficient_supported(scheduler) -> None:
    """Raise the TypeError of :func:`clean_latent_coefficient` up front, before any denoising."""
    if not isinstance(scheduler, (DDIMScheduler, EulerDiscreteScheduler)):
        raise TypeError(
            f"method='latent_ddnm' supports DDIMScheduler and EulerDiscreteScheduler, got {type(scheduler).__name__}"
        )
