"""Training-loop smoke test: a few steps at tiny sizes, resume, export, load with from_pretrained."""

import json

import pytest
from PIL import Image
import torch

from zerosmooth import embedded
from zerosmooth.train_tiny import parse_args, train


def _args(out, steps):
    return parse_args([
        "--out", str(out), "--size", "16", "--frames", "2", "--vae-steps", "2", "--vae-batch", "4", "--decoder-steps", "2",
        "--steps", str(steps), "--batch", "1", "--save-every", "1", "--warmup", "2", "--threads", "1",
    ])


def test_train_resume_export_load(tmp_path):
    from diffusers import StableVideoDiffusionPipeline

    train(_args(tmp_path, 2))
    first = torch.load(tmp_path / "unet.pt", weights_only=False)
    assert first["step"] == 2
    # Resuming continues from the checkpoint instead of starting over.
    train(_args(tmp_path, 3))
    log = (tmp_path / "train.log").read_text()
    assert "unet: resumed at step 2" in log and "vae: loaded" in log and "vae decoder: loaded" in log
    assert torch.load(tmp_path / "unet.pt", weights_only=False)["step"] == 3

    pipe = StableVideoDiffusionPipeline.from_pretrained(tmp_path / "pipeline", local_files_only=True)
    assert pipe.unet.config.num_frames == 2
    meta = json.loads((tmp_path / "pipeline" / "zerosmooth_training.json").read_text())
    assert meta["fps_argument"] == embedded.EMBEDDED_FPS
    # A PIL image, as users pass: the pipeline resizes it to the CLIP tower's 224 px itself.
    image = Image.fromarray((torch.rand(16, 16, 3) * 255).byte().numpy())
    frames = pipe(image, height=16, width=16, num_frames=2, num_inference_steps=2, output_type="pt").frames
    assert frames.shape == (1, 2, 3, 16, 16) and torch.isfinite(frames).all()


def test_embedded_missing_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(embedded, "embedded_model_path", lambda: tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="train_tiny"):
        embedded.load_embedded_pipeline()


def test_bad_size():
    with pytest.raises(ValueError, match="size"):
        train(parse_args(["--out", "/tmp/never", "--size", "15"]))


def test_shipped_model_loads_offline():
    """The shipped weights load with from_pretrained from the package directory (skipped when a
    checkout does not ship them)."""
    if not (embedded.embedded_model_path() / "model_index.json").is_file():
        pytest.skip("embedded model not shipped")
    pipe = embedded.load_embedded_pipeline()
    assert pipe.unet.config.num_frames == 8 and pipe.unet.config.sample_size == 16
