"""Shared by the command-line and batch tests: tiny pipelines saved once per test session, decoding
of written videos, and runs of the command in a fresh Python process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import torch
from PIL import Image

# Small enough for a few seconds per run: 32x32 px, 4 base frames, 2 steps.
TINY_ARGS = ["--height", "32", "--width", "32", "--frames", "4", "--steps", "2", "--no-progress"]

_saved: dict[str, Path] = {}


def saved_pipeline(kind: str, tmp_path_factory) -> Path:
    """A tiny ``svd``, ``t2v`` or ``animatediff`` pipeline saved with ``save_pretrained``, built
    once per session."""
    if kind not in _saved:
        from zerosmooth.lab import tiny

        builders = {
            "svd": tiny.tiny_svd_pipeline,
            "t2v": tiny.tiny_text_to_video_pipeline,
            "animatediff": tiny.tiny_animatediff_pipeline,
        }
        path = tmp_path_factory.mktemp(f"tiny_{kind}")
        builders[kind]().save_pretrained(path)
        _saved[kind] = path
    return _saved[kind]


def picture(path: Path, seed: int, size: tuple[int, int] = (32, 32)) -> Path:
    """A random RGB picture of ``size = (height, width)`` saved at ``path``."""
    pixels = torch.Generator().manual_seed(seed)
    Image.fromarray((torch.rand(*size, 3, generator=pixels) * 255).to(torch.uint8).numpy()).save(path)
    return path


def truncated_picture(path: Path) -> Path:
    """A PNG cut off in its pixel data, like a partial download: PIL opens it, then fails to decode."""
    picture(path, 9, (64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def mp4_frames(path: Path) -> list:
    reader = imageio.get_reader(str(path), format="FFMPEG")
    try:
        return [frame for frame in reader]
    finally:
        reader.close()


def mp4_fps(path: Path) -> float:
    reader = imageio.get_reader(str(path), format="FFMPEG")
    try:
        return reader.get_meta_data()["fps"]
    finally:
        reader.close()


HEAVY_MODULES = ("torch", "diffusers", "transformers", "triton", "accelerate")

# Runs the command and, when the process ends (also through SystemExit), reports on stderr which
# heavy modules it imported.
_REPORTING_MAIN = (
    "import atexit, sys\n"
    f"HEAVY = {HEAVY_MODULES!r}\n"
    "atexit.register(lambda: print('imported: ' + ','.join(m for m in HEAVY if m in sys.modules), file=sys.stderr))\n"
    "from zerosmooth.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def run_command(args: list, cwd: Path, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """``zerosmooth ARGS`` in a fresh process (one intra-op thread: the box is shared)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, "-c", _REPORTING_MAIN, *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def imported_heavy_modules(stderr: str) -> set[str]:
    line = [line for line in stderr.splitlines() if line.startswith("imported: ")][-1]
    return {name for name in line.removeprefix("imported: ").split(",") if name}


def tree(root: Path) -> set[str]:
    """Every file and folder under ``root``, relative."""
    return {str(path.relative_to(root)) for path in root.rglob("*")}
