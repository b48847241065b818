"""zs_kernels.windowed_attention side by side with its peers.

    pytest bench/bench_windowed_attention.py -q        # add --benchmark-disable for a smoke run

* **bytes moved (model)**: attention over 16–256 frames is memory-bound (≈ F/2 FLOP/byte), so the
  figure of merit is the bytes a call moves through DRAM. This is an analytic *model*, printed,
  not a measurement: it counts tensor elements read and written by each implementation —
  the minimum (Q, K, V read once, O written once; dual: six inputs read once), the kernel (the
  minimum, by construction of its loops; the "L1/L2" column replays the
  loops to count the K/V rows re-read from cache), two single passes plus the blend (a fused
  ``lerp``, or the eager ``o + w * (ô - o)``: 8 tensor passes), and the diffusers per-window loop.
* **CPU time**: the torch path (what CPU tensors get) against the diffusers-style per-window loop
  (:func:`zs_kernels.testing.per_window_loop`) on the same inputs, same process, timed back to
  back over several rounds; the table gives the median of loop time / ours (> 1: we are faster)
  and the formulation the torch path picked. Goals (issue 14): ≥ 1.0 at every shape, ≥ 1.5 at
  stride 4.
* **CUDA time** (skipped without a GPU): the kernel, its dual pass, SDPA per window and the loop,
  with the achieved bandwidth of the minimum bytes.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

import zs_kernels
from zs_kernels import frames, testing
from zs_kernels.windowed_attention import triton as kernel
from zs_kernels.windowed_attention import vectorized

pytestmark = pytest.mark.usefixtures("one_thread")

ELEMENT_BYTES = 2  # fp16 / bf16

# (N·H sequences, F, W, stride, D): the workload's shapes plus the issue's reference point.
MODEL_CASES = [
    (100_000, 16, 16, 8, 64),
    (100_000, 32, 16, 8, 64),
    (100_000, 64, 16, 8, 64),
    (100_000, 64, 16, 4, 64),
    (100_000, 128, 16, 8, 64),
    (100_000, 56, 14, 7, 40),
    (100_000, 64, 24, 12, 160),
    (100_000, 256, 16, 8, 64),
]


def case_id(case) -> str:
    return "NH{}-F{}-W{}-s{}-D{}".format(*case)


def bytes_model(sequences, num_frames, window, stride, head_dim) -> dict:
    """Modelled bytes moved per call by each implementation (see the module docstring)."""
    tensor = sequences * num_frames * head_dim * ELEMENT_BYTES
    layout = frames.windows(num_frames, window, stride)
    window_tensor = sequences * layout.length * head_dim * ELEMENT_BYTES

    blocks = kernel.blocks_for(num_frames, head_dim, window, -1, False, 8)
    block_m = kernel.candidate_configs(num_frames, blocks)[0]["block_m"]
    rows = kernel.load_traffic(num_frames, window, stride, block_m)
    issued = (rows["q"] + 2 * rows["kv"] + rows["out"]) * sequences * head_dim * ELEMENT_BYTES

    single = 4 * tensor
    per_window = (4 + 2 + 3) * window_tensor  # SDPA, weight, accumulate
    return {
        "minimum": 4 * tensor,
        "kernel": single,
        "kernel_l1_l2_loads": issued,
        "block_m": block_m,
        "dual": 7 * tensor,
        "two_passes_lerp": 2 * single + 3 * tensor,
        "two_passes_eager": 2 * single + (3 + 2 + 3) * tensor,  # ô − o, w·(…), o + (…)
        "diffusers_loop": tensor + len(layout.starts) * per_window + 2 * tensor,  # zeros, windows, divide
        "windows": len(layout.starts),
    }


def test_bytes_moved_model(report):
    """The modelled bytes table (printed in the terminal summary)."""
    section = "windowed attention: bytes moved per call, fp16 (MODEL: counted from the algorithms, not measured)"
    header = (
        f"{'N·H':>8} {'F':>4} {'W':>3} {'s':>3} {'D':>4} {'win':>4} {'min MB':>9} {'kernel':>7} {'L1/L2':>6} "
        f"{'loop':>6} {'dual/(2+lerp)':>14} {'dual/(2+eager)':>15}"
    )
    for case in MODEL_CASES:
        model = bytes_model(*case)
        sequences, num_frames, window, stride, head_dim = case
        report.line(
            section,
            f"{sequences:>8} {num_frames:>4} {window:>3} {stride:>3} {head_dim:>4} {model['windows']:>4} "
            f"{model['minimum'] / 1e6:>9.1f} {model['kernel'] / model['minimum']:>6.2f}x "
            f"{model['kernel_l1_l2_loads'] / model['minimum']:>5.2f}x "
            f"{model['diffusers_loop'] / model['kernel']:>5.2f}x "
            f"{model['dual'] / model['two_passes_lerp']:>13.3f}x {model['dual'] / model['two_passes_eager']:>14.3f}x",
            header=header + "\n" + "-" * len(header),
        )
    report.line(
        section,
        "kernel, L1/L2: × minimum (Q,K,V read once, O written once); loop: diffusers loop ÷ kernel; "
        "dual ÷ (two passes + lerp / eager blend)",
    )


# --- CPU: the torch path against the per-window loop ---------------------------------------------

CPU_WINDOW = 16
CPU_SEQUENCES, CPU_HEADS, CPU_HEAD_DIM = 4096, 8, 40
CPU_GOALS = {4: 1.5, 8: 1.0}  # loop time / ours, per stride (issue 14)
CPU_ROUNDS = 5
CPU_SECTION = (
    f"windowed attention, CPU fp32, N·H={CPU_SEQUENCES}·{CPU_HEADS}, D={CPU_HEAD_DIM}, W={CPU_WINDOW}: "
    f"per-window loop time / ours (> 1: ours faster; median of {CPU_ROUNDS} interleaved rounds)"
)


@pytest.fixture(scope="module", params=[32, 64, 128], ids=lambda f: f"F{f}")
def cpu_inputs(request):
    generator = torch.Generator().manual_seed(request.param)
    # The model's layout: [N, F, H·D] projections viewed as [N, H, F, D].
    return [
        torch.randn(CPU_SEQUENCES, request.param, CPU_HEADS, CPU_HEAD_DIM, generator=generator).transpose(1, 2)
        for _ in range(3)
    ]


def interleaved_ratio(ours, peer, rounds):
    """Median over ``rounds`` of peer time / our time, the two timed back to back in each round,
    so that load from other processes on a shared machine hits both alike; also the median times."""
    ours_times, peer_times = [], []
    for _ in range(rounds):
        for function, times in ((ours, ours_times), (peer, peer_times)):
            start = time.perf_counter()
            function()
            times.append(time.perf_counter() - start)
    ratio = statistics.median(p / o for p, o in zip(peer_times, ours_times))
    return ratio, statistics.median(ours_times), statistics.median(peer_times)


@pytest.mark.parametrize("stride", sorted(CPU_GOALS))
def test_cpu_torch_path_vs_per_window_loop(benchmark, timings, report, goal, cpu_inputs, stride):
    q, k, v = cpu_inputs
    num_frames, head_dim = q.shape[2], q.shape[3]
    benchmark.group = f"windowed attention CPU F={num_frames} W={CPU_WINDOW} stride={stride}"
    kind, rows = vectorized.formulation(num_frames, CPU_WINDOW, stride, head_dim, tables=False, compiling=False)

    def ours():
        return zs_kernels.windowed_attention(q, k, v, window=CPU_WINDOW, stride=stride, backend="torch")

    def loop():
        return testing.per_window_loop(q, k, v, CPU_WINDOW, stride)

    out = benchmark.pedantic(ours, rounds=1, iterations=1, warmup_rounds=1)
    torch.testing.assert_close(out, loop(), atol=1e-4, rtol=1e-4)
    label = f"F={num_frames:<4} stride={stride}"
    if rows == num_frames:
        kind += ", one block: the shared score matrix"
    elif rows is not None:
        kind += f", blocks of {rows} rows"
    shape = f"{label} ({kind}): "
    if not timings.enabled:
        report.line(CPU_SECTION, shape + "not timed (smoke run)")
        goal(f"windowed attention CPU {label}: loop time / ours", None, CPU_GOALS[stride], higher_is_better=True)
        return
    ratio, ours_seconds, loop_seconds = interleaved_ratio(ours, loop, CPU_ROUNDS)
    benchmark.extra_info.update(loop_seconds=loop_seconds, ours_seconds=ours_seconds, loop_over_ours=ratio)
    report.line(
        CPU_SECTION,
        shape + f"ours {1e3 * ours_seconds:8.1f} ms, loop {1e3 * loop_seconds:8.1f} ms, ratio {ratio:5.2f}x",
    )
    goal(f"windowed attention CPU {label}: loop time / ours", ratio, CPU_GOALS[stride], higher_is_better=True)


# --- CUDA ------------------------------------------------------------------------------------------


def _peak_bandwidth() -> float | None:
    """Theoretical DRAM bandwidth in bytes/s from the device properties, when torch exposes them."""
    properties = torch.cuda.get_device_properties(0)
    clock_khz = getattr(properties, "memory_clock_rate", None)
    bus_bits = getattr(properties, "memory_bus_width", None)
    if not clock_khz or not bus_bits:
        return None
    return 2 * clock_khz * 1e3 * bus_bits / 8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="timing the kernel needs a CUDA device")
@pytest.mark.parametrize("implementation", ["kernel", "kernel_dual", "sdpa_per_window", "per_window_loop"])
@pytest.mark.parametrize("case", MODEL_CASES[:6], ids=case_id)
def test_cuda_time(benchmark, timings, report, case, implementation):
    sequences, num_frames, window, stride, head_dim = case
    heads = 8
    shape = (sequences // heads, heads, num_frames, head_dim)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.float16) for _ in range(3))
    corrected = tuple(torch.randn_like(q) for _ in range(3)) if implementation == "kernel_dual" else None

    def run():
        if implementation == "sdpa_per_window":
            return testing.sdpa_per_window(q, k, v, window, stride)
        if implementation == "per_window_loop":
            return testing.per_window_loop(q, k, v, window, stride)
        blend = None if corrected is None else 0.5
        return zs_kernels.windowed_attention(
            q, k, v, window=window, stride=stride, corrected=corrected, blend=blend, backend="triton"
        )

    run()  # autotune outside the timed region
    torch.cuda.synchronize()

    def timed():
        run()
        torch.cuda.synchronize()

    benchmark(timed)
    model = bytes_model(*case)
    moved = model["dual"] if implementation == "kernel_dual" else model["minimum"]
    seconds = timings.benchmark_seconds()
    if seconds is None:
        return
    peak = _peak_bandwidth()
    benchmark.extra_info.update(minimum_bytes=moved, achieved_TB_per_s=moved / seconds / 1e12)
    report.line(
        "windowed attention, CUDA fp16: time and the minimum bytes' achieved bandwidth",
        f"{case_id(case):<28} {implementation:<16} {1e3 * seconds:8.3f} ms  {moved / seconds / 1e12:6.2f} TB/s"
        + ("" if peak is None else f"  ({100 * moved / seconds / peak:5.1f} % of peak)"),
    )
