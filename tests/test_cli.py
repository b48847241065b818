"""``zerosmooth generate`` end to end on tiny pipelines saved to disk: outputs and their names,
playback rates, atomic writes, the rescue of generated frames when the target fails, Ctrl-C, quiet
output, a fast start; plus the video writers it uses. The bad-input table is in
``test_cli_errors.py``, batch mode in ``test_batch.py``."""

import importlib
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_support import (
    TINY_ARGS, imported_heavy_modules, mp4_fps, mp4_frames, picture, run_command, saved_pipeline, tree,
)
from PIL import Image

from zerosmooth import batch, cli, video

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def svd_dir(tmp_path_factory):
    return saved_pipeline("svd", tmp_path_factory)


@pytest.fixture(scope="module")
def text_to_video_dir(tmp_path_factory):
    return saved_pipeline("t2v", tmp_path_factory)


@pytest.fixture
def input_image(tmp_path):
    return picture(tmp_path / "input.png", 3, (40, 48))


def _gif_milliseconds(path: Path) -> tuple[int, int]:
    """Frames and total duration of a GIF as a player sees them."""
    with Image.open(path) as gif:
        total = 0
        for index in range(gif.n_frames):
            gif.seek(index)
            total += gif.info["duration"]
        return gif.n_frames, total


def _check_outputs(stem: Path, frames: int, size: int, rows: int, fps: float):
    """The mp4 plays ``frames`` frames at ``fps``; the gif lasts as long; the sheet has ``rows`` rows."""
    decoded = mp4_frames(stem.with_name(stem.name + ".mp4"))
    assert len(decoded) == frames
    assert decoded[0].shape == (size, size, 3)
    assert mp4_fps(stem.with_name(stem.name + ".mp4")) == pytest.approx(fps)
    gif_frames, milliseconds = _gif_milliseconds(stem.with_name(stem.name + ".gif"))
    assert abs(milliseconds - 1000 * frames / fps) <= 10  # GIF delays count 10 ms ticks
    assert gif_frames == (frames if fps <= 50 else gif_frames)
    with Image.open(stem.with_name(stem.name + "_sheet.png")) as sheet:
        assert sheet.format == "PNG"
        # Each row holds a 96-px tile plus borders; the widest row holds frames tiles.
        assert sheet.height >= rows * 96 and sheet.width >= frames * 96
    # The comparison video: one 6x-enlarged 192-px panel per stage, 4-px gaps, a 16-px header.
    compare = mp4_frames(stem.with_name(stem.name + "_compare.mp4"))
    assert len(compare) == frames
    assert compare[0].shape == (16 + 192, rows * 196 - 4, 3)
    assert _gif_milliseconds(stem.with_name(stem.name + "_compare.gif"))[1] == milliseconds
    assert not [path for path in stem.parent.iterdir() if path.name.startswith(".zs-")]  # no temporary left


def test_generate_image_to_video_in_process(svd_dir, input_image, tmp_path, capsys):
    stem = tmp_path / "out" / "svd"
    args = ["generate", "--model", str(svd_dir), "--image", str(input_image), "--out", str(stem)]
    assert cli.main([*args, *TINY_ARGS]) == 0
    _check_outputs(stem, frames=8, size=32, rows=2, fps=14)  # SVD's default 7 fps, doubled
    captured = capsys.readouterr()
    report = captured.out
    assert "StableVideoDiffusionPipeline" in report
    assert f"Input: image {input_image}" in report
    assert "frames per stage 4 -> 8" in report
    assert "plays at 14 fps" in report
    assert f"Wrote {stem}.mp4" in report
    assert batch.ModelSpec.from_directory(svd_dir).trained_frames == 4
    assert "warning" not in captured.err  # 4 frames is what the tiny SVD's config says it was trained on


def test_generate_text_to_video_three_stages_into_directory(text_to_video_dir, tmp_path, capsys):
    args = ["generate", "--model", str(text_to_video_dir), "--prompt", "a red ball", "--out", str(tmp_path)]
    args += ["--stages", "3", "--method", "direct", "--fps", "4", *TINY_ARGS]
    assert cli.main(args) == 0
    _check_outputs(tmp_path / "zerosmooth", frames=16, size=32, rows=3, fps=16)
    report = capsys.readouterr().out
    assert "frames per stage 4 -> 8 -> 16" in report
    assert "Input: prompt 'a red ball'" in report


def test_generate_animatediff_latent_ddnm(tmp_path_factory, tmp_path, capsys):
    model = saved_pipeline("animatediff", tmp_path_factory)
    stem = tmp_path / "ad"
    args = ["generate", "--model", str(model), "--prompt", "a cat", "--method", "latent_ddnm", "--out", str(stem)]
    assert cli.main([*args, *TINY_ARGS]) == 0
    _check_outputs(stem, frames=8, size=32, rows=2, fps=16)  # text-to-video: 8 fps, doubled
    assert "AnimateDiffPipeline" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["clip.mp4", "clip.gif", "clip.MP4", "clip"])
def test_out_takes_a_stem_or_a_video_name(svd_dir, input_image, tmp_path, name):
    args = ["generate", "--model", str(svd_dir), "--image", str(input_image), "--stages", "1", "--save-frames"]
    assert cli.main([*args, "--out", str(tmp_path / name), *TINY_ARGS]) == 0
    assert tree(tmp_path) - {"input.png"} == {"clip.mp4", "clip.gif", "clip_sheet.png", "clip_frames.npz"}
    frames = np.load(tmp_path / "clip_frames.npz")
    assert list(frames) == ["stage1"] and frames["stage1"].shape == (4, 3, 32, 32)


def test_default_model_is_the_embedded_one_at_its_own_size(tmp_path, capsys):
    from zerosmooth.demo import embedded_model_path

    spec = batch.ModelSpec.from_directory(embedded_model_path())
    stem = tmp_path / "demo"
    torch.set_num_threads(2)
    assert cli.main(["generate", "--out", str(stem), "--frames", "2", "--steps", "1", "--threads", "1"]) == 0
    assert torch.get_num_threads() == 2  # --threads applies to the run, then the setting is restored
    captured = capsys.readouterr()
    report = captured.out
    assert f"warning: --frames 2 is below the {spec.trained_frames} frames the model was trained on" in captured.err
    assert "No --model given: using the embedded model" in report
    height, width = spec.default_size
    assert f"Input: a {width}x{height} first frame of the procedural world, seed 0" in report
    decoded = mp4_frames(stem.with_name("demo.mp4"))
    assert len(decoded) == 4 and decoded[0].shape[:2] == (height, width)


def test_missing_embedded_weights_name_the_training_command(tmp_path, monkeypatch, capsys):
    import zerosmooth.demo

    monkeypatch.setattr(zerosmooth.demo, "embedded_model_path", lambda: tmp_path / "absent")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "the embedded model's weights are not in this installation" in err
    assert f"zerosmooth train-tiny --out RUN_DIR --export {tmp_path / 'absent'}" in err
    assert tree(tmp_path) == set()


def test_spec_from_disk_agrees_with_the_loaded_pipeline_and_the_adapters(svd_dir, text_to_video_dir,
                                                                           tmp_path_factory):
    from diffusers import DiffusionPipeline

    from zerosmooth.adapters import adapter_for, supported_pipelines

    assert sorted(batch.PIPELINES) == sorted(supported_pipelines())
    for folder in (svd_dir, text_to_video_dir, saved_pipeline("animatediff", tmp_path_factory)):
        pipe = DiffusionPipeline.from_pretrained(folder)
        on_disk, loaded = batch.ModelSpec.from_directory(folder), batch.ModelSpec.from_pipeline(pipe)
        assert dataclass_values(on_disk, "name") == dataclass_values(loaded, "name")
        adapter = adapter_for(pipe)
        assert on_disk.size_multiple == math.lcm(8, adapter.size_multiple())
        assert on_disk.trained_frames == adapter.trained_frames()
        assert on_disk.default_size == (pipe.unet.config.sample_size * pipe.vae_scale_factor,) * 2


def dataclass_values(spec, *leave_out):
    import dataclasses

    return {key: value for key, value in dataclasses.asdict(spec).items() if key not in leave_out}


def test_target_made_unwritable_after_generation_loses_nothing(svd_dir, input_image, tmp_path, monkeypatch, capsys):
    """The output folder turns into a file while the frames are generated: the files go to a
    rescue folder in the current directory, the message says where, exit code 3."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    target = tmp_path / "target"
    generate = batch.generate

    def generate_then_break_the_target(*args, **kwargs):
        result = generate(*args, **kwargs)
        target.rmdir()
        target.write_text("no longer a folder")
        return result

    monkeypatch.setattr(batch, "generate", generate_then_break_the_target)
    args = ["generate", "--model", str(svd_dir), "--image", str(input_image), "--out", str(target / "clip")]
    assert cli.main([*args, "--save-frames", *TINY_ARGS]) == cli.EXIT_RESCUED
    captured = capsys.readouterr()
    rescued = [path for path in work.iterdir() if path.name.startswith("zerosmooth-rescued-clip-")]
    assert len(rescued) == 1
    assert f"the outputs were saved in {rescued[0]} instead" in captured.err
    assert f"warning: could not write {target / 'clip'}.*: FileExistsError" in captured.err
    assert tree(rescued[0]) == {"clip.mp4", "clip.gif", "clip_sheet.png", "clip_compare.mp4", "clip_compare.gif",
                                "clip_frames.npz"}
    assert len(mp4_frames(rescued[0] / "clip.mp4")) == 8
    assert np.load(rescued[0] / "clip_frames.npz")["stage2"].shape == (8, 3, 32, 32)
    assert f"Wrote {rescued[0] / 'clip.mp4'}" in captured.out


def test_writer_failure_leaves_no_partial_set(svd_dir, input_image, tmp_path, monkeypatch):
    """The last file of the set fails (ffmpeg missing, say) everywhere: nothing is half written;
    the frames alone are rescued as .npz."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(batch, "rescue_folders", lambda: [work])

    def broken_ffmpeg(*args, **kwargs):
        raise RuntimeError("no ffmpeg")

    monkeypatch.setattr(video, "write_mp4", broken_ffmpeg)
    out = tmp_path / "out"
    args = ["generate", "--model", str(svd_dir), "--image", str(input_image), "--out", str(out / "clip")]
    assert cli.main([*args, *TINY_ARGS]) == cli.EXIT_RESCUED
    assert tree(out) == set()
    (rescued,) = work.iterdir()
    assert tree(rescued) == {"clip_frames.npz"}
    assert np.load(rescued / "clip_frames.npz")["stage1"].shape == (4, 3, 32, 32)


def test_interrupt_while_writing_leaves_nothing(svd_dir, input_image, tmp_path, monkeypatch, capsys):
    original = video.write_mp4
    calls = []

    def interrupted_on_the_second_video(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(video, "write_mp4", interrupted_on_the_second_video)
    out = tmp_path / "new" / "folder"
    args = ["generate", "--model", str(svd_dir), "--image", str(input_image), "--out", str(out / "clip")]
    assert cli.main([*args, *TINY_ARGS]) == cli.EXIT_INTERRUPTED
    assert "Interrupted" in capsys.readouterr().err
    assert tree(tmp_path) == {"input.png"}  # not even the folders it created


def test_ctrl_c_during_generation_exits_130_with_no_output(svd_dir, tmp_path):
    """A real SIGINT, in a separate process, while the model denoises (many steps: it takes a while)."""
    script = (
        "import sys\nfrom zerosmooth import batch\ngenerate = batch.generate\n"
        "def announced(*args, **kwargs):\n    print('DENOISING', flush=True)\n    return generate(*args, **kwargs)\n"
        "batch.generate = announced\nfrom zerosmooth.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    )
    args = ["generate", "--model", str(svd_dir), "--out", str(tmp_path / "out" / "clip"), "--steps", "400",
            "--frames", "4", "--height", "32", "--width", "32"]
    # SIGINT at its default in the child: a suite started in the background of a non-interactive
    # shell ignores SIGINT, children inherit that, and Python then installs no KeyboardInterrupt.
    process = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=tmp_path,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert any("DENOISING" in line for line in process.stdout), "the run never reached denoising"
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Interrupted: no partial outputs were left." in err and "Traceback" not in err
    assert tree(tmp_path) == set()


def test_quiet_by_default_plain_lines_off_a_terminal_verbose_shows_all(svd_dir, tmp_path):
    args = ["generate", "--model", svd_dir, "--out", tmp_path / "q", "--steps", "1", "--frames", "2",
            "--height", "32", "--width", "32", "--stages", "1"]
    quiet = run_command(args, cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert "torchvision" not in quiet.stderr and "Loading pipeline components" not in quiet.stderr
    assert "\r" not in quiet.stdout + quiet.stderr  # no progress bar in a pipe or a log file
    lines = quiet.stdout.splitlines()
    assert lines[:2] == ["Loading the model", f"Model: {svd_dir} (StableVideoDiffusionPipeline) on cpu, float32"]
    assert "Writing the outputs" in lines
    verbose = run_command([*args, "--verbose"], cwd=tmp_path)
    assert verbose.returncode == 0, verbose.stderr
    assert "torchvision" in verbose.stderr  # the notice the quiet run hid, from transformers


def test_help_is_fast_and_imports_nothing_heavy(tmp_path):
    for args in (["--help"], ["generate", "--help"], ["generate", "--scale", "1"]):
        result = run_command(args, cwd=tmp_path)
        assert result.returncode == (0 if "--help" in args else 2)
        assert imported_heavy_modules(result.stderr) == set(), args
    assert "usage: zerosmooth generate" in run_command(["generate", "--help"], cwd=tmp_path).stdout


def test_evaluate_help_names_the_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["evaluate", "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: zerosmooth evaluate")


@pytest.mark.parametrize(
    "command, module", [("train-tiny", "zerosmooth.lab.train"), ("evaluate", "zerosmooth.lab.evaluate")]
)
def test_delegated_commands_hand_over_their_arguments(command, module, monkeypatch):
    received = []
    monkeypatch.setattr(importlib.import_module(module), "main", lambda argv: received.append(argv) or 0)
    assert cli.main([command, "--out", "somewhere", "--help"]) == 0
    assert received == [["--out", "somewhere", "--help"]]


def test_python_dash_m_subprocess(svd_dir, tmp_path):
    stem = tmp_path / "sub"
    command = [sys.executable, "-m", "zerosmooth", "generate", "--model", str(svd_dir), "--out", str(stem), *TINY_ARGS]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "Wrote" in result.stdout
    assert len(mp4_frames(stem.with_name("sub.mp4"))) == 8


@pytest.mark.parametrize(
    "frames, fps, shown, delays",
    [
        (8, 28, 8, [40, 30, 40, 30, 40, 30, 40, 40]),  # 285.7 ms: ticks at round(100 i / 28)
        (4, 7, 4, [140, 150, 140, 140]),
        (8, 100, 4, [20, 20, 20, 20]),  # 10-ms frames would play at 100 ms: every other one is shown for 20
        (1, 1000, 1, [20]),
    ],
)
def test_gif_timing_adds_up_to_the_clip(frames, fps, shown, delays):
    indices, milliseconds = video.gif_timing(frames, fps)
    assert len(indices) == shown and milliseconds == delays
    assert indices == sorted(set(indices)) and indices[0] == 0


def test_video_writers_accept_pil_and_odd_sizes(tmp_path):
    frames = torch.rand(5, 3, 21, 30)
    pil = [Image.fromarray(frame) for frame in video.to_uint8(frames)]
    mp4 = video.write_mp4(pil, tmp_path / "odd.mp4", fps=10)
    decoded = mp4_frames(mp4)
    assert len(decoded) == 5 and decoded[0].shape == (22, 30, 3)  # padded to even height
    gif = video.write_gif(frames, tmp_path / "odd.gif", fps=10)
    assert _gif_milliseconds(gif) == (5, 500)
    with pytest.raises(ValueError, match=r"stages\[1\] must have 10 frames"):
        video.contact_sheet([frames, frames], scale=2)
    with pytest.raises(ValueError, match="float array must have shape"):
        video.to_uint8(torch.rand(3, 5, 8, 8))
    assert tree(tmp_path) == {"odd.mp4", "odd.gif"}


def test_failed_write_replaces_nothing(tmp_path):
    target = tmp_path / "clip.gif"
    target.write_bytes(b"the previous clip")
    with pytest.raises(ValueError, match="fps must be positive"):
        video.write_gif(torch.rand(2, 3, 8, 8), target, fps=0)
    with pytest.raises(ValueError):
        video.write_mp4(torch.rand(2, 3, 8, 8), tmp_path / "clip.mp4", fps=-1)
    assert target.read_bytes() == b"the previous clip"
    assert tree(tmp_path) == {"clip.gif"}


def test_side_by_side_holds_each_stage_over_the_same_time_span():
    stages = [torch.rand(3 * 2**s, 3, 10, 14) for s in range(3)]  # 3 -> 6 -> 12 frames, scale 2
    canvas = video.side_by_side(stages, scale=2, min_height=25)  # 10-px frames enlarged 3x to 30 px
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
