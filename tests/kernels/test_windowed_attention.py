"""zs_kernels.windowed_attention on every backend.

* the oracle (``backend="reference"``) against an independent per-frame formulation, SDPA and
  diffusers' own FreeNoiseTransformerBlock;
* the torch path and the Triton kernel against the float64 oracle under the error rule of
  :func:`zs_kernels.testing.assert_within_error_rule` (FlashAttention's: at most 2× PyTorch's own
  error at that dtype, plus one ulp of the largest output), with outputs allocated NaN-filled so
  an element left unwritten fails;
* the Triton kernel runs compiled on a GPU when there is one, else through the interpreter on
  CPU in fp32 and fp16 (the interpreter's ``tl.dot`` on bf16 returns garbage: bf16 is covered by
  the ``-m cuda`` tests and the ahead-of-time builds of ``test_compile.py``);
* non-finite inputs, bad arguments, the deprecated ``scale=``, the launcher's configurations.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import zs_kernels
from zs_kernels import frames, reference, testing
from zs_kernels.windowed_attention import triton as kernel
from zs_kernels.windowed_attention import vectorized

from .helpers import raises

# (dtype, error, PyTorch's error) of every Triton comparison, summarised when the module finishes.
_ERRORS = []


@pytest.fixture(scope="module", autouse=True)
def _report_errors(request):
    """After the module: the largest errors seen per dtype (printed past pytest's capture)."""
    yield
    capture = request.config.pluginmanager.getplugin("capturemanager")
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        rows = [(error, torch_error) for kind, error, torch_error in _ERRORS if kind == dtype]
        if not rows:
            continue
        ratio = max((error / torch_error for error, torch_error in rows if torch_error > 0), default=0)
        with capture.global_and_fixture_disabled():
            print(
                f"\nwindowed attention (triton) {dtype}: {len(rows)} comparisons, max error "
                f"{max(row[0] for row in rows):.2e}, max PyTorch-at-dtype error {max(row[1] for row in rows):.2e}, "
                f"max error/PyTorch ratio {ratio:.2f}"
            )


def make_inputs(shape, dtype, layout="contiguous", count=3, magnitude=1.0, device="cpu"):
    """``count`` fresh random ``[N, H, F, D]`` tensors of ``dtype`` in the requested memory layout.

    ``frames_major``: the model's layout, ``[N, F, H, D]`` storage viewed as ``[N, H, F, D]``;
    ``strided_d``: every other element of a twice-as-wide last dim (head-dim stride 2).
    """
    n, h, f, d = shape
    tensors = []
    for _ in range(count):
        if layout == "contiguous":
            x = torch.randn(n, h, f, d, device=device)
        elif layout == "frames_major":
            x = torch.randn(n, f, h, d, device=device).transpose(1, 2)
        elif layout == "strided_d":
            x = torch.randn(n, h, f, 2 * d, device=device)[..., ::2]
        else:
            raise ValueError(layout)
        tensors.append((x * magnitude).to(dtype))
    return tensors


def upcast(x):
    if x is None:
        return None
    if isinstance(x, tuple):
        return tuple(map(upcast, x))
    return x.double()


def check(q, k, v, *, backend="triton", window, stride, **options):
    """Run the op on NaN-filled allocations and apply the error rule against the float64 oracle.
    Returns ``(error, PyTorch's error)``."""
    options = dict(window=window, stride=stride, **options)
    with testing.nan_filled_allocations():
        out = zs_kernels.windowed_attention(q, k, v, backend=backend, **options)
    assert out.dtype == q.dtype and out.shape == q.shape and out.device == q.device
    assert out.stride() == torch.empty_like(q).stride()
    tables = {name: upcast(options.get(name)) for name in ("rel_k", "rel_v", "corrected")}
    oracle = reference.windowed_attention(q.double(), k.double(), v.double(), **{**options, **tables})
    low_precision = reference.windowed_attention(q, k, v, **options)
    error, torch_error = testing.assert_within_error_rule(out, low_precision, oracle)
    if backend == "triton":
        _ERRORS.append((q.dtype, error, torch_error))
    return error, torch_error


# --- the oracle ---------------------------------------------------------------------------------

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


def per_frame_windowed_attention(q, k, v, window, stride, weighting, softmax_scale, rel_k=None, rel_v=None):
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
            p = torch.softmax(scores * softmax_scale, dim=-1)
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
    result = reference.windowed_attention(
        q, k, v, window=window, stride=stride, softmax_scale=0.3, rel_k=rel_k, rel_v=rel_v
    )
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


def diffusers_and_ours(num_frames, window, stride):
    """``(diffusers, ours)``: a FreeNoise block whose cross-attention and feed-forward add nothing
    (output = h + fused attention), and h + to_out(our windowed attention) with Q, K, V from the
    block's own attn1 and norm1, on the same random input."""
    from diffusers.models.attention import FreeNoiseTransformerBlock

    dim, heads = 24, 3
    block = FreeNoiseTransformerBlock(
        dim, heads, dim // heads, cross_attention_dim=dim, context_length=window, context_stride=stride
    ).double().eval()
    hidden = torch.randn(5, num_frames, dim, dtype=torch.float64)
    encoder = torch.randn(5, 2, dim, dtype=torch.float64)
    with torch.no_grad():
        for layer in (block.attn2.to_out[0], block.ff.net[-1]):
            layer.weight.zero_()
            layer.bias.zero_()
        expected = block(hidden, encoder_hidden_states=encoder)
        attn = block.attn1
        normed = block.norm1(hidden)
        q, k, v = (
            projection(normed).unflatten(-1, (heads, -1)).transpose(1, 2)  # [N, F, C] → [N, H, F, d]
            for projection in (attn.to_q, attn.to_k, attn.to_v)
        )
        fused = zs_kernels.windowed_attention(q, k, v, window=window, stride=stride, backend="reference")
        ours = hidden + attn.to_out[0](fused.transpose(1, 2).flatten(-2))
    return expected, ours


@pytest.mark.parametrize("num_frames, window, stride", [(16, 16, 4), (32, 16, 4), (24, 8, 4), (30, 6, 3), (21, 7, 7)])
def test_agrees_with_diffusers_freenoise_without_tail_window(num_frames, window, stride):
    assert (num_frames - window) % stride == 0
    expected, result = diffusers_and_ours(num_frames, window, stride)
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("num_frames, window, stride", [(25, 16, 4), (35, 16, 8), (23, 8, 4)])
def test_differs_from_diffusers_freenoise_with_tail_window(num_frames, window, stride):
    """SPEC §5: with a tail window, diffusers lets it update only the frames no regular window
    covers, and normalises them by one scalar weight instead of per-frame weights. We let every
    window, the tail included, contribute to all of its frames with the same pyramid weights. The
    two agree on the frames the tail window does not touch and differ inside it."""
    assert (num_frames - window) % stride != 0
    expected, result = diffusers_and_ours(num_frames, window, stride)
    tail_start = num_frames - window
    torch.testing.assert_close(result[:, :tail_start], expected[:, :tail_start], rtol=0, atol=1e-10)
    difference = (result[:, tail_start:] - expected[:, tail_start:]).abs().amax(dim=(0, 2))
    assert difference.max() > 1e-3, "the tail-window rule should make the two disagree"
    assert math.isfinite(difference.max().item())


@pytest.mark.parametrize("num_frames, window, stride", [(3, 8, 2), (8, 8, 4), (21, 8, 3), (40, 16, 16)])
@pytest.mark.parametrize("weighting", ["pyramid", "flat"])
def test_per_window_loop_peer_equals_reference(num_frames, window, stride, weighting):
    """The benches' diffusers-style peer computes SPEC §5 too, shorter-than-a-window F included."""
    q, k, v = random_qkv(frames=num_frames)
    expected = reference.windowed_attention(q, k, v, window=window, stride=stride, weighting=weighting)
    result = testing.per_window_loop(q, k, v, window, stride, weighting)
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-12)


# --- the torch path ---------------------------------------------------------------------------

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def strided_qkv(n, heads, num_frames, dim, dtype):
    """Q, K, V as the model hands them: [N, F, H·D] projections viewed as [N, H, F, D] (not contiguous)."""
    return [
        torch.randn(n, num_frames, heads * dim, dtype=dtype).unflatten(-1, (heads, dim)).transpose(1, 2)
        for _ in range(3)
    ]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim", [40, 64, 72, 80, 160])
@pytest.mark.parametrize("num_frames, window, stride", [(37, 16, 4), (32, 16, 8), (12, 16, 4), (29, 14, 7)])
def test_torch_path_matches_reference(dtype, head_dim, num_frames, window, stride):
    q, k, v = strided_qkv(3, 2, num_frames, head_dim, dtype)
    assert not q.is_contiguous()
    check(q, k, v, backend="torch", window=window, stride=stride)
    assert torch.empty_like(q).stride() == q.stride(), "output should follow q's layout"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("weighting", ["pyramid", "flat"])
def test_torch_path_with_bias_and_dual_pass(dtype, weighting):
    q, k, v = strided_qkv(2, 3, 23, 40, dtype)
    corrected = tuple(strided_qkv(2, 3, 23, 40, dtype))
    rel_k, rel_v = (torch.randn(9, 40, dtype=dtype) for _ in range(2))
    check(
        q, k, v, backend="torch", window=8, stride=3, weighting=weighting, softmax_scale=0.2,
        rel_k=rel_k, rel_v=rel_v, corrected=corrected, blend=0.7,
    )


def block_candidates(num_frames, stride):
    """Every block height the banded formulation may take: multiples of the stride below F, and F."""
    return list(range(stride, num_frames, stride)) + [num_frames]


class PathSpy:
    """Counts the calls of the torch path's formulations, still running them."""

    def __init__(self, monkeypatch):
        self.calls = {"plain_attention": 0, "banded": 0, "per_window": 0, "lanes": 0}
        for name in self.calls:
            original = getattr(vectorized, f"_{name}")

            def counted(*args, name=name, original=original):
                self.calls[name] += 1
                return original(*args)

            monkeypatch.setattr(vectorized, f"_{name}", counted)

    def only(self, name, count):
        """Assert that ``name`` ran ``count`` times and no other formulation ran."""
        assert self.calls == {**dict.fromkeys(self.calls, 0), name: count}, self.calls


@pytest.mark.parametrize(
    "num_frames, window, stride, head_dim",
    [(37, 16, 4, 40), (29, 14, 7, 16), (64, 16, 8, 24), (20, 7, 3, 12), (33, 16, 16, 8), (13, 5, 1, 8)],
)
def test_torch_path_every_block_size(monkeypatch, num_frames, window, stride, head_dim):
    """The banded formulation with every block height it may take (the cost model picks one):
    tail windows, a last block padded past the last frame, bands reaching into the neighbouring
    sequences and the buffer's margins, no overlap. Fresh random inputs, NaN-filled outputs, the
    error rule of :func:`check` (at most 2× PyTorch's own error at the dtype)."""
    q, k, v = strided_qkv(2, 3, num_frames, head_dim, torch.float32)
    spy = PathSpy(monkeypatch)
    for rows in block_candidates(num_frames, stride):
        monkeypatch.setattr(vectorized, "formulation", lambda *args, rows=rows: ("banded", rows))
        check(q, k, v, backend="torch", window=window, stride=stride)
    spy.only("banded", len(block_candidates(num_frames, stride)))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_frames, window, stride", [(8, 4, 2), (13, 5, 3), (15, 8, 7)])
def test_torch_path_few_frames_per_window(monkeypatch, dtype, num_frames, window, stride):
    """Several windows over fewer than PER_WINDOW_BELOW_FRAMES frames take the per-window form
    in eager mode too (tables, dual pass, a tail window), within the error rule of :func:`check`."""
    q, k, v = strided_qkv(2, 3, num_frames, 24, dtype)
    corrected = tuple(strided_qkv(2, 3, num_frames, 24, dtype))
    rel_k, rel_v = (torch.randn(2 * window - 1, 24, dtype=dtype) for _ in range(2))
    spy = PathSpy(monkeypatch)
    check(q, k, v, backend="torch", window=window, stride=stride)
    check(q, k, v, backend="torch", window=window, stride=stride, rel_k=rel_k, rel_v=rel_v, corrected=corrected,
          blend=0.6)
    spy.only("per_window", 3)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("weighting", ["pyramid", "flat"])
@pytest.mark.parametrize("head_dim", [3, 7, 8])
@pytest.mark.parametrize("num_frames, window, stride", [(8, 4, 2), (13, 5, 3), (15, 8, 7), (11, 3, 1)])
def test_torch_path_lane_form(monkeypatch, dtype, weighting, head_dim, num_frames, window, stride):
    """Several windows over few frames with a small head dim and no tables take the lane form
    (single and dual pass; tail windows, stride 1, non-power-of-2 sizes), within the error rule
    of :func:`check`; with tables the per-window form."""
    q, k, v = strided_qkv(3, 5, num_frames, head_dim, dtype)
    corrected = tuple(strided_qkv(3, 5, num_frames, head_dim, dtype))
    spy = PathSpy(monkeypatch)
    check(q, k, v, backend="torch", window=window, stride=stride, weighting=weighting)
    check(q, k, v, backend="torch", window=window, stride=stride, weighting=weighting, softmax_scale=0.3,
          corrected=corrected, blend=0.6)
    spy.only("lanes", 2)
    rel_k = torch.randn(2 * window - 1, head_dim, dtype=dtype)
    spy = PathSpy(monkeypatch)
    check(q, k, v, backend="torch", window=window, stride=stride, rel_k=rel_k, corrected=corrected, blend=0.6)
    spy.only("per_window", 2)


@pytest.mark.parametrize("capacity, chunks", [(1, 5), (2 * 2 * 3 * 4 * 4 * 4 * 2, 3)])
def test_torch_path_lane_form_in_chunks(monkeypatch, capacity, chunks):
    """The lane form in chunks of one sequence row, or of two with a last chunk of one."""
    monkeypatch.setattr(vectorized, "LANE_CHUNK_ELEMENTS", capacity)
    spy = PathSpy(monkeypatch)
    q, k, v, q_hat, k_hat, v_hat = (torch.randn(5, 2, 8, 4, dtype=torch.float64) for _ in range(6))
    expected = reference.windowed_attention(q, k, v, window=4, stride=2, corrected=(q_hat, k_hat, v_hat), blend=0.3)
    with testing.nan_filled_allocations():
        result = zs_kernels.windowed_attention(q, k, v, window=4, stride=2, corrected=(q_hat, k_hat, v_hat), blend=0.3)
    torch.testing.assert_close(result, expected)
    spy.only("lanes", chunks)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_torch_path_every_block_size_with_bias_and_dual_pass(monkeypatch, dtype):
    q, k, v = strided_qkv(2, 3, 23, 40, dtype)
    corrected = tuple(strided_qkv(2, 3, 23, 40, dtype))
    rel_k, rel_v = (torch.randn(9, 40, dtype=dtype) for _ in range(2))
    for rows in block_candidates(23, 3):
        monkeypatch.setattr(vectorized, "block_rows", lambda *args, rows=rows: rows)
        check(
            q, k, v, backend="torch", window=8, stride=3, softmax_scale=0.2, rel_k=rel_k, rel_v=rel_v,
            corrected=corrected, blend=0.7,
        )


def test_block_rows_cost_model():
    """Long sequences are cut into blocks (scoring all F² pairs would waste most of the work);
    the model's full-matrix cost is one block of F × F."""
    assert vectorized.block_rows(128, 16, 8, 40) < 128
    assert vectorized.block_rows(128, 16, 8, 40) % 8 == 0
    full = vectorized.block_cost(64, 16, 8, 40, 64)
    per_block = vectorized.BLOCK_COST_NS[0] + 40 * vectorized.BLOCK_COST_NS[1]
    per_element = vectorized.ELEMENT_COST_NS[0] + 40 * vectorized.ELEMENT_COST_NS[1]
    assert full == pytest.approx(per_block + 64 * 64 * per_element)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_frames, window", [(5, 8), (16, 16), (1, 4)])
def test_torch_path_single_window(monkeypatch, dtype, num_frames, window):
    """F <= W is plain attention: SDPA without relative tables (one call per pass), else one
    banded block whose band is the window, a plain softmax."""
    q, k, v = strided_qkv(3, 2, num_frames, 24, dtype)
    corrected = tuple(strided_qkv(3, 2, num_frames, 24, dtype))
    rel_k, rel_v = (torch.randn(5, 24, dtype=dtype) for _ in range(2))
    spy = PathSpy(monkeypatch)
    check(q, k, v, backend="torch", window=window, stride=4)
    check(q, k, v, backend="torch", window=window, stride=4, softmax_scale=0.3, corrected=corrected, blend=0.4)
    spy.only("plain_attention", 3)
    spy = PathSpy(monkeypatch)
    check(q, k, v, backend="torch", window=window, stride=4, rel_k=rel_k, rel_v=rel_v, corrected=corrected, blend=0.4)
    spy.only("banded", 2)
    assert vectorized.block_rows(num_frames, window, 4, 24) == num_frames
    assert vectorized._band_plan(num_frames, window, 4, "pyramid", num_frames, "cpu", torch.float32).plain


def test_formulation_reaches_every_path():
    """The selection: SDPA for one window without tables; for several windows over few frames
    the lane form up to LANES_MAX_HEAD_DIM without tables, the per-window form otherwise; the
    banded blocks otherwise with the cost model's block height; the per-window form under
    torch.compile."""
    assert vectorized.formulation(12, 16, 4, 40, tables=False, compiling=False) == ("sdpa", None)
    assert vectorized.formulation(12, 16, 4, 40, tables=True, compiling=False) == ("banded", 12)
    assert vectorized.formulation(128, 16, 8, 40, tables=False, compiling=False) == (
        "banded", vectorized.block_rows(128, 16, 8, 40)
    )
    below = vectorized.PER_WINDOW_BELOW_FRAMES
    for tables in (False, True):
        assert vectorized.formulation(below - 1, 4, 2, 40, tables=tables, compiling=False) == ("per_window", None)
        assert vectorized.formulation(below, 4, 2, 40, tables=tables, compiling=False) == (
            "banded", vectorized.block_rows(below, 4, 2, 40)
        )
    small = vectorized.LANES_MAX_HEAD_DIM
    assert vectorized.formulation(below - 1, 4, 2, small, tables=False, compiling=False) == ("lanes", None)
    assert vectorized.formulation(below - 1, 4, 2, small + 1, tables=False, compiling=False) == ("per_window", None)
    assert vectorized.formulation(below - 1, 4, 2, small, tables=True, compiling=False) == ("per_window", None)
    assert vectorized.formulation(below - 1, 4, 2, small, tables=False, compiling=True) == ("per_window", None)
    for tables in (False, True):
        assert vectorized.formulation(12, 16, 4, 40, tables=tables, compiling=True) == ("per_window", None)
        assert vectorized.formulation(128, 16, 8, 40, tables=tables, compiling=True) == ("per_window", None)


@pytest.mark.parametrize("source, formulations", [
    ("q", {"banded": 2, "per_window": 1}), ("q_hat", {"banded": 2, "per_window": 1}), ("k", {"plain_attention": 2})
])
def test_torch_path_single_window_non_finite_query(monkeypatch, source, formulations):
    """SDPA's CPU kernel drops a NaN query: one window with a non-finite query (either pass)
    takes the banded formulation (both passes), which hands the poisoned pass to the per-window
    form; a NaN key stays with SDPA, which propagates it."""
    names = ("q", "k", "v", "q_hat", "k_hat", "v_hat")
    inputs = dict(zip(names, strided_qkv(2, 2, 6, 8, torch.float32) + strided_qkv(2, 2, 6, 8, torch.float32)))
    inputs[source][1, 0, 2, 3] = float("nan")
    spy = PathSpy(monkeypatch)
    out = zs_kernels.windowed_attention(
        inputs["q"], inputs["k"], inputs["v"], window=8, stride=4, backend="torch",
        corrected=(inputs["q_hat"], inputs["k_hat"], inputs["v_hat"]), blend=0.5,
    )
    assert spy.calls == {**dict.fromkeys(spy.calls, 0), **formulations}
    expected = torch.zeros_like(out, dtype=torch.bool)
    if source == "k":
        expected[1, 0] = True
    else:
        expected[1, 0, 2] = True
    assert torch.equal(out.isnan(), expected)


def test_torch_path_large_score_ranges_stay_exact():
    """Scores spanning > 100 inside a window, and windows whose keys all score far below another
    window sharing the query, stay exact (each window's softmax is stabilised by its own maximum)."""
    q, k, v = (torch.randn(2, 2, 32, 16, dtype=torch.float64) for _ in range(3))
    k[:, :, 16:24] *= 200.0
    q *= 30.0
    oracle = reference.windowed_attention(q, k, v, window=16, stride=8)
    for dtype in (torch.float32, torch.float64):
        result = zs_kernels.windowed_attention(q.to(dtype), k.to(dtype), v.to(dtype), window=16, stride=8)
        assert torch.isfinite(result).all()
        torch.testing.assert_close(result.double(), oracle, rtol=1e-4, atol=1e-4)


def test_torch_path_underflowing_window_sums_stay_exact(monkeypatch):
    """Window [0, 16) scores far below window [8, 24)'s keys for query 12: one shared exponential
    would underflow that window's sum to 0, so the op must stabilise each window separately."""
    q, k, v = (torch.randn(1, 1, 32, 8) for _ in range(3))
    q[..., 12, :] = 1.0
    k[..., :16, :] = -100.0
    k[..., 16:24, :] = 100.0
    expected = reference.windowed_attention(
        q.double(), k.double(), v.double(), window=16, stride=8, softmax_scale=1.0
    )
    spy = PathSpy(monkeypatch)
    result = zs_kernels.windowed_attention(q, k, v, window=16, stride=8, softmax_scale=1.0, backend="torch")
    torch.testing.assert_close(result.double(), expected, rtol=1e-5, atol=1e-5)
    assert spy.calls == {"plain_attention": 0, "banded": 1, "per_window": 1, "lanes": 0}, (
        "the banded form must hand the chunk on"
    )


@pytest.mark.parametrize("capacity, chunks", [(1, 5), (2 * 2 * 3 * 4 * 12, 3)])
def test_torch_path_processes_batches_in_chunks(monkeypatch, capacity, chunks):
    """One sequence row per chunk, or two with a last chunk of one, whose band reads the previous
    chunk's frames left in the buffer."""
    monkeypatch.setattr(vectorized, "CHUNK_ELEMENTS", capacity)
    monkeypatch.setattr(vectorized, "formulation", lambda *args: ("banded", 4))  # 3 blocks of 4 rows, band 12
    spy = PathSpy(monkeypatch)
    q, k, v = (torch.randn(5, 2, 12, 8, dtype=torch.float64) for _ in range(3))
    expected = reference.windowed_attention(q, k, v, window=6, stride=2)
    torch.testing.assert_close(zs_kernels.windowed_attention(q, k, v, window=6, stride=2), expected)
    spy.only("banded", chunks)


def test_torch_path_empty_batch():
    q = torch.randn(0, 2, 20, 8)
    assert zs_kernels.windowed_attention(q, q, q, window=8, stride=4, backend="torch").shape == q.shape


@pytest.mark.parametrize(
    "num_frames, window, stride, tables",
    [(37, 16, 4, True), (20, 7, 3, True), (5, 8, 2, True), (40, 16, 16, True), (20, 7, 3, False), (5, 8, 2, False)],
)
@torch.no_grad()
def test_torch_path_compiles_fullgraph(num_frames, window, stride, tables):
    """Under torch.compile the torch path traces without graph breaks (its per-window form: no
    data-dependent branch) and matches the oracle, relative tables and dual pass included."""
    q, k, v, q_hat, k_hat, v_hat = (torch.randn(2, 2, num_frames, 12, dtype=torch.float64) for _ in range(6))
    rel_k, rel_v = (torch.randn(7, 12, dtype=torch.float64) if tables else None for _ in range(2))
    options = dict(
        window=window, stride=stride, softmax_scale=0.25, rel_k=rel_k, rel_v=rel_v,
        corrected=(q_hat, k_hat, v_hat), blend=0.4,
    )

    def op(q, k, v):
        return zs_kernels.windowed_attention(q, k, v, backend="torch", **options)

    torch._dynamo.reset()
    compiled = torch.compile(op, fullgraph=True, backend="aot_eager")
    expected = reference.windowed_attention(q, k, v, **options)
    torch.testing.assert_close(compiled(q, k, v), expected, rtol=0, atol=1e-12)


# --- the Triton kernel (interpreter on CPU, compiled on a GPU) ---------------------------------

KERNEL_DTYPES = [torch.float32, torch.float16]

# (F, W, stride, D): F ∈ {1, 2, W−1, W, W+1, 2W, odd, 128} for W ∈ {2, 7, 14, 16}; D ∈ {16, 40, 64, 80}.
SHAPES = [
    (1, 2, 1, 16), (2, 2, 1, 40), (3, 2, 1, 16), (4, 2, 2, 64), (5, 2, 1, 80),
    (1, 7, 4, 40), (6, 7, 4, 16), (7, 7, 3, 64), (8, 7, 4, 16), (14, 7, 4, 80), (23, 7, 5, 40),
    (2, 14, 7, 64), (13, 14, 7, 80), (14, 14, 7, 16), (15, 14, 7, 40), (28, 14, 7, 64), (45, 14, 6, 16),
    (1, 16, 8, 80), (15, 16, 8, 40), (16, 16, 8, 64), (17, 16, 8, 16), (32, 16, 8, 80), (37, 16, 5, 64),
    (128, 16, 8, 64), (128, 16, 3, 40), (300, 16, 8, 16),
]


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize("num_frames, window, stride, head_dim", SHAPES)
def test_kernel_matches_reference(num_frames, window, stride, head_dim, dtype, device):
    q, k, v = make_inputs((2, 1, num_frames, head_dim), dtype, device=device)
    check(q, k, v, window=window, stride=stride)


@pytest.mark.parametrize(
    "window, stride, dtype",
    [(7, stride, torch.float32) for stride in range(1, 8)] + [(16, stride, torch.float16) for stride in range(1, 17)],
)
def test_kernel_every_stride(window, stride, dtype, device):
    """F = 2W + 5 with every stride 1…W: the tail window is present or absent in turn."""
    q, k, v = make_inputs((1, 1, 2 * window + 5, 16), dtype, device=device)
    check(q, k, v, window=window, stride=stride, weighting="pyramid" if stride % 2 else "flat")


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize("layout", ["frames_major", "strided_d"])
def test_kernel_strided_inputs(layout, dtype, device):
    """Permuted (model layout) and non-unit head-dim strides are read in place; q and k/v differ."""
    (q,) = make_inputs((2, 2, 21, 40), dtype, layout, count=1, device=device)
    k, v = make_inputs((2, 2, 21, 40), dtype, count=2, device=device)
    check(q, k, v, window=7, stride=4)


@pytest.mark.parametrize(
    "radius_k, radius_v, window, num_frames",
    [(3, 3, 7, 20), (20, 20, 7, 20), (3, None, 16, 33), (None, 5, 16, 33), (0, 0, 2, 5), (4, 9, 14, 14)],
)
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=["fp32", "fp16"])
def test_kernel_relative_position_bias(radius_k, radius_v, window, num_frames, dtype, device):
    """Tables shorter than the window (clipped distances) and longer (only the used rows are read)."""
    head_dim = 40
    q, k, v = make_inputs((1, 2, num_frames, head_dim), dtype, device=device)
    rel_k = None if radius_k is None else torch.randn(2 * radius_k + 1, head_dim, device=device).to(dtype)
    rel_v = None if radius_v is None else torch.randn(2 * radius_v + 1, head_dim, device=device).to(dtype)
    check(q, k, v, window=window, stride=window - window // 2, rel_k=rel_k, rel_v=rel_v)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize("blend, with_rel", [(0.0, False), (0.37, True), (1.0, False)])
def test_kernel_dual_pass(blend, with_rel, dtype, device):
    q, k, v, q_hat, k_hat, v_hat = make_inputs((2, 1, 23, 64), dtype, count=6, device=device)
    tables = {}
    if with_rel:
        tables = {name: torch.randn(7, 64, device=device).to(dtype) for name in ("rel_k", "rel_v")}
    check(q, k, v, window=14, stride=7, corrected=(q_hat, k_hat, v_hat), blend=blend, **tables)


def test_kernel_dual_pass_mixed_layouts(device):
    q, k = make_inputs((1, 2, 18, 16), torch.float32, count=2, device=device)
    v, q_hat = make_inputs((1, 2, 18, 16), torch.float32, "frames_major", count=2, device=device)
    k_hat, v_hat = make_inputs((1, 2, 18, 16), torch.float32, "strided_d", count=2, device=device)
    check(q, k, v, window=16, stride=8, corrected=(q_hat, k_hat, v_hat), blend=0.8)


def test_kernel_large_score_ranges_stay_finite(device):
    """Scores spanning more than 100 within each window: every window needs its own maximum."""
    num_frames, window, stride = 40, 16, 8
    q, k, v = make_inputs((2, 1, num_frames, 16), torch.float32, device=device)
    q, k = q * 6.0, k * 6.0
    scores = (q @ k.transpose(-1, -2)) * 16**-0.5
    for start in frames.window_starts(num_frames, window, stride):
        span = slice(start, start + window)
        block = scores[..., span, span]
        assert (block.amax(-1) - block.amin(-1)).max() > 100
    error, _ = check(q, k, v, window=window, stride=stride)
    assert error < 1e-4


def test_kernel_softmax_scale(device):
    q, k, v = make_inputs((1, 1, 20, 16), torch.float32, device=device)
    check(q, k, v, window=7, stride=4, softmax_scale=0.9)


@pytest.mark.parametrize(
    "config",
    [
        kernel.launch_config(16), kernel.launch_config(32), kernel.launch_config(64, num_warps=8),
        kernel.launch_config(16, seqs_per_program=3),
    ],
    ids=lambda config: config.label,
)
def test_pinned_configs_agree(config, device):
    """Every query-block height and sequence packing (5 sequences over programs of 3) is exact."""
    q, k, v = make_inputs((5, 1, 37, 16), torch.float32, device=device)
    with kernel.AUTOTUNER.pinned(config):
        check(q, k, v, window=14, stride=7)


def test_grid_for_two_million_sequences():
    """The launcher's grid for N·H = 2,000,000 · 8 sequences fits CUDA's limits for every config."""
    for by_features in kernel.CANDIDATES.values():
        for config in (config for configs in by_features.values() for config in configs):
            x, y, z = kernel.launch_grid(2_000_000 * 8, config)
            assert 0 < x <= 2**31 - 1 and y == 1 and z == 1
            assert x * config["seqs"] >= 2_000_000 * 8


def test_launcher_grid_for_two_million_sequences(monkeypatch):
    """The launcher itself, on N = 2,000,000 sequences (a stride-0 batch), hands the kernel a
    grid on axis 0 only and the full sequence count; the kernel is replaced by a recorder."""
    launches = []

    class Recorder:
        def __getitem__(self, grid):
            return lambda **kwargs: launches.append((grid, kwargs))

    monkeypatch.setattr(kernel, "windowed_attention_kernel", Recorder())
    q = torch.randn(1, 1, 2, 16, dtype=torch.float16).expand(2_000_000, 1, 2, 16)
    kernel.windowed_attention(q, q, q, 2, 1, "pyramid", 0.25, None, None, None, None)
    ((grid, kwargs),) = launches
    assert grid == (2_000_000 // kwargs["SEQS_PER_PROGRAM"], 1, 1) and kwargs["num_sequences"] == 2_000_000


def test_launcher_offers_the_autotuner_the_pruned_shipped_candidates(monkeypatch, device):
    """What the launcher hands the autotuner: the pruned candidates of the problem's tile shape,
    preferred first, keyed by the problem; and it launches the one chosen."""
    offered = []

    def choose(key, candidates, launch, launch_device):
        offered.append((key, list(candidates), launch_device))
        return candidates[-1]

    monkeypatch.setattr(kernel.AUTOTUNER, "choose", choose)
    q, k, v = make_inputs((2, 1, 128, 64), torch.float16, device=device)
    check(q, k, v, window=16, stride=8)
    ((key, candidates, launch_device),) = offered
    blocks = kernel.blocks_for(128, 64, 16, -1, False, 8)
    assert candidates == kernel.candidate_configs(128, blocks) and len(candidates) > 1
    assert key[0] == 128 and key[1] == torch.float16 and launch_device == q.device


def test_every_candidate_is_shipped():
    """Candidates (the autotuner's search space, the first of which runs where nothing is timed)
    are always among the configurations compile_check builds, and every problem the launcher
    accepts has at least one."""
    shipped = {build.label for dtype in ("fp16", "fp32") for build in kernel.aot_configurations(dtype)}
    for num_frames in (1, 2, 15, 16, 17, 64, 128, 256, 1000):
        for head_dim in (16, 40, 64, 72, 80, 96, 128, 160, 256):
            for window in (2, 14, 16, 24, 32):
                for radius in (-1, 3, 40):
                    for dual, align in ((False, 8), (True, 1), (True, 4)):
                        length = min(window, num_frames)
                        effective = -1 if radius < 0 else min(radius, length - 1)
                        blocks = kernel.blocks_for(num_frames, head_dim, window, effective, dual, align)
                        candidates = kernel.candidate_configs(num_frames, blocks)
                        too_big = (radius >= 0 and (head_dim > 64 or length > 16)) or (
                            dual and head_dim > 128 and length > 16
                        )
                        if too_big:
                            assert not candidates  # the launcher raises for these
                            continue
                        assert candidates and candidates[0]["seqs"] == 1
                        for config in candidates:
                            assert kernel.build_label(blocks, config) in shipped


def test_kernel_unsupported_sizes_raise_clearly(device):
    """D > 256, windows longer than 32 frames and relative tables with D > 64 raise ValueError
    pointing at backend='torch'; float64 raises TypeError. (The torch backend handles them all.)"""
    big = torch.randn(1, 1, 4, 257, device=device)
    with raises(ValueError, "D=257", "backend='torch'"):
        zs_kernels.windowed_attention(big, big, big, window=4, stride=2, backend="triton")
    long = torch.randn(1, 1, 40, 16, device=device)
    with raises(ValueError, "window length", "backend='torch'"):
        zs_kernels.windowed_attention(long, long, long, window=33, stride=17, backend="triton")
    table = torch.randn(3, 80, device=device)
    wide = torch.randn(1, 1, 8, 80, device=device)
    with raises(ValueError, "relative tables", "backend='torch'"):
        zs_kernels.windowed_attention(wide, wide, wide, window=4, stride=2, rel_k=table, backend="triton")
    double = torch.randn(1, 1, 4, 16, dtype=torch.float64, device=device)
    with raises(TypeError, "float64", "backend='torch'"):
        zs_kernels.windowed_attention(double, double, double, window=4, stride=2, backend="triton")


def test_unsupported_reason_lets_auto_fall_back():
    q = torch.randn(1, 1, 20, 80)
    table = torch.randn(5, 80)
    assert kernel.unsupported_reason(q, 16) is None
    assert kernel.unsupported_reason(q, 16, corrected=(q, q, q)) is None
    assert "relative tables" in kernel.unsupported_reason(q, 16, rel_k=table)
    assert "float16" in kernel.unsupported_reason(q.double(), 16)


def test_kernel_empty_batch(device):
    q = torch.randn(0, 2, 8, 16, device=device)
    assert zs_kernels.windowed_attention(q, q, q, window=4, stride=2, backend="triton").shape == q.shape


# --- non-finite inputs -------------------------------------------------------------------------

# (frames, window, stride): windows [0, 6), [3, 9), [6, 12) and the tail [8, 14); or one window
# (plain attention, F < W). Tables of radius 2 clip distances.
NAN_GEOMETRIES = {"windows": (14, 6, 3), "one_window": (5, 8, 4)}
NAN_RADIUS = 2


def window_mates(num_frames, window, stride):
    """``[F, F]`` bool: frames ``f`` and ``j`` share a window."""
    layout = frames.windows(num_frames, window, stride)
    mates = torch.zeros(num_frames, num_frames, dtype=torch.bool)
    for start in layout.starts:
        mates[start : start + layout.length, start : start + layout.length] = True
    return mates


def bucket_users(num_frames, window, stride, radius):
    """``[F, 2R + 1]`` bool: frame ``f`` attends to a key at table row ``b`` in one of its windows."""
    users = torch.zeros(num_frames, 2 * radius + 1, dtype=torch.bool)
    for f, j in window_mates(num_frames, window, stride).nonzero().tolist():
        users[f, max(-radius, min(radius, j - f)) + radius] = True
    return users


def expected_nan(backend, source, shape, index, window, stride):
    """The documented NaN pattern of the output for a NaN at ``index`` of input ``source``."""
    n, h, num_frames, d = shape
    expected = torch.zeros(shape, dtype=torch.bool)
    mates = window_mates(num_frames, window, stride)
    if source in ("rel_k", "rel_v"):
        row, channel = index
        users = bucket_users(num_frames, window, stride, NAN_RADIUS)[:, row]
        if source == "rel_k":
            expected[:, :, users, :] = True
        elif backend == "reference":
            expected[:, :, users, channel] = True
        else:
            expected[..., channel] = True
        return expected
    sequence, head, frame, channel = index
    if source.startswith("q"):
        expected[sequence, head, frame, :] = True
    elif source.startswith("k"):
        expected[sequence, head, mates[frame], :] = True
    else:
        expected[sequence, head, mates[frame], channel] = True
    return expected


NAN_CASES = [("plain", source) for source in ("q", "k", "v")] + [
    ("rpe+dual", source) for source in ("q", "k", "v", "q_hat", "k_hat", "v_hat", "rel_k", "rel_v")
]


def assert_nan_reaches_only_dependents(backend, features, source, geometry, device):
    """NaN in one element reaches exactly the documented outputs (see the op's docstring); every
    other output is bit-identical to the clean run (the torch path: equal up to rounding)."""
    num_frames, window, stride = geometry
    shape = (2, 1, num_frames, 16)
    names = ("q", "k", "v", "q_hat", "k_hat", "v_hat")
    inputs = dict(zip(names, make_inputs(shape, torch.float32, count=6, device=device)))
    inputs["rel_k"], inputs["rel_v"] = (torch.randn(2 * NAN_RADIUS + 1, 16, device=device) for _ in range(2))

    def run(values):
        options = dict(window=window, stride=stride, backend=backend)
        if "dual" in features:
            options.update(corrected=(values["q_hat"], values["k_hat"], values["v_hat"]), blend=0.37)
        if "rpe" in features:
            options.update(rel_k=values["rel_k"], rel_v=values["rel_v"])
        return zs_kernels.windowed_attention(values["q"], values["k"], values["v"], **options).cpu()

    clean = run(inputs)
    assert torch.isfinite(clean).all()
    if source in ("rel_k", "rel_v"):
        indices = [(0, 5), (2 * NAN_RADIUS, 15)]
    else:
        indices = [(1, 0, 0, 3), (0, 0, num_frames - 1, 15)]
    for index in indices:
        poisoned = dict(inputs, **{source: inputs[source].clone()})
        poisoned[source][index] = float("nan")
        result = run(poisoned)
        expected = expected_nan(backend, source, shape, index, window, stride)
        assert torch.equal(result.isnan(), expected), (index, (result.isnan() ^ expected).nonzero()[:5].tolist())
        if backend == "torch":
            # The torch path hands a chunk holding a non-finite input to another formulation, so
            # its other outputs equal the clean run's up to float32 rounding, not bit for bit.
            torch.testing.assert_close(result[~expected], clean[~expected], rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(result[~expected], clean[~expected]), index


@pytest.mark.parametrize("geometry", list(NAN_GEOMETRIES))
@pytest.mark.parametrize("backend", ["reference", "torch", "triton"])
@pytest.mark.parametrize("features, source", NAN_CASES, ids=lambda value: str(value))
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's numpy
def test_nan_reaches_only_the_outputs_that_depend_on_it(backend, features, source, geometry, device):
    """On every backend, with and without relative tables and the dual pass, over several
    windows and one."""
    if backend != "triton":
        device = torch.device("cpu")
    assert_nan_reaches_only_dependents(backend, features, source, NAN_GEOMETRIES[geometry], device)


@pytest.mark.parametrize("features, source", [("plain", "k"), ("plain", "v"), ("rpe+dual", "v_hat")])
def test_torch_path_nan_every_block_size(monkeypatch, features, source):
    """The banded blocks' band holds keys outside a row's windows: a NaN there stays out of the
    row whatever the block size."""
    num_frames, window, stride = NAN_GEOMETRIES["windows"]
    for rows in block_candidates(num_frames, stride):
        monkeypatch.setattr(vectorized, "block_rows", lambda *args, rows=rows: rows)
        assert_nan_reaches_only_dependents("torch", features, source, (num_frames, window, stride), "cpu")


@pytest.mark.parametrize(
    "features, source", [("plain", source) for source in ("q", "k", "v")]
    + [("dual", source) for source in ("q", "k", "v", "q_hat", "k_hat", "v_hat")],
    ids=lambda value: str(value),
)
def test_torch_path_nan_lane_form(monkeypatch, features, source):
    """The lane form normalises every window on its own: a NaN reaches exactly its windows."""
    monkeypatch.setattr(vectorized, "LANES_MAX_HEAD_DIM", 16)
    spy = PathSpy(monkeypatch)
    assert_nan_reaches_only_dependents("torch", features, source, NAN_GEOMETRIES["windows"], "cpu")
    assert spy.calls["lanes"] == 3 and spy.calls["per_window"] == 0, spy.calls


# --- bad arguments and the deprecated name ----------------------------------------------------


def qkv(n=2, heads=2, frames=8, dim=4, dtype=torch.float32):
    return [torch.randn(n, heads, frames, dim, dtype=dtype) for _ in range(3)]


class TestBadArguments:
    def test_rank(self):
        q, k, v = qkv()
        with raises(ValueError, "q", "4 dimensions", "(2, 8, 4)"):
            zs_kernels.windowed_attention(q[0], k, v, window=4, stride=2)

    def test_mismatched_shapes(self):
        q, k, v = qkv()
        with raises(ValueError, "k", "(2, 2, 8, 4)", "(2, 2, 7, 4)"):
            zs_kernels.windowed_attention(q, k[:, :, :7], v, window=4, stride=2)

    def test_integer_dtype(self):
        q, k, v = qkv()
        with raises(TypeError, "q", "floating", "torch.int64"):
            zs_kernels.windowed_attention(q.long(), k, v, window=4, stride=2)

    def test_mixed_dtypes(self):
        q, k, v = qkv()
        with raises(TypeError, "v", "torch.float16", "torch.float32"):
            zs_kernels.windowed_attention(q, k, v.half(), window=4, stride=2)

    def test_device_mismatch(self):
        q, k, v = qkv()
        with raises(ValueError, "v", "meta", "cpu"):
            zs_kernels.windowed_attention(q, k, v.to("meta"), window=4, stride=2)

    @pytest.mark.parametrize(
        "window, stride, words", [(0, 1, ["window", ">= 1"]), (4, 0, ["stride", ">= 1"]), (4, 5, ["stride", "<= 4"])]
    )
    def test_window_and_stride(self, window, stride, words):
        with raises(ValueError, *words):
            zs_kernels.windowed_attention(*qkv(), window=window, stride=stride)

    def test_non_integer_window(self):
        with raises(TypeError, "window", "integer", "4.0"):
            zs_kernels.windowed_attention(*qkv(), window=4.0, stride=2)

    def test_weighting(self):
        with raises(ValueError, "weighting", "'gauss'", "pyramid"):
            zs_kernels.windowed_attention(*qkv(), window=4, stride=2, weighting="gauss")

    def test_softmax_scale(self):
        with raises(ValueError, "softmax_scale", "positive", "-1"):
            zs_kernels.windowed_attention(*qkv(), window=4, stride=2, softmax_scale=-1)

    def test_relative_table_shape(self):
        with raises(ValueError, "rel_k", "[2R+1, D=4]", "(4, 4)"):
            zs_kernels.windowed_attention(*qkv(), window=4, stride=2, rel_k=torch.randn(4, 4))

    def test_blend_without_corrected(self):
        with raises(ValueError, "blend", "corrected"):
            zs_kernels.windowed_attention(*qkv(), window=4, stride=2, blend=0.5)

    def test_corrected_without_blend(self):
        with raises(ValueError, "blend", "None"):
            zs_kernels.windowed_attention(*qkv(), window=4, stride=2, corrected=tuple(qkv()))

    def test_corrected_not_a_triple(self):
        with raises(ValueError, "corrected", "(q_hat, k_hat, v_hat)", "list"):
            zs_kernels.windowed_attention(*qkv(), window=4, stride=2, corrected=qkv()[:2], blend=0.1)

    def test_corrected_shape(self):
        corrected = qkv(frames=6)
        with raises(ValueError, "corrected q_hat", "(2, 2, 8, 4)"):
            zs_kernels.windowed_attention(*qkv(), window=4, stride=2, corrected=tuple(corrected), blend=0.1)

    def test_unknown_backend(self):
        with raises(ValueError, "backend", "'cuda'", "auto"):
            zs_kernels.windowed_attention(*qkv(), window=4, stride=2, backend="cuda")

    @pytest.mark.parametrize(
        "change, error",
        [
            (dict(k=torch.randn(1, 1, 9, 16)), ValueError),
            (dict(v=torch.randn(1, 1, 8, 16, dtype=torch.float16)), TypeError),
            (dict(v=torch.randn(1, 1, 8, 16, device="meta")), ValueError),
            (dict(window=0), ValueError),
            (dict(stride=9), ValueError),
            (dict(blend=0.5), ValueError),
        ],
    )
    def test_triton_backend_validates_first(self, change, error):
        args = dict(window=8, stride=4, **{name: torch.randn(1, 1, 8, 16) for name in "qkv"})
        args.update(change)
        with pytest.raises(error):
            zs_kernels.windowed_attention(backend="triton", **args)


def test_scale_is_a_deprecated_name_for_softmax_scale():
    q, k, v = qkv()
    expected = zs_kernels.windowed_attention(q, k, v, window=4, stride=2, softmax_scale=0.3)
    with pytest.warns(DeprecationWarning, match="softmax_scale"):
        result = zs_kernels.windowed_attention(q, k, v, window=4, stride=2, scale=0.3)
    assert torch.equal(result, expected)
    assert not torch.equal(result, zs_kernels.windowed_attention(q, k, v, window=4, stride=2))
    with pytest.warns(DeprecationWarning, match="softmax_scale"):
        reference.windowed_attention(q, k, v, window=4, stride=2, scale=0.3)
    with raises(TypeError, "softmax_scale", "scale"):
        zs_kernels.windowed_attention(q, k, v, window=4, stride=2, softmax_scale=0.3, scale=0.3)


def test_default_softmax_scale_is_inverse_sqrt_head_dim():
    q, k, v = qkv(dim=9)
    default = zs_kernels.windowed_attention(q, k, v, window=4, stride=2)
    assert torch.equal(default, zs_kernels.windowed_attention(q, k, v, window=4, stride=2, softmax_scale=1 / 3))


# --- compiled kernels on a GPU (-m cuda) ---------------------------------------------------------

CUDA_CASES = {
    "tail": dict(shape=(3, 4, 37, 64), window=16, stride=5),
    "short": dict(shape=(4, 3, 9, 40), window=16, stride=8),
    "long_window": dict(shape=(2, 2, 61, 160), window=24, stride=12),
    "many_frames": dict(shape=(64, 2, 128, 64), window=16, stride=8),
    "frames_major": dict(shape=(3, 4, 28, 40), window=14, stride=7, layout="frames_major"),
    "strided_d": dict(shape=(2, 3, 29, 80), window=14, stride=7, layout="strided_d"),
    "rpe": dict(shape=(3, 4, 33, 64), window=16, stride=8, tables=(5, 9)),
    "dual": dict(shape=(3, 4, 37, 128), window=16, stride=8, dual=0.6),
    "rpe+dual": dict(shape=(2, 4, 30, 40), window=14, stride=7, tables=(7, 7), dual=0.3, layout="frames_major"),
}


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(CUDA_CASES))
def test_compiled_kernel_matches_oracle(case, dtype, gpu):
    """The compiled kernel (autotuned as in production) against the float64 oracle, bf16 included."""
    spec = CUDA_CASES[case]
    layout = spec.get("layout", "contiguous")
    q, k, v = make_inputs(spec["shape"], dtype, layout, device=gpu)
    options = dict(window=spec["window"], stride=spec["stride"])
    if "tables" in spec:
        head_dim = spec["shape"][-1]
        options["rel_k"], options["rel_v"] = (
            torch.randn(rows, head_dim, device=gpu).to(dtype) for rows in spec["tables"]
        )
    if "dual" in spec:
        options["corrected"] = tuple(make_inputs(spec["shape"], dtype, layout, device=gpu))
        options["blend"] = spec["dual"]
    check(q, k, v, **options)
    # "auto" takes the kernel on CUDA and gives the same numbers.
    auto = zs_kernels.windowed_attention(q, k, v, **options)
    assert torch.equal(auto, zs_kernels.windowed_attention(q, k, v, backend="triton", **options))


@pytest.mark.cuda
def test_auto_falls_back_to_torch_for_unsupported_problems(gpu):
    q, k, v = make_inputs((2, 2, 12, 80), torch.float16, device=gpu)
    table = torch.randn(5, 80, device=gpu).half()
    with raises(ValueError, "relative tables"):
        zs_kernels.windowed_attention(q, k, v, window=8, stride=4, rel_k=table, backend="triton")
    result = zs_kernels.windowed_attention(q, k, v, window=8, stride=4, rel_k=table)
    expected = zs_kernels.windowed_attention(q, k, v, window=8, stride=4, rel_k=table, backend="torch")
    assert torch.equal(result, expected)
