"""The lockstep cascade on the tiny SVD model, side by side with what it replaces.

* time: the 2× cascade (4 → 8 frames) against a base run at 4 frames plus direct inference at 8
  frames (issue 5's goal: ≤ 1.3× their summed time);
* memory: the key-state cache's peak against what offloading every step's states would hold (the
  paper's approach; goal: one step's worth).

Run ``pytest bench/bench_cascade.py``; the ratio and byte counts are printed and stored in each
benchmark's ``extra_info``. Timings on a shared CPU are noisy: the minimum over rounds is used.
"""

import time

import pytest
import torch
from PIL import Image

from zerosmooth import ZeroSmooth, ZeroSmoothConfig
from zerosmooth.lab.tiny import tiny_svd_pipeline

SIZE = 32
BASE_FRAMES = 4
STEPS = 3
ROUNDS = 3
_minimum_seconds: dict[str, float] = {}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_svd_pipeline(0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _kwargs(num_frames: int, steps: int = STEPS) -> dict:
    image = Image.new("RGB", (SIZE, SIZE), (200, 40, 40))
    return dict(image=image, height=SIZE, width=SIZE, num_frames=num_frames, num_inference_steps=steps,
                output_type="pt", generator=torch.Generator().manual_seed(0))


def _base_plus_direct(pipe):
    pipe(**_kwargs(BASE_FRAMES))
    pipe(**_kwargs(2 * BASE_FRAMES))


def _cascade(pipe):
    return ZeroSmooth(pipe, ZeroSmoothConfig(scale=2, stages=2))(progress_bar=False, **_kwargs(BASE_FRAMES))


def _minimum(function, pipe) -> float:
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        function(pipe)
        times.append(time.perf_counter() - start)
    return min(times)


@pytest.mark.benchmark(group="svd-2x")
def test_base_plus_direct(benchmark, pipe):
    benchmark.pedantic(_base_plus_direct, args=(pipe,), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    _minimum_seconds["base_plus_direct"] = benchmark.stats.stats.min


@pytest.mark.benchmark(group="svd-2x")
def test_cascade(benchmark, pipe):
    benchmark.pedantic(_cascade, args=(pipe,), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    if "base_plus_direct" not in _minimum_seconds:  # run on its own (-k)
        _minimum_seconds["base_plus_direct"] = _minimum(_base_plus_direct, pipe)
    baseline = _minimum_seconds["base_plus_direct"]
    ratio = benchmark.stats.stats.min / baseline
    benchmark.extra_info.update(base_plus_direct_seconds=baseline, ratio_to_base_plus_direct=ratio, goal=1.3)
    print(f"\n2x cascade / (base + direct at 2x frames) = {ratio:.2f} (goal <= 1.3)")


@pytest.mark.benchmark(group="svd-2x-memory")
def test_key_state_cache_holds_one_step(benchmark, pipe):
    steps = 6
    out = benchmark.pedantic(
        lambda: ZeroSmooth(pipe)(progress_bar=False, **_kwargs(BASE_FRAMES, steps)), rounds=1, iterations=1
    )
    benchmark.extra_info.update(
        peak_bytes=out.key_state_peak_bytes, offload_bytes=out.key_state_offload_bytes, steps=steps
    )
    print(f"\nkey-state cache peak {out.key_state_peak_bytes / 2**20:.1f} MiB; offloading all {steps} steps "
          f"would hold {out.key_state_offload_bytes / 2**20:.1f} MiB")
    assert out.key_state_peak_bytes * steps == out.key_state_offload_bytes
