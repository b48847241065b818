"""The embedded default model: a small SVD-style image-to-video pipeline trained on the procedural
world (``zerosmooth.lab.train``), shipped as safetensors in ``zerosmooth/demo/``."""

from __future__ import annotations

from pathlib import Path

import torch

EMBEDDED_FPS = 7
"""The ``fps`` argument the embedded model was trained with for its base video (key frames every
4th frame of the 28 fps world)."""


def embedded_model_path() -> Path:
    """Directory of the shipped pipeline (it may be absent; see ``load_embedded_pipeline``)."""
    return Path(__file__).resolve().parent / "tiny_world_svd"


def load_embedded_pipeline(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load the shipped ``StableVideoDiffusionPipeline`` offline, on ``device`` in ``dtype``.

    Raises FileNotFoundError with the command that creates the weights if they are not shipped.
    """
    from diffusers import StableVideoDiffusionPipeline

    path = embedded_model_path()
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the embedded model is not shipped in this checkout ({path} has no model_index.json). "
            f"Train it with: zerosmooth train-tiny --out /tmp/world_run --export {path}"
        )
    # low_cpu_mem_usage=False: the model is 10 MB, so accelerate's lazy loading buys nothing, and
    # without accelerate installed diffusers would otherwise warn on every load.
    pipe = StableVideoDiffusionPipeline.from_pretrained(
        path, dtype=dtype, local_files_only=True, low_cpu_mem_usage=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
