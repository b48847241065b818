"""ZeroSmoothConfig: defaults, validation with errors naming field, value and expectation."""

import dataclasses

import pytest

from zerosmooth import ZeroSmoothConfig


def test_defaults_follow_the_spec():
    config = ZeroSmoothConfig()
    assert (config.scale, config.stages, config.strength, config.kv_left_probability) == (2, 2, 0.8, 0.5)
    assert config.window is None and config.overlap is None
    assert config.strength_schedule == "timestep" and config.weighting == "pyramid"
    assert config.color_correction is True and config.method == "zerosmooth+ddnm"
    assert (config.ddnm_strength, config.ddnm_schedule, config.ddnm_window) == (1.0, "constant", (0.0, 1.0))
    assert config.pulls and config.pull_spread == "linear" and config.key_state_budget == 2 * 2**30
    assert (config.residual_strength, config.residual_spread, config.key_frames) == (1.0, "linear", "exact")
    paper = ZeroSmoothConfig.paper(scale=3)
    assert (paper.method, paper.residual_strength, paper.key_frames, paper.color_correction, paper.scale) == (
        "zerosmooth", 0.0, "free", False, 3)
    assert not paper.pulls
    assert config.temporal_windows_for(16) == (16, 8)
    assert config.temporal_windows_for(14) == (14, 7)
    assert config.frame_counts(14) == [14, 28]


@pytest.mark.parametrize("method, pulls", [("zerosmooth+ddnm", True), ("latent_ddnm", True),
                                           ("zerosmooth", False), ("direct", False)])
def test_pulls(method, pulls):
    assert ZeroSmoothConfig(method=method).pulls is pulls


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ZeroSmoothConfig().scale = 3


def test_frame_counts_and_windows():
    assert ZeroSmoothConfig(scale=3, stages=3).frame_counts(4) == [4, 12, 36]
    assert ZeroSmoothConfig(stages=1).frame_counts(4) == [4]
    assert ZeroSmoothConfig(window=6, overlap=2).temporal_windows_for(8) == (6, 4)
    assert ZeroSmoothConfig(window=5).temporal_windows_for(8) == (5, 3)


@pytest.mark.parametrize(
    "field, value, expectation",
    [
        ("scale", 1, "integer >= 2"),
        ("scale", 2.5, "integer >= 2"),
        ("scale", True, "integer >= 2"),
        ("stages", 0, "integer >= 1"),
        ("window", 0, "integer >= 1 or None"),
        ("overlap", -1, "integer >= 0 or None"),
        ("strength", 1.5, "[0, 1]"),
        ("strength", float("nan"), "[0, 1]"),
        ("kv_left_probability", -0.1, "[0, 1]"),
        ("strength_schedule", "linear", "'timestep', 'progress', 'constant', 'cosine'"),
        ("strength_window", (0.5, 0.5), "0 <= start < stop <= 1"),
        ("strength_window", [0.0, 1.0], "0 <= start < stop <= 1"),
        ("residual_strength", -0.5, "[0, 1]"),
        ("residual_schedule", "step", "'timestep', 'progress', 'constant', 'cosine'"),
        ("residual_window", (0.2, 1.5), "0 <= start < stop <= 1"),
        ("residual_sites", ("attention",), "'resnets', 'temporal'"),
        ("residual_sites", (), "'resnets', 'temporal'"),
        ("residual_spread", "cubic", "'keys', 'linear'"),
        ("ddnm_spread", "rows", "'keys', 'linear'"),
        ("key_frames", "pinned", "'exact', 'free'"),
        ("ddnm_strength", 2, "[0, 1]"),
        ("ddnm_window", (0.5, 0.1), "0 <= start < stop <= 1"),
        ("key_guidance", "yes", "True or False"),
        ("key_state_budget", -1, "integer >= 0"),
        ("kv_operator", "box", "'random_box', 'sample', 'box_left', 'box_right'"),
        ("method", "freenoise", "'zerosmooth', 'direct', 'latent_ddnm'"),
        ("weighting", "gauss", "'pyramid', 'flat'"),
        ("backend", "cuda", "'auto', 'torch', 'triton', 'reference'"),
        ("color_correction", 1, "True or False"),
        ("seed", -1, "integer >= 0"),
    ],
)
def test_bad_values_name_field_value_and_expectation(field, value, expectation):
    with pytest.raises(ValueError) as error:
        ZeroSmoothConfig(**{field: value})
    message = str(error.value)
    assert f"ZeroSmoothConfig.{field}" in message and repr(value) in message and expectation in message


def test_overlap_must_be_below_window():
    with pytest.raises(ValueError, match=r"overlap must be smaller than window=4, got 4"):
        ZeroSmoothConfig(window=4, overlap=4)
    with pytest.raises(ValueError, match=r"overlap must be smaller than the window 4, got 5"):
        ZeroSmoothConfig(overlap=5).temporal_windows_for(4)


def test_window_may_not_exceed_the_base_frames():
    with pytest.raises(ValueError, match=r"window must not exceed the base frame count num_frames=4.*got window=5"):
        ZeroSmoothConfig(window=5).temporal_windows_for(4)


def test_blend_schedules():
    timestep = ZeroSmoothConfig()
    assert timestep.blend(0, 10, 999, 999.0) == pytest.approx(0.8)
    assert timestep.blend(5, 10, 499.5, 999.0) == pytest.approx(0.4)
    # Without training timesteps (SVD's EDM Euler) the schedule falls back to progress.
    assert timestep.blend(5, 10, 0.3, None) == pytest.approx(0.4)
    progress = ZeroSmoothConfig(strength_schedule="progress", strength=1.0)
    assert [progress.blend(k, 4, 0, 999.0) for k in range(4)] == [1.0, 0.75, 0.5, 0.25]
    constant = ZeroSmoothConfig(strength_schedule="constant", strength=0.3)
    assert constant.blend(7, 10, 5, 999.0) == 0.3


def test_schedule_windows_and_curves():
    """Every correction shares one schedule vocabulary: zero outside its window of denoising
    progress, and the curve runs over the window (not over the whole run)."""
    early = ZeroSmoothConfig(residual_strength=1.0, residual_schedule="constant", residual_window=(0.0, 0.5))
    assert [early.residual(k, 8, 0, None) for k in range(8)] == [1.0] * 4 + [0.0] * 4
    decay = ZeroSmoothConfig(residual_strength=0.5, residual_schedule="progress", residual_window=(0.5, 1.0))
    assert [decay.residual(k, 4, 0, None) for k in range(4)] == [0.0, 0.0, 0.5, 0.25]
    cosine = ZeroSmoothConfig(strength=1.0, strength_schedule="cosine")
    assert [cosine.blend(k, 4, 0, None) for k in range(4)] == pytest.approx([1.0, 0.853553, 0.5, 0.146447], abs=1e-6)
    assert [ZeroSmoothConfig().residual(k, 4, 0, None) for k in range(4)] == [1.0] * 4  # on at every step by default
    ddnm = ZeroSmoothConfig(ddnm_strength=0.6, ddnm_window=(0.0, 0.25))
    assert [ddnm.ddnm(k, 4, 0, None) for k in range(4)] == [0.6, 0.0, 0.0, 0.0]


def test_spreads_are_the_kernels_key_spreads():
    from zerosmooth.config import SPREADS
    from zs_kernels.frames import SPREADS as KERNEL_SPREADS

    assert SPREADS == KERNEL_SPREADS
