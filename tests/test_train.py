"""The embedded model's training (zerosmooth.lab.train): the two-phase construction is exact where
it claims to be, every phase resumes, a later sitting continues from exported weights, and the
export loads offline with from_pretrained."""

import json

import pytest
import torch
from PIL import Image

from zerosmooth import demo
from zerosmooth.lab import train

TINY = [
    "--size", "16", "--frames", "2", "--unet-channels", "32,32,32", "--vae-channels", "32,32,32",
    "--vae-steps", "2", "--vae-batch", "2", "--image-steps", "2", "--image-batch", "2", "--batch", "1",
    "--save-every", "1", "--validate-every", "2", "--validation-clips", "2", "--warmup", "2", "--threads", "1",
    "--no-progress",
]


def _components():
    return train.world_svd_components(0, 16, 3, (32, 32, 32), (32, 32, 32))


def _unet_inputs(frames: int):
    gen = torch.Generator().manual_seed(1)
    return dict(
        sample=torch.randn(2, frames, 8, 4, 4, generator=gen),
        timestep=torch.tensor(0.3),
        encoder_hidden_states=torch.randn(2, 1, 32, generator=gen),
        added_time_ids=torch.tensor([[6.0, 127.0, 0.02]] * 2),
    )


def _per_frame(unet, inputs):
    """The UNet run on every frame alone (one-frame videos), reassembled."""
    outs = []
    for f in range(inputs["sample"].shape[1]):
        single = dict(inputs, sample=inputs["sample"][:, f : f + 1])
        outs.append(unet(**single).sample)
    return torch.cat(outs, dim=1)


@torch.no_grad()
def test_pinned_mixers_make_an_exact_image_model():
    """Image phase: with every mixer pinned, frames do not see each other — the output equals the
    UNet run on each frame alone (to batching round-off), whatever the random temporal weights are;
    unpinned, the same weights mix the frames."""
    unet = _components()["unet"].eval()
    train.pin_spatial_only(unet)
    inputs = _unet_inputs(3)
    torch.testing.assert_close(unet(**inputs).sample, _per_frame(unet, inputs), rtol=0, atol=1e-5)
    for name, parameter in unet.named_parameters():
        if name.endswith("mix_factor"):
            parameter.fill_(train.MIXER_INIT)
    assert (unet(**inputs).sample - _per_frame(unet, inputs)).abs().max() > 1e-3


@torch.no_grad()
def test_started_temporal_layers_reproduce_the_image_model():
    """Video phase start: zero output projections make each block the image model, even with the
    mixers unpinned; after a perturbation the frames do interact (the check can fail)."""
    unet = _components()["unet"].eval()
    train.pin_spatial_only(unet)
    inputs = _unet_inputs(3)
    image_model = unet(**inputs).sample
    train.start_temporal_layers(unet)
    mixers = [p for name, p in unet.named_parameters() if name.endswith("mix_factor")]
    assert mixers and all(float(p) == train.MIXER_INIT for p in mixers)
    video_model = unet(**inputs).sample
    torch.testing.assert_close(video_model, image_model, rtol=0, atol=1e-5)
    for name, parameter in unet.named_parameters():
        if train.is_temporal(name) and name.endswith("conv2.weight"):
            parameter.add_(0.1)
    assert (unet(**inputs).sample - image_model).abs().max() > 1e-3


def test_temporal_parameters_are_told_apart():
    unet = _components()["unet"]
    names = [name for name, _ in unet.named_parameters()]
    temporal = [name for name in names if train.is_temporal(name)]
    assert any("temporal_transformer_blocks" in n for n in temporal) and any("temporal_res_block" in n for n in temporal)
    assert not any(train.is_temporal(n) for n in names if n.startswith(("conv_in", "time_embedding", "add_embedding")))
    assert 0 < len(temporal) < len(names)


@torch.no_grad()
def test_per_frame_decoder_decodes_each_frame_alone():
    """A key frame's pixels must not depend on its neighbours: decoding it alone or inside a video
    gives the same result (the temporal decoder would mix neighbours in)."""
    vae = _components()["vae"].eval()
    train.per_frame_decoder(vae)
    latents = torch.randn(5, 4, 4, 4)
    together = vae.decode(latents, num_frames=5).sample
    alone = torch.cat([vae.decode(latents[f : f + 1], num_frames=1).sample for f in range(5)])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)
    train.start_temporal_decoder(vae)
    for module in vae.decoder.modules():
        if type(module).__name__ == "TemporalResnetBlock":
            module.conv2.weight.add_(0.1)
    assert (vae.decode(latents, num_frames=5).sample - alone).abs().max() > 1e-3


def test_train_resume_and_continue_from_an_export(tmp_path):
    from diffusers import StableVideoDiffusionPipeline

    run = tmp_path / "run"
    train.train(train.parse_args(["--out", str(run), "--video-steps", "2", *TINY]))
    assert torch.load(run / "video.pt", weights_only=False)["step"] == 2
    # Rerunning with more steps resumes every phase from its checkpoint.
    train.train(train.parse_args(["--out", str(run), "--video-steps", "3", *TINY]))
    log = (run / "train.log").read_text()
    assert "vae: resumed at step 2" in log and "video: resumed at step 2" in log
    # A later sitting without the run directory continues from the exported pipeline.
    later = tmp_path / "later"
    export = tmp_path / "export"
    train.train(train.parse_args(["--out", str(later), "--resume-from", str(run / "pipeline"), "--video-steps", "4",
                                  "--export", str(export), *TINY]))
    record = json.loads((export / train.RECORD_NAME).read_text())
    assert record["progress"] == {"vae": 2, "image": 2, "video": 4}
    assert [s["phases"].get("video", {}).get("steps") for s in record["sittings"]] == [[0, 2], [2, 3], [3, 4]]
    assert "superseded" in (later / "train.log").read_text()

    pipe = StableVideoDiffusionPipeline.from_pretrained(export, local_files_only=True)
    assert pipe.unet.config.num_frames == 2 and pipe.vae_scale_factor == 4
    image = Image.fromarray((torch.rand(16, 16, 3) * 255).byte().numpy())
    frames = pipe(image, height=16, width=16, num_frames=2, num_inference_steps=2, output_type="pt").frames
    assert frames.shape == (1, 2, 3, 16, 16) and torch.isfinite(frames).all()


@pytest.mark.parametrize("flag, value, message", [
    ("--size", "40", "multiple of 16"), ("--seed", "100", "seed"), ("--resume-from", "/nonexistent", "resume-from"),
])
def test_bad_arguments(flag, value, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        train.train(train.parse_args(["--out", str(tmp_path), flag, value]))


def test_embedded_missing_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(demo, "embedded_model_path", lambda: tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="train-tiny"):
        demo.load_embedded_pipeline()


def test_shipped_model_loads_offline():
    pipe = demo.load_embedded_pipeline()
    assert pipe.unet.config.num_frames >= 8


def test_decoder_study_sees_the_temporal_decoder_mix_key_frames(tmp_path):
    """The per-frame decoder's key-frame ceiling is exact (100 dB); a temporal decoder's is not."""
    from zerosmooth.lab import decoders

    vae = _components()["vae"].eval()
    train.per_frame_decoder(vae)
    vae.save_pretrained(tmp_path / "per_frame" / "vae")
    train.start_temporal_decoder(vae)
    with torch.no_grad():
        for module in vae.decoder.modules():
            if type(module).__name__ == "TemporalResnetBlock":
                module.conv2.weight.normal_(0, 0.05)
    vae.save_pretrained(tmp_path / "temporal" / "vae")
    per_frame = decoders.measure(tmp_path / "per_frame", seeds=1, frames=3)
    temporal = decoders.measure(tmp_path / "temporal", seeds=1, frames=3)
    assert per_frame["key_ceiling_psnr"] == pytest.approx(100.0)
    assert temporal["key_ceiling_psnr"] < 60


def test_a_sitting_killed_mid_phase_keeps_its_steps_in_the_record(tmp_path, monkeypatch):
    run = tmp_path / "run"
    save = train._save

    def killed_before_video_step_2(payload, path):
        if path.name == "video.pt" and payload["step"] == 2:
            raise KeyboardInterrupt
        save(payload, path)

    monkeypatch.setattr(train, "_save", killed_before_video_step_2)
    with pytest.raises(KeyboardInterrupt):
        train.train(train.parse_args(["--out", str(run), "--video-steps", "3", *TINY]))
    record = json.loads((run / train.RECORD_NAME).read_text())
    assert record["progress"]["video"] == 1
    assert record["sittings"][0]["phases"]["video"]["steps"] == [0, 1]
    monkeypatch.setattr(train, "_save", save)
    train.train(train.parse_args(["--out", str(run), "--video-steps", "3", *TINY]))
    record = json.loads((run / train.RECORD_NAME).read_text())
    assert [s["phases"].get("video", {}).get("steps") for s in record["sittings"]] == [[0, 1], [1, 3]]
