"""The cascade on the tiny text-to-video pipelines: AnimateDiff (UNetMotionModel, sinusoidal PE) and
ModelScope/zeroscope (TextToVideoSDPipeline, UNet3DConditionModel, no PE), both with DDIM."""

import pytest
import torch
from zs_helpers import count_unet_calls, feed_variance_noise, frames, generator, text_kwargs

from zerosmooth import ZeroSmooth, ZeroSmoothConfig
from zerosmooth.noise import stage_noise
from zerosmooth.lab.tiny import tiny_animatediff_pipeline, tiny_text_to_video_pipeline


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def animatediff():
    pipe = tiny_animatediff_pipeline(0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def text_to_video():
    pipe = tiny_text_to_video_pipeline(0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_animatediff_key_branch_bit_identical_ddim_eta0(animatediff):
    out = ZeroSmooth(animatediff)(generator=generator(0), progress_bar=False, **text_kwargs())
    assert [tuple(video.shape) for video in out.stages] == [(1, 4, 3, 16, 16), (1, 8, 3, 16, 16)]
    assert tuple(out.noise.shape) == (1, 4, 8, 8, 8)  # [B, C, t_S, h, w]
    assert out.step_noise is None
    plain = frames(animatediff(generator=generator(0), latents=stage_noise(out.noise, 2, 2, 2, 1), **text_kwargs()))
    assert torch.equal(plain, out.stages[0])


def test_animatediff_scale3_three_stages_beyond_max_seq_length(animatediff):
    """4 → 12 → 36 frames: stage 3 is corrected by stage 2's corrected states, and 36 frames exceed
    the motion modules' max_seq_length of 32 (stock diffusers fails there)."""
    config = ZeroSmoothConfig(scale=3, stages=3)
    out = ZeroSmooth(animatediff, config)(generator=generator(0), progress_bar=False,
                                          **text_kwargs(num_inference_steps=1, output_type="latent"))
    assert out.num_frames == [4, 12, 36]
    assert [video.shape[2] for video in out.stages] == [4, 12, 36]
    assert all(torch.isfinite(video).all() for video in out.stages)
    # Stage 2 records (and is read by stage 3) on top of stage 1's states.
    assert out.key_state_offload_bytes > out.key_state_peak_bytes > 0


def test_text_to_video_ddim_eta1_shares_per_step_noise(text_to_video):
    config = ZeroSmoothConfig(stages=2)
    out = ZeroSmooth(text_to_video, config)(generator=generator(0), progress_bar=False, eta=1.0, **text_kwargs())
    assert len(out.step_noise) == 2 and tuple(out.step_noise[0].shape) == (1, 4, 8, 8, 8)
    key_noise = [stage_noise(step, 2, 2, 2, 1) for step in out.step_noise]
    with feed_variance_noise(text_to_video, key_noise, frame_batch=True):
        plain = frames(text_to_video(generator=generator(0), latents=stage_noise(out.noise, 2, 2, 2, 1), eta=1.0,
                                     **text_kwargs()))
    assert torch.equal(plain, out.stages[0])


def test_method_plus_ddnm_passes_share_per_step_noise(text_to_video):
    """With DDIM's η = 1 every pass re-runs its stages with the step noise drawn once: re-running the
    earlier stages (budget 0) equals holding their states."""
    def run(**overrides):
        config = ZeroSmoothConfig(stages=3, **overrides)
        return ZeroSmooth(text_to_video, config)(generator=generator(0), progress_bar=False, eta=1.0,
                                                 **text_kwargs(output_type="latent"))

    passes, held = run(key_state_budget=0), run()
    assert len(passes.step_noise) == 2
    for mine, theirs in zip(passes.stages + passes.step_noise, held.stages + held.step_noise):
        assert torch.equal(mine, theirs)


def test_direct_baseline_is_the_plain_model_at_every_frame_count(text_to_video):
    out = ZeroSmooth(text_to_video, ZeroSmoothConfig(method="direct"))(
        generator=generator(4), progress_bar=False, **text_kwargs(num_inference_steps=1))
    direct_kwargs = text_kwargs(num_frames=8, num_inference_steps=1)
    plain = frames(text_to_video(generator=generator(4), latents=out.noise, **direct_kwargs))
    assert torch.equal(plain, out.frames)
    assert out.key_state_peak_bytes == 0


def test_determinism_and_seeds(text_to_video):
    def run(seed, config_seed=0):
        config = ZeroSmoothConfig(seed=config_seed)
        return ZeroSmooth(text_to_video, config)(generator=generator(seed), progress_bar=False,
                                                 **text_kwargs(num_inference_steps=1, output_type="latent")).frames

    first = run(0)
    assert torch.equal(first, run(0))
    assert not torch.allclose(first, run(1))
    # The config's seed drives the spatial K/V operator draws.
    assert not torch.equal(first, run(0, config_seed=1))


def test_color_correction_matches_key_frame_statistics(text_to_video):
    out = ZeroSmooth(text_to_video, ZeroSmoothConfig(color_correction=True, key_frames="free"))(
        generator=generator(0), progress_bar=False, **text_kwargs(num_inference_steps=1, output_type="latent"))
    base, long = out.stages
    keys = base.repeat_interleave(2, dim=2)
    torch.testing.assert_close(long.mean(dim=(-2, -1)), keys.mean(dim=(-2, -1)), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(long.std(dim=(-2, -1)), keys.std(dim=(-2, -1)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["direct", "latent_ddnm"])
def test_baselines_ignore_color_correction(text_to_video, method):
    """Colour correction is part of the method: on by default, it must not touch a baseline's
    videos (bit-identical with it on and off), while it does change the method's."""
    def run(**overrides):
        out = ZeroSmooth(text_to_video, ZeroSmoothConfig(**overrides))(
            generator=generator(0), progress_bar=False, **text_kwargs(num_inference_steps=2, output_type="latent"))
        return out.stages[1]

    assert torch.equal(run(method=method), run(method=method, color_correction=False))
    assert not torch.allclose(run(), run(color_correction=False))


def test_progress_reports_stages_times_steps_and_pil_output(text_to_video):
    seen = []
    out = ZeroSmooth(text_to_video, ZeroSmoothConfig(stages=1))(
        generator=generator(0), progress_bar=False, progress=lambda done, total: seen.append((done, total)),
        **text_kwargs(num_frames=2, num_inference_steps=2, output_type="pil"))
    assert seen == [(1, 2), (2, 2)]
    assert len(out.stages) == 1 and len(out.frames) == 1 and len(out.frames[0]) == 2
    assert out.frames[0][0].size == (16, 16)


def test_text_bad_input_fails_before_denoising(text_to_video):
    with count_unet_calls(text_to_video) as calls:
        with pytest.raises(TypeError, match="needs prompt= or prompt_embeds="):
            ZeroSmooth(text_to_video)(progress_bar=False, num_frames=4)
        with pytest.raises(ValueError, match=r"num_frames \(the base frame count\) must be an integer >= 1, got '4'"):
            ZeroSmooth(text_to_video)(progress_bar=False, **text_kwargs(num_frames="4"))
        with pytest.raises(ValueError, match=r"latents must be the longest stage's noise of shape \[1, 4, 16, 8, 8\]"):
            ZeroSmooth(text_to_video, ZeroSmoothConfig(stages=3))(
                progress_bar=False, latents=torch.zeros(1, 4, 8, 8, 8), **text_kwargs())
        with pytest.raises(ValueError, match="output_type must be one of"):
            ZeroSmooth(text_to_video)(progress_bar=False, **text_kwargs(output_type="mp4"))
    assert calls[0] == 0
