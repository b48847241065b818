"""zs_kernels.back_project: the closed form (torch backend) and the dense oracle against
``(I − A⁺A)x + A⁺y`` with ``torch.linalg.pinv``, low precision, layouts, non-finite inputs and
bad arguments."""

import pytest
import torch

import zs_kernels
from zs_kernels import frames, reference, testing

from .helpers import closed_form_dependents, raises

SCALES = (2, 3, 4)
KEY_FRAME_COUNTS = (1, 2, 7, 16)


@pytest.mark.parametrize("kind", frames.OPERATOR_KINDS)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("num_key_frames", KEY_FRAME_COUNTS)
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_back_project_equals_dense_pinv_formula(kind, scale, num_key_frames, backend):
    """Closed forms (torch path) and the dense oracle both equal (I − A⁺A)x + A⁺y with A⁺ = pinv(A)."""
    x = torch.randn(2, scale * num_key_frames, 3, 5, dtype=torch.float64)
    y = torch.randn(2, num_key_frames, 3, 5, dtype=torch.float64)
    operator = zs_kernels.frame_operator(kind, num_key_frames, scale)
    inverse = torch.linalg.pinv(operator)
    projector = torch.eye(scale * num_key_frames, dtype=torch.float64) - inverse @ operator
    expected = torch.einsum("fg,bglc->bflc", projector, x) + torch.einsum("fi,bilc->bflc", inverse, y)
    result = zs_kernels.back_project(x, y, kind, scale, frame_dim=1, backend=backend)
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-12)
    # The corrected tensor maps onto the key frames exactly: A x̂ = y.
    torch.testing.assert_close(torch.einsum("if,bflc->bilc", operator, result), y, rtol=0, atol=1e-12)


def test_box_left_leaves_trailing_frames_untouched():
    x = torch.randn(1, 12, 2, dtype=torch.float64)
    y = torch.randn(1, 4, 2, dtype=torch.float64)
    result = zs_kernels.back_project(x, y, "box_left", 3, frame_dim=1)
    torch.testing.assert_close(result[:, 10:], x[:, 10:], rtol=0, atol=0)
    torch.testing.assert_close(result[:, 0], y[:, 0])


@pytest.mark.parametrize("frame_dim", [0, 2, -1])
def test_back_project_along_any_frame_dim(frame_dim):
    shape = [4, 5, 6]
    shape[frame_dim] = 6
    key_shape = list(shape)
    key_shape[frame_dim] = 3
    x = torch.randn(shape, dtype=torch.float64)
    y = torch.randn(key_shape, dtype=torch.float64)
    for kind in frames.OPERATOR_KINDS:
        expected = reference.back_project(x.movedim(frame_dim, 1), y.movedim(frame_dim, 1), kind, 2, frame_dim=1)
        result = zs_kernels.back_project(x, y, kind, 2, frame_dim=frame_dim)
        torch.testing.assert_close(result, expected.movedim(1, frame_dim), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", frames.OPERATOR_KINDS)
def test_low_precision_and_strided_input(dtype, kind, nan_filled):
    """The closed form in fp32/fp16/bf16 on a permuted view (frames not outermost), within the
    error rule of the dense oracle at that dtype; the result is contiguous."""
    x = torch.randn(3, 5, 12, 7, dtype=dtype).transpose(0, 1)  # [5, 3, 12, 7] view, frames on dim 2
    y = torch.randn(5, 3, 4, 7, dtype=dtype)
    assert not x.is_contiguous()
    result = zs_kernels.back_project(x, y, kind, 3, frame_dim=2)
    assert result.is_contiguous() and result.dtype == dtype
    oracle = reference.back_project(x.double(), y.double(), kind, 3, frame_dim=2)
    testing.assert_within_error_rule(result, reference.back_project(x, y, kind, 3, frame_dim=2), oracle)


def test_auto_is_the_torch_path():
    x, y = torch.randn(2, 8, 3), torch.randn(2, 4, 3)
    expected = zs_kernels.back_project(x, y, "box_right", 2, backend="torch")
    assert torch.equal(zs_kernels.back_project(x, y, "box_right", 2), expected)


@pytest.mark.cuda
def test_auto_on_cuda_is_the_torch_path(gpu):
    """back_project has no kernel, so "auto" must take the closed form on CUDA tensors too."""
    x, y = torch.randn(2, 8, 3, device=gpu), torch.randn(2, 4, 3, device=gpu)
    result = zs_kernels.back_project(x, y, "box_left", 2)
    assert torch.equal(result, zs_kernels.back_project(x, y, "box_left", 2, backend="torch"))
    expected = reference.back_project(x.double().cpu(), y.double().cpu(), "box_left", 2)
    torch.testing.assert_close(result.double().cpu(), expected)


# --- non-finite inputs -------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("kind", frames.OPERATOR_KINDS)
@pytest.mark.parametrize("source", ["x", "y"])
def test_nan_reaches_only_its_dependents(backend, kind, source):
    """A NaN at one (position, channel) of one frame makes exactly the documented outputs NaN —
    on the torch backend the closed form's dependents, on the dense reference every frame of that
    position and channel — and leaves every other output as it was."""
    scale, num_key_frames = 3, 4
    x = torch.randn(2, scale * num_key_frames, 3, 5, dtype=torch.float64)
    y = torch.randn(2, num_key_frames, 3, 5, dtype=torch.float64)
    clean = zs_kernels.back_project(x, y, kind, scale, backend=backend)
    for frame in range((x if source == "x" else y).shape[1]):
        poisoned = {"x": x.clone(), "y": y.clone()}
        poisoned[source][1, frame, 2, 4] = float("nan")
        result = zs_kernels.back_project(poisoned["x"], poisoned["y"], kind, scale, backend=backend)
        expected = torch.zeros_like(result, dtype=torch.bool)
        if backend == "reference":
            expected[1, :, 2, 4] = True
        else:
            expected[1, sorted(closed_form_dependents(kind, num_key_frames, scale, source, frame)), 2, 4] = True
        assert torch.equal(result.isnan(), expected), (frame, result.isnan().nonzero().tolist())
        assert torch.equal(result[~expected], clean[~expected])


# --- bad arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x_shape, y_shape, kind, scale, options, error, words",
    [
        ((2, 7, 3), (2, 3, 3), "sample", 2, {}, ValueError, ["x", "7 frames", "scale=2"]),
        ((2, 8, 3), (2, 3, 3), "sample", 2, {}, ValueError, ["y", "(2, 4, 3)", "(2, 3, 3)"]),
        ((2, 8, 3), (2, 4, 3), "sample", 2, dict(frame_dim=5), ValueError, ["frame_dim", "5"]),
        ((2, 8, 3), (2, 4, 3), "box", 2, {}, ValueError, ["kind", "'box'", "box_left"]),
        ((2, 8, 3), (2, 4, 3), "sample", 2.0, {}, TypeError, ["scale", "integer", "2.0"]),
        ((2, 8, 3), (2, 4, 3), "sample", 2, dict(backend="triton"), ValueError, ["back_project", "Triton", "'torch'"]),
        ((2, 8, 3), (2, 4, 3), "sample", 2, dict(backend="cuda"), ValueError, ["backend", "'cuda'", "auto"]),
    ],
)
def test_bad_arguments_are_named(x_shape, y_shape, kind, scale, options, error, words):
    with raises(error, *words):
        zs_kernels.back_project(torch.randn(x_shape), torch.randn(y_shape), kind, scale, **options)


def test_mismatched_dtypes_are_named():
    with raises(TypeError, "y", "torch.float16", "torch.float32"):
        zs_kernels.back_project(torch.randn(2, 8, 3), torch.randn(2, 4, 3).half(), "sample", 2)
