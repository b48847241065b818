"""zerosmooth.diagnose: per-module key-frame drift and the mixers' temporal share."""

import pytest
import torch
from zs_helpers import generator, svd_kwargs, text_kwargs

from zerosmooth import ZeroSmooth, ZeroSmoothConfig, diagnose, hooks
from zerosmooth.lab.tiny import tiny_svd_pipeline, tiny_text_to_video_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def svd():
    pipe = tiny_svd_pipeline(0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_drift_covers_every_module_kind_and_leaves_the_run_unchanged(svd):
    kwargs = svd_kwargs(num_inference_steps=3, output_type="latent")
    drifts, output = diagnose.key_frame_drift(svd, ZeroSmoothConfig(), steps=(0, 2), generator=generator(0), **kwargs)
    kinds = {d.kind for d in drifts}
    assert kinds == {"spatial attention", "temporal attention", "resnets", "temporal", "output"}
    assert {d.step for d in drifts} == {0, 2}
    assert all(d.drift >= 0 for d in drifts) and any(d.drift > 1e-3 for d in drifts)
    assert [d.order for d in drifts] == sorted(d.order for d in drifts)
    # Probes only read: the same call without them gives the same video.
    plain = ZeroSmooth(svd)(generator=generator(0), progress_bar=False, **kwargs)
    assert torch.equal(plain.stages[1], output.stages[1])
    assert not any(hooks.installed(m) or hooks.installed(m, diagnose.PROBE_HOOK_NAME) for m in svd.unet.modules())


def test_drift_is_zero_where_the_correction_pins(svd):
    """Residual correction at strength 1 pins every ResNet output's key rows: drift exactly 0 there,
    while the unpinned direct baseline drifts."""
    kwargs = dict(steps=(0,), generator=generator(0), **svd_kwargs(num_inference_steps=2, output_type="latent"))
    pinned = ZeroSmoothConfig(residual_strength=1.0, residual_schedule="constant", residual_sites=("resnets",))
    drifts, _ = diagnose.key_frame_drift(svd, pinned, **kwargs)
    assert all(d.drift == 0.0 for d in drifts if d.kind == "resnets")
    direct, _ = diagnose.key_frame_drift(svd, ZeroSmoothConfig(method="direct"), **kwargs)
    assert max(d.drift for d in direct if d.kind == "resnets") > 1e-3


def test_drift_on_a_text_to_video_model():
    pipe = tiny_text_to_video_pipeline(0)
    pipe.set_progress_bar_config(disable=True)
    drifts, _ = diagnose.key_frame_drift(pipe, steps=(1,), generator=generator(0),
                                         **text_kwargs(num_inference_steps=2, output_type="latent"))
    assert {"temporal attention", "temporal", "output"} <= {d.kind for d in drifts}


def test_bad_steps_and_stages(svd):
    with pytest.raises(ValueError, match=r"steps must be denoising steps in \[0, 2\), got \[2\]"):
        diagnose.key_frame_drift(svd, steps=(2,), **svd_kwargs(num_inference_steps=2))
    with pytest.raises(ValueError, match="stages must be >= 2"):
        diagnose.key_frame_drift(svd, ZeroSmoothConfig(stages=1), **svd_kwargs())


def test_mixer_report(svd):
    rows = diagnose.mixer_report(svd, generator=generator(0), **svd_kwargs(num_inference_steps=1))
    assert rows and all(0 < r["spatial_weight"] < 1 and 0 <= r["temporal_share"] for r in rows)
    assert any(r["temporal_share"] > 0.01 for r in rows)  # random temporal layers do change the output
    # Untrained mixers sit at diffusers' initial logit 0.5.
    assert [r["spatial_weight"] for r in rows] == pytest.approx([torch.sigmoid(torch.tensor(0.5)).item()] * len(rows))
    assert diagnose.mixer_report(tiny_text_to_video_pipeline(0), prompt="a", height=16, width=16, num_frames=2,
                                 num_inference_steps=1, output_type="latent") == []


def test_diagnose_command_writes_the_report(tmp_path):
    """``zerosmooth diagnose`` on a saved tiny SVD pipeline: drift table, CSV, plot and mixers."""
    from zerosmooth import cli

    model = tmp_path / "svd"
    tiny_svd_pipeline(0).save_pretrained(model)
    out = tmp_path / "report"
    assert cli.main(["diagnose", "--model", str(model), "--frames", "4", "--steps", "3", "--at", "first,2",
                     "--height", "16", "--width", "16", "--out", str(out)]) == 0
    table = (out / "drift.md").read_text()
    assert "| module | kind | drift at step 0 | drift at step 2 |" in table and "temporal attention" in table
    assert (out / "drift.png").is_file() and "spatial weight" in (out / "mixers.md").read_text()
    with pytest.raises(SystemExit):
        cli.main(["diagnose", "--model", str(model), "--frames", "4", "--steps", "3", "--at", "5",
                  "--height", "16", "--width", "16", "--out", str(out)])
