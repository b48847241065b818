"""The Triton infrastructure both kernels launch through (:mod:`zs_kernels._triton_common`, a
documented internal): the bounded autotuner and its pinning, the alignment test, the AOT signature."""

import pytest
import torch

from zs_kernels._triton_common import Autotuner, LaunchConfig, aot_signature, vector_alignment
from zs_kernels.windowed_attention import triton as windowed_kernel

CONFIGS = tuple(LaunchConfig.of(block=size, num_warps=4) for size in (16, 32, 64))
CUDA = torch.device("cuda")  # only its type is read: no GPU needed


class FakeTimer:
    """Times a launch by the config it launches: ``timings[block]`` milliseconds."""

    def __init__(self, timings):
        self.timings, self.launched, self.calls = timings, [], 0

    def launch(self, config):
        self.launched.append(config)

    def __call__(self, run):
        self.calls += 1
        run()
        return self.timings[self.launched[-1]["block"]]


def test_launch_config_is_hashable_and_named():
    config = LaunchConfig.of(block_m=16, seqs=2, num_warps=8, num_stages=3)
    assert config["block_m"] == 16 and config["seqs"] == 2
    assert config.label == "block_m16 seqs2 w8 s3"
    assert {config: 1}[LaunchConfig.of(block_m=16, seqs=2, num_warps=8, num_stages=3)] == 1


def test_autotuner_times_every_candidate_once_per_key_and_keeps_the_fastest():
    timer = FakeTimer({16: 3.0, 32: 1.0, 64: 2.0})
    tuner = Autotuner(timer=timer)
    assert tuner.choose("a", CONFIGS, timer.launch, CUDA)["block"] == 32
    assert timer.calls == 3
    timer.timings[32] = 9.0
    assert tuner.choose("a", CONFIGS, timer.launch, CUDA)["block"] == 32  # cached
    assert timer.calls == 3
    assert tuner.choose("b", CONFIGS, timer.launch, CUDA)["block"] == 64  # a new key is timed
    assert timer.calls == 6


def test_autotuner_cache_is_bounded_least_recently_used_first():
    timer = FakeTimer({16: 1.0, 32: 2.0, 64: 3.0})
    tuner = Autotuner(max_entries=2, timer=timer)
    for key in ("a", "b", "a", "c"):  # "b" is now the least recently used
        tuner.choose(key, CONFIGS, timer.launch, CUDA)
    assert timer.calls == 9  # a, b, c timed once each
    tuner.choose("a", CONFIGS, timer.launch, CUDA)
    assert timer.calls == 9
    tuner.choose("b", CONFIGS, timer.launch, CUDA)
    assert timer.calls == 12  # evicted, timed again


def test_autotuner_does_not_time_off_cuda_or_with_one_candidate():
    timer = FakeTimer({16: 3.0, 32: 1.0, 64: 2.0})
    tuner = Autotuner(timer=timer)
    assert tuner.choose("a", CONFIGS, timer.launch, torch.device("cpu")) == CONFIGS[0]
    assert tuner.choose("a", CONFIGS[2:], timer.launch, CUDA) == CONFIGS[2]
    assert timer.calls == 0


def test_pinned_config_wins_and_unpins_on_exit():
    timer = FakeTimer({16: 3.0, 32: 1.0, 64: 2.0})
    tuner = Autotuner(timer=timer)
    with tuner.pinned(CONFIGS[2]):
        assert tuner.choose("a", CONFIGS, timer.launch, CUDA) == CONFIGS[2]
        with tuner.pinned(CONFIGS[0]):
            assert tuner.choose("a", CONFIGS, timer.launch, CUDA) == CONFIGS[0]
        assert tuner.choose("a", CONFIGS, timer.launch, CUDA) == CONFIGS[2]
    assert timer.calls == 0
    with pytest.raises(KeyError):
        with tuner.pinned(CONFIGS[0]):
            raise KeyError("inside")
    assert tuner.choose("a", CONFIGS, timer.launch, CUDA)["block"] == 32


def test_vector_alignment():
    rows = torch.randn(4, 6, 40, dtype=torch.float16)
    assert vector_alignment([rows]) == 8
    assert vector_alignment([rows.float()]) == 4
    assert vector_alignment([rows, rows.transpose(0, 1)]) == 8  # permuted rows stay aligned
    assert vector_alignment([rows, rows[..., 1:]]) == 1  # offset data pointer
    assert vector_alignment([rows, rows[..., ::2]]) == 1  # head-dim stride 2
    assert vector_alignment([torch.randn(4, 6, 36, dtype=torch.float16)]) == 1  # rows 72 bytes apart
    assert vector_alignment([rows], integers=(32, 48)) == 8
    assert vector_alignment([rows], integers=(32, 40)) == 1  # not what Triton's JIT specialises


def test_aot_signature():
    function = windowed_kernel.windowed_attention_kernel
    signature = aot_signature(function, "bf16", floats=("qk_scale",), constants=("stride",))
    assert signature["q_ptr"] == signature["out_ptr"] == "*bf16"
    assert signature["qk_scale"] == "fp32" and signature["blend"] == "i32"
    assert signature["BLOCK_M"] == signature["stride"] == "constexpr"
    assert signature["num_frames"] == "i32"
    assert list(signature) == function.arg_names
