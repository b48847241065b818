"""The residual-stream correction (docs/SPEC.md §10) and guidance at key positions: the hook's math
against the dense operators, the key branch untouched, stage ≥ 3 reading corrected states, one
step's states alive at a time."""

import pytest
import torch
from zs_helpers import frames, generator, svd_kwargs

import zs_kernels
from zs_kernels.frames import key_spread
from zerosmooth import ZeroSmooth, ZeroSmoothConfig, hooks
from zerosmooth.adapters.svd import key_position_guidance
from zerosmooth.lab.tiny import tiny_svd_pipeline
from zerosmooth.residual import ResidualHook
from zerosmooth.state import Session, StageStep

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_svd_pipeline(0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class _Emit(torch.nn.Module):
    """A site that returns whatever it is given (optionally wrapped in a tuple, as transformers do)."""

    def __init__(self, wrapped: bool):
        super().__init__()
        self.wrapped = wrapped

    def forward(self, x):
        return (x, "extra") if self.wrapped else x


@pytest.mark.parametrize("wrapped", [False, True])
@pytest.mark.parametrize("scale, strength", [(2, 1.0), (3, 0.35)])
@pytest.mark.parametrize("spread", ["keys", "linear"])
def test_hook_math_matches_the_dense_back_projection(wrapped, scale, strength, spread):
    """h ← h + w P(h₀ − A h), A = sample, P its right inverse ``key_spread(spread)`` (A⁺ for
    ``"keys"``, so that h + P(h₀ − A h) is the back-projection ĥ): computed with dense float64
    operators on a [B·t, C, H, W] site output (frames in the batch dim), batch 2, t0 = 3."""
    batch, t0, shape = 2, 3, (5, 2, 3)
    slot, module = hooks.SessionSlot(), _Emit(wrapped)
    installed = hooks.install([(module, ResidualHook(slot, "site"))])
    config = ZeroSmoothConfig(scale=scale, residual_spread=spread)
    session = Session(config, window=t0, stride=t0, kv_generator=torch.Generator())
    slot.session = session
    h0 = torch.randn(batch * t0, *shape, dtype=torch.float64)
    session.step = StageStep(stage=1, num_frames=t0, unet_batch=batch, record=True, residual=strength)
    out = module(h0)
    assert (out[0] if wrapped else out) is h0  # the key branch is passed through untouched
    h = torch.randn(batch * scale * t0, *shape, dtype=torch.float64)
    session.step = StageStep(stage=2, num_frames=scale * t0, unet_batch=batch, corrected=True, residual=strength)
    out = module(h.clone())
    if wrapped:
        assert out[1] == "extra"
        out = out[0]
    A = zs_kernels.frame_operator("sample", t0, scale)
    P = key_spread(spread, t0, scale)
    x = h.unflatten(0, (batch, scale * t0)).movedim(1, 0).flatten(1)  # [t, rest]
    y = h0.unflatten(0, (batch, t0)).movedim(1, 0).flatten(1)
    expected = (x + strength * P @ (y - A @ x)).unflatten(1, (batch, *shape)).movedim(0, 1).flatten(0, 1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    keys = out.unflatten(0, (batch, scale * t0))[:, ::scale]
    pinned = torch.lerp(h.unflatten(0, (batch, scale * t0))[:, ::scale], h0.unflatten(0, (batch, t0)), strength)
    torch.testing.assert_close(keys, pinned, rtol=0, atol=1e-12)  # either spread moves the key frames alike
    assert len(session.cache) == 0  # read once, dropped
    hooks.remove(installed)


def _site_outputs(zerosmooth: ZeroSmooth, kwargs: dict) -> dict:
    """Every residual site's (corrected) output per (stage, site) at the first step."""
    seen = {}

    def probe(name):
        def hook(module, args, output):
            step = zerosmooth.slot.session.step
            seen.setdefault((step.stage, name), output[0] if isinstance(output, tuple) else output)
        return hook

    handles = [module.register_forward_hook(probe(name))
               for name, module in zerosmooth.adapter.residual_sites(zerosmooth.config.residual_sites)]
    try:
        out = zerosmooth(generator=generator(0), progress_bar=False, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return out, seen


@pytest.mark.parametrize("overrides", [{"method": "zerosmooth"}, {"key_state_budget": 0}])
def test_strength_one_pins_every_site_and_leaves_the_key_branch_alone(pipe, overrides):
    """In lockstep, and with the pull's passes re-running the earlier stages (no budget)."""
    config = ZeroSmoothConfig(residual_strength=1.0, residual_schedule="constant", residual_sites=("resnets", "temporal"),
                              stages=3, **overrides)
    zerosmooth = ZeroSmooth(pipe, config)
    out, seen = _site_outputs(zerosmooth, svd_kwargs(num_inference_steps=2, output_type="latent"))
    sites = {name for _, name in seen}
    assert len(sites) == len(zerosmooth.adapter.residual_sites(("resnets", "temporal"))) > 10
    for name in sites:
        first, second, third = (seen[(stage, name)].unflatten(0, (2, -1)) for stage in (1, 2, 3))
        assert torch.equal(second[:, ::2], first)  # key rows take the key branch's output
        assert torch.equal(third[:, ::2], second)  # stage 3 reads stage 2's corrected outputs
        assert not torch.allclose(second[:, 1::2], first, atol=1e-4)  # in-between rows stay free
    plain = frames(pipe(generator=generator(0), latents=out.noise[:, ::4], **svd_kwargs(output_type="latent")))
    assert torch.equal(plain, out.stages[0])
    # Two steps recording the same amount each; states never outlive their step, so the peak stays
    # within one step's share of the total.
    assert 0 < out.key_state_peak_bytes <= out.key_state_offload_bytes // 2
    assert out.residual_per_step == [1.0, 1.0]


def test_linear_spread_pins_the_same_key_rows_and_moves_their_neighbours(pipe):
    kwargs = svd_kwargs(num_inference_steps=2, output_type="latent")
    by_spread = {}
    for spread in ("keys", "linear"):
        config = ZeroSmoothConfig(residual_strength=1.0, residual_schedule="constant", residual_spread=spread)
        by_spread[spread] = _site_outputs(ZeroSmooth(pipe, config), kwargs)
    (keys_out, keys_seen), (linear_out, linear_seen) = by_spread["keys"], by_spread["linear"]
    first_site = next(name for stage, name in linear_seen if stage == 1)
    base = linear_seen[(1, first_site)].unflatten(0, (2, -1))
    keyed, spread = (seen[(2, first_site)].unflatten(0, (2, -1)) for seen in (keys_seen, linear_seen))
    assert torch.equal(spread[:, ::2], base)  # pinned exactly, as with "keys"
    assert not torch.allclose(spread[:, 1::2], keyed[:, 1::2], atol=1e-4)  # the in-between rows moved
    assert torch.equal(linear_out.stages[0], keys_out.stages[0])  # the key branch is untouched
    assert not torch.equal(linear_out.stages[1], keys_out.stages[1])


def test_exact_key_frames_move_the_denoised_latents_onto_the_previous_stage(pipe):
    """``key_frames="exact"``: after the last step, stage s's latents x become x + P(x_{s−1} − A x)
    (dense float64 oracle on the ``"free"`` run's latents, P = the linear spread); the key frames are
    then the previous stage's exactly, stage 3's those of stage 2 after its own move."""
    kwargs = svd_kwargs(num_inference_steps=2, output_type="latent")
    free = ZeroSmooth(pipe, ZeroSmoothConfig(stages=3, key_frames="free"))(generator=generator(0), progress_bar=False,
                                                                          **kwargs)
    exact = ZeroSmooth(pipe, ZeroSmoothConfig(stages=3))(generator=generator(0), progress_bar=False, **kwargs)
    assert torch.equal(exact.stages[0], free.stages[0])
    for index in (1, 2):
        previous, moved, denoised = exact.stages[index - 1], exact.stages[index], free.stages[index]
        assert torch.equal(moved[:, ::2], previous)
        t0 = previous.shape[1]
        A = zs_kernels.frame_operator("sample", t0, 2)
        P = key_spread("linear", t0, 2)
        difference = previous.double() - torch.einsum("kf,bf...->bk...", A, denoised.double())
        expected = denoised.double() + torch.einsum("fk,bk...->bf...", P, difference)
        torch.testing.assert_close(moved.double(), expected, rtol=0, atol=1e-5)
        assert not torch.allclose(moved[:, 1::2], denoised[:, 1::2], atol=1e-6)  # the neighbours moved too
    assert exact.key_drift == free.key_drift and all(drift > 0 for drift in free.key_drift)
    assert len(free.key_drift) == 2


def test_residual_states_count_in_the_one_step_peak(pipe):
    kwargs = svd_kwargs(num_inference_steps=2, output_type="latent")
    without = ZeroSmooth(pipe, ZeroSmoothConfig(residual_strength=0.0))(generator=generator(0), progress_bar=False,
                                                                          **kwargs)
    with_residual = ZeroSmooth(pipe, ZeroSmoothConfig(residual_strength=0.5))(
        generator=generator(0), progress_bar=False, **kwargs)
    assert with_residual.key_state_peak_bytes > without.key_state_peak_bytes
    assert not torch.equal(with_residual.stages[1], without.stages[1])
    assert torch.equal(with_residual.stages[0], without.stages[0])


def test_window_switches_the_correction_off_late(pipe):
    """A window (0, 0.5) of a 4-step run corrects the first two steps only; after that the two
    runs differ only by where the first steps left them (the states of late steps are not even
    recorded)."""
    config = ZeroSmoothConfig(residual_strength=1.0, residual_schedule="constant", residual_window=(0.0, 0.5))
    out = ZeroSmooth(pipe, config)(generator=generator(0), progress_bar=False,
                                   **svd_kwargs(num_inference_steps=4, output_type="latent"))
    assert out.residual_per_step == [1.0, 1.0, 0.0, 0.0]


def test_key_position_guidance():
    assert key_position_guidance(1.0, 3.0, 4, 8).tolist() == pytest.approx(
        [1.0, 4 / 3, 5 / 3, 2.0, 7 / 3, 8 / 3, 3.0, 3.0])
    assert key_position_guidance(1.0, 3.0, 4, 4).tolist() == pytest.approx(torch.linspace(1, 3, 4).tolist())


def test_key_guidance_changes_the_long_branch_only(pipe):
    kwargs = svd_kwargs(num_inference_steps=2, output_type="latent", min_guidance_scale=1.0, max_guidance_scale=3.0)
    plain = ZeroSmooth(pipe)(generator=generator(0), progress_bar=False, **kwargs)
    keyed = ZeroSmooth(pipe, ZeroSmoothConfig(key_guidance=True))(generator=generator(0), progress_bar=False, **kwargs)
    assert torch.equal(plain.stages[0], keyed.stages[0])
    assert not torch.equal(plain.stages[1], keyed.stages[1])
