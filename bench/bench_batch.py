"""Batch throughput: ``zerosmooth generate --batch`` on the tiny SVD pipeline with one process and
with two CPU processes under ``torchrun``, side by side in one run.

Two rates per launch: jobs per minute of wall time (start-up and model loading included, what a
user waits for) and jobs per minute once loaded (jobs over the busiest process's summed job
seconds, from ``--report``). Both launches run the same jobs at one thread per process (batch
mode's default), so on a machine with two free cores the second rate should nearly double; on a
shared machine it shows what is left. Run ``pytest bench/bench_batch.py -q``: the table prints
even under ``-q``.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zerosmooth.lab import tiny

JOBS = 8
ARGS = ["--height", "32", "--width", "32", "--frames", "4", "--steps", "4", "--no-progress"]


@pytest.fixture(scope="module")
def svd_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_svd")
    tiny.tiny_svd_pipeline().save_pretrained(path)
    return path


def _launch(prefix: list, model: Path, folder: Path) -> dict:
    folder.mkdir()
    jobs = folder / "jobs.jsonl"
    jobs.write_text("".join(json.dumps({"seed": seed, "out": f"out/job{seed}"}) + "\n" for seed in range(JOBS)))
    command = [*prefix, "-m", "zerosmooth", "generate", "--model", str(model), "--batch", str(jobs),
               "--report", "report.json", *ARGS]
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    start = time.perf_counter()
    result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=1200)
    wall = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    report = json.loads((folder / "report.json").read_text())
    assert sorted(entry["line"] for entry in report) == list(range(1, JOBS + 1))
    busy: dict[int, float] = {}
    for entry in report:
        busy[entry["process"]] = busy.get(entry["process"], 0.0) + entry["seconds"]
    return {"wall": wall, "busiest": max(busy.values()), "processes": len(busy)}


def test_jobs_per_minute_one_and_two_processes(svd_dir, tmp_path, capsys):
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    one = _launch([sys.executable], svd_dir, tmp_path / "one")
    two = _launch([torchrun, "--nproc_per_node", "2"], svd_dir, tmp_path / "two")
    assert (one["processes"], two["processes"]) == (1, 2)
    title = f"batch throughput, {JOBS} jobs of the tiny SVD (32x32 px, 4 -> 8 frames, 4 steps), 1 thread per process"
    lines = ["", title,
             f"{'launch':26} {'wall s':>7} {'jobs/min (wall)':>16} {'jobs/min (loaded)':>18}"]
    for name, run in (("1 process", one), ("torchrun, 2 processes", two)):
        lines.append(f"{name:26} {run['wall']:7.1f} {60 * JOBS / run['wall']:16.1f} {60 * JOBS / run['busiest']:18.1f}")
    lines.append(f"{'2 / 1':26} {'':7} {one['wall'] / two['wall']:16.2f} {one['busiest'] / two['busiest']:18.2f}")
    with capsys.disabled():
        print("\n".join(lines))
