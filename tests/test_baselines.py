"""Latent-space DDNM (SPEC §8): the step moves with the back-projected clean latent."""

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, PNDMScheduler

from zerosmooth.baselines import clean_latent_coefficient_supported, ddnm_step


def _projected(clean: torch.Tensor, reference: torch.Tensor, frame_dim: int) -> torch.Tensor:
    """``sample`` back-projection by hand: key frames 2i replaced by the reference."""
    expected = clean.clone()
    expected.index_copy_(frame_dim, torch.arange(0, clean.shape[frame_dim], 2), reference)
    return expected


def test_ddim_keeps_the_noise_and_swaps_the_clean_latent():
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    scheduler.set_timesteps(4)
    t = scheduler.timesteps[1]
    sample, noise = torch.randn(2, 1, 2, 6, 3, 3, dtype=torch.float64)
    reference = torch.randn(1, 2, 3, 3, 3, dtype=torch.float64)
    output = scheduler.step(noise, t, sample)
    previous = ddnm_step(output, scheduler, t, reference, scale=2, frame_dim=2)
    alpha_prev = scheduler.alphas_cumprod[int(t) - 1000 // 4].double()
    clean = _projected(output.pred_original_sample, reference, 2)
    torch.testing.assert_close(previous, alpha_prev.sqrt() * clean + (1 - alpha_prev).sqrt() * noise)


def test_euler_steps_towards_the_projected_clean_latent():
    scheduler = EulerDiscreteScheduler(prediction_type="v_prediction", timestep_type="continuous",
                                       use_karras_sigmas=True, sigma_min=0.002, sigma_max=700.0)
    scheduler.set_timesteps(3)
    t = scheduler.timesteps[0]
    sigma, sigma_next = scheduler.sigmas[0].double(), scheduler.sigmas[1].double()
    sample, model_output = torch.randn(2, 1, 6, 2, 3, 3, dtype=torch.float64)
    reference = torch.randn(1, 3, 2, 3, 3, dtype=torch.float64)
    output = scheduler.step(model_output, t, sample)
    previous = ddnm_step(output, scheduler, t, reference, scale=2, frame_dim=1)
    clean = _projected(output.pred_original_sample, reference, 1)
    torch.testing.assert_close(previous, sample + (sigma_next - sigma) * (sample - clean) / sigma)


def test_other_schedulers_are_refused():
    with pytest.raises(TypeError, match="latent_ddnm' supports DDIMScheduler and EulerDiscreteScheduler, got PNDM"):
        clean_latent_coefficient_supported(PNDMScheduler())
