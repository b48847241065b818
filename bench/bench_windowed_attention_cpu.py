"""CPU: zs_kernels.windowed_attention (torch path) vs a diffusers-style per-window loop.

Run with ``pytest bench/bench_windowed_attention_cpu.py``. Both sides run in the same session on
the same inputs (N·H = 4096·8 sequences, D = 40, fp32, W = 16); the last test prints the speed
ratios (loop time / our time, > 1 means we are faster) and stores them in ``extra_info``.
"""

import pytest
import torch
import torch.nn.functional as F

import zs_kernels

WINDOW = 16
SEQUENCES, HEADS, HEAD_DIM = 4096, 8, 40
CASES = [(frames, stride) for frames in (32, 64, 128) for stride in (4, 8)]
_timings: dict[tuple[int, int, str], float] = {}


def diffusers_style_loop(q, k, v, window, stride):
    """What diffusers' FreeNoise does per window: slice, attend, weighted accumulate, divide."""
    num_frames = q.shape[2]
    weights = zs_kernels.window_weights(window).to(q.dtype)[:, None]
    accumulated = torch.zeros_like(q)
    counts = torch.zeros(num_frames, 1, dtype=q.dtype)
    for start in zs_kernels.window_starts(num_frames, window, stride):
        span = slice(start, start + window)
        accumulated[:, :, span] += weights * F.scaled_dot_product_attention(q[:, :, span], k[:, :, span], v[:, :, span])
        counts[span] += weights
    return accumulated / counts


@pytest.fixture(scope="module", params=[frames for frames, _ in CASES[::2]], ids=lambda f: f"F{f}")
def inputs(request):
    generator = torch.Generator().manual_seed(request.param)
    # The model's layout: [N, F, H·D] projections viewed as [N, H, F, D].
    return [
        torch.randn(SEQUENCES, request.param, HEADS, HEAD_DIM, generator=generator).transpose(1, 2) for _ in range(3)
    ]


@pytest.mark.parametrize("stride", [4, 8])
@pytest.mark.parametrize("implementation", ["zs_kernels_torch", "diffusers_loop"])
def test_windowed_attention_cpu(benchmark, inputs, stride, implementation):
    q, k, v = inputs
    num_frames = q.shape[2]
    benchmark.group = f"windowed attention F={num_frames} W={WINDOW} stride={stride}"
    def run():
        if implementation == "diffusers_loop":
            return diffusers_style_loop(q, k, v, WINDOW, stride)
        return zs_kernels.windowed_attention(q, k, v, window=WINDOW, stride=stride, backend="torch")

    out = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    # Every case here has (F − W) divisible by the stride, so the two definitions agree (SPEC §5).
    torch.testing.assert_close(out, diffusers_style_loop(q, k, v, WINDOW, stride), atol=1e-4, rtol=1e-4)
    _timings[(num_frames, stride, implementation)] = benchmark.stats.stats.min


def test_report_speed_ratios(benchmark):
    ratios = {}
    for frames, stride in CASES:
        ours, loop = _timings.get((frames, stride, "zs_kernels_torch")), _timings.get((frames, stride, "diffusers_loop"))
        if ours and loop:
            ratios[f"F={frames} stride={stride}"] = loop / ours
    print("\nwindowed attention, CPU fp32, N·H=4096·8, D=40, W=16: loop time / zs_kernels time")
    for case, ratio in ratios.items():
        print(f"  {case:<18} {ratio:5.2f}x")
    benchmark.extra_info["speedup_vs_diffusers_loop"] = ratios
    benchmark(lambda: None)
