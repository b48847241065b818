"""zs_kernels.corrected_qkv (projection fused with the correction) side by side with the unfused sequence.

    pytest bench/bench_corrected_qkv.py -q        # add --benchmark-disable for a smoke run

The unfused peer (:func:`zs_kernels.testing.unfused_corrected_qkv`) is what a straightforward
implementation of SPEC §4 does: back-project the attention input twice (``sample`` for Q,
``kv_kind`` for K/V, each materialised), then six projections (Q, K, V of ``h`` and of the two
corrected inputs).

* **bytes moved (model)**, SVD-like sizes: the fused kernel against the unfused sequence, the
  fused minimum (read ``h``, ``key_qkv``, the weights once; write ``qkv`` and ``qkv_hat`` once)
  and the prologue design. An analytic *model*, printed, not a measurement: the kernel's DRAM
  figure is the minimum by construction of its tiling.
* **CPU time**: ``backend="torch"`` against the unfused peer at a CPU-sized case. Goal ≥ 1.3×.
* **CPU, weights per call**: the op given the three projections as they are (what the attention
  hook does) against stacking ``to_q|to_k|to_v`` into a fresh ``[3C, C]`` tensor per call (what
  it did before): time and bytes allocated per call (torch profiler), as ratios. The saving must
  be exactly the stacked weight and bias.
* **CUDA** (skipped without a GPU): the Triton kernel's time and TFLOP/s against ``F.linear`` of
  the three projections alone. Goal: the correction costs < 10 % over the bare projection.

Tables and goals are printed in the terminal summary; each benchmark also stores its numbers in
``extra_info``. CPU timings on a shared machine are noisy: minima over rounds are used.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import zs_kernels
from zs_kernels import testing
from zs_kernels.corrected_qkv import triton as kernel

pytestmark = pytest.mark.usefixtures("one_thread")

# SVD at 576×1024 (latent 72×128): t = 28 frames (2× of 14), spatial tokens per UNet level.
SVD_FRAMES, SVD_SCALE, SVD_BATCH = 28, 2, 2  # batch 2: classifier-free guidance
SVD_LEVELS = [(0, 72 * 128, 320), (1, 72 * 128 // 4, 640), (2, 72 * 128 // 16, 1280)]
ITEMSIZE = 2  # fp16 / bf16
KERNEL_CONFIG = kernel.ALIGNED_CONFIGS[0]  # the aligned family's preferred tile


def unfused_bytes(batch, frames, scale, tokens, channels, c_out, itemsize=ITEMSIZE) -> int:
    """Two materialised corrections of ``h`` (read h and h_key, write ĥ) + six projections
    (read the input and one weight, write one output, add one bias)."""
    key_frames = frames // scale
    h = batch * frames * tokens * channels
    h_key = batch * key_frames * tokens * channels
    corrections = 2 * (h + h_key + h)
    projections = 6 * (h + c_out * channels + batch * frames * tokens * c_out + c_out)
    return itemsize * (corrections + projections)


def fused_minimum_bytes(batch, frames, scale, tokens, channels, c_out, itemsize=ITEMSIZE) -> int:
    """Read ``h``, ``key_qkv``, weights and bias once; write ``qkv`` and ``qkv_hat`` once."""
    columns = 3 * c_out
    reads = batch * frames * tokens * channels + batch * (frames // scale) * tokens * columns
    reads += columns * channels + columns
    return itemsize * (reads + 2 * batch * frames * tokens * columns)


def prologue_bytes(batch, frames, scale, tokens, channels, c_out, itemsize=ITEMSIZE) -> int:
    """The alternative fused design: correct ``h`` in the kernel's prologue from ``h_key``, then
    project both (read h, h_key, weights, bias once; write both outputs once) — fewer bytes, but
    1.83× the GEMM work at scale 2 (see the kernel's docstring)."""
    columns = 3 * c_out
    reads = batch * frames * tokens * channels + batch * (frames // scale) * tokens * channels
    reads += columns * channels + columns
    return itemsize * (reads + 2 * batch * frames * tokens * columns)


def fused_kernel_bytes(batch, frames, scale, tokens, channels, c_out, itemsize=ITEMSIZE) -> dict:
    """What the kernel moves, from its tiling (see zs_kernels/corrected_qkv/triton.py).

    ``dram``: every program reads its h rows × C, weight columns × C and key tile and writes its
    two output tiles; programs of one M tile run back to back (column block fastest), so their
    repeated h reads and all weight reads (≤ 9.8 MB) hit L2 and DRAM sees each element once. The
    chunked path (scale > kernel.MAX_SLOTS) re-reads its qkv tiles. ``l2_to_sm``: every tile load
    counted, i.e. the traffic the caches serve.
    """
    block_m, block_n = KERNEL_CONFIG["block_m"], KERNEL_CONFIG["block_n"]
    columns = 3 * c_out
    slots = kernel.slots(scale)
    block_l = block_m // slots
    column_blocks = 3 * math.ceil(c_out / block_n)  # a column block lies in one projection
    groups = frames // scale + 1  # at most: box_left has one extra group
    m_tiles = batch * groups * math.ceil(tokens / block_l) * math.ceil(scale / slots)
    dram = fused_minimum_bytes(batch, frames, scale, tokens, channels, c_out, itemsize)
    if scale > kernel.MAX_SLOTS:
        dram += itemsize * batch * frames * tokens * columns
    h = batch * frames * tokens * channels
    l2_to_sm = itemsize * (
        h * column_blocks + m_tiles * columns * (channels + 1)
        + batch * (frames // scale) * tokens * columns + 2 * batch * frames * tokens * columns
    )
    return {"dram": dram, "l2_to_sm": l2_to_sm}


def bytes_table(scale=SVD_SCALE, frames=SVD_FRAMES) -> list[dict]:
    rows = []
    for level, tokens, channels in SVD_LEVELS:
        sizes = (SVD_BATCH, frames, scale, tokens, channels, channels)
        fused = fused_kernel_bytes(*sizes)
        unfused, minimum = unfused_bytes(*sizes), fused_minimum_bytes(*sizes)
        rows.append(
            dict(
                level=level, frames=frames, tokens=tokens, channels=channels,
                unfused_mb=unfused / 1e6, fused_mb=fused["dram"] / 1e6, minimum_mb=minimum / 1e6,
                l2_to_sm_mb=fused["l2_to_sm"] / 1e6, prologue_mb=prologue_bytes(*sizes) / 1e6,
                fused_over_unfused=fused["dram"] / unfused, fused_over_minimum=fused["dram"] / minimum,
            )
        )
    return rows


def test_bytes_moved_model(report):
    """The modelled bytes table at 28 and 56 frames (printed in the terminal summary)."""
    section = (
        "corrected_qkv: bytes moved per call, fp16, batch 2, C_out = C, scale 2 (MODEL: from the tiling, not measured)"
    )
    header = (
        f"{'level':>5} {'t':>3} {'L':>6} {'C':>5} {'unfused MB':>11} {'fused MB':>9} {'min MB':>8} "
        f"{'fused/unfused':>14} {'fused/min':>10} {'L2->SM MB':>10} {'prologue MB':>12}"
    )
    for row in bytes_table() + bytes_table(scale=2, frames=2 * SVD_FRAMES):
        report.line(
            section,
            f"{row['level']:>5} {row['frames']:>3} {row['tokens']:>6} {row['channels']:>5} {row['unfused_mb']:>11.1f} "
            f"{row['fused_mb']:>9.1f} {row['minimum_mb']:>8.1f} {row['fused_over_unfused']:>14.3f} "
            f"{row['fused_over_minimum']:>10.3f} {row['l2_to_sm_mb']:>10.1f} {row['prologue_mb']:>12.1f}",
            header=header,
        )


# --- CPU: the torch path vs the unfused peer ------------------------------------------------------

CPU_CASE = dict(batch=1, key_frames=4, scale=2, tokens=24 * 24, channels=320)


def _cpu_inputs(kind, temporal):
    batch, key_frames, scale = CPU_CASE["batch"], CPU_CASE["key_frames"], CPU_CASE["scale"]
    tokens, channels = CPU_CASE["tokens"], CPU_CASE["channels"]
    num_frames = scale * key_frames
    generator = torch.Generator().manual_seed(0)
    if temporal:
        h = torch.randn(batch * tokens, num_frames, channels, generator=generator)
        h = h.view(batch, tokens, num_frames, channels).permute(0, 2, 1, 3)
    else:
        h = torch.randn(batch * num_frames, tokens, channels, generator=generator)
        h = h.view(batch, num_frames, tokens, channels)
    h_key = torch.randn(batch, key_frames, tokens, channels, generator=generator)
    weights = tuple(torch.randn(channels, channels, generator=generator) / channels**0.5 for _ in range(3))
    biases = tuple(torch.randn(channels, generator=generator) for _ in range(3))
    key_qkv = torch.cat([F.linear(h_key, weight, bias) for weight, bias in zip(weights, biases)], dim=-1)
    return dict(h=h, h_key=h_key, key_qkv=key_qkv, weights=weights, biases=biases, scale=scale, kind=kind)


@pytest.mark.benchmark(group="corrected-qkv-cpu")
@pytest.mark.parametrize("temporal", [False, True], ids=["spatial", "temporal"])
@pytest.mark.parametrize("kind", ["sample", "box_left", "box_right"])
def test_cpu_torch_path_vs_unfused(benchmark, timings, goal, kind, temporal):
    inputs = _cpu_inputs(kind, temporal)
    # The peer takes the stacked form; stacked once here, outside its timing.
    weight, bias = torch.cat(inputs["weights"]), torch.cat(inputs["biases"])

    def fused():
        return zs_kernels.corrected_qkv(
            inputs["h"], inputs["key_qkv"], inputs["weights"], inputs["biases"],
            scale=inputs["scale"], kv_kind=kind, backend="torch",
        )

    def unfused():
        return testing.unfused_corrected_qkv(
            inputs["h"], inputs["h_key"], weight, bias, scale=inputs["scale"], kv_kind=kind
        )

    qkv, qkv_hat = benchmark.pedantic(fused, rounds=5, iterations=1, warmup_rounds=1)
    plain, corrected = unfused()
    torch.testing.assert_close(qkv, torch.cat(plain, dim=-1), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(qkv_hat, torch.cat(corrected, dim=-1), rtol=1e-4, atol=1e-4)
    fused_seconds, unfused_seconds = timings.benchmark_seconds(), timings.minimum_seconds(unfused)
    speedup = None if fused_seconds is None else unfused_seconds / fused_seconds
    benchmark.extra_info.update(case=CPU_CASE, unfused_seconds=unfused_seconds, speedup=speedup, goal=1.3)
    layout = "temporal" if temporal else "spatial"
    goal(f"corrected_qkv CPU {kind} {layout}: unfused time / torch path", speedup, 1.3, higher_is_better=True)


# --- CPU: the three projections as they are vs stacking them per call ----------------------------

# (tokens, channels) at 8 frames, scale 2: SVD's narrowest and widest attention widths, where the
# stacked weight is 1.2 MB and 19.7 MB in fp32.
WEIGHT_CASES = [(576, 320), (144, 1280)]


def allocated_bytes(function) -> int:
    """Bytes the CPU allocator hands out while ``function`` runs (torch profiler's memory events)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profile:
        function()
    return sum(max(event.self_cpu_memory_usage, 0) for event in profile.events())


@pytest.mark.benchmark(group="corrected-qkv-weights")
@pytest.mark.parametrize("tokens, channels", WEIGHT_CASES, ids=[f"C{channels}" for _, channels in WEIGHT_CASES])
def test_cpu_three_projections_vs_stacking_per_call(benchmark, timings, report, tokens, channels):
    generator = torch.Generator().manual_seed(0)
    h = torch.randn(1, 8, tokens, channels, generator=generator)
    layers = [torch.nn.Linear(channels, channels) for _ in range(3)]
    weights, biases = tuple(layer.weight for layer in layers), tuple(layer.bias for layer in layers)
    key_qkv = torch.randn(1, 4, tokens, 3 * channels, generator=generator)

    @torch.no_grad()
    def three():
        return zs_kernels.corrected_qkv(h, key_qkv, weights, biases, scale=2, kv_kind="box_left", backend="torch")

    @torch.no_grad()
    def stacking():
        return zs_kernels.corrected_qkv(
            h, key_qkv, torch.cat(weights), torch.cat(biases), scale=2, kv_kind="box_left", backend="torch"
        )

    results = benchmark.pedantic(three, rounds=5, iterations=1, warmup_rounds=1)
    for a, b in zip(results, stacking()):
        assert torch.equal(a, b)
    three_bytes, stacking_bytes = allocated_bytes(three), allocated_bytes(stacking)
    assert stacking_bytes - three_bytes == 4 * 3 * channels * (channels + 1)  # exactly the stacked copy
    three_seconds, stacking_seconds = timings.benchmark_seconds(), timings.minimum_seconds(stacking)
    benchmark.extra_info.update(
        three_bytes=three_bytes, stacking_bytes=stacking_bytes, stacking_seconds=stacking_seconds
    )
    times = "not timed (smoke run)" if three_seconds is None else (
        f"{stacking_seconds * 1e3:7.2f} ms / {three_seconds * 1e3:7.2f} ms = {stacking_seconds / three_seconds:.2f}"
    )
    report.line(
        "corrected_qkv CPU, weights per call: stacking to_q|to_k|to_v per call (before) / the three projections (now)",
        f"t 8, L {tokens:>4}, C {channels:>4}: bytes allocated {stacking_bytes / 1e6:6.2f} MB / "
        f"{three_bytes / 1e6:6.2f} MB = {stacking_bytes / three_bytes:.2f}; time {times}",
    )


# --- CUDA: the Triton kernel vs the bare projection -------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="timing the kernel needs a CUDA device")
@pytest.mark.benchmark(group="corrected-qkv-cuda")
@pytest.mark.parametrize("level, tokens, channels", SVD_LEVELS, ids=[f"level{level}" for level, _, _ in SVD_LEVELS])
@pytest.mark.parametrize("temporal", [False, True], ids=["spatial", "temporal"])
def test_cuda_kernel_vs_bare_projection(benchmark, timings, goal, report, level, tokens, channels, temporal):
    import triton.testing

    batch, num_frames, scale = SVD_BATCH, SVD_FRAMES, SVD_SCALE
    device, dtype = "cuda", torch.float16
    if temporal:
        h = torch.randn(batch * tokens, num_frames, channels, device=device, dtype=dtype)
        h = h.view(batch, tokens, num_frames, channels).permute(0, 2, 1, 3)
    else:
        h = torch.randn(batch * num_frames, tokens, channels, device=device, dtype=dtype)
        h = h.view(batch, num_frames, tokens, channels)
    weights = tuple(torch.randn(channels, channels, device=device, dtype=dtype) / channels**0.5 for _ in range(3))
    biases = tuple(torch.randn(channels, device=device, dtype=dtype) for _ in range(3))
    key_qkv = torch.randn(batch, num_frames // scale, tokens, 3 * channels, device=device, dtype=dtype)
    # The bare projection at its best: one GEMM with the weights stacked once, outside the timing.
    weight, bias = torch.cat(weights), torch.cat(biases)

    def fused():
        return zs_kernels.corrected_qkv(h, key_qkv, weights, biases, scale=scale, kv_kind="box_left", backend="triton")

    def bare():
        return F.linear(h, weight, bias)

    fused()  # autotune outside the timed region
    benchmark.pedantic(fused, rounds=10, iterations=10, warmup_rounds=2)
    if not timings.enabled:
        goal(f"corrected_qkv CUDA level {level}: correction overhead over F.linear", None, 0.10, higher_is_better=False)
        return
    fused_seconds, bare_seconds = triton.testing.do_bench(fused) / 1e3, triton.testing.do_bench(bare) / 1e3
    flops = 2 * batch * num_frames * tokens * channels * 3 * channels
    moved = fused_kernel_bytes(batch, num_frames, scale, tokens, channels, channels)["dram"]
    overhead = fused_seconds / bare_seconds - 1
    benchmark.extra_info.update(
        fused_ms=fused_seconds * 1e3, bare_projection_ms=bare_seconds * 1e3, overhead=overhead, goal_overhead=0.10
    )
    report.line(
        "corrected_qkv, CUDA fp16: the fused kernel against F.linear alone",
        f"level {level} {'temporal' if temporal else 'spatial':<8}: fused {fused_seconds * 1e3:.3f} ms "
        f"({flops / fused_seconds / 1e12:.1f} TFLOP/s, {moved / fused_seconds / 1e9:.0f} GB/s of the model's bytes), "
        f"bare F.linear {bare_seconds * 1e3:.3f} ms ({flops / bare_seconds / 1e12:.1f} TFLOP/s)",
    )
    layout = "temporal" if temporal else "spatial"
    goal(f"corrected_qkv CUDA level {level} {layout}: correction overhead over F.linear", overhead, 0.10,
         higher_is_better=False)
