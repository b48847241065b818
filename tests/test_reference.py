"""The oracle itself: reference windowed attention against independent formulations, and against
diffusers' own FreeNoiseTransformerBlock (real code nobody here wrote)."""

import math

import pytest
import torch
import torch.nn.functional as F

import zs_kernels
from zs_kernels import reference

FRAME_WINDOW_STRIDE = [
    (1, 4, 2),
    (3, 4, 1),  # F < W: one window
    (8, 8, 4),  # F == W
    (9, 8, 4),  # F == W + 1: tail window
    (16, 8, 8),  # stride == W, no overlap
    (17, 8, 8),  # no overlap plus a tail
    (20, 7, 3),  # odd W, tail
    (13, 5, 1),  # stride 1
    (33, 16, 4),
    (32, 16, 8),
    (24, 2, 1),
    (19, 6, 5),
]


def per_frame_windowed_attention(q, k, v, window, stride, weighting, scale, rel_k=None, rel_v=None):
    """A second, independent formulation: for every query frame, visit the windows that hold it."""
    num_frames = q.shape[2]
    length = min(window, num_frames)
    starts = zs_kernels.window_starts(num_frames, window, stride)
    weights = zs_kernels.window_weights(length, weighting)
    out = torch.empty_like(q)
    for f in range(num_frames):
        total, weight_sum = 0.0, 0.0
        for start in starts:
            if not start <= f < start + length:
                continue
            keys = range(start, start + length)
            scores = torch.stack([(q[:, :, f] * k[:, :, j]).sum(-1) for j in keys], dim=-1)
            if rel_k is not None:
                radius = (rel_k.shape[0] - 1) // 2
                bias = torch.stack([rel_k[max(-radius, min(radius, j - f)) + radius] for j in keys])
                scores = scores + q[:, :, f] @ bias.T
            p = torch.softmax(scores * scale, dim=-1)
            attended = torch.einsum("nhj,nhjd->nhd", p, v[:, :, start : start + length])
            if rel_v is not None:
                radius = (rel_v.shape[0] - 1) // 2
                bias = torch.stack([rel_v[max(-radius, min(radius, j - f)) + radius] for j in keys])
                attended = attended + p @ bias
            omega = weights[f - start]
            total = total + omega * attended
            weight_sum += omega
        out[:, :, f] = total / weight_sum
    return out


def random_qkv(n=2, heads=3, frames=8, dim=6, dtype=torch.float64):
    return [torch.randn(n, heads, frames, dim, dtype=dtype) for _ in range(3)]


@pytest.mark.parametrize("num_frames, window, stride", FRAME_WINDOW_STRIDE)
@pytest.mark.parametrize("weighting", ["pyramid", "flat"])
def test_reference_equals_per_frame_formulation(num_frames, window, stride, weighting):
    q, k, v = random_qkv(frames=num_frames)
    expected = per_frame_windowed_attention(q, k, v, window, stride, weighting, 6**-0.5)
    result = reference.windowed_attention(q, k, v, window=window, stride=stride, weighting=weighting)
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("num_frames, window, stride", [(9, 4, 2), (20, 7, 3), (5, 8, 4)])
def test_reference_relative_position_bias_equals_per_frame_formulation(num_frames, window, stride):
    q, k, v = random_qkv(frames=num_frames)
    rel_k, rel_v = torch.randn(5, 6, dtype=torch.float64), torch.randn(5, 6, dtype=torch.float64)  # R = 2 clips
    expected = per_frame_windowed_attention(q, k, v, window, stride, "pyramid", 0.3, rel_k, rel_v)
    result = reference.windowed_attention(q, k, v, window=window, stride=stride, scale=0.3, rel_k=rel_k, rel_v=rel_v)
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-12)


def test_single_flat_window_is_scaled_dot_product_attention():
    q, k, v = random_qkv(frames=11)
    expected = F.scaled_dot_product_attention(q, k, v)
    for frames_in_window in (11, 16):
        result = reference.windowed_attention(q, k, v, window=frames_in_window, stride=3, weighting="flat")
        torch.testing.assert_close(result, expected, rtol=0, atol=1e-12)


def test_dual_pass_blends_the_two_passes():
    q, k, v = random_qkv(frames=12)
    q_hat, k_hat, v_hat = random_qkv(frames=12)
    plain = reference.windowed_attention(q, k, v, window=4, stride=2)
    corrected = reference.windowed_attention(q_hat, k_hat, v_hat, window=4, stride=2)
    blended = reference.windowed_attention(q, k, v, window=4, stride=2, corrected=(q_hat, k_hat, v_hat), blend=0.3)
    torch.testing.assert_close(blended, plain + 0.3 * (corrected - plain), rtol=0, atol=1e-12)


# --- agreement with diffusers' FreeNoiseTransformerBlock ----------------------------------------


def _freenoise_block_reduced_to_attention(dim, heads, window, stride):
    """A FreeNoise block whose cross-attention and feed-forward add nothing: output = h + fused attention."""
    from diffusers.models.attention import FreeNoiseTransformerBlock

    block = FreeNoiseTransformerBlock(
        dim, heads, dim // heads, cross_attention_dim=dim, context_length=window, context_stride=stride
    ).double()
    with torch.no_grad():
        for layer in (block.attn2.to_out[0], block.ff.net[-1]):
            layer.weight.zero_()
            layer.bias.zero_()
    return block.eval()


def _our_fused_block(block, hidden, window, stride):
    """h + to_out(windowed_attention(Q, K, V)) with Q, K, V from the block's own attn1 and norm1."""
    attn, heads = block.attn1, block.attn1.heads
    normed = block.norm1(hidden)
    q, k, v = (
        projection(normed).unflatten(-1, (heads, -1)).transpose(1, 2)  # [N, F, C] → [N, H, F, d]
        for projection in (attn.to_q, attn.to_k, attn.to_v)
    )
    fused = zs_kernels.windowed_attention(q, k, v, window=window, stride=stride, backend="reference")
    return hidden + attn.to_out[0](fused.transpose(1, 2).flatten(-2))


@pytest.mark.parametrize("num_frames, window, stride", [(16, 16, 4), (32, 16, 4), (24, 8, 4), (30, 6, 3), (21, 7, 7)])
def test_agrees_with_diffusers_freenoise_without_tail_window(num_frames, window, stride):
    assert (num_frames - window) % stride == 0
    block = _freenoise_block_reduced_to_attention(24, 3, window, stride)
    hidden = torch.randn(5, num_frames, 24, dtype=torch.float64)
    encoder = torch.randn(5, 2, 24, dtype=torch.float64)
    with torch.no_grad():
        expected = block(hidden, encoder_hidden_states=encoder)
        result = _our_fused_block(block, hidden, window, stride)
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("num_frames, window, stride", [(25, 16, 4), (35, 16, 8), (23, 8, 4)])
def test_differs_from_diffusers_freenoise_with_tail_window(num_frames, window, stride):
    """SPEC §5: with a tail window, diffusers lets it update only the frames no regular window
    covers, and normalises them by one scalar weight instead of per-frame weights. We let every
    window, the tail included, contribute to all of its frames with the same pyramid weights. The
    two agree on the frames the tail window does not touch and differ inside it."""
    assert (num_frames - window) % stride != 0
    block = _freenoise_block_reduced_to_attention(24, 3, window, stride)
    hidden = torch.randn(5, num_frames, 24, dtype=torch.float64)
    encoder = torch.randn(5, 2, 24, dtype=torch.float64)
    with torch.no_grad():
        expected = block(hidden, encoder_hidden_states=encoder)
        result = _our_fused_block(block, hidden, window, stride)
    tail_start = num_frames - window
    torch.testing.assert_close(result[:, :tail_start], expected[:, :tail_start], rtol=0, atol=1e-10)
    difference = (result[:, tail_start:] - expected[:, tail_start:]).abs().amax(dim=(0, 2))
    assert difference.max() > 1e-3, "the tail-window rule should make the two disagree"
    assert math.isfinite(difference.max().item())
