"""Latent-space DDNM (SPEC §8): the step moves with the back-projected clean latent."""

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, PNDMScheduler

from zerosmooth.baselines import clean_latent_coefficient_supported, ddnm_step
from zs_kernels import frame_operator
from zs_kernels.frames import key_spread


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


@pytest.mark.parametrize("frame_dim", [1, 2])
def test_linear_spread_moves_the_in_between_frames_with_their_key_frames(frame_dim):
    """``spread="linear"``: the clean latent moves by ``P (y − A x̂0)`` with ``P = key_spread("linear")``
    (dense float64 oracle), on a 3-key-frame latent along either frame axis."""
    scheduler = EulerDiscreteScheduler(prediction_type="v_prediction", timestep_type="continuous",
                                       use_karras_sigmas=True, sigma_min=0.002, sigma_max=700.0)
    scheduler.set_timesteps(3)
    t = scheduler.timesteps[1]
    shape = [2, 4, 3, 3]
    shape.insert(frame_dim, 6)
    sample, model_output = torch.randn(2, *shape, dtype=torch.float64)
    reference_shape = list(shape)
    reference_shape[frame_dim] = 3
    reference = torch.randn(reference_shape, dtype=torch.float64)
    scheduler.step(model_output, scheduler.timesteps[0], sample)
    output = scheduler.step(model_output, t, sample)
    previous = ddnm_step(output, scheduler, t, reference, scale=2, frame_dim=frame_dim, strength=0.7, spread="linear")
    clean = output.pred_original_sample.movedim(frame_dim, 0)
    rest = clean.shape[1:]
    x, y = clean.flatten(1), reference.movedim(frame_dim, 0).flatten(1)
    A, P = frame_operator("sample", 3, 2), key_spread("linear", 3, 2)
    moved = (P @ (y - A @ x)).unflatten(1, rest).movedim(0, frame_dim)
    coefficient = float(1 - scheduler.sigmas[2] / scheduler.sigmas[1])
    torch.testing.assert_close(previous, output.prev_sample + 0.7 * coefficient * moved, rtol=0, atol=1e-12)
