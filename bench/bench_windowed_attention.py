"""Windowed temporal attention: bytes moved per call, and (on CUDA) time and achieved bandwidth.

    pytest bench/bench_windowed_attention.py -s

Attention over 16–256 frames is memory-bound (≈ F/2 FLOP/byte), so the figure of merit is the
bytes a call moves through DRAM. The model counts tensor elements read and written by each
implementation, in units of one ``[N, H, F, D]`` tensor where possible:

* **minimum** — Q, K, V read once, O written once (dual: Q, K, V, Q̂, K̂, V̂ read once).
* **kernel** — this kernel: DRAM traffic equals the minimum plus the relative tables; the K/V rows
  it re-reads for overlapping windows and query blocks come from L1/L2 (the "L1/L2 loads" column,
  from :func:`zs_kernels.triton.windowed_attention.load_traffic`, shows how many).
* **two passes + blend** — two single-pass launches, then the blend as one fused ``torch.lerp``
  (read o, ô; write) or as the eager expression ``o + w * (ô - o)`` (three kernels: 8 tensor
  passes).
* **diffusers loop** — diffusers' FreeNoise pattern per window: slice (a view), attend with SDPA
  (read q_w, k_w, v_w, write o_w), weight (read o_w, write), accumulate into a zero-initialised
  buffer (read slice + weighted, write slice), then one divide (read, write).

The CPU part only evaluates the model (the interpreter is not a benchmark and is never timed).
The CUDA part times the kernel against SDPA per window and the diffusers loop, and reports the
achieved TB/s from the minimum bytes.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zs_kernels import frames
from zs_kernels.triton import windowed_attention as kernel

# (N·H sequences, F, W, stride, D): the workload's shapes plus the issue's reference point.
CASES = [
    (100_000, 16, 16, 8, 64),
    (100_000, 32, 16, 8, 64),
    (100_000, 64, 16, 8, 64),
    (100_000, 64, 16, 4, 64),
    (100_000, 128, 16, 8, 64),
    (100_000, 56, 14, 7, 40),
    (100_000, 64, 24, 12, 160),
    (100_000, 256, 16, 8, 64),
]
ELEMENT_BYTES = 2  # fp16 / bf16


def _tensor_bytes(sequences, num_frames, head_dim):
    return sequences * num_frames * head_dim * ELEMENT_BYTES


def bytes_model(sequences, num_frames, window, stride, head_dim, table_rows=0) -> dict:
    """Bytes moved per call by each implementation (see the module docstring)."""
    tensor = _tensor_bytes(sequences, num_frames, head_dim)
    tables = 2 * table_rows * head_dim * ELEMENT_BYTES
    length = min(window, num_frames)
    starts = frames.window_starts(num_frames, window, stride)
    window_tensor = _tensor_bytes(sequences, length, head_dim)

    blocks = kernel.blocks_for(num_frames, head_dim, window, -1, False, 8)
    config = kernel.heuristic_config(num_frames, blocks)
    rows = kernel.load_traffic(num_frames, window, stride, config.block_m)
    issued = (rows["q"] + 2 * rows["kv"] + rows["out"]) * sequences * head_dim * ELEMENT_BYTES

    minimum = 4 * tensor
    single = minimum + tables
    dual_minimum = 7 * tensor
    dual = dual_minimum + tables
    lerp = 3 * tensor
    eager_blend = (3 + 2 + 3) * tensor  # ô − o, w·(…), o + (…)
    per_window = (4 + 2 + 3) * window_tensor  # SDPA, weight, accumulate
    loop = tensor + len(starts) * per_window + 2 * tensor  # zeros, windows, divide
    return {
        "minimum": minimum,
        "kernel": single,
        "kernel_l1_l2_loads": issued,
        "block_m": config.block_m,
        "dual_minimum": dual_minimum,
        "dual": dual,
        "two_passes_lerp": 2 * single + lerp,
        "two_passes_eager": 2 * single + eager_blend,
        "diffusers_loop": loop,
        "windows": len(starts),
    }


def _ratios(model: dict) -> dict:
    return {
        "kernel/minimum": model["kernel"] / model["minimum"],
        "l1l2/minimum": model["kernel_l1_l2_loads"] / model["minimum"],
        "loop/kernel": model["diffusers_loop"] / model["kernel"],
        "dual/(2+lerp)": model["dual"] / model["two_passes_lerp"],
        "dual/(2+eager)": model["dual"] / model["two_passes_eager"],
    }


def _table() -> str:
    header = (
        f"{'N·H':>8} {'F':>4} {'W':>3} {'s':>3} {'D':>4} {'win':>4} {'min MB':>9} {'kernel':>7} {'L1/L2':>6} "
        f"{'loop':>6} {'dual/(2+lerp)':>14} {'dual/(2+eager)':>15}"
    )
    lines = [header, "-" * len(header)]
    for case in CASES:
        model = bytes_model(*case)
        ratio = _ratios(model)
        sequences, num_frames, window, stride, head_dim = case
        lines.append(
            f"{sequences:>8} {num_frames:>4} {window:>3} {stride:>3} {head_dim:>4} {model['windows']:>4} "
            f"{model['minimum'] / 1e6:>9.1f} {ratio['kernel/minimum']:>6.2f}x {ratio['l1l2/minimum']:>5.2f}x "
            f"{ratio['loop/kernel']:>5.2f}x {ratio['dual/(2+lerp)']:>13.3f}x {ratio['dual/(2+eager)']:>14.3f}x"
        )
    lines.append(
        "kernel, L1/L2: × minimum (Q,K,V read once, O written once); loop: diffusers loop ÷ kernel; "
        "dual ÷ (two passes + lerp / eager blend)"
    )
    return "\n".join(lines)


def test_print_bytes_table(capsys):
    """The whole bytes table, printed even without ``-s``."""
    with capsys.disabled():
        print("\nwindowed attention, bytes moved per call (fp16)\n" + _table())


@pytest.mark.parametrize("case", CASES, ids=lambda case: "NH{}-F{}-W{}-s{}-D{}".format(*case))
def test_bytes_model(benchmark, case):
    """Records the model in ``benchmark.extra_info`` (the timed call is the model itself)."""
    model = benchmark.pedantic(bytes_model, args=case, rounds=1, iterations=1)
    benchmark.extra_info.update(model)
    benchmark.extra_info.update(_ratios(model))
    # Sanity only: nothing moves fewer bytes than the minimum.
    assert model["kernel"] >= model["minimum"] and model["dual"] >= model["dual_minimum"]


# --- CUDA timing ------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="timing needs a CUDA device")


def _peak_bandwidth() -> float | None:
    """Theoretical DRAM bandwidth in bytes/s from the device properties, when torch exposes them."""
    properties = torch.cuda.get_device_properties(0)
    clock_khz = getattr(properties, "memory_clock_rate", None)
    bus_bits = getattr(properties, "memory_bus_width", None)
    if not clock_khz or not bus_bits:
        return None
    return 2 * clock_khz * 1e3 * bus_bits / 8


def _sdpa_per_window(q, k, v, window, stride):
    """Plain SDPA on every window, outputs discarded: the attention cost alone."""
    length = min(window, q.shape[2])
    for start in frames.window_starts(q.shape[2], window, stride):
        span = slice(start, start + length)
        F.scaled_dot_product_attention(q[:, :, span], k[:, :, span], v[:, :, span])


def _diffusers_loop(q, k, v, window, stride):
    """diffusers' FreeNoise pattern: slice, attend, weighted accumulate, divide."""
    num_frames = q.shape[2]
    length = min(window, num_frames)
    weights = frames.window_weights(length).to(q.device, q.dtype)[:, None]
    accumulated = torch.zeros_like(q)
    count = torch.zeros(num_frames, 1, device=q.device, dtype=q.dtype)
    for start in frames.window_starts(num_frames, window, stride):
        span = slice(start, start + length)
        attended = F.scaled_dot_product_attention(q[:, :, span], k[:, :, span], v[:, :, span])
        accumulated[:, :, span] += attended * weights
        count[span] += weights
    return accumulated / count


@cuda
@pytest.mark.parametrize("implementation", ["kernel", "kernel_dual", "sdpa_per_window", "diffusers_loop"])
@pytest.mark.parametrize("case", CASES[:6], ids=lambda case: "NH{}-F{}-W{}-s{}-D{}".format(*case))
def test_cuda_time(benchmark, case, implementation):
    sequences, num_frames, window, stride, head_dim = case
    heads = 8
    shape = (sequences // heads, heads, num_frames, head_dim)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.float16) for _ in range(3))
    scale = head_dim**-0.5
    if implementation == "kernel":
        run = lambda: kernel.windowed_attention(q, k, v, window, stride, "pyramid", scale, None, None, None, None)
    elif implementation == "kernel_dual":
        corrected = tuple(torch.randn_like(q) for _ in range(3))
        run = lambda: kernel.windowed_attention(q, k, v, window, stride, "pyramid", scale, None, None, corrected, 0.5)
    elif implementation == "sdpa_per_window":
        run = lambda: _sdpa_per_window(q, k, v, window, stride)
    else:
        run = lambda: _diffusers_loop(q, k, v, window, stride)
    run()
    torch.cuda.synchronize()

    def timed():
        run()
        torch.cuda.synchronize()

    benchmark(timed)
    model = bytes_model(*case)
    moved = model["dual_minimum"] if implementation == "kernel_dual" else model["minimum"]
    seconds = benchmark.stats.stats.median
    benchmark.extra_info["minimum_bytes"] = moved
    benchmark.extra_info["achieved_TB_per_s"] = moved / seconds / 1e12
    peak = _peak_bandwidth()
    if peak:
        benchmark.extra_info["fraction_of_peak"] = moved / seconds / peak
