"""The embedded default model: a small SVD-style image-to-video pipeline trained on the procedural
world (``zerosmooth.lab.train``), shipped as safetensors in ``zerosmooth/demo/``.

Importing this module is free (no torch, no diffusers): the command line asks it where the model
lives before it decides to load anything.
"""

from __future__ import annotations

import contextlib
from pathlib import Path


def embedded_model_path() -> Path:
    """Directory of the shipped pipeline (it may be absent; see ``load_embedded_pipeline``)."""
    return Path(__file__).resolve().parent / "world_svd"


@contextlib.contextmanager
def no_loading_bars():
    """Silence diffusers' and transformers' loading bars, restoring each library's setting."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libraries = (diffusers_logging, transformers_logging)
    enabled = [library.is_progress_bar_enabled() for library in libraries]
    for library in libraries:
        library.disable_progress_bar()
    try:
        yield
    finally:
        for library, was_enabled in zip(libraries, enabled):
            if was_enabled:
                library.enable_progress_bar()


def load_embedded_pipeline(device="cpu", dtype=None):
    """Load the shipped ``StableVideoDiffusionPipeline`` offline, on ``device`` (a torch device or
    its name) in ``dtype`` (default float32), without loading bars.

    Raises FileNotFoundError with the command that creates the weights if they are not shipped.
    """
    import torch
    from diffusers import StableVideoDiffusionPipeline

    path = embedded_model_path()
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the embedded model is not shipped in this checkout ({path} has no model_index.json). "
            f"Train it with: zerosmooth train-tiny --out /tmp/world_run --export {path}"
        )
    with no_loading_bars():
        pipe = StableVideoDiffusionPipeline.from_pretrained(
            path, dtype=dtype or torch.float32, local_files_only=True, low_cpu_mem_usage=False
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
