"""SPEC §3 and §5: frame operators, pseudo-inverses, box groups, windows and fusion weights
(:mod:`zs_kernels.frames`, the math every backend shares)."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import zs_kernels
from zs_kernels import frames

SCALES = (2, 3, 4)
KEY_FRAME_COUNTS = (1, 2, 7, 16)


@pytest.mark.parametrize("kind", frames.OPERATOR_KINDS)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("num_key_frames", KEY_FRAME_COUNTS)
def test_pseudo_inverse_is_moore_penrose_and_right_inverse(kind, scale, num_key_frames):
    operator = zs_kernels.frame_operator(kind, num_key_frames, scale)
    assert operator.shape == (num_key_frames, scale * num_key_frames)
    assert operator.dtype == torch.float64
    inverse = zs_kernels.frame_operator_pinv(kind, num_key_frames, scale)
    torch.testing.assert_close(inverse, torch.linalg.pinv(operator), rtol=0, atol=1e-12)
    torch.testing.assert_close(operator @ inverse, torch.eye(num_key_frames, dtype=torch.float64), rtol=0, atol=1e-12)


def test_operators_match_paper_equations_for_scale_two():
    """Eq. 7–8: A_1 row 0 is e_0, row i ≥ 1 is ½(e_{2i−1} + e_{2i}); A_2 row i is ½(e_{2i} + e_{2i+1})."""
    t0 = 5
    left = zs_kernels.frame_operator("box_left", t0, 2)
    right = zs_kernels.frame_operator("box_right", t0, 2)
    sample = zs_kernels.frame_operator("sample", t0, 2)
    eye = torch.eye(2 * t0, dtype=torch.float64)
    torch.testing.assert_close(left[0], eye[0])
    for i in range(t0):
        torch.testing.assert_close(sample[i], eye[2 * i])
        torch.testing.assert_close(right[i], 0.5 * (eye[2 * i] + eye[2 * i + 1]))
        if i:
            torch.testing.assert_close(left[i], 0.5 * (eye[2 * i - 1] + eye[2 * i]))


@pytest.mark.parametrize("spread", frames.SPREADS)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("num_key_frames", KEY_FRAME_COUNTS)
def test_key_spread_is_a_right_inverse_of_sample(spread, scale, num_key_frames):
    spreading = frames.key_spread(spread, num_key_frames, scale)
    assert spreading.shape == (scale * num_key_frames, num_key_frames) and spreading.dtype == torch.float64
    operator = zs_kernels.frame_operator("sample", num_key_frames, scale)
    torch.testing.assert_close(operator @ spreading, torch.eye(num_key_frames, dtype=torch.float64), rtol=0, atol=0)
    if spread == "keys":
        assert torch.equal(spreading, zs_kernels.frame_operator_pinv("sample", num_key_frames, scale))
    else:  # every frame takes a convex combination of key-frame corrections
        torch.testing.assert_close(spreading.sum(1), torch.ones(scale * num_key_frames, dtype=torch.float64))


def test_linear_key_spread_interpolates_and_holds_the_last_key_frame():
    expected = torch.tensor([[1, 0, 0], [2 / 3, 1 / 3, 0], [1 / 3, 2 / 3, 0],
                             [0, 1, 0], [0, 2 / 3, 1 / 3], [0, 1 / 3, 2 / 3],
                             [0, 0, 1], [0, 0, 1], [0, 0, 1]], dtype=torch.float64)
    torch.testing.assert_close(frames.key_spread("linear", 3, 3), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("kind", frames.OPERATOR_KINDS)
@pytest.mark.parametrize("scale", (2, 3, 4, 9))
@pytest.mark.parametrize("num_key_frames", KEY_FRAME_COUNTS)
def test_box_groups_tile_the_frames_and_hold_the_boxes(kind, scale, num_key_frames):
    """The groups the fast paths tile by: every frame in exactly one group, key frame n·g in
    group g, each box inside its group, the whole groups full and consecutive, and only
    box_left's extra group outside every box."""
    groups = frames.box_groups(kind, num_key_frames, scale)
    spans = [groups.span(g) for g in range(groups.count)]
    assert [frame for start, stop in spans for frame in range(start, stop)] == list(range(scale * num_key_frames))
    boxes = frames.box_ranges(kind, num_key_frames, scale)
    assert groups.boxes == num_key_frames == len(boxes)
    for g, ((start, stop), (box_start, box_stop)) in enumerate(zip(spans, boxes)):
        assert start <= scale * g < stop
        assert start <= box_start < box_stop <= stop
        if kind != "sample":
            assert (box_start, box_stop) == (start, stop)
    whole = groups.whole
    assert whole.stop == groups.boxes and all(groups.span(g)[1] - groups.span(g)[0] < scale for g in range(whole.start))
    run = [frame for g in whole for frame in range(*groups.span(g))]
    first = groups.span(whole.start)[0] if len(whole) else 0
    assert run == list(range(first, first + scale * len(whole)))
    in_boxes = {frame for start, stop in boxes for frame in range(start, stop)}
    extra = [frame for start, stop in spans[groups.boxes :] for frame in range(start, stop)]
    if kind == "box_left":
        assert extra == list(range(scale * num_key_frames - scale + 1, scale * num_key_frames))
        assert not in_boxes & set(extra)
    else:
        assert extra == []


@pytest.mark.parametrize(
    "num_frames, window, stride, expected",
    [
        (64, 16, 8, [0, 8, 16, 24, 32, 40, 48]),
        (32, 16, 8, [0, 8, 16]),
        (35, 16, 8, [0, 8, 16, 19]),  # right-aligned tail window
        (28, 14, 7, [0, 7, 14]),
        (25, 16, 4, [0, 4, 8, 9]),
        (16, 16, 8, [0]),
        (10, 16, 3, [0]),  # shorter than a window: one window [0, 10)
        (5, 2, 1, [0, 1, 2, 3]),
        (7, 3, 3, [0, 3, 4]),
        (1, 1, 1, [0]),
    ],
)
def test_window_starts(num_frames, window, stride, expected):
    assert zs_kernels.window_starts(num_frames, window, stride) == expected


@given(num_frames=st.integers(1, 300), window=st.integers(1, 40), data=st.data())
def test_window_starts_cover_every_frame_within_bounds(num_frames, window, data):
    stride = data.draw(st.integers(1, window))
    starts = zs_kernels.window_starts(num_frames, window, stride)
    length = min(window, num_frames)
    assert starts == sorted(set(starts)) and starts[0] == 0
    assert all(start + length <= num_frames for start in starts)
    assert starts[-1] + length == num_frames
    covered = set()
    for start in starts:
        covered.update(range(start, start + length))
    assert covered == set(range(num_frames))
    regular = [start for start in starts if start % stride == 0]
    assert regular == list(range(0, stride * len(regular), stride))
    layout = frames.windows(num_frames, window, stride)
    assert layout.length == length and layout.regular + layout.tail == len(starts)
    assert layout.starts[: layout.regular] == list(range(0, stride * layout.regular, stride))
    assert not layout.tail or starts[-1] == num_frames - length


def test_window_weights():
    assert zs_kernels.window_weights(5).tolist() == [1, 2, 3, 2, 1]
    assert zs_kernels.window_weights(4, "pyramid").tolist() == [1, 2, 2, 1]
    assert zs_kernels.window_weights(3, "flat").tolist() == [1, 1, 1]
    assert zs_kernels.window_weights(1).tolist() == [1]


@given(num_frames=st.integers(1, 100), window=st.integers(1, 24), data=st.data())
def test_fusion_weights_sum_to_one_per_frame(num_frames, window, data):
    stride = data.draw(st.integers(1, window))
    scheme = data.draw(st.sampled_from(frames.WEIGHT_SCHEMES))
    starts, weights = frames.fusion_weights(num_frames, window, stride, scheme)
    total = torch.zeros(num_frames, dtype=torch.float64)
    for start, row in zip(starts, weights):
        total[start : start + weights.shape[1]] += row
    torch.testing.assert_close(total, torch.ones(num_frames, dtype=torch.float64))


def test_relative_positions_clip_and_do_not_depend_on_window_start():
    index = frames.relative_positions(5, 5)  # R = 2
    assert index[0].tolist() == [2, 3, 4, 4, 4]
    assert index[4].tolist() == [0, 0, 0, 1, 2]
    assert torch.equal(index.diagonal(), torch.full((5,), 2))


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: zs_kernels.frame_operator("box", 4, 2), ValueError, ["kind", "'box'", "sample"]),
        (lambda: zs_kernels.frame_operator("sample", 4, 1), ValueError, ["scale", ">= 2", "1"]),
        (lambda: zs_kernels.frame_operator("sample", 4, 2.5), TypeError, ["scale", "integer", "2.5"]),
        (lambda: zs_kernels.frame_operator("sample", 0, 2), ValueError, ["num_key_frames", ">= 1"]),
        (lambda: zs_kernels.window_starts(10, 0, 1), ValueError, ["window", ">= 1", "0"]),
        (lambda: zs_kernels.window_starts(10, 4, 0), ValueError, ["stride", ">= 1"]),
        (lambda: zs_kernels.window_starts(10, 4, 5), ValueError, ["stride", "<= 4", "5"]),
        (lambda: zs_kernels.window_starts(0, 4, 2), ValueError, ["num_frames", ">= 1"]),
        (lambda: zs_kernels.window_weights(4, "triangle"), ValueError, ["weighting", "'triangle'", "pyramid"]),
        (lambda: frames.key_spread("cubic", 4, 2), ValueError, ["spread", "'cubic'", "'keys', 'linear'"]),
        (lambda: frames.key_spread("linear", 4, 1), ValueError, ["scale", ">= 2", "1"]),
    ],
)
def test_bad_arguments_are_named(call, error, words):
    with pytest.raises(error) as raised:
        call()
    for word in words:
        assert word in str(raised.value)
