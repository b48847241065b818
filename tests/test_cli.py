"""``zerosmooth generate`` end to end on tiny pipelines saved to disk, plus its error handling and
the video writers it uses."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from PIL import Image

from zerosmooth import cli, video
from zerosmooth.lab import tiny

# Small enough for a few seconds per run: 32×32 px, 4 base frames, 2 steps.
TINY_ARGS = ["--height", "32", "--width", "32", "--frames", "4", "--steps", "2", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def svd_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_svd")
    tiny.tiny_svd_pipeline().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def text_to_video_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_t2v")
    tiny.tiny_text_to_video_pipeline().save_pretrained(path)
    return path


def _mp4_frames(path: Path) -> list:
    reader = imageio.get_reader(str(path), format="FFMPEG")
    try:
        return [frame for frame in reader]
    finally:
        reader.close()


def _check_outputs(stem: Path, frames: int, size: int, rows: int):
    """The mp4 plays back with ``frames`` frames, the gif has as many, the sheet has ``rows`` rows."""
    decoded = _mp4_frames(stem.with_name(stem.name + ".mp4"))
    assert len(decoded) == frames
    assert decoded[0].shape == (size, size, 3)
    with Image.open(stem.with_name(stem.name + ".gif")) as gif:
        assert gif.n_frames == frames
        assert gif.size == (size, size)
    with Image.open(stem.with_name(stem.name + "_sheet.png")) as sheet:
        assert sheet.format == "PNG"
        # Each row holds a 96-px tile plus borders; the widest row holds frames tiles.
        assert sheet.height >= rows * 96 and sheet.width >= frames * 96
    # The comparison video: one 6×-enlarged 192-px panel per stage, 4-px gaps, a 16-px header.
    compare = _mp4_frames(stem.with_name(stem.name + "_compare.mp4"))
    assert len(compare) == frames
    assert compare[0].shape == (16 + 192, rows * 196 - 4, 3)
    with Image.open(stem.with_name(stem.name + "_compare.gif")) as gif:
        assert gif.n_frames == frames


def test_generate_image_to_video_in_process(svd_dir, tmp_path, capsys):
    image = tmp_path / "input.png"
    cli.procedural_image((48, 40), seed=3).save(image)
    stem = tmp_path / "out" / "svd"
    status = cli.main(["generate", "--model", str(svd_dir), "--image", str(image), "--out", str(stem), *TINY_ARGS])
    assert status == 0
    _check_outputs(stem, frames=8, size=32, rows=2)
    report = capsys.readouterr().out
    assert "StableVideoDiffusionPipeline" in report
    assert "frames per stage 4 -> 8" in report
    assert "14 fps" in report  # SVD's default 7 fps, doubled
    assert str(stem) + ".mp4" in report


def test_generate_text_to_video_three_stages_into_directory(text_to_video_dir, tmp_path, capsys):
    args = ["generate", "--model", str(text_to_video_dir), "--prompt", "a red ball", "--out", str(tmp_path)]
    args += ["--stages", "3", "--method", "direct", "--fps", "4", *TINY_ARGS]
    assert cli.main(args) == 0
    _check_outputs(tmp_path / "zerosmooth", frames=16, size=32, rows=3)
    assert "frames per stage 4 -> 8 -> 16" in capsys.readouterr().out


def test_generate_animatediff_latent_ddnm(tmp_path, capsys):
    model = tmp_path / "tiny_animatediff"
    tiny.tiny_animatediff_pipeline().save_pretrained(model)
    stem = tmp_path / "ad"
    args = ["generate", "--model", str(model), "--prompt", "a cat", "--method", "latent_ddnm", "--out", str(stem)]
    assert cli.main([*args, *TINY_ARGS]) == 0
    _check_outputs(stem, frames=8, size=32, rows=2)
    assert "AnimateDiffPipeline" in capsys.readouterr().out


def test_default_model_is_the_embedded_one(tmp_path, capsys):
    stem = tmp_path / "demo"
    torch.set_num_threads(2)
    assert cli.main(["generate", "--out", str(stem), "--frames", "2", "--steps", "1", "--no-progress"]) == 0
    assert torch.get_num_threads() == 2  # the built-in model runs single-threaded, then the setting is restored
    report = capsys.readouterr().out
    assert "embedded tiny SVD-style model trained on ZeroSmooth's procedural world" in report
    assert "first frame of the procedural world" in report
    assert "UNTRAINED" not in report
    assert len(_mp4_frames(stem.with_name("demo.mp4"))) == 4


def test_without_shipped_weights_the_default_is_labelled_untrained(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "embedded_model_shipped", lambda: False)
    stem = tmp_path / "demo"
    assert cli.main(["generate", "--out", str(stem), "--frames", "2", "--steps", "1", "--no-progress"]) == 0
    report = capsys.readouterr().out
    assert "UNTRAINED" in report
    assert "procedurally drawn" in report
    assert len(_mp4_frames(stem.with_name("demo.mp4"))) == 4


@pytest.mark.parametrize("command, module", [("train-tiny", "zerosmooth.lab.train"), ("evaluate", "zerosmooth.lab.evaluate")])
def test_delegated_commands_hand_over_their_arguments(command, module, monkeypatch):
    received = []
    monkeypatch.setattr(importlib.import_module(module), "main", lambda argv: received.append(argv) or 0)
    assert cli.main([command, "--out", "somewhere", "--help"]) == 0
    assert received == [["--out", "somewhere", "--help"]]


def test_python_dash_m_subprocess(svd_dir, tmp_path):
    stem = tmp_path / "sub"
    command = [sys.executable, "-m", "zerosmooth", "generate", "--model", str(svd_dir), "--out", str(stem), *TINY_ARGS]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Wrote" in result.stdout
    assert len(_mp4_frames(stem.with_name("sub.mp4"))) == 8


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scale", "2.5"], "--scale: invalid int value: '2.5'"),
        (["--method", "magic"], "--method: invalid choice: 'magic'"),
        (["--image", "a.png", "--prompt", "a cat"], "not allowed with argument"),
        (["--dtype", "float8"], "--dtype: invalid choice"),
    ],
    ids=["scale-float", "method", "image-and-prompt", "dtype"],
)
def test_argparse_errors(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_subcommand_is_an_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([])
    assert exit_info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scale", "1"], "--scale must be an integer >= 2, got 1"),
        (["--stages", "0"], "--stages must be an integer >= 1, got 0"),
        (["--frames", "0"], "--frames must be a positive integer, got 0"),
        (["--threads", "-1"], "--threads must be a positive integer, got -1"),
        (["--image", "no/such/picture.png"], "--image: no such file 'no/such/picture.png'"),
        (["--model", "./no/such/model"], "--model: no such directory './no/such/model'"),
    ],
    ids=["scale-1", "stages-0", "frames-0", "threads", "image-missing", "model-missing"],
)
def test_semantic_errors_before_loading(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompt", "a cat"], "StableVideoDiffusionPipeline is image-to-video; pass --image instead"),
        (["--height", "33"], "--height must be a multiple of 2"),
    ],
    ids=["prompt-for-svd", "height-odd"],
)
def test_semantic_errors_after_loading(svd_dir, tmp_path, args, message, capsys):
    argv = ["generate", "--model", str(svd_dir), "--out", str(tmp_path / "x"), "--no-progress", *args]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_unsupported_pipeline_is_named(tmp_path, capsys):
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

    unet = UNet2DModel(
        block_out_channels=(32, 64),
        sample_size=32,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    DDIMPipeline(unet=unet, scheduler=DDIMScheduler()).save_pretrained(tmp_path / "ddim")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", "--model", str(tmp_path / "ddim"), "--prompt", "a cat"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--model: ZeroSmooth supports the diffusers pipelines StableVideoDiffusionPipeline" in err
    assert "got DDIMPipeline" in err


def test_unreadable_image(svd_dir, tmp_path, capsys):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a picture")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", "--model", str(svd_dir), "--image", str(not_an_image)])
    assert exit_info.value.code == 2
    assert "is not a readable image" in capsys.readouterr().err


def test_text_model_needs_prompt(text_to_video_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", "--model", str(text_to_video_dir), "--frames", "4"])
    assert exit_info.value.code == 2
    assert "--prompt is required for the text-to-video pipeline TextToVideoSDPipeline" in capsys.readouterr().err


def test_video_writers_accept_pil_and_odd_sizes(tmp_path):
    frames = torch.rand(5, 3, 21, 30)
    pil = [Image.fromarray(frame) for frame in video.to_uint8(frames)]
    mp4 = video.write_mp4(pil, tmp_path / "odd.mp4", fps=10)
    decoded = _mp4_frames(mp4)
    assert len(decoded) == 5 and decoded[0].shape == (22, 30, 3)  # padded to even height
    gif = video.write_gif(frames, tmp_path / "odd.gif", fps=10)
    with Image.open(gif) as image:
        assert image.n_frames == 5
    with pytest.raises(ValueError, match=r"stages\[1\] must have 10 frames"):
        video.contact_sheet([frames, frames], scale=2)
    with pytest.raises(ValueError, match="float array must have shape"):
        video.to_uint8(torch.rand(3, 5, 8, 8))


def test_side_by_side_holds_each_stage_over_the_same_time_span():
    stages = [torch.rand(3 * 2**s, 3, 10, 14) for s in range(3)]  # 3 -> 6 -> 12 frames, scale 2
    canvas = video.side_by_side(stages, scale=2, min_height=25)  # 10-px frames enlarged 3× to 30 px
    assert canvas.shape == (12, 16 + 30, 3 * 42 + 2 * 4, 3)
    for s, stage in enumerate(video.to_uint8(v) for v in stages):
        left = s * (42 + 4)
        panel = canvas[:, 16:, left : left + 42]
        hold = 2 ** (2 - s)
        for t in range(12):
            np.testing.assert_array_equal(panel[t, ::3, ::3], stage[t // hold])
            np.testing.assert_array_equal(panel[t, 2::3, 2::3], stage[t // hold])
    with pytest.raises(ValueError, match=r"stages\[1\] must have 6 frames"):
        video.side_by_side([stages[0], stages[0]], scale=2)
    with pytest.raises(ValueError, match=r"stages\[1\] has frames of shape \[10, 10, 3\]"):
        video.side_by_side([stages[0], torch.rand(6, 3, 10, 10)], scale=2)
