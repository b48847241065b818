"""The vectorised PyTorch path (what CPU tensors get) against the float64 oracle.

Error rule (FlashAttention's): at each dtype, |ours − oracle₆₄| ≤ 2 · |reference run at that
dtype − oracle₆₄| + floor, elementwise maxima. The floors cover outputs whose low-precision
reference error happens to be near zero: fp32 1e-6, fp16 1e-3, bf16 8e-3.
"""

import pytest
import torch

import zs_kernels
from zs_kernels import frames, layout, reference, torch_path

FLOORS = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}
DTYPES = list(FLOORS)


def assert_within_flash_bound(result, low_precision_reference, oracle, dtype):
    ours = (result.double() - oracle).abs().max().item()
    theirs = (low_precision_reference.double() - oracle).abs().max().item()
    assert result.dtype == dtype
    assert torch.isfinite(result).all()
    assert ours <= 2 * theirs + FLOORS[dtype], f"error {ours:.3g} > 2 × reference's {theirs:.3g} + {FLOORS[dtype]}"


def strided_qkv(n, heads, num_frames, dim, dtype):
    """Q, K, V as the model hands them: [N, F, H·D] projections viewed as [N, H, F, D] (not contiguous)."""
    return [
        torch.randn(n, num_frames, heads * dim, dtype=dtype).unflatten(-1, (heads, dim)).transpose(1, 2)
        for _ in range(3)
    ]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [40, 64, 72, 80, 160])
@pytest.mark.parametrize("num_frames, window, stride", [(37, 16, 4), (32, 16, 8), (12, 16, 4), (29, 14, 7)])
def test_windowed_attention_matches_reference(dtype, head_dim, num_frames, window, stride, nan_poisoned_allocations):
    q, k, v = strided_qkv(3, 2, num_frames, head_dim, dtype)
    assert not q.is_contiguous()
    oracle = reference.windowed_attention(q.double(), k.double(), v.double(), window=window, stride=stride)
    low = reference.windowed_attention(q, k, v, window=window, stride=stride)
    result = zs_kernels.windowed_attention(q, k, v, window=window, stride=stride, backend="torch")
    assert result.stride() == q.stride(), "output should follow q's layout"
    assert_within_flash_bound(result, low, oracle, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighting", ["pyramid", "flat"])
def test_windowed_attention_with_bias_and_dual_pass(dtype, weighting, nan_poisoned_allocations):
    q, k, v = strided_qkv(2, 3, 23, 40, dtype)
    corrected = strided_qkv(2, 3, 23, 40, dtype)
    rel_k, rel_v = (torch.randn(9, 40, dtype=dtype) for _ in range(2))
    kwargs = dict(window=8, stride=3, weighting=weighting, scale=0.2, rel_k=rel_k, rel_v=rel_v, blend=0.7)
    oracle = reference.windowed_attention(
        q.double(), k.double(), v.double(), **{**kwargs, "rel_k": rel_k.double(), "rel_v": rel_v.double()},
        corrected=tuple(t.double() for t in corrected),
    )
    low = reference.windowed_attention(q, k, v, corrected=tuple(corrected), **kwargs)
    result = zs_kernels.windowed_attention(q, k, v, corrected=tuple(corrected), backend="torch", **kwargs)
    assert_within_flash_bound(result, low, oracle, dtype)


def test_windowed_attention_large_score_ranges_stay_exact():
    """Scores spanning > 100 inside a window, and windows whose keys all score far below another
    window sharing the query, take the per-window-stabilised path and stay exact."""
    q, k, v = (torch.randn(2, 2, 32, 16, dtype=torch.float64) for _ in range(3))
    k[:, :, 16:24] *= 200.0
    q *= 30.0
    oracle = reference.windowed_attention(q, k, v, window=16, stride=8)
    for dtype in (torch.float32, torch.float64):
        result = zs_kernels.windowed_attention(q.to(dtype), k.to(dtype), v.to(dtype), window=16, stride=8)
        assert torch.isfinite(result).all()
        torch.testing.assert_close(result.double(), oracle, rtol=1e-4, atol=1e-4)


def test_shared_path_declines_underflowing_window_sums():
    q, k, v = (torch.randn(1, 1, 32, 8) for _ in range(3))
    q[..., 12, :] = 1.0
    k[..., :16, :] = -100.0  # window [0, 16) scores far below window [8, 24)'s keys for query 12
    k[..., 16:24, :] = 100.0
    plan = torch_path._window_plan(32, 16, 8, "pyramid", q.device, torch.float32)
    assert torch_path._fused_shared(q, k, v, plan, 1.0, None, None) is None
    expected = reference.windowed_attention(q.double(), k.double(), v.double(), window=16, stride=8, scale=1.0)
    result = torch_path._fused_per_window(q, k, v, plan, 1.0, None, None)
    torch.testing.assert_close(result.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_frames, window, stride", [(37, 16, 4), (20, 7, 3), (5, 8, 2), (40, 16, 16)])
def test_per_window_path_matches_reference(num_frames, window, stride):
    q, k, v = (torch.randn(2, 2, num_frames, 12, dtype=torch.float64) for _ in range(3))
    rel_k, rel_v = (torch.randn(7, 12, dtype=torch.float64) for _ in range(2))
    plan = torch_path._window_plan(num_frames, window, stride, "pyramid", q.device, q.dtype)
    result = torch_path._fused_per_window(q, k, v, plan, 0.25, rel_k, rel_v)
    expected = reference.windowed_attention(q, k, v, window=window, stride=stride, scale=0.25, rel_k=rel_k, rel_v=rel_v)
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-12)


def test_windowed_attention_processes_batches_in_chunks(monkeypatch):
    monkeypatch.setattr(torch_path, "_CHUNK_ELEMENTS", 2 * 16 * 16)  # two sequences per chunk
    q, k, v = (torch.randn(5, 1, 16, 8, dtype=torch.float64) for _ in range(3))
    expected = reference.windowed_attention(q, k, v, window=6, stride=2)
    torch.testing.assert_close(zs_kernels.windowed_attention(q, k, v, window=6, stride=2), expected)


def spatial_and_temporal_inputs(batch, num_frames, tokens, channels, dtype):
    """The same logical [B, t, L, C] tensor as a spatial view ([B·t, L, C]) and a temporal view ([B·L, t, C])."""
    logical = torch.randn(batch, num_frames, tokens, channels, dtype=dtype)
    spatial = logical.reshape(batch * num_frames, tokens, channels).view(batch, num_frames, tokens, channels)
    temporal = logical.transpose(1, 2).reshape(batch * tokens, num_frames, channels)
    temporal = temporal.view(batch, tokens, num_frames, channels).permute(0, 2, 1, 3)
    return spatial, temporal


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kv_kind", frames.OPERATOR_KINDS)
@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("with_bias", [True, False])
def test_corrected_qkv_matches_reference(dtype, kv_kind, scale, with_bias, nan_poisoned_allocations):
    num_key_frames, channels, c_out = 3, 19, 13
    spatial, temporal = spatial_and_temporal_inputs(2, scale * num_key_frames, 5, channels, dtype)
    key_qkv = torch.randn(2, num_key_frames, 5, 3 * c_out, dtype=dtype)
    weight = torch.randn(3 * c_out, channels, dtype=dtype) / channels**0.5
    bias = torch.randn(3 * c_out, dtype=dtype) if with_bias else None
    oracle = reference.corrected_qkv(
        spatial.double(), key_qkv.double(), weight.double(), None if bias is None else bias.double(),
        scale=scale, kv_kind=kv_kind,
    )
    low = reference.corrected_qkv(spatial, key_qkv, weight, bias, scale=scale, kv_kind=kv_kind)
    for h in (spatial, temporal):
        results = zs_kernels.corrected_qkv(h, key_qkv, weight, bias, scale=scale, kv_kind=kv_kind, backend="torch")
        for result, low_one, oracle_one in zip(results, low, oracle):
            assert result.stride() == layout.empty_projection(h, 3 * c_out).stride()
            assert_within_flash_bound(result, low_one, oracle_one, dtype)


def test_corrected_qkv_temporal_layout_is_not_copied_before_projection(monkeypatch):
    """The torch path projects the temporal view in its own memory order: no .contiguous() of h."""
    _, temporal = spatial_and_temporal_inputs(2, 8, 6, 16, torch.float32)
    seen = []
    linear = torch.nn.functional.linear

    def recording_linear(x, *args):
        seen.append(x.is_contiguous())
        return linear(x, *args)

    monkeypatch.setattr(torch.nn.functional, "linear", recording_linear)
    zs_kernels.corrected_qkv(temporal, torch.randn(2, 4, 6, 48), torch.randn(48, 16), scale=2, kv_kind="box_right")
    assert seen == [True]
