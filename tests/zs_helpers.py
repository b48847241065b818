"""Shared helpers of the ZeroSmooth front-end tests (tiny offline pipelines on CPU)."""

from __future__ import annotations

import contextlib
import functools

import torch
from PIL import Image

SIZE = 16  # pixels; the tiny VAEs halve it, so latents are 8×8


def svd_image() -> Image.Image:
    pixels = torch.Generator().manual_seed(3)
    array = (torch.rand(SIZE, SIZE, 3, generator=pixels) * 255).to(torch.uint8).numpy()
    return Image.fromarray(array)


def svd_kwargs(**overrides) -> dict:
    kwargs = dict(image=svd_image(), height=SIZE, width=SIZE, num_frames=4, num_inference_steps=2, output_type="pt")
    kwargs.update(overrides)
    return kwargs


def text_kwargs(**overrides) -> dict:
    kwargs = dict(prompt="a red ball", height=SIZE, width=SIZE, num_frames=4, num_inference_steps=2, output_type="pt")
    kwargs.update(overrides)
    return kwargs


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def frames(output) -> torch.Tensor:
    """A pipeline output's frames as a tensor (TextToVideoSD returns numpy for every output_type)."""
    return torch.as_tensor(output.frames if hasattr(output, "frames") else output)


@contextlib.contextmanager
def count_unet_calls(pipe):
    """Counts UNet forward calls inside the block: ``with count_unet_calls(pipe) as calls: …; calls[0]``."""
    calls = [0]

    def hook(module, args, kwargs):
        calls[0] += 1

    handle = pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


@contextlib.contextmanager
def feed_variance_noise(pipe, noises: list[torch.Tensor], frame_batch: bool):
    """Make the pipeline's scheduler take ``variance_noise`` from ``noises`` (latent layout
    ``[B, C, F, h, w]``), one per step; ``frame_batch`` reshapes it to the ``[B·F, C, h, w]`` the
    text-to-video pipeline steps on. The wrapper keeps ``step``'s signature so the pipeline still
    passes ``eta``."""
    scheduler = pipe.scheduler
    original = scheduler.step
    queue = list(noises)

    @functools.wraps(original)
    def step(*args, **kwargs):
        kwargs.pop("generator", None)
        noise = queue.pop(0)
        if frame_batch:
            noise = noise.permute(0, 2, 1, 3, 4).flatten(0, 1)
        return original(*args, variance_noise=noise, **kwargs)

    scheduler.step = step
    try:
        yield
    finally:
        del scheduler.step
    assert not queue, f"{len(queue)} per-step noises were not used"
