"""Batch mode: ``zerosmooth generate --batch JOBS.jsonl`` and ``zerosmooth.batch.run_jobs``; jobs
checked before any work, failures isolated, resume, and two CPU processes under torchrun whose
frames equal single-process runs of the same jobs."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_support import TINY_ARGS, mp4_frames, picture, saved_pipeline, tree, truncated_picture

from zerosmooth import batch, cli

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE_ARGS = ["--height", "32", "--width", "32", "--frames", "4", "--steps", "2"]


@pytest.fixture(scope="module")
def svd_dir(tmp_path_factory):
    return saved_pipeline("svd", tmp_path_factory)


@pytest.fixture(scope="module")
def svd_spec(svd_dir):
    return batch.ModelSpec.from_directory(svd_dir)


def _write_jobs(path: Path, jobs: list) -> Path:
    path.write_text("".join(json.dumps(job) + "\n" for job in jobs))
    return path


def test_jobs_file_defaults_names_and_blank_lines(tmp_path, svd_spec):
    image = picture(tmp_path / "cat.png", 0)
    jobs_file = tmp_path / "jobs.jsonl"
    lines = [f'{{"image": "{image}", "seed": 7}}', "", f'{{"seed": 8, "out": "{tmp_path}/x.gif", "frames": 4}}']
    jobs_file.write_text("\n".join(lines) + "\n")
    defaults = {"scale": 4, "frames": 2}
    jobs = batch.read_jobs(jobs_file, defaults, svd_spec, default_stem=tmp_path / "out" / "run")
    assert [job.line for job in jobs] == [1, 3]
    assert jobs[0].stem == tmp_path / "out" / "run_job1" and jobs[1].stem == tmp_path / "x"
    assert (jobs[0].seed, jobs[0].scale, jobs[0].frames, jobs[0].image) == (7, 4, 2, image)
    assert (jobs[1].seed, jobs[1].scale, jobs[1].frames, jobs[1].image) == (8, 4, 4, None)
    assert jobs[0].warnings and not jobs[1].warnings  # 2 frames vs the 4 the tiny SVD was trained on


def test_every_bad_line_is_named_and_nothing_runs(tmp_path, svd_spec):
    jobs_file = tmp_path / "jobs.jsonl"
    jobs_file.write_text('{"seed": 1}\n[1, 2]\n{"scale": true}\n{"negative_prompt": "x"}\n{"save-frames": "yes"}\n')
    with pytest.raises(batch.JobsFileError) as error:
        batch.read_jobs(jobs_file, {}, svd_spec, default_stem=tmp_path / "run")
    assert error.value.problems == [
        (2, "not a JSON object (got list)"),
        (3, "scale must be an integer, got True"),
        (4, "negative-prompt: StableVideoDiffusionPipeline is image-to-video and takes no prompt; "
            "drop negative-prompt"),
        (5, "save-frames must be true or false, got 'yes'"),
    ]
    assert str(error.value).startswith(f"{jobs_file} has 4 bad lines (nothing was run):\n  line 2: ")


def test_method_options_reach_the_config():
    job = batch.make_job({"strength": 0.6, "residual-strength": 0.5, "residual_until": 0.4, "key-guidance": True,
                          "residual-spread": "keys", "key-frames": "free", "scale": 3}, None)
    config = job.config()
    assert (config.strength, config.residual_strength, config.residual_window, config.residual_spread,
            config.key_frames, config.key_guidance, config.scale) == (0.6, 0.5, (0.0, 0.4), "keys", "free", True, 3)
    windows = batch.make_job({"strength-until": 0.5, "ddnm_until": 0.25}, None)
    assert (windows.config().strength_window, windows.config().ddnm_window) == ((0.0, 0.5), (0.0, 0.25))
    assert not windows.warnings
    default = batch.make_job({}, None).config()
    assert default == batch.ZeroSmoothConfig()  # unset options keep the library's defaults
    assert default.color_correction is True
    assert batch.make_job({"color-correction": False}, None).config().color_correction is False


@pytest.mark.parametrize("method, options, warned", [
    ("zerosmooth", {"ddnm-until": 0.5}, ["ddnm-until"]),
    ("direct", {"ddnm-until": 0.5, "strength-until": 0.5}, ["strength-until", "ddnm-until"]),
    ("latent_ddnm", {"ddnm-until": 0.5, "strength-until": 0.5}, ["strength-until"]),
    ("zerosmooth+ddnm", {"ddnm-until": 0.5, "strength-until": 0.5}, []),
])
def test_a_window_the_method_does_not_use_is_warned_about(method, options, warned):
    job = batch.make_job({"method": method, **options}, None)
    assert [option for option, _ in job.warnings] == warned
    assert all(method in text for _, text in job.warnings)


@pytest.mark.parametrize("flags, expected", [([], None), (["--color-correction"], True),
                                             (["--no-color-correction"], False)])
def test_boolean_flags_turn_a_default_on_or_off(flags, expected):
    """A default that is on (colour correction) can be switched off from the command line, and an
    unset flag leaves the library's default."""
    from zerosmooth.cli import _job_values, build_parser

    values = _job_values(build_parser().parse_args(["generate", *flags]))
    assert values.get("color-correction") is expected


def test_summary_table():
    results = [
        batch.JobResult(1, "done", ["o/a.mp4", "o/a.gif"], 2.04, process=0),
        batch.JobResult(2, "failed", [], 0.1, process=1, message="OSError: image 'b.png' cannot be decoded"),
        batch.JobResult(3, "skipped", ["o/c.mp4"], 0.0, process=1),
        batch.JobResult(4, "rescued", ["./zerosmooth-rescued-d-1/d.mp4"], 3.0, process=0,
                        message="could not write o/d.*"),
    ]
    assert batch.format_summary(results).splitlines() == [
        "job     status   seconds  process  output",
        "line 1  done     2.0      0        o/a.mp4",
        "line 2  failed   0.1      1        OSError: image 'b.png' cannot be decoded",
        "line 3  skipped  0.0      1        o/c.mp4",
        "line 4  rescued  3.0      0        ./zerosmooth-rescued-d-1/d.mp4 (could not write o/d.*)",
        "1 done, 1 skipped, 1 rescued, 1 failed",
    ]


def test_one_process_batch_isolates_a_failure_and_resumes(svd_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good, bad = picture(tmp_path / "good.png", 1), truncated_picture(tmp_path / "bad.png")
    jobs_file = _write_jobs(tmp_path / "jobs.jsonl", [
        {"image": str(good), "seed": 1, "out": "o/a"},
        {"image": str(bad), "seed": 2, "out": "o/b"},
        {"seed": 3, "out": "o/c.mp4", "stages": 1},
    ])
    command = ["generate", "--model", str(svd_dir), "--batch", str(jobs_file), "--report", "report.json", *SIZE_ARGS]
    assert cli.main(command) == cli.EXIT_FAILED
    captured = capsys.readouterr()
    assert "line 2  failed" in captured.out and "cannot be decoded" in captured.out
    assert "2 done, 1 failed" in captured.out
    assert "jobs 3/3 done (1 failed)" in captured.err  # the progress view, one line per change off a terminal
    report = json.loads((tmp_path / "report.json").read_text())
    assert [(entry["line"], entry["status"]) for entry in report] == [(1, "done"), (2, "failed"), (3, "done")]
    assert report[0]["frames"] == [4, 8] and report[2]["frames"] == [4]
    assert len(mp4_frames(tmp_path / "o" / "a.mp4")) == 8
    assert not (tmp_path / "o" / "b.mp4").exists()
    written = (tmp_path / "o" / "a.mp4").stat().st_mtime_ns

    shutil.copy(good, bad)  # the picture is fixed; the rerun redoes that job only
    assert cli.main(command) == cli.EXIT_DONE
    report = json.loads((tmp_path / "report.json").read_text())
    assert [entry["status"] for entry in report] == ["skipped", "done", "skipped"]
    assert (tmp_path / "o" / "a.mp4").stat().st_mtime_ns == written

    assert cli.main([*command, "--overwrite"]) == cli.EXIT_DONE
    report = json.loads((tmp_path / "report.json").read_text())
    assert [entry["status"] for entry in report] == ["done", "done", "done"]
    assert (tmp_path / "o" / "a.mp4").stat().st_mtime_ns != written


def test_python_api_matches_the_single_run(svd_dir, tmp_path, capsys):
    from diffusers import DiffusionPipeline

    image = picture(tmp_path / "cat.png", 4)
    cli_stem = tmp_path / "cli" / "cat"
    assert cli.main(["generate", "--model", str(svd_dir), "--image", str(image), "--seed", "5", "--out", str(cli_stem),
                     "--save-frames", "--threads", "1", *TINY_ARGS]) == 0
    pipe = DiffusionPipeline.from_pretrained(svd_dir)
    pipe.set_progress_bar_config(disable=True)
    jobs = [
        {"image": str(image), "seed": 5, "out": str(tmp_path / "api" / "cat"), "save_frames": True, "height": 32,
         "width": 32, "frames": 4, "steps": 2},
        {"seed": 6, "out": str(tmp_path / "api" / "world"), "height": 32, "width": 32, "frames": 4, "steps": 1},
    ]
    (tmp_path / "api").mkdir()
    results = batch.run_jobs(pipe, jobs, progress=False)
    assert [(result.line, result.status) for result in results] == [(1, "done"), (2, "done")]
    from_api = np.load(tmp_path / "api" / "cat_frames.npz")
    from_cli = np.load(tmp_path / "cli" / "cat_frames.npz")
    for stage in ("stage1", "stage2"):
        np.testing.assert_array_equal(from_api[stage], from_cli[stage])
    with pytest.raises(batch.JobsFileError, match=r"the job list has 1 bad job \(nothing was run\):\n  job 2: seed"):
        batch.run_jobs(pipe, [jobs[0], {"seed": -1}])
    with pytest.raises(batch.JobsFileError, match=r"job 2: out '.*cat' is also job 1's output"):
        batch.run_jobs(pipe, [jobs[0], jobs[0]])


def test_two_cpu_processes_run_each_job_once_with_the_frames_of_a_single_run(svd_dir, tmp_path):
    """4 jobs and a bad one under torchrun with 2 processes: every job runs exactly once, the bad
    one is reported while the others finish, and each job's frames equal its own single-process
    run bit for bit."""
    pictures = [picture(tmp_path / f"in{index}.png", index) for index in range(3)]
    jobs = [
        {"image": str(pictures[0]), "seed": 11, "out": "batch/a"},
        {"image": str(pictures[1]), "seed": 12, "out": "batch/b", "scale": 3},
        {"image": str(truncated_picture(tmp_path / "bad.png")), "seed": 13, "out": "batch/bad"},
        {"seed": 14, "out": "batch/c", "stages": 3},
        {"image": str(pictures[2]), "seed": 15, "out": "batch/d", "method": "direct"},
    ]
    jobs_file = _write_jobs(tmp_path / "jobs.jsonl", jobs)
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--nproc_per_node", "2", "-m", "zerosmooth", "generate", "--model", str(svd_dir),
               "--batch", str(jobs_file), "--report", "report.json", "--save-frames", *SIZE_ARGS]
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode != 0  # a job failed
    report = json.loads((tmp_path / "report.json").read_text())
    assert sorted(entry["line"] for entry in report) == [1, 2, 3, 4, 5]  # each job once
    statuses = {entry["line"]: entry["status"] for entry in report}
    assert statuses == {1: "done", 2: "done", 3: "failed", 4: "done", 5: "done"}
    assert sorted(entry["process"] for entry in report) == [0, 0, 0, 1, 1]
    assert "line 3  failed" in result.stdout and "cannot be decoded" in result.stdout
    progress = [line for line in result.stderr.splitlines() if line.startswith("jobs ")]
    assert progress[-1] == "jobs 5/5 done (1 failed) | process 0: 3/3 | process 1: 2/2"
    assert len(progress) == len(set(progress))  # one view, drawn by one process

    for line, job in enumerate(jobs, start=1):
        if line == 3:
            continue
        single = tmp_path / "single" / Path(job["out"]).name
        args = [f"--{key}={value}" for key, value in job.items() if key != "out"]
        assert cli.main(["generate", "--model", str(svd_dir), *args, "--out", str(single), "--save-frames",
                         "--threads", "1", "--no-progress", *SIZE_ARGS]) == 0
        from_batch = np.load(tmp_path / f"{job['out']}_frames.npz")
        from_single = np.load(f"{single}_frames.npz")
        assert list(from_batch) == list(from_single)
        for stage in from_single:
            np.testing.assert_array_equal(from_batch[stage], from_single[stage], err_msg=f"line {line} {stage}")
    assert not (tmp_path / "batch" / "bad.mp4").exists()
    assert not [name for name in tree(tmp_path) if ".zs-" in name]
