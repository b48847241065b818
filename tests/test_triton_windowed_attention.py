"""The Triton windowed-attention kernel against the float64 oracle, through the Triton interpreter.

Error bound (FlashAttention's rule), for every comparison below:

    max |kernel − oracle64|  <=  2 · max |torch_at_dtype − oracle64|  +  floor[dtype]

where ``oracle64`` is :func:`zs_kernels.reference.windowed_attention` on the same inputs upcast
to float64, ``torch_at_dtype`` the same oracle run in the test dtype on CPU, and ``floor`` a small
absolute term (``1e-5`` for float32, ``1e-3`` for float16) for cases where PyTorch happens to be
exact. bfloat16 is not run here: under the interpreter ``tl.dot`` on bf16 returns garbage, so
bf16 is covered by the ahead-of-time builds in ``test_compile_check.py``.

Every kernel output starts as NaN (``torch.empty_like`` is poisoned for the whole module), so an
element the kernel forgets to write fails the comparison. Inputs are fresh random tensors; the
interpreter is slow, so each case uses a few sequences and the parameter grid is covered by a
curated list rather than a full product.
"""

import math

import pytest
import torch

import zs_kernels
from zs_kernels import frames, reference
from zs_kernels.triton import windowed_attention as kernel

FLOOR = {torch.float32: 1e-5, torch.float16: 1e-3}
# (dtype, kernel error, PyTorch error) of every comparison, summarised when the module finishes.
_ERRORS = []


@pytest.fixture(scope="module", autouse=True)
def _report_errors(request):
    """After the module: the largest errors seen per dtype (printed past pytest's capture)."""
    yield
    capture = request.config.pluginmanager.getplugin("capturemanager")
    for dtype in (torch.float32, torch.float16):
        rows = [(kernel_error, torch_error) for kind, kernel_error, torch_error in _ERRORS if kind == dtype]
        if not rows:
            continue
        ratio = max((kernel_error / torch_error for kernel_error, torch_error in rows if torch_error > 0), default=0)
        with capture.global_and_fixture_disabled():
            print(
                f"\nwindowed attention {dtype}: {len(rows)} comparisons, max kernel error "
                f"{max(row[0] for row in rows):.2e}, max PyTorch-at-dtype error {max(row[1] for row in rows):.2e}, "
                f"max kernel/PyTorch ratio {ratio:.2f}"
            )


@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch):
    """Outputs of ``torch.empty_like`` (which the launcher allocates with) start as NaN."""
    empty_like = torch.empty_like

    def poisoned(tensor, *args, **kwargs):
        out = empty_like(tensor, *args, **kwargs)
        return out.fill_(math.nan) if out.is_floating_point() else out

    monkeypatch.setattr(torch, "empty_like", poisoned)


def _inputs(shape, dtype, layout="contiguous", count=3, magnitude=1.0):
    """``count`` fresh random ``[N, H, F, D]`` tensors of ``dtype`` in the requested memory layout.

    ``frames_major``: the model's layout, ``[N, F, H, D]`` storage viewed as ``[N, H, F, D]``;
    ``strided_d``: every other element of a twice-as-wide last dim (head-dim stride 2).
    """
    n, h, f, d = shape
    tensors = []
    for _ in range(count):
        if layout == "contiguous":
            x = torch.randn(n, h, f, d)
        elif layout == "frames_major":
            x = torch.randn(n, f, h, d).transpose(1, 2)
        elif layout == "strided_d":
            x = torch.randn(n, h, f, 2 * d)[..., ::2]
        else:
            raise ValueError(layout)
        tensors.append((x * magnitude).to(dtype))
    return tensors


def _check(q, k, v, *, window, stride, weighting="pyramid", scale=None, rel_k=None, rel_v=None, corrected=None,
           blend=None, config=None):
    """Run the kernel (through the public op, or the module with a pinned ``config``) and apply
    the error bound. Returns ``(kernel_error, torch_error)``."""
    options = dict(window=window, stride=stride, weighting=weighting, scale=scale, rel_k=rel_k, rel_v=rel_v,
                   corrected=corrected, blend=blend)
    if config is None:
        out = zs_kernels.windowed_attention(q, k, v, backend="triton", **options)
    else:
        with kernel.use_config(config):
            out = zs_kernels.windowed_attention(q, k, v, backend="triton", **options)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert out.stride() == torch.empty_like(q).stride()

    def upcast(x):
        return None if x is None else x.double()

    exact = reference.windowed_attention(
        q.double(), k.double(), v.double(), **{
            **options, "rel_k": upcast(rel_k), "rel_v": upcast(rel_v),
            "corrected": None if corrected is None else tuple(map(upcast, corrected)),
        }
    )
    at_dtype = reference.windowed_attention(q, k, v, **options)
    assert torch.isfinite(out).all(), "kernel left NaN/inf in its output"
    kernel_error = (out.double() - exact).abs().max().item()
    torch_error = (at_dtype.double() - exact).abs().max().item()
    _ERRORS.append((q.dtype, kernel_error, torch_error))
    assert kernel_error <= 2 * torch_error + FLOOR[q.dtype], (kernel_error, torch_error)
    return kernel_error, torch_error


# (F, W, stride, D): F ∈ {1, 2, W−1, W, W+1, 2W, odd, 128} for W ∈ {2, 7, 14, 16}; D ∈ {16, 40, 64, 80}.
SHAPES = [
    (1, 2, 1, 16), (2, 2, 1, 40), (3, 2, 1, 16), (4, 2, 2, 64), (5, 2, 1, 80),
    (1, 7, 4, 40), (6, 7, 4, 16), (7, 7, 3, 64), (8, 7, 4, 16), (14, 7, 4, 80), (23, 7, 5, 40),
    (2, 14, 7, 64), (13, 14, 7, 80), (14, 14, 7, 16), (15, 14, 7, 40), (28, 14, 7, 64), (45, 14, 6, 16),
    (1, 16, 8, 80), (15, 16, 8, 40), (16, 16, 8, 64), (17, 16, 8, 16), (32, 16, 8, 80), (37, 16, 5, 64),
    (128, 16, 8, 64), (128, 16, 3, 40), (300, 16, 8, 16),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("num_frames, window, stride, head_dim", SHAPES)
def test_matches_reference(num_frames, window, stride, head_dim, dtype):
    q, k, v = _inputs((2, 1, num_frames, head_dim), dtype)
    _check(q, k, v, window=window, stride=stride)


@pytest.mark.parametrize(
    "window, stride, dtype",
    [(7, stride, torch.float32) for stride in range(1, 8)] + [(16, stride, torch.float16) for stride in range(1, 17)],
)
def test_every_stride(window, stride, dtype):
    """F = 2W + 5 with every stride 1…W: the tail window is present or absent in turn."""
    q, k, v = _inputs((1, 1, 2 * window + 5, 16), dtype)
    _check(q, k, v, window=window, stride=stride, weighting="pyramid" if stride % 2 else "flat")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("layout", ["frames_major", "strided_d"])
def test_strided_inputs(layout, dtype):
    """Permuted (model layout) and non-unit head-dim strides are read in place; q and k/v differ."""
    q, = _inputs((2, 2, 21, 40), dtype, layout, count=1)
    k, v = _inputs((2, 2, 21, 40), dtype, count=2)
    _check(q, k, v, window=7, stride=4)


@pytest.mark.parametrize(
    "radius_k, radius_v, window, num_frames",
    [(3, 3, 7, 20), (20, 20, 7, 20), (3, None, 16, 33), (None, 5, 16, 33), (0, 0, 2, 5), (4, 9, 14, 14)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_relative_position_bias(radius_k, radius_v, window, num_frames, dtype):
    """Tables shorter than the window (clipped distances) and longer (only the used rows are read)."""
    head_dim = 40
    q, k, v = _inputs((1, 2, num_frames, head_dim), dtype)
    rel_k = None if radius_k is None else torch.randn(2 * radius_k + 1, head_dim).to(dtype)
    rel_v = None if radius_v is None else torch.randn(2 * radius_v + 1, head_dim).to(dtype)
    _check(q, k, v, window=window, stride=window - window // 2, rel_k=rel_k, rel_v=rel_v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("blend, with_rel", [(0.0, False), (0.37, True), (1.0, False)])
def test_dual_pass(blend, with_rel, dtype):
    q, k, v, q_hat, k_hat, v_hat = _inputs((2, 1, 23, 64), dtype, count=6)
    tables = dict(rel_k=torch.randn(7, 64).to(dtype), rel_v=torch.randn(7, 64).to(dtype)) if with_rel else {}
    _check(q, k, v, window=14, stride=7, corrected=(q_hat, k_hat, v_hat), blend=blend, **tables)


def test_dual_pass_mixed_layouts():
    (q, k), (v, q_hat) = _inputs((1, 2, 18, 16), torch.float32, count=2), _inputs(
        (1, 2, 18, 16), torch.float32, "frames_major", count=2
    )
    k_hat, v_hat = _inputs((1, 2, 18, 16), torch.float32, "strided_d", count=2)
    _check(q, k, v, window=16, stride=8, corrected=(q_hat, k_hat, v_hat), blend=0.8)


def test_large_score_ranges_stay_finite():
    """Scores spanning more than 100 within each window: every window needs its own maximum."""
    num_frames, window, stride = 40, 16, 8
    q, k, v = _inputs((2, 1, num_frames, 16), torch.float32)
    q, k = q * 6.0, k * 6.0
    scores = (q @ k.transpose(-1, -2)) * 16**-0.5
    for start in frames.window_starts(num_frames, window, stride):
        span = slice(start, start + window)
        block = scores[..., span, span]
        assert (block.amax(-1) - block.amin(-1)).max() > 100
    kernel_error, _ = _check(q, k, v, window=window, stride=stride)
    assert kernel_error < 1e-4


def test_scale_argument():
    q, k, v = _inputs((1, 1, 20, 16), torch.float32)
    _check(q, k, v, window=7, stride=4, scale=0.9)


@pytest.mark.parametrize(
    "config",
    [kernel.Config(16), kernel.Config(32), kernel.Config(64, num_warps=8), kernel.Config(16, seqs_per_program=3)],
    ids=str,
)
def test_pinned_configs_agree(config):
    """Every query-block height and sequence packing (5 sequences over programs of 3) is exact."""
    q, k, v = _inputs((5, 1, 37, 16), torch.float32)
    _check(q, k, v, window=14, stride=7, config=config)


def test_grid_for_two_million_sequences():
    """The launcher's grid for N·H = 2,000,000 · 8 sequences fits CUDA's limits for every config."""
    for by_features in kernel.CANDIDATES.values():
        for config in (config for configs in by_features.values() for config in configs):
            x, y, z = kernel.launch_grid(2_000_000 * 8, config)
            assert 0 < x <= 2**31 - 1 and y == 1 and z == 1
            assert x * config.seqs_per_program >= 2_000_000 * 8


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
    (grid, kwargs), = launches
    assert grid == (2_000_000 // kwargs["SEQS_PER_PROGRAM"], 1, 1) and kwargs["num_sequences"] == 2_000_000


def test_autotune_picks_the_fastest_candidate(monkeypatch):
    """The CUDA autotuner times every pruned candidate once per problem and caches the winner
    (timings faked here: there is no GPU)."""
    timings = {16: 3.0, 32: 1.0, 64: 2.0}
    launched = []

    def fake_bench(run, **_):
        run()
        return timings[launched[-1].block_m]

    monkeypatch.setattr(kernel, "_launch", lambda args, blocks, config: launched.append(config))
    monkeypatch.setattr(kernel.triton.testing, "do_bench", fake_bench)
    monkeypatch.setattr(kernel, "_tuned", {})
    blocks = kernel.blocks_for(128, 64, 16, -1, False, 8)
    args = {"q_ptr": torch.empty(0, dtype=torch.float16)}
    assert kernel._autotuned_config(args, 128, blocks).block_m == 32
    timings[32] = 9.0
    assert kernel._autotuned_config(args, 128, blocks).block_m == 32  # cached


def test_heuristic_picks_shipped_configs():
    """Heuristic and autotune candidates are always among the configurations compile_check builds,
    and every problem the launcher accepts has at least one."""
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
                        assert kernel.heuristic_config(num_frames, blocks) in candidates
                        for config in candidates:
                            assert kernel.build_label(blocks, config) in shipped


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
def test_bad_input(change, error):
    args = dict(q=torch.randn(1, 1, 8, 16), k=torch.randn(1, 1, 8, 16), v=torch.randn(1, 1, 8, 16), window=8, stride=4)
    args.update(change)
    with pytest.raises(error):
        zs_kernels.windowed_attention(backend="triton", **args)


def test_unsupported_sizes_raise_clearly():
    """D > 256, windows longer than 32 frames and relative tables with D > 64 raise ValueError
    pointing at backend='torch'; float64 raises TypeError. (The torch backend handles them all.)"""
    big = torch.randn(1, 1, 4, 257)
    with pytest.raises(ValueError, match="backend='torch'"):
        zs_kernels.windowed_attention(big, big, big, window=4, stride=2, backend="triton")
    long = torch.randn(1, 1, 40, 16)
    with pytest.raises(ValueError, match="backend='torch'"):
        zs_kernels.windowed_attention(long, long, long, window=33, stride=17, backend="triton")
    table = torch.randn(3, 80)
    wide = torch.randn(1, 1, 8, 80)
    with pytest.raises(ValueError, match="backend='torch'"):
        zs_kernels.windowed_attention(wide, wide, wide, window=4, stride=2, rel_k=table, backend="triton")
    double = torch.randn(1, 1, 4, 16, dtype=torch.float64)
    with pytest.raises(TypeError, match="float64"):
        zs_kernels.windowed_attention(double, double, double, window=4, stride=2, backend="triton")


def test_unsupported_reason_lets_a_dispatcher_fall_back():
    q = torch.randn(1, 1, 20, 80)
    table = torch.randn(5, 80)
    assert kernel.unsupported_reason(q, 16) is None
    assert kernel.unsupported_reason(q, 16, corrected=(q, q, q)) is None
    assert "relative tables" in kernel.unsupported_reason(q, 16, rel_k=table)
    assert "float16" in kernel.unsupported_reason(q.double(), 16)


def test_empty_batch():
    q = torch.randn(0, 2, 8, 16)
    assert zs_kernels.windowed_attention(q, q, q, window=4, stride=2, backend="triton").shape == q.shape
