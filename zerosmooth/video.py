"""Writing generated videos: mp4 (through imageio-ffmpeg), animated gif, and a PNG contact sheet
that lines up the stages of a cascade so key frames and interpolated frames can be compared.

Every writer accepts one video as either a float tensor/array ``[T, C, H, W]`` with values in
``[0, 1]`` (what ``output_type="pt"`` gives per video), a uint8 array ``[T, H, W, C]``, or a list
of PIL images. Every writer is atomic: it writes a hidden temporary file beside the target and
renames it into place, so a failed or interrupted write leaves neither a partial file nor a
temporary one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator, Sequence, Union

import imageio_ffmpeg
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "to_uint8", "write_mp4", "write_gif", "gif_timing", "contact_sheet", "side_by_side", "write_npz",
    "temporary_path", "atomic_path",
]

Frames = Union[torch.Tensor, np.ndarray, Sequence[Image.Image]]

# Contact-sheet colours: key frames (shared with the previous stage) vs interpolated frames.
KEY_COLOUR = (46, 160, 67)
INTERPOLATED_COLOUR = (230, 126, 34)
BACKGROUND = (24, 24, 24)
TEXT_COLOUR = (235, 235, 235)

# GIF delays count hundredths of a second, and browsers play delays under 2 of them as 10
# (100 ms), so no GIF frame may be shorter than 2 ticks.
GIF_TICK_MS = 10
GIF_MIN_TICKS = 2


def temporary_path(path: Union[str, Path]) -> Path:
    """A fresh hidden name in ``path``'s folder with ``path``'s suffix (writers such as ffmpeg pick
    the format from it). Short on purpose: it must fit wherever ``path`` itself fits."""
    path = Path(path)
    return path.with_name(f".zs-{secrets.token_hex(6)}.tmp{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: Union[str, Path]) -> Iterator[Path]:
    """Yield a temporary path to write; it replaces ``path`` only when the block succeeds, and is
    removed when it fails or is interrupted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(path)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def to_uint8(frames: Frames) -> np.ndarray:
    """Convert one video to a uint8 RGB array ``[T, H, W, 3]``.

    Float inputs are ``[T, C, H, W]`` in ``[0, 1]`` (clipped; 1 channel is broadcast to RGB);
    uint8 arrays must already be ``[T, H, W, 3]``; PIL images are converted to RGB.
    """
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().to("cpu", torch.float32).numpy()
    if isinstance(frames, np.ndarray):
        if frames.dtype == np.uint8:
            if frames.ndim != 4 or frames.shape[-1] != 3:
                raise ValueError(f"frames: a uint8 array must have shape [T, H, W, 3], got {list(frames.shape)}")
            return frames
        if frames.ndim != 4 or frames.shape[1] not in (1, 3):
            raise ValueError(
                f"frames: a float array must have shape [T, C, H, W] with C 1 or 3, got {list(frames.shape)}"
            )
        frames = np.clip(frames, 0.0, 1.0).transpose(0, 2, 3, 1)
        if frames.shape[-1] == 1:
            frames = np.repeat(frames, 3, axis=-1)
        return np.round(frames * 255.0).astype(np.uint8)
    images = list(frames)
    if not images or not all(isinstance(image, Image.Image) for image in images):
        raise ValueError(f"frames: expected a tensor, an array or a non-empty list of PIL images, got {type(frames)}")
    return np.stack([np.asarray(image.convert("RGB")) for image in images])


def write_mp4(frames: Frames, path: Union[str, Path], fps: float, quality: int = 8) -> Path:
    """Write an H.264 mp4 (yuv420p, playable everywhere) and return its path.

    yuv420p needs even width and height: an odd size is padded by repeating the last row/column,
    rather than letting ffmpeg rescale the video.
    """
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    video = to_uint8(frames)
    pad_h, pad_w = video.shape[1] % 2, video.shape[2] % 2
    if pad_h or pad_w:
        video = np.pad(video, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    height, width = video.shape[1:3]
    with atomic_path(path) as temporary:
        writer = imageio_ffmpeg.write_frames(
            str(temporary),
            (width, height),
            fps=fps,
            codec="libx264",
            quality=quality,
            macro_block_size=1,
            ffmpeg_log_level="error",
        )
        try:
            writer.send(None)  # start the ffmpeg process
            for frame in video:
                writer.send(np.ascontiguousarray(frame))
        finally:
            # Also on failure: closing stops the ffmpeg process instead of leaving it behind.
            writer.close()
    return Path(path)


def gif_timing(num_frames: int, fps: float) -> tuple[list[int], list[int]]:
    """Which frames a GIF of a ``num_frames``-frame clip at ``fps`` shows, and for how many ms each.

    Frame ``i`` starts at tick ``round(100·i/fps)``, so the delays add up to the clip's length
    (``num_frames/fps`` s, to the nearest 10 ms) instead of drifting by a rounding error per frame:
    28 fps plays as 40, 30, 40, 40, 30, … ms, like the mp4. Above 50 fps a frame would last under
    20 ms, which browsers stretch to 100 ms; there the GIF drops frames and gives their time to
    the frame before, keeping the clip's length.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames!r}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    ticks = [round(100 * index / fps) for index in range(num_frames + 1)]
    shown: list[int] = []
    delays: list[int] = []
    for index in range(num_frames):
        delay = ticks[index + 1] - ticks[index]
        if delays and delays[-1] < GIF_MIN_TICKS:
            delays[-1] += delay
        else:
            shown.append(index)
            delays.append(delay)
    if len(delays) > 1 and delays[-1] < GIF_MIN_TICKS:
        shown.pop()
        delays[-2] += delays.pop()
    delays[-1] = max(delays[-1], GIF_MIN_TICKS)
    return shown, [delay * GIF_TICK_MS for delay in delays]


def write_gif(frames: Frames, path: Union[str, Path], fps: float) -> Path:
    """Write a looping animated gif that plays as long as the clip at ``fps`` (see ``gif_timing``)
    and return its path."""
    video = to_uint8(frames)
    shown, durations = gif_timing(len(video), fps)
    images = [Image.fromarray(video[index]) for index in shown]
    with atomic_path(path) as temporary:
        images[0].save(
            temporary,
            format="GIF",
            save_all=True,
            append_images=images[1:],
            duration=durations,
            loop=0,
            disposal=1,
        )
    return Path(path)


def write_npz(stages: Sequence[Union[torch.Tensor, np.ndarray]], path: Union[str, Path]) -> Path:
    """Write every stage's frames exactly as generated, as float32 arrays ``stage1``, ``stage2``, …
    (each ``[T, C, H, W]``), into one ``.npz``, and return its path."""
    arrays = {
        f"stage{index}": (stage.detach().to("cpu", torch.float32).numpy() if isinstance(stage, torch.Tensor)
                          else np.asarray(stage, dtype=np.float32))
        for index, stage in enumerate(stages, start=1)
    }
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as file:  # a file object: np.savez would append .npz to a name
            np.savez(file, **arrays)
    return Path(path)


def _stage_videos(stages: Sequence[Frames], scale: int) -> list[np.ndarray]:
    """The stages as uint8 videos, checked to have ``t0·scale^(s-1)`` frames each."""
    if not stages:
        raise ValueError("stages: expected at least one stage, got an empty sequence")
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    videos = [to_uint8(stage) for stage in stages]
    base = len(videos[0])
    for index, video in enumerate(videos, start=1):
        expected = base * scale ** (index - 1)
        if len(video) != expected:
            raise ValueError(
                f"stages[{index - 1}] must have {expected} frames (stage 1 has {base}, scale {scale}), got {len(video)}"
            )
        if video.shape[1:] != videos[0].shape[1:]:
            raise ValueError(
                f"stages[{index - 1}] has frames of shape {list(video.shape[1:])}, "
                f"stage 1 has {list(videos[0].shape[1:])}"
            )
    return videos


def side_by_side(stages: Sequence[Frames], scale: int, min_height: int = 192) -> np.ndarray:
    """One comparison video of all stages next to each other, stage 1 on the left, every stage over
    the same time span: at the last stage's frame rate, stage ``s`` holds each of its frames for
    ``scale^(S-s)`` frames. A header names each panel's frame-rate factor ("1x", "2x", …).

    Args:
        stages: one video per stage, stage 1 first (see ``contact_sheet``).
        scale: the frame-rate factor between consecutive stages.
        min_height: frames smaller than this are enlarged by an integer factor (nearest neighbour).

    Returns:
        uint8 array ``[T_S, header + zoom·H, S·zoom·W + (S−1)·gap, 3]``, ``T_S`` the last stage's frames.
    """
    videos = _stage_videos(stages, scale)
    zoom = max(1, -(-min_height // videos[0].shape[1]))
    gap, header = 4, 16
    height, width = zoom * videos[0].shape[1], zoom * videos[0].shape[2]
    frames = len(videos[-1])
    canvas = np.empty((frames, header + height, len(videos) * (width + gap) - gap, 3), np.uint8)
    canvas[:] = BACKGROUND
    label = Image.new("RGB", (canvas.shape[2], header), BACKGROUND)
    draw = ImageDraw.Draw(label)
    for s, video in enumerate(videos):
        left = s * (width + gap)
        draw.text((left + 2, 2), f"{scale**s}x  {len(video)} frames", fill=TEXT_COLOUR, font=ImageFont.load_default())
        hold = scale ** (len(videos) - 1 - s)
        enlarged = video.repeat(zoom, axis=1).repeat(zoom, axis=2)
        canvas[:, header:, left : left + width] = enlarged.repeat(hold, axis=0)
    canvas[:, :header] = np.asarray(label)
    return canvas


def contact_sheet(
    stages: Sequence[Frames],
    scale: int,
    path: Union[str, Path, None] = None,
    max_columns: int = 16,
    tile_height: int = 96,
) -> Image.Image:
    """Lay the stages of a cascade out on a time-aligned grid, one row per stage.

    Stage ``s`` (1-based) has ``t0·n^(s-1)`` frames; its frame ``j`` is drawn in column
    ``j·n^(S-s)``, so a frame sits directly under the frames of earlier stages it shares a time with.
    Frames of stage ``s >= 2`` at ``j ≡ 0 (mod n)`` are key frames (the previous stage's frames,
    green border); the others are interpolated (orange border). Stage 1 frames are all key frames.
    Only the first ``max_columns`` columns of time are shown (at least one base frame's worth).

    Args:
        stages: one video per stage, stage 1 first; each a tensor/array/PIL list (see ``to_uint8``).
        scale: the frame-rate factor ``n`` between consecutive stages.
        path: if given, the sheet is also saved there as PNG.
        max_columns: widest row, in tiles.
        tile_height: frames are resized (nearest neighbour, so tiny frames stay crisp) to this height.

    Returns:
        The sheet as an RGB PIL image.
    """
    videos = _stage_videos(stages, scale)
    base = len(videos[0])
    spread = scale ** (len(videos) - 1)  # columns per base frame
    columns = min(base * spread, max(spread, max_columns // spread * spread))

    height, width = videos[0].shape[1:3]
    tile_width = max(1, round(width * tile_height / height))
    border, gap, label_width, header = 3, 4, 118, 24
    cell_w, cell_h = tile_width + 2 * border, tile_height + 2 * border
    sheet = Image.new(
        "RGB",
        (label_width + columns * (cell_w + gap) + gap, header + len(videos) * (cell_h + gap) + gap),
        BACKGROUND,
    )
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    draw.text((gap, 6), "key frame", fill=KEY_COLOUR, font=font)
    draw.text((gap + 80, 6), "interpolated frame", fill=INTERPOLATED_COLOUR, font=font)
    if columns < base * spread:
        note = f"(first {columns // spread} of {base} base frames shown)"
        draw.text((gap + 220, 6), note, fill=TEXT_COLOUR, font=font)

    for row, video in enumerate(videos):
        stride = scale ** (len(videos) - 1 - row)  # columns between consecutive frames of this stage
        top = header + gap + row * (cell_h + gap)
        draw.text((gap, top + cell_h // 2 - 12), f"stage {row + 1}", fill=TEXT_COLOUR, font=font)
        draw.text((gap, top + cell_h // 2 + 2), f"{len(video)} frames", fill=TEXT_COLOUR, font=font)
        for index in range(0, columns // stride):
            is_key = row == 0 or index % scale == 0
            left = label_width + index * stride * (cell_w + gap)
            draw.rectangle(
                (left, top, left + cell_w - 1, top + cell_h - 1), fill=KEY_COLOUR if is_key else INTERPOLATED_COLOUR
            )
            tile = Image.fromarray(video[index]).resize((tile_width, tile_height), Image.NEAREST)
            sheet.paste(tile, (left + border, top + border))
    if path is not None:
        with atomic_path(path) as temporary:
            sheet.save(temporary, format="PNG")
    return sheet
