"""Start-up time of the ``zerosmooth`` command, side by side with ``python -c "import torch"``
(issue 14's goal: ``--help`` and argument errors within 1.5x of it), and the time a bad argument
takes to be refused, side by side with ``--help`` (issue 15's: refused before anything loads).

Every command runs in a fresh process; the median of ``ROUNDS`` runs is used, since the machine
is shared. Run ``pytest bench/bench_cli.py -q``: the table prints even under ``-q``.
"""

import statistics
import subprocess
import sys
import time


ROUNDS = 5

COMMANDS = {
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    "zerosmooth --help": [sys.executable, "-m", "zerosmooth", "--help"],
    "zerosmooth generate --help": [sys.executable, "-m", "zerosmooth", "generate", "--help"],
    "generate --scale 1 (bad value)": [sys.executable, "-m", "zerosmooth", "generate", "--scale", "1"],
    "generate --out clip.avi (bad name)": [sys.executable, "-m", "zerosmooth", "generate", "--out", "clip.avi"],
    "generate --image missing.png": [sys.executable, "-m", "zerosmooth", "generate", "--image", "missing.png"],
    "generate --batch missing.jsonl": [sys.executable, "-m", "zerosmooth", "generate", "--batch", "missing.jsonl"],
}


def _median_seconds(command: list, cwd) -> float:
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        assert result.returncode in (0, 2), result.stderr
    return statistics.median(times)


def test_start_up_against_import_torch(tmp_path, capsys):
    seconds = {name: _median_seconds(command, tmp_path) for name, command in COMMANDS.items()}
    torch_seconds, help_seconds = seconds["python -c 'import torch'"], seconds["zerosmooth --help"]
    lines = ["", f"start-up, median of {ROUNDS} fresh processes (goal: <= 1.5x import torch)",
             f"{'command':38} {'seconds':>8} {'/ import torch':>15} {'/ --help':>9}"]
    for name, value in seconds.items():
        lines.append(f"{name:38} {value:8.3f} {value / torch_seconds:15.2f} {value / help_seconds:9.2f}")
    with capsys.disabled():
        print("\n".join(lines))
    assert not list(tmp_path.iterdir())  # the refused commands left nothing behind
