"""The cascade on the tiny Stable Video Diffusion pipeline (Euler / EDM, image-to-video)."""

import pytest
import torch
from zs_helpers import count_unet_calls, frames, generator, svd_kwargs

from zerosmooth import ZeroSmooth, ZeroSmoothConfig, hooks
from zerosmooth.noise import stage_noise
from zerosmooth.lab.tiny import tiny_svd_pipeline


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_svd_pipeline(0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def cascade(pipe):
    """The default 2× cascade, 4 → 8 frames, two Euler steps."""
    return ZeroSmooth(pipe)(generator=generator(0), progress_bar=False, **svd_kwargs())


def test_stage_shapes_and_shared_noise(cascade):
    assert cascade.num_frames == [4, 8]
    assert [tuple(video.shape) for video in cascade.stages] == [(1, 4, 3, 16, 16), (1, 8, 3, 16, 16)]
    assert cascade.frames is cascade.stages[-1]
    assert tuple(cascade.noise.shape) == (1, 8, 4, 8, 8)  # [B, t_S, C, h, w]
    assert cascade.step_noise is None  # Euler adds no noise
    # EDM timesteps are not training timesteps: the strength follows the progress 1 - k/N.
    assert cascade.blend_per_step == pytest.approx([0.8, 0.4])
    assert cascade.residual_per_step == [1.0, 1.0]  # the residual-stream correction acts at every step by default


def test_key_branch_is_bit_identical_to_the_plain_pipeline(pipe, cascade):
    latents = stage_noise(cascade.noise, 1, 2, 2, 1)
    plain = frames(pipe(generator=generator(0), latents=latents, **svd_kwargs()))
    assert torch.equal(plain, cascade.stages[0])


def test_key_state_cache_holds_a_stage_within_the_budget_else_one_step(pipe, cascade):
    # Only stage 1 records, the same amount every step. The default holds both steps' states (well
    # within its budget) for stage 2, run after it; the lockstep cascade holds one step's.
    assert cascade.key_state_peak_bytes == cascade.key_state_offload_bytes > 0
    lockstep = ZeroSmooth(pipe, ZeroSmoothConfig(method="zerosmooth"))(generator=generator(0), progress_bar=False,
                                                                       **svd_kwargs())
    assert lockstep.key_state_offload_bytes == 2 * lockstep.key_state_peak_bytes == cascade.key_state_offload_bytes


def test_strength_zero_full_window_equals_direct_inference(pipe):
    """With w = 0, no residual-stream correction, one window over all frames and integer positions,
    the long branch is the base model at 8 frames with fps · 2 and guidance over 8 frames, up to
    float rounding (fused QKV projection)."""
    config = ZeroSmoothConfig.paper(strength=0.0, temporal_windows=False, interpolate_positions=False)
    long = ZeroSmooth(pipe, config)(generator=generator(1), progress_bar=False,
                                    **svd_kwargs(output_type="latent", fps=7))
    direct = pipe(generator=generator(1), latents=long.noise, **svd_kwargs(output_type="latent", num_frames=8, fps=14))
    torch.testing.assert_close(long.stages[1], frames(direct), rtol=1e-4, atol=1e-4)


def test_latent_ddnm_pins_key_frames_to_the_base_video(pipe):
    config = ZeroSmoothConfig(method="latent_ddnm")
    out = ZeroSmooth(pipe, config)(generator=generator(0), progress_bar=False, **svd_kwargs(output_type="latent"))
    base, long = out.stages
    # Euler's last step lands on the predicted clean latent, which DDNM has projected onto the base.
    torch.testing.assert_close(long[:, ::2], base, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(long[:, 1::2], base, atol=1e-3)


def _ddnm_run(pipe, **overrides):
    config = ZeroSmoothConfig(**overrides)
    return ZeroSmooth(pipe, config)(generator=generator(0), progress_bar=False,
                                    **svd_kwargs(output_type="latent", num_inference_steps=3))


@pytest.mark.parametrize("stages, kv_operator", [(2, "random_box"), (3, "sample")])
def test_method_plus_ddnm_without_pull_is_the_method(pipe, stages, kv_operator):
    """With no pull and no budget, every stage of ``zerosmooth+ddnm``'s last pass reads the same
    states at the same step as the lockstep cascade, so it is the lockstep method bit for bit,
    colour correction included, at the same key-state peak. (Three stages use a fixed K/V operator:
    the passes give every stage the random K/V draws it gets with the stages run one by one, which
    the lockstep cascade interleaves.)"""
    lockstep = _ddnm_run(pipe, stages=stages, kv_operator=kv_operator, method="zerosmooth")
    passes = _ddnm_run(pipe, stages=stages, kv_operator=kv_operator, ddnm_strength=0.0, key_state_budget=0)
    for mine, theirs in zip(passes.stages, lockstep.stages):
        assert torch.equal(mine, theirs)
    assert passes.key_state_peak_bytes == lockstep.key_state_peak_bytes
    assert passes.key_state_offload_bytes == lockstep.key_state_offload_bytes


@pytest.mark.parametrize("stages", [2, 3])
def test_method_plus_ddnm_is_the_same_whatever_the_budget(pipe, stages):
    """Holding a stage's states of every step (the default budget, ample here) and re-running the
    earlier stages instead (budget 0) give the same videos bit for bit (random K/V draws, pull,
    colour and the final move included); re-running keeps the lockstep cascade's key-state peak.
    A budget that fits stage 1 but not stage 2 mixes the two, with the same result."""
    lockstep = _ddnm_run(pipe, stages=stages, method="zerosmooth")
    held = _ddnm_run(pipe, stages=stages)
    passes = _ddnm_run(pipe, stages=stages, key_state_budget=0)
    for mine, theirs in zip(passes.stages, held.stages):
        assert torch.equal(mine, theirs)
    assert not torch.allclose(passes.stages[-1], lockstep.stages[-1])
    assert passes.key_state_peak_bytes == lockstep.key_state_peak_bytes
    assert held.key_state_offload_bytes == passes.key_state_offload_bytes == lockstep.key_state_offload_bytes
    assert held.key_state_peak_bytes <= held.key_state_offload_bytes
    if stages == 2:  # stage 1 records the same every step: all 3 steps at once against one
        assert held.key_state_peak_bytes == 3 * passes.key_state_peak_bytes
    else:
        assert held.key_state_peak_bytes > 2 * passes.key_state_peak_bytes
        stage_1 = _ddnm_run(pipe, stages=2).key_state_offload_bytes  # stage 1's three steps, less than stage 2's
        mixed = _ddnm_run(pipe, stages=stages, key_state_budget=stage_1)
        for mine, theirs in zip(mixed.stages, held.stages):
            assert torch.equal(mine, theirs)
        assert passes.key_state_peak_bytes < mixed.key_state_peak_bytes < held.key_state_peak_bytes


def test_progress_counts_the_stages_re_run(pipe):
    """Holding every stage runs each stage once; re-running runs stage 1 in both passes."""
    def seen(budget):
        reports = []
        ZeroSmooth(pipe, ZeroSmoothConfig(key_state_budget=budget))(
            generator=generator(0), progress_bar=False, progress=lambda done, total: reports.append((done, total)),
            **svd_kwargs(output_type="latent", num_inference_steps=2))
        return reports

    assert seen(2**30) == [(done, 4) for done in range(1, 5)]
    assert seen(0) == [(1, 4), (2, 4), (3, 6), (4, 6), (5, 6), (6, 6)]


def test_method_plus_ddnm_pulls_towards_the_finished_previous_stage(pipe):
    """With the pull and neither the final move nor colour correction, Euler's last step lands the
    key frames on the base video's latents, as latent DDNM's; without the pull they are only held
    by the residual correction."""
    def run(**overrides):
        config = ZeroSmoothConfig(key_frames="free", color_correction=False, **overrides)
        return ZeroSmooth(pipe, config)(generator=generator(0), progress_bar=False, **svd_kwargs(output_type="latent"))

    base, long = run().stages
    torch.testing.assert_close(long[:, ::2], base, rtol=1e-5, atol=1e-5)
    base, long = run(method="zerosmooth").stages
    assert not torch.allclose(long[:, ::2], base, rtol=1e-5, atol=1e-5)


def _hooked(pipe) -> list[str]:
    return [name for name, module in pipe.unet.named_modules() if hooks.installed(module)]


@pytest.mark.parametrize("config", [ZeroSmoothConfig.paper(), ZeroSmoothConfig(),
                                    ZeroSmoothConfig(residual_strength=0.5, residual_sites=("resnets", "temporal"))])
def test_enable_disable_restores_the_pipeline(pipe, config):
    reference = frames(pipe(generator=generator(2), **svd_kwargs(num_inference_steps=1)))
    originals = dict(pipe.unet.attn_processors)
    zerosmooth = ZeroSmooth(pipe, config)
    with zerosmooth:
        assert zerosmooth.enabled
        assert len(_hooked(pipe)) > len(zerosmooth.adapter.attention_modules())  # attention and position hooks
        # While enabled, a direct pipeline call runs the original processors.
        assert torch.equal(frames(pipe(generator=generator(2), **svd_kwargs(num_inference_steps=1))), reference)
        with pytest.raises(RuntimeError, match="another ZeroSmooth wrapper is enabled"):
            ZeroSmooth(pipe).enable()
        # A run in between leaves no trace either.
        zerosmooth(generator=generator(2), progress_bar=False, **svd_kwargs(num_inference_steps=1))
    assert not zerosmooth.enabled
    assert dict(pipe.unet.attn_processors) == originals
    assert _hooked(pipe) == []
    assert torch.equal(frames(pipe(generator=generator(2), **svd_kwargs(num_inference_steps=1))), reference)


def test_bad_input_fails_before_denoising(pipe):
    with count_unet_calls(pipe) as calls:
        with pytest.raises(ValueError, match=r"window must not exceed the base frame count num_frames=4"):
            ZeroSmooth(pipe, ZeroSmoothConfig(window=5))(progress_bar=False, **svd_kwargs())
        with pytest.raises(ValueError, match=r"num_frames \(the base frame count\) must be an integer >= 1, got 0"):
            ZeroSmooth(pipe)(progress_bar=False, **svd_kwargs(num_frames=0))
        with pytest.raises(ValueError, match=r"latents must be the longest stage's noise of shape \[1, 8, 4, 8, 8\]"):
            ZeroSmooth(pipe)(progress_bar=False, latents=torch.zeros(1, 4, 4, 8, 8), **svd_kwargs())
        with pytest.raises(TypeError, match=r"does not support the argument\(s\) callback_on_step_end"):
            ZeroSmooth(pipe)(progress_bar=False, callback_on_step_end=print, **svd_kwargs())
        with pytest.raises(TypeError, match="needs image="):
            ZeroSmooth(pipe)(progress_bar=False, num_frames=4)
    assert calls[0] == 0
    assert _hooked(pipe) == []
