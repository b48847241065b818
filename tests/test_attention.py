"""Processors and hooks: the corrected path really runs, positions are interpolated, the fractional
PE reproduces diffusers' buffer, the key-state cache drops what it hands out."""

import math

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.models.embeddings import SinusoidalPositionalEmbedding
from zs_helpers import generator, text_kwargs

import zerosmooth.attention as attention
from zerosmooth import ZeroSmooth, ZeroSmoothConfig, hooks
from zerosmooth.adapters.animatediff import AnimateDiffAdapter, sinusoidal_embedding
from zerosmooth.color import adain_to_key_frames
from zerosmooth.state import KeyStateCache, Session, StageStep
from zerosmooth.noise import stage_noise
from zerosmooth.lab.tiny import tiny_animatediff_pipeline, tiny_svd_pipeline, tiny_text_to_video_pipeline


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("dim, length", [(32, 32), (64, 24), (320, 32)])
def test_fractional_pe_is_bit_identical_at_integer_positions(dim, length):
    buffer = SinusoidalPositionalEmbedding(dim, max_seq_length=length).pe[0]
    table = sinusoidal_embedding(torch.arange(length, dtype=torch.float32), dim)
    assert torch.equal(table, buffer)
    # Fractional positions follow the same sinusoids.
    half = sinusoidal_embedding(torch.tensor([2.5]), dim)[0]
    div_term = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    assert torch.allclose(half[0::2], torch.sin(2.5 * div_term))
    assert torch.allclose(half[1::2], torch.cos(2.5 * div_term))


def _session(factor: float) -> Session:
    """A session in the middle of a UNet call whose frame positions are divided by ``factor``."""
    session = Session(ZeroSmoothConfig(), window=4, stride=2, kv_generator=torch.Generator())
    session.step = StageStep(stage=2, num_frames=20, unet_batch=1, position_factor=factor)
    return session


def test_pe_hook_interpolates_and_runs_beyond_max_seq_length():
    module = SinusoidalPositionalEmbedding(16, max_seq_length=8)
    slot = hooks.SessionSlot()
    position_hooks = AnimateDiffAdapter(tiny_animatediff_pipeline(0)).position_hooks(slot)
    assert position_hooks  # one per motion-module transformer block
    installed = hooks.install([(module, position_hooks[0][1])])
    x = torch.zeros(3, 20, 16)
    slot.session = _session(1)
    out = module(x)  # 20 > max_seq_length = 8
    assert torch.equal(out[0, :8], module.pe[0])
    slot.session = _session(2)
    out = module(x)
    assert torch.equal(out[0, 0:8:2], module.pe[0, :4])  # key frame 2i lands on position i
    slot.session = None
    with pytest.raises(RuntimeError):
        module(x)  # outside a call: the stock buffer, which has only 8 positions
    hooks.remove(installed)
    assert not hooks.installed(module)
    assert torch.equal(module(x[:, :8]), module.pe[:, :8].expand(3, -1, -1))


def test_svd_time_proj_positions_are_divided():
    pipe = tiny_svd_pipeline(0)
    zerosmooth = ZeroSmooth(pipe)
    hooked = [module for module, _ in zerosmooth.adapter.position_hooks(zerosmooth.slot)]
    assert hooked and pipe.unet.time_proj not in hooked  # the diffusion timestep embedding is untouched
    positions = torch.arange(8)
    with zerosmooth:
        plain = hooked[0](positions)
        zerosmooth.slot.session = _session(2)
        halved = hooked[0](positions)
        zerosmooth.slot.session = None
        assert torch.equal(hooked[0](positions), plain)
    assert torch.equal(halved[::2], plain[:4])
    assert not torch.equal(halved[1], plain[1])


def test_processors_run_the_corrected_path(monkeypatch):
    """Strength 1 at every step: the long branch's corrected Q/K/V at key frames are exactly the key
    branch's (all of Q/K/V for temporal self-attention; Q for spatial self-attention), and
    every attention kind goes through its zs_kernels op with blend 1. Self-attention hands the
    op the module's own to_q/to_k/to_v parameters (nothing stacked per call)."""
    pipe = tiny_text_to_video_pipeline(0)
    pipe.set_progress_bar_config(disable=True)
    seen = {"qkv": [], "windowed": [], "weights": []}
    real_qkv, real_windowed = attention.zs_kernels.corrected_qkv, attention.zs_kernels.windowed_attention

    def corrected_qkv(h, key_qkv, weight, bias=None, *, scale, kv_kind, backend="auto"):
        qkv, qkv_hat = real_qkv(h, key_qkv, weight, bias, scale=scale, kv_kind=kv_kind, backend=backend)
        seen["qkv"].append((kv_kind, key_qkv, qkv_hat))
        seen["weights"].append((weight, bias))
        return qkv, qkv_hat

    def windowed_attention(q, k, v, **kwargs):
        seen["windowed"].append((kwargs["window"], kwargs["stride"], kwargs["blend"], kwargs["corrected"] is not None))
        return real_windowed(q, k, v, **kwargs)

    monkeypatch.setattr(attention.zs_kernels, "corrected_qkv", corrected_qkv)
    monkeypatch.setattr(attention.zs_kernels, "windowed_attention", windowed_attention)
    config = ZeroSmoothConfig(strength=1.0, strength_schedule="constant")
    out = ZeroSmooth(pipe, config)(generator=generator(0), progress_bar=False,
                                   **text_kwargs(num_inference_steps=1, output_type="latent"))
    assert out.blend_per_step == [1.0]

    kinds = {kind for kind, _, _ in seen["qkv"]}
    assert kinds <= {"sample", "box_left", "box_right"} and {"box_left", "box_right"} & kinds
    for kind, key_qkv, qkv_hat in seen["qkv"]:
        c = qkv_hat.shape[-1] // 3
        assert qkv_hat.shape[1] == 2 * key_qkv.shape[1]
        channels = slice(None) if kind == "sample" else slice(0, c)
        assert torch.equal(qkv_hat[:, ::2, :, channels], key_qkv[:, :, :, channels])
    parameters = {id(parameter) for parameter in pipe.unet.parameters()}
    for weight, bias in seen["weights"]:
        assert isinstance(weight, tuple) and len(weight) == 3 and {id(w) for w in weight} <= parameters
        assert isinstance(bias, tuple) and {id(b) for b in bias if b is not None} <= parameters
    temporal_modules = sum(1 for name, _, axis in ZeroSmooth(pipe).adapter.attention_modules() if axis == "temporal")
    assert len(seen["windowed"]) == temporal_modules
    assert all(entry == (4, 2, 1.0, True) for entry in seen["windowed"])  # W = t0 = 4, overlap 2


@pytest.mark.parametrize("axis", ["spatial", "temporal"])
@pytest.mark.parametrize("record", [False, True])
@pytest.mark.parametrize("condition_tokens", [2, 5])
def test_cross_attention_correction_equals_two_full_passes(axis, record, condition_tokens):
    """The cross-attention correction attends only the key-frame rows a second time; it must equal
    the literal o + w (ô − o) with Q̂ = back_project(Q, Q_key, sample) and both passes over every
    row, and record Q̂ for a next stage when asked."""
    from diffusers.models.attention_processor import Attention
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    import zs_kernels

    batch, key_frames, scale, tokens, channels, heads = 2, 3, 2, 5, 16, 2
    frames_ = key_frames * scale
    module = Attention(query_dim=channels, cross_attention_dim=8, heads=heads, dim_head=8).eval()
    slot = hooks.SessionSlot()
    installed = hooks.install([(module, attention.AttentionHook(slot, "cross", axis))])
    if axis == "spatial":  # [B·t, L, C], one row of conditions per frame
        hidden = torch.randn(batch * frames_, tokens, channels)
        condition = torch.randn(batch * frames_, condition_tokens, 8)
    else:  # [B·L, t, C], one condition per token row
        hidden = torch.randn(batch * tokens, frames_, channels)
        condition = torch.randn(batch * tokens, condition_tokens, 8)
    key_queries = torch.randn(batch, key_frames, tokens, channels)
    session = Session(ZeroSmoothConfig(), window=frames_, stride=frames_, kv_generator=torch.Generator())
    session.cache.put(_at(stage=1), "cross", key_queries)
    session.step = StageStep(stage=2, num_frames=frames_, unet_batch=batch, corrected=True, record=record, blend=0.7)
    slot.session = session
    with torch.no_grad():
        out = module(hidden, encoder_hidden_states=condition)
        hooks.remove(installed)

        def as_frames(t):
            return t.unflatten(0, (batch, frames_)) if axis == "spatial" else t.unflatten(0, (batch, -1)).transpose(1, 2)

        def as_module(t):
            return t.flatten(0, 1) if axis == "spatial" else t.transpose(1, 2).flatten(0, 1)

        def attend(q):
            split = (lambda t: t.unflatten(-1, (heads, -1)).transpose(1, 2))
            return sdpa(split(q), split(module.to_k(condition)), split(module.to_v(condition))).transpose(1, 2).flatten(2)

        query = module.to_q(hidden)
        query_hat = zs_kernels.back_project(as_frames(query), key_queries, "sample", scale, frame_dim=1)
        plain, corrected = attend(query), attend(as_module(query_hat))
        expected = module.to_out[0](plain + 0.7 * (corrected - plain))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    if record:
        assert torch.equal(session.cache.take(_at(stage=3), "cross"), query_hat)
    assert len(session.cache) == 0


@pytest.mark.parametrize("axis", ["spatial", "temporal"])
@pytest.mark.parametrize("corrected", [False, True])
def test_single_token_cross_attention_is_the_value_broadcast(axis, corrected):
    """Over one condition token, every stage's cross-attention output is the module's own, bit for
    bit on finite rows, without calling to_q or to_k and without touching the key-state cache; a
    query row holding a NaN gets the value like every other row."""
    from diffusers.models.attention_processor import Attention

    batch, key_frames, scale, tokens, channels = 2, 3, 2, 5, 12
    frames_ = key_frames * scale
    rows = batch * frames_ if axis == "spatial" else batch * tokens
    module = Attention(query_dim=channels, cross_attention_dim=7, heads=3, dim_head=4, bias=True).eval()
    hidden = torch.randn(rows, tokens if axis == "spatial" else frames_, channels)
    hidden[1, 2, 3] = float("nan")
    condition = torch.randn(rows, 1, 7)
    with torch.no_grad():
        expected = module(hidden, encoder_hidden_states=condition)
        calls = []
        for layer in (module.to_q, module.to_k):
            layer.register_forward_hook(lambda *args: calls.append(1))
        slot = hooks.SessionSlot()
        installed = hooks.install([(module, attention.AttentionHook(slot, "cross", axis))])
        session = Session(ZeroSmoothConfig(), window=frames_, stride=frames_, kv_generator=torch.Generator())
        session.step = StageStep(stage=1 + corrected, num_frames=frames_, unet_batch=batch, corrected=corrected,
                                 record=True, blend=0.7)
        slot.session = session
        out = module(hidden, encoder_hidden_states=condition)
        hooks.remove(installed)
    assert not calls and len(session.cache) == 0
    finite = torch.ones(out.shape[:2], dtype=torch.bool)
    finite[1, 2] = False
    assert torch.equal(out[finite], expected[finite])
    assert torch.equal(out[1, 2], out[1, 0])


@pytest.mark.parametrize("axis", ["spatial", "temporal"])
@pytest.mark.parametrize("wrapped", [False, True])
def test_recorded_self_attention_states_are_the_module_projections(axis, wrapped):
    """An uncorrected stage records q | k | v of self-attention (one GEMM per projection into its
    columns when the projections are plain Linear layers, the layers' own calls otherwise, e.g.
    under a forward hook) and its output is the processor's: fresh random inputs, odd sizes."""
    from diffusers.models.attention_processor import Attention

    batch, frames_, tokens, channels, heads = 2, 3, 5, 12, 3
    module = Attention(query_dim=channels, heads=heads, dim_head=4, bias=True).eval()
    calls = []
    if wrapped:
        module.to_k.register_forward_hook(lambda *args: calls.append(1))
    slot = hooks.SessionSlot()
    installed = hooks.install([(module, attention.AttentionHook(slot, "self", axis))])
    shape = (batch * frames_, tokens, channels) if axis == "spatial" else (batch * tokens, frames_, channels)
    hidden = torch.randn(shape)
    session = Session(ZeroSmoothConfig(), window=frames_, stride=frames_, kv_generator=torch.Generator())
    session.step = StageStep(stage=1, num_frames=frames_, unet_batch=batch, record=True)
    slot.session = session
    with torch.no_grad():
        out = module(hidden)
        assert len(calls) == int(wrapped), "a hooked projection must run through its own call"
        hooks.remove(installed)
        expected = module(hidden)
        projections = torch.cat([module.to_q(hidden), module.to_k(hidden), module.to_v(hidden)], dim=-1)
    if axis == "spatial":
        projections = projections.unflatten(0, (batch, frames_))
    else:
        projections = projections.unflatten(0, (batch, tokens)).transpose(1, 2)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(session.cache.take(_at(stage=2), "self"), projections, rtol=1e-5, atol=1e-6)


def _draws(count: int, **config) -> list[str]:
    session = Session(ZeroSmoothConfig(**config), window=4, stride=2, kv_generator=torch.Generator().manual_seed(0))
    return [session.draw_kv_operator() for _ in range(count)]


def test_kv_operator_draws_follow_the_probability():
    assert set(_draws(20, kv_left_probability=1.0)) == {"box_left"}
    assert set(_draws(20, kv_left_probability=0.0)) == {"box_right"}
    assert 150 < _draws(400, kv_left_probability=0.5).count("box_left") < 250
    for operator in ("sample", "box_left", "box_right"):
        assert set(_draws(10, kv_operator=operator)) == {operator}


def test_plain_attention_goes_through_the_diffusers_dispatcher(monkeypatch):
    """Uncorrected attention honours the user's attention backend: it calls dispatch_attention_fn
    with the backend the module's processor carries (set by set_attention_backend)."""
    pipe = tiny_text_to_video_pipeline(0)
    pipe.set_progress_bar_config(disable=True)
    backends = []
    real = attention.dispatch_attention_fn

    def counting(*args, backend=None, **kwargs):
        backends.append(backend)
        return real(*args, backend=backend, **kwargs)

    monkeypatch.setattr(attention, "dispatch_attention_fn", counting)
    ZeroSmooth(pipe, ZeroSmoothConfig(method="direct"))(generator=generator(0), progress_bar=False,
                                                        **text_kwargs(num_inference_steps=1, output_type="latent"))
    spatial = sum(1 for _, _, axis in ZeroSmooth(pipe).adapter.attention_modules() if axis == "spatial")
    assert len(backends) >= 2 * spatial  # every spatial module, in both stages
    assert set(backends) == {None}  # no backend set on these processors: the dispatcher's active one


def _at(stage: int, step: int = 0) -> StageStep:
    """A UNet call of ``stage`` at denoising step ``step`` (what the cache keys on)."""
    return StageStep(stage=stage, num_frames=1, unet_batch=1, step_index=step)


def test_key_state_cache_accounting():
    cache = KeyStateCache()
    cache.put(_at(1), "a", torch.zeros(4, dtype=torch.float32))
    cache.put(_at(1), "b", torch.zeros(8, dtype=torch.float32))
    assert (cache.current_bytes, cache.peak_bytes, len(cache)) == (48, 48, 2)
    cache.take(_at(2), "a")
    cache.put(_at(2), "a", torch.zeros(2, dtype=torch.float32))
    assert (cache.current_bytes, cache.peak_bytes, cache.recorded_bytes) == (40, 48, 56)
    assert (cache.held_by(1), cache.held_by(2), cache.held_by(3)) == (1, 1, 0)
    with pytest.raises(RuntimeError, match="recorded twice"):
        cache.put(_at(2), "a", torch.zeros(1))
    with pytest.raises(RuntimeError, match="no key states of stage 3 for 'a' at step 0"):
        cache.take(_at(4), "a")
    assert (cache.bytes_held_by(1), cache.bytes_held_by(2)) == (32, 8)
    cache.discard(2)
    assert (cache.current_bytes, cache.held_by(1), cache.held_by(2)) == (32, 1, 0)
    cache.start_pass()  # a re-run stage 1 records again: counted once
    cache.put(_at(1), "a", torch.zeros(4, dtype=torch.float32))
    assert (cache.recorded_bytes, cache.peak_bytes) == (24, 48)


def test_key_state_cache_pairs_the_same_step():
    """A stage reads what the previous stage recorded at the same denoising step, whichever order
    the steps were recorded in (stages run one after another hold every step's states)."""
    cache = KeyStateCache()
    states = [torch.full((3,), float(step)) for step in range(3)]
    for step, state in enumerate(states):
        cache.put(_at(1, step), "a", state)
    with pytest.raises(RuntimeError, match="no key states of stage 1 for 'a' at step 5"):
        cache.take(_at(2, 5), "a")
    for step in (2, 0, 1):
        assert torch.equal(cache.take(_at(2, step), "a"), states[step])
    assert len(cache) == 0 and cache.peak_bytes == 3 * states[0].untyped_storage().nbytes()


def test_unsupported_pipeline_is_a_type_error_naming_the_supported_ones():
    pipe = DDPMPipeline(UNet2DModel(sample_size=8, block_out_channels=(32, 32), norm_num_groups=8,
                                    down_block_types=("DownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "UpBlock2D")), DDPMScheduler())
    supported = "StableVideoDiffusionPipeline, AnimateDiffPipeline, TextToVideoSDPipeline; got DDPMPipeline"
    with pytest.raises(TypeError, match=supported):
        ZeroSmooth(pipe)
    with pytest.raises(TypeError, match="config must be a ZeroSmoothConfig"):
        ZeroSmooth(tiny_text_to_video_pipeline(0), {"scale": 2})


def test_stage_noise_subsamples_the_longest_stage():
    shared = torch.arange(18.0).view(1, 1, 18, 1, 1)
    assert stage_noise(shared, 2, 3, 3, 1).flatten().tolist() == [0.0, 9.0]
    assert stage_noise(shared, 2, 3, 3, 2).flatten().tolist() == [0.0, 3.0, 6.0, 9.0, 12.0, 15.0]
    assert stage_noise(shared, 2, 3, 3, 3) is not shared and stage_noise(shared, 2, 3, 3, 3).shape[2] == 18


def test_adain_matches_each_frame_to_its_key_frame():
    latents = torch.randn(2, 6, 4, 5, 5, dtype=torch.float64)
    keys = torch.randn(2, 3, 4, 5, 5, dtype=torch.float64) * 3 + 1
    out = adain_to_key_frames(latents, keys, scale=2, frame_dim=1)
    for j in range(6):
        torch.testing.assert_close(out[:, j].mean(dim=(-2, -1)), keys[:, j // 2].mean(dim=(-2, -1)))
        torch.testing.assert_close(out[:, j].std(dim=(-2, -1)), keys[:, j // 2].std(dim=(-2, -1)), rtol=1e-5, atol=1e-5)
