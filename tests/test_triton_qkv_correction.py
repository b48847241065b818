"""The fused QKV-projection + back-projection Triton kernel (zs_kernels/triton/qkv_correction.py).

Runs under the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1) in float32 and
float16; bfloat16 is checked by ahead-of-time compilation only, because the interpreter's tl.dot
returns garbage for bfloat16.

Error bound, per dtype: against the float64 oracle, the kernel's max abs error must be at most
twice the error of the same computation done by PyTorch in that dtype (the reference
``F.linear`` + dense back-projection), plus a floor of one ulp of the largest output
(``eps(dtype) · max|truth|``), the rounding any correct kernel may differ by.

Outputs are poisoned: every tensor the kernel allocates starts as NaN, so an element it forgets
to write fails the comparison.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import zs_kernels
from zs_kernels import layout, reference
from zs_kernels.triton import qkv_correction

KINDS = ("sample", "box_left", "box_right")


@pytest.fixture(autouse=True)
def _poisoned_outputs(monkeypatch):
    """Every output the kernel allocates starts as NaN: unwritten elements cannot pass."""
    empty_projection = layout.empty_projection

    def poisoned(h, channels):
        return empty_projection(h, channels).fill_(float("nan"))

    monkeypatch.setattr(layout, "empty_projection", poisoned)


def make_inputs(batch, key_frames, scale, tokens, channels, c_out, dtype, *, temporal, bias):
    """Fresh random ``(h, h_key, weight, bias)``; ``h`` is a strided ``[B, t, L, C]`` view.

    Spatial layout: ``[B·t, L, C]`` viewed as ``[B, t, L, C]``; temporal: ``[B·L, t, C]`` viewed via
    ``.view(B, L, t, C).permute(0, 2, 1, 3)``. ``h_key [B, t0, L, C]`` is the key branch's input.
    """
    frames = scale * key_frames
    if temporal:
        h = torch.randn(batch * tokens, frames, channels, dtype=dtype)
        h = h.view(batch, tokens, frames, channels).permute(0, 2, 1, 3)
    else:
        h = torch.randn(batch * frames, tokens, channels, dtype=dtype).view(batch, frames, tokens, channels)
    h_key = torch.randn(batch, key_frames, tokens, channels, dtype=dtype)
    weight = (torch.randn(3 * c_out, channels, dtype=torch.float64) / channels**0.5).to(dtype)
    bias_vector = torch.randn(3 * c_out, dtype=dtype) if bias else None
    return h, h_key, weight, bias_vector


def key_projection(h_key, weight, bias):
    """The key branch's projections, computed in float64 and rounded to the inputs' dtype."""
    return F.linear(h_key.double(), weight.double(), None if bias is None else bias.double()).to(h_key.dtype)


def as_double(*tensors):
    return [None if tensor is None else tensor.double() for tensor in tensors]


def check_error(results, truths, baselines, dtype):
    """Kernel error ≤ 2 × PyTorch's error at ``dtype`` + one ulp of the largest value, vs float64."""
    for name, result, truth, baseline in zip(("qkv", "qkv_hat"), results, truths, baselines):
        assert result.dtype == dtype
        assert not torch.isnan(result).any(), f"{name}: elements left unwritten (NaN poison survived)"
        error = (result.double() - truth).abs().max().item()
        torch_error = (baseline.double() - truth).abs().max().item()
        floor = torch.finfo(dtype).eps * truth.abs().max().item()
        assert error <= 2 * torch_error + floor, f"{name}: error {error:.3g} > 2 × {torch_error:.3g} + {floor:.3g}"


def run_triton(h, key_qkv, weight, bias, scale, kind):
    return zs_kernels.corrected_qkv(h, key_qkv, weight, bias, scale=scale, kv_kind=kind, backend="triton")


# (kind, scale, key_frames, temporal, bias, dtype): every operator × scales 2/3/4, key-frame counts
# 1, 2, 7, 16, both layouts, bias on/off, fp32 and fp16; L = 5 and C = 20 / C_out = 12 are not
# multiples of any block.
ORACLE_CASES = [
    ("sample", 2, 1, False, True, torch.float32),
    ("sample", 3, 7, True, False, torch.float32),
    ("sample", 4, 2, False, False, torch.float16),
    ("box_left", 2, 7, True, True, torch.float32),
    ("box_left", 3, 2, False, True, torch.float16),
    ("box_left", 4, 16, True, False, torch.float32),
    ("box_left", 3, 1, True, True, torch.float32),
    ("box_right", 2, 16, False, False, torch.float16),
    ("box_right", 3, 1, False, True, torch.float32),
    ("box_right", 4, 7, True, True, torch.float32),
    ("box_right", 2, 2, True, False, torch.float16),
]


@pytest.mark.parametrize("kind, scale, key_frames, temporal, bias, dtype", ORACLE_CASES)
def test_matches_reference(kind, scale, key_frames, temporal, bias, dtype):
    h, h_key, weight, bias = make_inputs(2, key_frames, scale, 5, 20, 12, dtype, temporal=temporal, bias=bias)
    key_qkv = torch.randn(2, key_frames, 5, 36, dtype=dtype)
    results = run_triton(h, key_qkv, weight, bias, scale, kind)
    truths = reference.corrected_qkv(*as_double(h, key_qkv, weight, bias), scale=scale, kv_kind=kind)
    baselines = reference.corrected_qkv(h, key_qkv, weight, bias, scale=scale, kv_kind=kind)
    check_error(results, truths, baselines, dtype)
    for result in results:
        assert result.shape == (2, scale * key_frames, 5, 36)
        assert result.stride() == layout.empty_projection(h, 36).stride()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_matches_unfused_math(kind, dtype):
    """Correct the key branch's *inputs* then project (SPEC §4's unfused form) == the fused epilogue."""
    scale, key_frames = 3, 2
    h, h_key, weight, bias = make_inputs(1, key_frames, scale, 6, 24, 10, dtype, temporal=kind == "box_left", bias=True)
    key_qkv = key_projection(h_key, weight, bias)
    qkv, qkv_hat = run_triton(h, key_qkv, weight, bias, scale, kind)

    h64, h_key64, weight64, bias64 = as_double(h, h_key, weight, bias)
    c_out = weight.shape[0] // 3
    q_input = reference.back_project(h64, h_key64, "sample", scale, frame_dim=1)
    kv_input = reference.back_project(h64, h_key64, kind, scale, frame_dim=1)
    unfused = torch.cat(
        [F.linear(q_input, weight64[:c_out], bias64[:c_out]), F.linear(kv_input, weight64[c_out:], bias64[c_out:])],
        dim=-1,
    )
    truths = (F.linear(h64, weight64, bias64), unfused)
    # The kernel and the PyTorch baseline both see key_qkv rounded to dtype; the float64 truth does not.
    baselines = reference.corrected_qkv(h, key_qkv, weight, bias, scale=scale, kv_kind=kind)
    check_error((qkv, qkv_hat), truths, baselines, dtype)


@pytest.mark.parametrize("kind", KINDS)
def test_temporal_layout_equals_spatial(kind):
    """The same logical input as a temporal view and as a spatial view gives identical numbers."""
    scale, key_frames, tokens = 2, 3, 7
    spatial, h_key, weight, bias = make_inputs(
        2, key_frames, scale, tokens, 20, 12, torch.float32, temporal=False, bias=True
    )
    temporal = spatial.permute(0, 2, 1, 3).contiguous().view(2 * tokens, scale * key_frames, 20)
    temporal = temporal.view(2, tokens, scale * key_frames, 20).permute(0, 2, 1, 3)
    assert torch.equal(temporal, spatial) and temporal.stride() != spatial.stride()
    key_qkv = key_projection(h_key, weight, bias)
    with qkv_correction.pinned_config(qkv_correction.GENERIC_CONFIGS[0]):
        from_spatial = run_triton(spatial, key_qkv, weight, bias, scale, kind)
        from_temporal = run_triton(temporal, key_qkv, weight, bias, scale, kind)
    for a, b in zip(from_spatial, from_temporal):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert from_temporal[0].stride() == layout.empty_projection(temporal, 36).stride()


@pytest.mark.parametrize(
    "config", qkv_correction.ALIGNED_CONFIGS + qkv_correction.GENERIC_CONFIGS, ids=lambda config: config.label
)
def test_every_shipped_config(config):
    """Each tile configuration computes the right numbers (one case each, pinned)."""
    scale, key_frames, kind = 3, 2, "box_left"
    h, h_key, weight, bias = make_inputs(1, key_frames, scale, 21, 40, 20, torch.float32, temporal=False, bias=True)
    key_qkv = key_projection(h_key, weight, bias)
    with qkv_correction.pinned_config(config):
        results = run_triton(h, key_qkv, weight, bias, scale, kind)
    truths = reference.corrected_qkv(*as_double(h, key_qkv, weight, bias), scale=scale, kv_kind=kind)
    baselines = reference.corrected_qkv(h, key_qkv, weight, bias, scale=scale, kv_kind=kind)
    check_error(results, truths, baselines, torch.float32)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scale", [9, 11])
def test_scales_beyond_one_tile(kind, scale):
    """Scales above MAX_SLOTS frames run the chunked path (store qkv, then re-read and correct it)."""
    assert scale > qkv_correction.MAX_SLOTS
    h, h_key, weight, bias = make_inputs(1, 2, scale, 3, 20, 12, torch.float32, temporal=scale == 11, bias=True)
    key_qkv = key_projection(h_key, weight, bias)
    with qkv_correction.pinned_config(qkv_correction.GENERIC_CONFIGS[-1]):
        results = run_triton(h, key_qkv, weight, bias, scale, kind)
    truths = reference.corrected_qkv(*as_double(h, key_qkv, weight, bias), scale=scale, kv_kind=kind)
    baselines = reference.corrected_qkv(h, key_qkv, weight, bias, scale=scale, kv_kind=kind)
    check_error(results, truths, baselines, torch.float32)


def test_aligned_launches_use_the_aligned_configs():
    aligned_h, _, weight, _ = make_inputs(1, 2, 2, 4, 32, 16, torch.float16, temporal=True, bias=False)
    key_qkv = torch.randn(1, 2, 4, 48, dtype=torch.float16)

    def family(h, weight, key_qkv):
        out = layout.empty_projection(h, weight.shape[0])
        arguments = qkv_correction._arguments(h, key_qkv, weight, None, 2, "box_right", out, out)
        return qkv_correction._select_config(arguments)

    assert family(aligned_h, weight, key_qkv) in qkv_correction.ALIGNED_CONFIGS
    odd_h, _, odd_weight, _ = make_inputs(1, 2, 2, 4, 30, 16, torch.float16, temporal=True, bias=False)
    assert family(odd_h, odd_weight, key_qkv) in qkv_correction.GENERIC_CONFIGS
    offset_h = torch.randn(1, 4, 4, 33, dtype=torch.float16)[..., 1:]  # 2-byte aligned view
    assert family(offset_h, weight, key_qkv) in qkv_correction.GENERIC_CONFIGS
    with qkv_correction.pinned_config(qkv_correction.GENERIC_CONFIGS[-1]):
        assert family(aligned_h, weight, key_qkv) == qkv_correction.GENERIC_CONFIGS[-1]


@settings(
    max_examples=8, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    kind=st.sampled_from(KINDS), scale=st.integers(2, 5), key_frames=st.integers(1, 4), tokens=st.integers(1, 9),
    channels=st.integers(1, 40), c_out=st.integers(1, 12), temporal=st.booleans(), bias=st.booleans(),
)
def test_random_odd_sizes(kind, scale, key_frames, tokens, channels, c_out, temporal, bias):
    """Any sizes, down to one token, one channel, one output column per projection."""
    h, h_key, weight, bias = make_inputs(
        2, key_frames, scale, tokens, channels, c_out, torch.float32, temporal=temporal, bias=bias
    )
    key_qkv = torch.randn(2, key_frames, tokens, 3 * c_out)
    results = run_triton(h, key_qkv, weight, bias, scale, kind)
    truths = reference.corrected_qkv(*as_double(h, key_qkv, weight, bias), scale=scale, kv_kind=kind)
    baselines = reference.corrected_qkv(h, key_qkv, weight, bias, scale=scale, kv_kind=kind)
    check_error(results, truths, baselines, torch.float32)


@pytest.mark.parametrize("temporal", [False, True], ids=["spatial", "temporal"])
def test_aligned_sizes_through_the_default_selection(temporal):
    """C = 32, C_out = 16: the aligned family, chosen and pruned as in production, in float16."""
    h, h_key, weight, bias = make_inputs(1, 3, 2, 16, 32, 16, torch.float16, temporal=temporal, bias=True)
    key_qkv = key_projection(h_key, weight, bias)
    out = layout.empty_projection(h, 48)
    assert qkv_correction._aligned(qkv_correction._arguments(h, key_qkv, weight, bias, 2, "box_left", out, out))
    results = run_triton(h, key_qkv, weight, bias, 2, "box_left")
    truths = reference.corrected_qkv(*as_double(h, key_qkv, weight, bias), scale=2, kv_kind="box_left")
    baselines = reference.corrected_qkv(h, key_qkv, weight, bias, scale=2, kv_kind="box_left")
    check_error(results, truths, baselines, torch.float16)


def test_autotune_times_each_candidate_once_per_problem(monkeypatch):
    """The CUDA branch of the config choice, with a fake timer: fastest candidate wins, result cached."""
    timed = []

    def fake_do_bench(launch):
        launch()
        timed.append(launch)
        return 0.5 if len(timed) == 2 else 1.0  # the second candidate is the fastest

    monkeypatch.setattr(qkv_correction, "_can_time", lambda tensor: True)
    monkeypatch.setattr(qkv_correction, "do_bench", fake_do_bench)
    monkeypatch.setattr(qkv_correction, "_tuned", {})
    h, h_key, weight, bias = make_inputs(1, 1, 2, 20, 40, 20, torch.float32, temporal=False, bias=False)
    key_qkv = key_projection(h_key, weight, bias)
    out = layout.empty_projection(h, 60)
    arguments = qkv_correction._arguments(h, key_qkv, weight, bias, 2, "box_right", out, out)
    assert qkv_correction._select_config(arguments) == qkv_correction.GENERIC_CONFIGS[1]
    assert qkv_correction._select_config(arguments) == qkv_correction.GENERIC_CONFIGS[1]
    assert len(timed) == len(qkv_correction.GENERIC_CONFIGS)


def test_empty_problem_launches_nothing():
    h = torch.randn(1, 4, 0, 8)
    qkv, qkv_hat = run_triton(h, torch.randn(1, 2, 0, 12), torch.randn(12, 8), None, 2, "box_left")
    assert qkv.shape == qkv_hat.shape == (1, 4, 0, 12)


@pytest.mark.parametrize(
    "change, error, message",
    [
        (dict(key_qkv=torch.randn(1, 3, 5, 36)), ValueError, r"key_qkv must have shape \(1, 2, 5, 36\)"),
        (dict(weight=torch.randn(35, 20)), ValueError, r"weight must have shape \[3\*C_out, C=20\]"),
        (dict(weight=torch.randn(36, 21)), ValueError, r"weight must have shape \[3\*C_out, C=20\]"),
        (dict(weight=torch.randn(36, 20, dtype=torch.float64)), TypeError, "weight has dtype torch.float64"),
        (dict(key_qkv=torch.randn(1, 2, 5, 36, device="meta")), ValueError, "key_qkv is on meta"),
        (dict(kv_kind="box_middle"), ValueError, "kv_kind must be one of 'sample', 'box_left', 'box_right'"),
        (dict(scale=3), ValueError, "h has t=4 frames, expected a multiple of scale=3"),
        (dict(bias=torch.randn(12)), ValueError, r"bias must have shape \(36,\)"),
    ],
)
def test_bad_input_raises_clear_errors(change, error, message):
    arguments = dict(
        h=torch.randn(1, 4, 5, 20), key_qkv=torch.randn(1, 2, 5, 36), weight=torch.randn(36, 20), bias=None,
        scale=2, kv_kind="box_left",
    )
    arguments.update(change)
    with pytest.raises(error, match=message):
        zs_kernels.corrected_qkv(**arguments, backend="triton")


_BF16_BUILD = """
import sys
from zs_kernels.compile_check import compile_configuration
from zs_kernels.triton import qkv_correction
for family in ("aligned", "generic"):
    configuration = next(
        c for c in qkv_correction.aot_configurations("bf16") if c.label.startswith(family) and "chunked" in c.label
    )
    build = compile_configuration("qkv_correction", configuration, 80, "bf16")
    print(configuration.label, build.registers, build.spill_stores + build.spill_loads, build.shared, build.problems)
    if build.problems:
        sys.exit(1)
"""


def test_bf16_builds_for_sm80_without_spills():
    """bf16 is checked by compilation (the interpreter's bf16 tl.dot is unusable): one variant per
    family here; ``python -m zs_kernels.compile_check`` builds them all. The interpreter must be off."""
    # TRITON_ALWAYS_COMPILE: on a Triton cache hit ptxas does not run and prints no register report.
    env = dict(
        os.environ, TRITON_INTERPRET="0", TRITON_DUMP_PTXAS_LOG="1", TRITON_DEFAULT_FP_FUSION="1",
        TRITON_ALWAYS_COMPILE="1",
    )
    done = subprocess.run([sys.executable, "-c", _BF16_BUILD], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
