"""zs_kernels.corrected_qkv on every backend: the torch path and the fused Triton kernel (GEMM +
back-projection epilogue) against the float64 oracle under the error rule of
:func:`zs_kernels.testing.assert_within_error_rule`, with outputs allocated NaN-filled so an
element left unwritten fails; layouts, tiles, the weights as three projections (any strides, biases
on some of them) or one stacked tensor, non-finite inputs and bad arguments.

The Triton kernel runs compiled on a GPU when there is one, else through the interpreter on CPU
in fp32 and fp16 (the interpreter's ``tl.dot`` on bf16 returns garbage: bf16 is covered by the
``-m cuda`` tests and by the ahead-of-time builds of ``test_compile.py``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import zs_kernels
from zs_kernels import frames, reference, testing
from zs_kernels.corrected_qkv import triton as kernel

from .helpers import closed_form_dependents, raises

KINDS = frames.OPERATOR_KINDS


def make_inputs(batch, key_frames, scale, tokens, channels, c_out, dtype, *, temporal, bias, device="cpu"):
    """Fresh random ``(h, h_key, weights, biases)``; ``h`` is a strided ``[B, t, L, C]`` view,
    ``weights = (w_q, w_k, w_v)`` three separate ``[C_out, C]`` tensors and ``biases`` three
    ``[C_out]`` ones (or None).

    Spatial layout: ``[B·t, L, C]`` viewed as ``[B, t, L, C]``; temporal: ``[B·L, t, C]`` viewed via
    ``.view(B, L, t, C).permute(0, 2, 1, 3)``. ``h_key [B, t0, L, C]`` is the key branch's input.
    """
    num_frames = scale * key_frames
    if temporal:
        h = torch.randn(batch * tokens, num_frames, channels, device=device).to(dtype)
        h = h.view(batch, tokens, num_frames, channels).permute(0, 2, 1, 3)
    else:
        h = torch.randn(batch * num_frames, tokens, channels, device=device).to(dtype)
        h = h.view(batch, num_frames, tokens, channels)
    h_key = torch.randn(batch, key_frames, tokens, channels, device=device).to(dtype)
    weights = tuple(
        (torch.randn(c_out, channels, dtype=torch.float64, device=device) / channels**0.5).to(dtype) for _ in range(3)
    )
    biases = tuple(torch.randn(c_out, device=device).to(dtype) for _ in range(3)) if bias else None
    return h, h_key, weights, biases


def stacked(parts):
    """``(w_q, w_k, w_v)`` or ``(b_q, b_k, b_v)`` stacked into one tensor (None stays None), for the
    unfused peer, which takes the stacked form."""
    return None if parts is None else torch.cat(parts)


def key_projection(h_key, weights, biases):
    """The key branch's projections, computed in float64 and rounded to the inputs' dtype."""
    biases = (None, None, None) if biases is None else biases
    projections = [
        F.linear(h_key.double(), weight.double(), None if bias is None else bias.double())
        for weight, bias in zip(weights, biases)
    ]
    return torch.cat(projections, dim=-1).to(h_key.dtype)


def as_double(*values):
    """Each tensor in float64; tuples (of weights, of biases) entry by entry; None stays None."""
    def double(value):
        if isinstance(value, tuple):
            return tuple(double(entry) for entry in value)
        return None if value is None else value.double()

    return [double(value) for value in values]


def assert_in_memory_order_of(result, h):
    """``result [B, t, L, 3 C_out]`` is dense with its columns innermost and its leading dims in
    ``h``'s memory order (ordered by ``h``'s strides; a size-1 dim's stride is immaterial)."""
    order = sorted(range(3), key=lambda dim: -h.stride(dim) if h.shape[dim] > 1 else 0)
    step = result.shape[-1]
    assert result.stride(-1) == 1
    for dim in reversed(order):
        assert result.shape[dim] == 1 or result.stride(dim) == step, (result.stride(), h.stride())
        step *= result.shape[dim]


def check(h, key_qkv, weight, bias, scale, kind, *, backend="triton", truths=None):
    """Run the op on NaN-filled allocations and apply the error rule to both outputs against the
    float64 oracle (or the given ``truths``); outputs must follow ``h``'s memory order.

    ``weight``/``bias`` in either public form (three projections or stacked)."""
    with testing.nan_filled_allocations():
        results = zs_kernels.corrected_qkv(h, key_qkv, weight, bias, scale=scale, kv_kind=kind, backend=backend)
    if truths is None:
        truths = reference.corrected_qkv(*as_double(h, key_qkv, weight, bias), scale=scale, kv_kind=kind)
    baselines = reference.corrected_qkv(h, key_qkv, weight, bias, scale=scale, kv_kind=kind)
    for name, result, truth, baseline in zip(("qkv", "qkv_hat"), results, truths, baselines):
        assert result.dtype == h.dtype and result.device == h.device
        assert_in_memory_order_of(result, h)
        testing.assert_within_error_rule(result, baseline, truth.to(result.device), name=name)
    return results


# --- the torch path ---------------------------------------------------------------------------


def spatial_and_temporal_inputs(batch, num_frames, tokens, channels, dtype):
    """The same logical [B, t, L, C] tensor as a spatial view ([B·t, L, C]) and a temporal view ([B·L, t, C])."""
    logical = torch.randn(batch, num_frames, tokens, channels, dtype=dtype)
    spatial = logical.reshape(batch * num_frames, tokens, channels).view(batch, num_frames, tokens, channels)
    temporal = logical.transpose(1, 2).reshape(batch * tokens, num_frames, channels)
    temporal = temporal.view(batch, tokens, num_frames, channels).permute(0, 2, 1, 3)
    return spatial, temporal


def projection_weights(c_out, channels, dtype, form, bias):
    """``(weight, bias)`` in one public form: ``"three"`` separate tensors, ``"views"`` — three
    projections with different strides (a row slice of a wider tensor, a transposed view, a plain
    tensor) — or ``"stacked"`` ``[3 C_out, C]``. ``bias``: ``"all"``, ``"some"`` (K's only) or
    ``"none"``."""
    weights = [torch.randn(c_out, channels, dtype=dtype) / channels**0.5 for _ in range(3)]
    if form == "views":
        weights[0] = torch.cat([weights[0], torch.randn(c_out, 3, dtype=dtype)], dim=1)[:, :channels]
        weights[1] = weights[1].t().contiguous().t()
    biases = [torch.randn(c_out, dtype=dtype) for _ in range(3)]
    if bias == "some":
        biases[0] = biases[2] = None
    biases = None if bias == "none" else tuple(biases)
    if form == "stacked":
        assert bias != "some", "a stacked bias covers every projection"
        return torch.cat(weights), stacked(biases)
    return tuple(weights), biases


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kv_kind", KINDS)
@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("form, bias", [("three", "all"), ("views", "some"), ("stacked", "all"), ("three", "none")])
def test_torch_path_matches_reference(dtype, kv_kind, scale, form, bias):
    num_key_frames, channels, c_out = 3, 19, 13
    spatial, temporal = spatial_and_temporal_inputs(2, scale * num_key_frames, 5, channels, dtype)
    key_qkv = torch.randn(2, num_key_frames, 5, 3 * c_out, dtype=dtype)
    weight, bias = projection_weights(c_out, channels, dtype, form, bias)
    for h in (spatial, temporal):
        check(h, key_qkv, weight, bias, scale, kv_kind, backend="torch")


def allocated_bytes(function) -> int:
    """Bytes the CPU allocator hands out while ``function`` runs (torch profiler's memory events)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as profile:
        function()
    return sum(max(event.self_cpu_memory_usage, 0) for event in profile.events())


@pytest.mark.parametrize("form", ["three", "stacked"])
def test_torch_path_allocates_only_its_outputs(form):
    """Inference on the temporal view with three projections: the only allocations are the two
    outputs — no stacked weight, no copy of ``h`` (it is projected in its own memory order) and
    no stacked copy of the projections (each GEMM writes its column slice). ``sample`` corrects
    by assignment, so the correction allocates nothing either."""
    _, temporal = spatial_and_temporal_inputs(2, 8, 6, 16, torch.float32)
    weight, bias = projection_weights(16, 16, torch.float32, form, "all")
    key_qkv = torch.randn(2, 4, 6, 48)
    with torch.no_grad():
        allocated = allocated_bytes(
            lambda: zs_kernels.corrected_qkv(temporal, key_qkv, weight, bias, scale=2, kv_kind="sample")
        )
    assert allocated == 2 * temporal[..., :1].numel() * 48 * 4


@pytest.mark.parametrize("kv_kind", KINDS)
def test_torch_path_under_autograd_matches_reference(kv_kind):
    """With autograd recording and weights that require grad (an ``nn.Linear`` outside no_grad),
    the torch path builds the projections out of place: same numbers, gradients reach every weight."""
    _, temporal = spatial_and_temporal_inputs(1, 6, 4, 8, torch.float64)
    layers = [torch.nn.Linear(8, 5, dtype=torch.float64) for _ in range(3)]
    weights, biases = tuple(layer.weight for layer in layers), tuple(layer.bias for layer in layers)
    key_qkv = torch.randn(1, 3, 4, 15, dtype=torch.float64)
    results = zs_kernels.corrected_qkv(temporal, key_qkv, weights, biases, scale=2, kv_kind=kv_kind, backend="torch")
    with torch.no_grad():
        truths = reference.corrected_qkv(temporal, key_qkv, weights, biases, scale=2, kv_kind=kv_kind)
    for result, truth in zip(results, truths):
        torch.testing.assert_close(result, truth, rtol=0, atol=1e-12)
        assert_in_memory_order_of(result, temporal)
    sum(result.sum() for result in results).backward()
    assert all(weight.grad is not None and weight.grad.abs().sum() > 0 for weight in weights)


@pytest.mark.parametrize("kind", KINDS)
def test_unfused_peer_equals_reference(kind):
    """The benches' unfused peer (correct the inputs, then six projections) is SPEC §4 too."""
    h, h_key, weight, bias = make_inputs(2, 3, 3, 4, 10, 6, torch.float64, temporal=True, bias=True)
    plain, corrected = testing.unfused_corrected_qkv(h, h_key, stacked(weight), stacked(bias), scale=3, kv_kind=kind)
    qkv, qkv_hat = reference.corrected_qkv(h, key_projection(h_key, weight, bias), weight, bias, scale=3, kv_kind=kind)
    torch.testing.assert_close(torch.cat(plain, dim=-1), qkv, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.cat(corrected, dim=-1), qkv_hat, rtol=0, atol=1e-12)


# --- the Triton kernel (interpreter on CPU, compiled on a GPU) ---------------------------------

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
def test_kernel_matches_reference(kind, scale, key_frames, temporal, bias, dtype, device):
    h, _, weight, bias = make_inputs(
        2, key_frames, scale, 5, 20, 12, dtype, temporal=temporal, bias=bias, device=device
    )
    key_qkv = torch.randn(2, key_frames, 5, 36, device=device).to(dtype)
    qkv, qkv_hat = check(h, key_qkv, weight, bias, scale, kind)
    assert qkv.shape == qkv_hat.shape == (2, scale * key_frames, 5, 36)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kernel_matches_unfused_math(kind, dtype, device):
    """Correct the key branch's *inputs* then project (SPEC §4's unfused form) == the fused epilogue."""
    scale, key_frames = 3, 2
    h, h_key, weight, bias = make_inputs(
        1, key_frames, scale, 6, 24, 10, dtype, temporal=kind == "box_left", bias=True, device=device
    )
    key_qkv = key_projection(h_key, weight, bias)
    plain, corrected = testing.unfused_corrected_qkv(
        *as_double(h, h_key, stacked(weight), stacked(bias)), scale=scale, kv_kind=kind
    )
    # The kernel and the PyTorch baseline both see key_qkv rounded to dtype; the float64 truth does not.
    check(h, key_qkv, weight, bias, scale, kind, truths=(torch.cat(plain, dim=-1), torch.cat(corrected, dim=-1)))


@pytest.mark.parametrize("kind", KINDS)
def test_kernel_temporal_layout_equals_spatial(kind, device):
    """The same logical input as a temporal view and as a spatial view gives identical numbers."""
    scale, key_frames, tokens = 2, 3, 7
    spatial, h_key, weight, bias = make_inputs(
        2, key_frames, scale, tokens, 20, 12, torch.float32, temporal=False, bias=True, device=device
    )
    temporal = spatial.permute(0, 2, 1, 3).contiguous().view(2 * tokens, scale * key_frames, 20)
    temporal = temporal.view(2, tokens, scale * key_frames, 20).permute(0, 2, 1, 3)
    assert torch.equal(temporal, spatial) and temporal.stride() != spatial.stride()
    key_qkv = key_projection(h_key, weight, bias)
    with kernel.AUTOTUNER.pinned(kernel.GENERIC_CONFIGS[0]):
        from_spatial = check(spatial, key_qkv, weight, bias, scale, kind)
        from_temporal = check(temporal, key_qkv, weight, bias, scale, kind)
    for a, b in zip(from_spatial, from_temporal):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(
    "config", kernel.ALIGNED_CONFIGS + kernel.GENERIC_CONFIGS, ids=lambda config: config.label.replace(" ", "_")
)
def test_every_shipped_config(config, device):
    """Each tile configuration computes the right numbers (one case each, pinned)."""
    scale, key_frames, kind = 3, 2, "box_left"
    h, h_key, weight, bias = make_inputs(
        1, key_frames, scale, 21, 40, 20, torch.float32, temporal=False, bias=True, device=device
    )
    with kernel.AUTOTUNER.pinned(config):
        check(h, key_projection(h_key, weight, bias), weight, bias, scale, kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scale", [9, 11])
def test_kernel_scales_beyond_one_tile(kind, scale, device):
    """Scales above MAX_SLOTS frames run the chunked path (store qkv, then re-read and correct it)."""
    assert scale > kernel.MAX_SLOTS
    h, h_key, weight, bias = make_inputs(
        1, 2, scale, 3, 20, 12, torch.float32, temporal=scale == 11, bias=True, device=device
    )
    with kernel.AUTOTUNER.pinned(kernel.GENERIC_CONFIGS[-1]):
        check(h, key_projection(h_key, weight, bias), weight, bias, scale, kind)


def test_launcher_offers_the_alignment_family(monkeypatch, device):
    """Aligned launches (16-byte aligned pointers, channel counts and strides multiples of 16) are
    offered the aligned family; odd channel counts and unaligned views the generic one."""
    offered = []

    def choose(key, candidates, launch, launch_device):
        offered.append(list(candidates))
        return candidates[0]

    monkeypatch.setattr(kernel.AUTOTUNER, "choose", choose)
    aligned_h, _, weight, _ = make_inputs(1, 2, 2, 4, 32, 16, torch.float16, temporal=True, bias=False, device=device)
    key_qkv = torch.randn(1, 2, 4, 48, device=device).half()
    odd_h, _, odd_weight, _ = make_inputs(1, 2, 2, 4, 30, 16, torch.float16, temporal=True, bias=False, device=device)
    offset_h = torch.randn(1, 4, 4, 33, device=device).half()[..., 1:]  # 2-byte aligned view
    offset_w_v = (weight[0], weight[1], torch.randn(16 * 32 + 1, device=device).half()[1:].view(16, 32))
    for h, w in ((aligned_h, weight), (odd_h, odd_weight), (offset_h, weight), (aligned_h, offset_w_v)):
        zs_kernels.corrected_qkv(h, key_qkv, w, scale=2, kv_kind="box_right", backend="triton")
    assert [set(candidates) <= set(kernel.ALIGNED_CONFIGS) for candidates in offered] == [True, False, False, False]
    assert all(set(candidates) <= set(kernel.GENERIC_CONFIGS) for candidates in offered[1:])


@settings(
    max_examples=8, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    kind=st.sampled_from(KINDS), scale=st.integers(2, 5), key_frames=st.integers(1, 4), tokens=st.integers(1, 9),
    channels=st.integers(1, 40), c_out=st.integers(1, 12), temporal=st.booleans(), bias=st.booleans(),
)
def test_kernel_random_odd_sizes(kind, scale, key_frames, tokens, channels, c_out, temporal, bias, device):
    """Any sizes, down to one token, one channel, one output column per projection."""
    h, _, weight, bias = make_inputs(
        2, key_frames, scale, tokens, channels, c_out, torch.float32, temporal=temporal, bias=bias, device=device
    )
    key_qkv = torch.randn(2, key_frames, tokens, 3 * c_out, device=device)
    check(h, key_qkv, weight, bias, scale, kind)


@pytest.mark.parametrize("temporal", [False, True], ids=["spatial", "temporal"])
def test_kernel_aligned_sizes_through_the_default_selection(temporal, device):
    """C = 32, C_out = 16: the aligned family, chosen and pruned as in production, in float16."""
    h, h_key, weight, bias = make_inputs(
        1, 3, 2, 16, 32, 16, torch.float16, temporal=temporal, bias=True, device=device
    )
    check(h, key_projection(h_key, weight, bias), weight, bias, 2, "box_left")


def test_kernel_strided_bias(device):
    """Biases that are strided views (every other entry of a larger vector) are read as such,
    stacked or one per projection."""
    h, _, weight, _ = make_inputs(2, 4, 3, 5, 20, 12, torch.float32, temporal=False, bias=False, device=device)
    key_qkv = torch.randn(2, 4, 5, 36, device=device)
    check(h, key_qkv, weight, torch.randn(72, device=device)[::2], 3, "box_left")
    check(h, key_qkv, weight, (torch.randn(24, device=device)[::2], None, torch.randn(36, device=device)[::3]),
          3, "box_left")


@pytest.mark.parametrize("kind", KINDS)
def test_kernel_projections_of_any_layout(kind, device):
    """Three projections in different memory: a row slice of a wider tensor (row stride > C), a
    transposed view (channel stride C_out: the launcher gives it the others' channel stride), a
    row block of a stacked tensor; biases on some projections only, or a stacked bias."""
    h, h_key, _, _ = make_inputs(2, 3, 2, 5, 20, 12, torch.float32, temporal=True, bias=False, device=device)
    wide = torch.randn(12, 27, device=device) / 20**0.5
    transposed = (torch.randn(20, 12, device=device) / 20**0.5).t()
    block = torch.randn(36, 20, device=device)[12:24] / 20**0.5
    weights = (wide[:, :20], transposed, block)
    for biases in ((None, torch.randn(12, device=device), None), torch.randn(36, device=device)):
        check(h, key_projection(h_key, weights, biases if isinstance(biases, tuple) else biases.chunk(3)),
              weights, biases, 2, kind)
    assert weights[1].stride(1) != weights[0].stride(1)


def test_kernel_empty_problem_launches_nothing(device):
    h = torch.randn(1, 4, 0, 8, device=device)
    qkv, qkv_hat = zs_kernels.corrected_qkv(
        h, torch.randn(1, 2, 0, 12, device=device), torch.randn(12, 8, device=device), scale=2, kv_kind="box_left",
        backend="triton",
    )
    assert qkv.shape == qkv_hat.shape == (1, 4, 0, 12)


# --- non-finite inputs -------------------------------------------------------------------------

NAN_KEY_FRAMES, NAN_SCALE, NAN_TOKENS, NAN_CHANNELS, NAN_C_OUT = 3, 3, 2, 8, 4


def expected_nan(backend, kind, source, index):
    """The documented NaN patterns of ``(qkv, qkv_hat)`` for a NaN at ``index`` of ``source``."""
    shape = (2, NAN_SCALE * NAN_KEY_FRAMES, NAN_TOKENS, 3 * NAN_C_OUT)
    qkv, hat = torch.zeros(shape, dtype=torch.bool), torch.zeros(shape, dtype=torch.bool)
    columns = range(3 * NAN_C_OUT)
    if source == "h":
        batch, frame, token, _ = index
        qkv[batch, frame, token, :] = True
        cells = [(batch, token, column, frame, "x") for column in columns]
    elif source == "key_qkv":
        batch, key_frame, token, column = index
        cells = [(batch, token, column, key_frame, "y")]
    else:  # a weight row or a bias entry: one column of every row
        column = index[0]
        qkv[..., column] = True
        cells = [(batch, token, column, frame, "x") for batch in range(2) for token in range(NAN_TOKENS)
                 for frame in range(shape[1])]
    for batch, token, column, frame, role in cells:
        column_kind = "sample" if column < NAN_C_OUT else kind
        if backend == "reference":
            hat[batch, :, token, column] = True
        else:
            dependents = closed_form_dependents(column_kind, NAN_KEY_FRAMES, NAN_SCALE, role, frame)
            hat[batch, sorted(dependents), token, column] = True
    return qkv, hat


NAN_SOURCES = [
    ("h", (0, 0, 0, 1)),  # frame 0: a key frame, box_left's one-frame box
    ("h", (1, 3, 0, 5)),  # a key frame: Q columns take key_qkv there
    ("h", (0, 4, 1, 0)),
    ("h", (1, 8, 1, 7)),  # box_left's last frame, in no box
    ("key_qkv", (0, 1, 1, 2)),  # a Q column
    ("key_qkv", (1, 2, 0, 9)),  # a V column
    ("weight", (6, 3)),  # a K row
    ("bias", (1,)),  # a Q entry
]


@pytest.mark.parametrize("backend", ["reference", "torch", "triton"])
@pytest.mark.parametrize("kind", KINDS)
def test_nan_reaches_only_the_outputs_that_depend_on_it(backend, kind, device):
    """NaN in one element reaches exactly the documented outputs (see the op's docstring) on
    every backend; every other output is bit-identical to the clean run."""
    if backend != "triton":
        device = torch.device("cpu")
    h, _, weight, bias = make_inputs(
        2, NAN_KEY_FRAMES, NAN_SCALE, NAN_TOKENS, NAN_CHANNELS, NAN_C_OUT, torch.float32, temporal=True, bias=True,
        device=device,
    )
    # The stacked form, so one index addresses any weight row or bias entry.
    inputs = dict(h=h, key_qkv=torch.randn(2, NAN_KEY_FRAMES, NAN_TOKENS, 3 * NAN_C_OUT, device=device),
                  weight=stacked(weight), bias=stacked(bias))

    def run(values):
        outputs = zs_kernels.corrected_qkv(**values, scale=NAN_SCALE, kv_kind=kind, backend=backend)
        return [output.cpu() for output in outputs]

    clean = run(inputs)
    for source, index in NAN_SOURCES:
        poisoned = dict(inputs, **{source: inputs[source].clone()})
        poisoned[source][index] = float("nan")
        expected_patterns = expected_nan(backend, kind, source, index)
        for name, result, expected, before in zip(("qkv", "qkv_hat"), run(poisoned), expected_patterns, clean):
            wrong = (result.isnan() ^ expected).nonzero()[:4].tolist()
            assert torch.equal(result.isnan(), expected), (name, source, index, wrong)
            assert torch.equal(result[~expected], before[~expected]), (name, source, index)


# --- bad arguments -----------------------------------------------------------------------------


class TestBadArguments:
    def args(self, frames=8, key_frames=4, channels=6, c_out=5):
        h, key = torch.randn(2, frames, 3, channels), torch.randn(2, key_frames, 3, 3 * c_out)
        return h, key, torch.randn(3 * c_out, channels)

    def test_key_frames_do_not_match(self):
        h, key, weight = self.args(key_frames=3)
        with raises(ValueError, "key_qkv", "t0 = t/scale = 4", "(2, 3, 3, 15)"):
            zs_kernels.corrected_qkv(h, key, weight, scale=2, kv_kind="sample")

    def test_frames_not_multiple_of_scale(self):
        h, key, weight = self.args(frames=9)
        with raises(ValueError, "t=9", "scale=2"):
            zs_kernels.corrected_qkv(h, key, weight, scale=2, kv_kind="sample")

    def test_weight_shape(self):
        h, key, _ = self.args()
        with raises(ValueError, "weight", "[3*C_out, C=6]", "(14, 6)"):
            zs_kernels.corrected_qkv(h, key, torch.randn(14, 6), scale=2, kv_kind="sample")

    def test_three_weights_must_agree(self):
        h, key, _ = self.args()
        weights = (torch.randn(5, 6), torch.randn(4, 6), torch.randn(5, 6))
        with raises(ValueError, "weight[1] (w_k)", "(5, 6)", "C_out = 5 from w_q", "(4, 6)"):
            zs_kernels.corrected_qkv(h, key, weights, scale=2, kv_kind="sample")
        with raises(ValueError, "weight[2] (w_v)", "C = 6 from h", "(5, 7)"):
            zs_kernels.corrected_qkv(h, key, (weights[0], weights[2], torch.randn(5, 7)), scale=2, kv_kind="sample")
        with raises(TypeError, "weight[0] (w_q)", "torch.float64", "like h"):
            zs_kernels.corrected_qkv(h, key, (weights[0].double(), weights[0], weights[0]), scale=2, kv_kind="sample")

    @pytest.mark.parametrize("weight", [(torch.randn(5, 6),) * 2, "w"], ids=["two", "str"])
    def test_weight_is_three_tensors(self, weight):
        h, key, _ = self.args()
        with raises(TypeError, "weight must be a sequence (w_q, w_k, w_v)", "stacked [3*C_out, C]"):
            zs_kernels.corrected_qkv(h, key, weight, scale=2, kv_kind="sample")

    def test_three_biases(self):
        h, key, _ = self.args()
        weights = tuple(torch.randn(5, 6) for _ in range(3))
        with raises(ValueError, "bias[2] (b_v)", "(5,)", "(4,)"):
            zs_kernels.corrected_qkv(h, key, weights, (None, None, torch.randn(4)), scale=2, kv_kind="sample")
        with raises(TypeError, "bias must be None", "(b_q, b_k, b_v)", "a list of length 2"):
            zs_kernels.corrected_qkv(h, key, weights, [torch.randn(5)] * 2, scale=2, kv_kind="sample")

    def test_bias_shape(self):
        h, key, weight = self.args()
        with raises(ValueError, "bias", "(15,)", "(5,)"):
            zs_kernels.corrected_qkv(h, key, weight, torch.randn(5), scale=2, kv_kind="sample")

    @pytest.mark.parametrize(
        "scale, error, words", [(1, ValueError, ["scale", ">= 2"]), (2.5, TypeError, ["scale", "integer"])]
    )
    def test_scale(self, scale, error, words):
        h, key, weight = self.args()
        with raises(error, *words):
            zs_kernels.corrected_qkv(h, key, weight, scale=scale, kv_kind="sample")

    def test_kind(self):
        with raises(ValueError, "kv_kind", "'box'", "box_left"):
            zs_kernels.corrected_qkv(*self.args(), scale=2, kv_kind="box")

    def test_dtype_mismatch(self):
        h, key, weight = self.args()
        with raises(TypeError, "weight", "torch.float64", "torch.float32"):
            zs_kernels.corrected_qkv(h, key, weight.double(), scale=2, kv_kind="sample")

    def test_rank(self):
        h, key, weight = self.args()
        with raises(ValueError, "h", "4 dimensions"):
            zs_kernels.corrected_qkv(h[0], key, weight, scale=2, kv_kind="sample")

    def test_unknown_backend(self):
        with raises(ValueError, "backend", "'gpu'", "triton"):
            zs_kernels.corrected_qkv(*self.args(), scale=2, kv_kind="sample", backend="gpu")

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
    def test_triton_backend_validates_first(self, change, error, message):
        arguments = dict(
            h=torch.randn(1, 4, 5, 20), key_qkv=torch.randn(1, 2, 5, 36), weight=torch.randn(36, 20), bias=None,
            scale=2, kv_kind="box_left",
        )
        arguments.update(change)
        with pytest.raises(error, match=message):
            zs_kernels.corrected_qkv(**arguments, backend="triton")

    def test_triton_refuses_float64_clearly(self, device):
        h, key, weight = (
            torch.randn(shape, dtype=torch.float64, device=device) for shape in ((1, 4, 2, 16), (1, 2, 2, 48), (48, 16))
        )
        with raises(TypeError, "float64", "backend='torch'"):
            zs_kernels.corrected_qkv(h, key, weight, scale=2, kv_kind="sample", backend="triton")


# --- compiled kernel on a GPU (-m cuda) ----------------------------------------------------------

# (key_frames, scale, tokens, channels, c_out, temporal, bias): aligned SVD-like sizes (the aligned
# family, autotuned), odd sizes (the generic family), scales that fill 2, 4 and 8 frame slots and a
# chunked one, both layouts.
CUDA_CASES = [
    (14, 2, 96, 320, 320, True, True),
    (7, 4, 64, 640, 640, False, True),
    (4, 8, 40, 64, 64, True, False),
    (2, 11, 33, 40, 24, False, True),
    (5, 3, 77, 72, 40, True, True),
    (3, 2, 130, 20, 12, False, False),
]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", CUDA_CASES, ids=lambda case: "t0{}-n{}-L{}-C{}-Co{}-{}-{}".format(*case))
def test_compiled_kernel_matches_oracle(case, kind, dtype, gpu):
    key_frames, scale, tokens, channels, c_out, temporal, bias = case
    h, h_key, weight, bias = make_inputs(
        2, key_frames, scale, tokens, channels, c_out, dtype, temporal=temporal, bias=bias, device=gpu
    )
    key_qkv = key_projection(h_key, weight, bias)
    results = check(h, key_qkv, weight, bias, scale, kind)
    # "auto" takes the kernel on CUDA and gives the same numbers.
    auto = zs_kernels.corrected_qkv(h, key_qkv, weight, bias, scale=scale, kv_kind=kind)
    for a, b in zip(auto, results):
        assert torch.equal(a, b)
