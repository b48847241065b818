"""The tiny offline pipelines: they build from config without network, run their plain __call__ on
CPU, are deterministic in their seed, and survive save_pretrained + from_pretrained bit-exactly."""

import pytest
import torch
from PIL import Image

from zerosmooth.lab import tiny


pytestmark = pytest.mark.usefixtures("one_thread")


def _svd_inputs():
    image = Image.new("RGB", (32, 32), (200, 40, 40))
    return {"image": image, "decode_chunk_size": 4}


def _text_inputs():
    return {"prompt": "a red ball, bouncing!"}


CASES = [
    (tiny.tiny_svd_pipeline, _svd_inputs),
    (tiny.tiny_animatediff_pipeline, _text_inputs),
    (tiny.tiny_text_to_video_pipeline, _text_inputs),
]
IDS = ["svd", "animatediff", "text_to_video"]


def _run(pipe, inputs, seed=0):
    """Two denoising steps at 32×32 px and 4 frames, frames as a [B, F, C, H, W] tensor."""
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        **inputs(),
        num_frames=4,
        height=32,
        width=32,
        num_inference_steps=2,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="pt",
    ).frames


@pytest.mark.parametrize(("build", "inputs"), CASES, ids=IDS)
def test_runs_and_round_trips(build, inputs, tmp_path):
    pipe = build()
    frames = _run(pipe, inputs)
    assert frames.shape == (1, 4, 3, 32, 32)
    assert torch.isfinite(frames).all()
    assert frames.min() >= 0 and frames.max() <= 1

    pipe.save_pretrained(tmp_path)
    assert (tmp_path / "model_index.json").is_file()
    loaded = type(pipe).from_pretrained(tmp_path)
    assert torch.equal(_run(loaded, inputs), frames)


@pytest.mark.parametrize("build", [case[0] for case in CASES], ids=IDS)
def test_weights_are_deterministic_in_seed(build):
    first, again, other = build(seed=0), build(seed=0), build(seed=1)
    for name, module in first.components.items():
        if not isinstance(module, torch.nn.Module):
            continue
        tensors = zip(module.state_dict().values(), again.components[name].state_dict().values())
        assert all(torch.equal(a, b) for a, b in tensors), f"{name} differs between two builds with seed 0"
    unet_0 = torch.cat([p.flatten() for p in first.unet.parameters()])
    unet_1 = torch.cat([p.flatten() for p in other.unet.parameters()])
    assert not torch.equal(unet_0, unet_1)


def test_building_leaves_global_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny.tiny_text_to_video_pipeline()
    assert torch.equal(torch.rand(3), expected)


def test_tokenizer_is_offline_and_matches_text_encoder():
    tokenizer = tiny.tiny_clip_tokenizer()
    ids = tokenizer("A cat!", padding="max_length", max_length=tokenizer.model_max_length).input_ids
    assert len(ids) == 77
    assert ids[0] == tokenizer.bos_token_id
    # Lower-cased letters become known tokens, not the unknown token.
    assert tokenizer.unk_token_id not in ids[1:5]
    encoder = tiny.tiny_animatediff_pipeline().text_encoder
    assert encoder.config.eos_token_id == tokenizer.eos_token_id
    assert encoder.config.pad_token_id == tokenizer.pad_token_id
    assert encoder.config.vocab_size == len(tokenizer)
