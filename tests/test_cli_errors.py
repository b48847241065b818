"""Bad input to ``zerosmooth generate``: every case is refused before any model loads, in a fresh
process, with exit code 2 and a message naming the argument, the value and what was expected; none
shows a traceback, none leaves a file behind, and none imports diffusers, transformers, triton or
accelerate (torch only where the case needs it: a CUDA device asked of a machine without one).
That is what makes them fail as fast as ``zerosmooth --help`` (``bench/bench_cli.py`` times both)."""

import json

import pytest
import torch
from cli_support import imported_heavy_modules, run_command, saved_pipeline, tree, truncated_picture
from PIL import Image


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Files the cases point at; they live outside each case's working folder."""
    root = tmp_path_factory.mktemp("inputs")
    Image.new("RGB", (32, 32), (10, 200, 10)).save(root / "cat.png")
    (root / "notes.txt").write_text("not a picture")
    truncated_picture(root / "broken.png")
    (root / "a_folder").mkdir()
    (root / "not_a_pipeline").mkdir()
    unsupported = root / "ddim"
    unsupported.mkdir()
    (unsupported / "model_index.json").write_text(json.dumps({"_class_name": "DDIMPipeline"}))
    (root / "model.txt").write_text("weights?")
    (root / "bad.jsonl").write_text('{"seed": 1}\n{"seed": 2,}\n{"sead": 3}\n\n{"model": "x"}\n')
    (root / "twice.jsonl").write_text('{"seed": 1, "out": "same"}\n{"seed": 2, "out": "same.mp4"}\n')
    (root / "sizes.jsonl").write_text('{"seed": 1}\n{"height": 34}\n')
    (root / "empty.jsonl").write_text("\n")
    return {
        "root": root,
        "svd": saved_pipeline("svd", tmp_path_factory),
        "t2v": saved_pipeline("t2v", tmp_path_factory),
    }


# (id, arguments, message); {root}, {svd}, {t2v} are filled in; every case exits with 2.
CASES = [
    ("scale-float", ["--scale", "2.5"], "argument --scale: invalid int value: '2.5'"),
    ("method", ["--method", "magic"], "argument --method: invalid choice: 'magic'"),
    ("image-and-prompt", ["--image", "{root}/cat.png", "--prompt", "a cat"], "not allowed with argument"),
    ("dtype", ["--dtype", "float8"], "argument --dtype: invalid choice: 'float8'"),
    ("scale-1", ["--scale", "1"], "--scale must be an integer >= 2, got 1"),
    ("stages-0", ["--stages", "0"], "--stages must be an integer >= 1, got 0"),
    ("frames-0", ["--frames", "0"], "--frames must be an integer >= 1, got 0"),
    ("steps-0", ["--steps", "0"], "--steps must be an integer >= 1, got 0"),
    ("fps-0", ["--fps", "0"], "--fps must be an integer >= 1, got 0"),
    ("seed-negative", ["--seed", "-1"], "--seed must be an integer >= 0, got -1"),
    ("strength", ["--strength", "1.5"], "--strength must be a number in [0, 1], got 1.5"),
    ("residual-strength", ["--residual-strength", "-0.5"], "--residual-strength must be a number in [0, 1], got -0.5"),
    ("residual-until", ["--residual-until", "0"],
     "--residual-until must be a fraction of the denoising in (0, 1], got 0.0"),
    ("strength-until", ["--strength-until", "1.5"],
     "--strength-until must be a fraction of the denoising in (0, 1], got 1.5"),
    ("ddnm-until", ["--ddnm-until", "-0.1"], "--ddnm-until must be a fraction of the denoising in (0, 1], got -0.1"),
    ("residual-spread", ["--residual-spread", "cubic"], "argument --residual-spread: invalid choice: 'cubic'"),
    ("key-frames", ["--key-frames", "pinned"], "argument --key-frames: invalid choice: 'pinned'"),
    ("seed-huge", ["--seed", str(2**64)], "--seed must be an integer below 2**64"),
    ("guidance-nan", ["--guidance", "nan"], "--guidance must be a finite number >= 0, got nan"),
    ("guidance-negative", ["--guidance", "-1"], "--guidance must be a number >= 0, got -1.0"),
    ("threads", ["--threads", "-1"], "--threads must be a positive integer, got -1"),
    ("device-name", ["--device", "gpu"], "--device must be auto, cpu, cuda, cuda:N, mps or xpu, got 'gpu'"),
    ("image-missing", ["--image", "no/such/picture.png"],
     "--image must be an existing image file, got 'no/such/picture.png'; no such file"),
    ("image-folder", ["--image", "{root}/a_folder"],
     "--image must be an image file, got '{root}/a_folder'; it is a folder"),
    ("image-not-a-picture", ["--image", "{root}/notes.txt"],
     "--image must be an image file PIL can read, got '{root}/notes.txt'; UnidentifiedImageError"),
    ("image-broken-pixels", ["--model", "{svd}", "--image", "{root}/broken.png"],
     "--image must be an image file PIL can read, got '{root}/broken.png'"),
    ("prompt-empty", ["--model", "{t2v}", "--prompt", " "], "--prompt must be a non-empty text, got ' '"),
    ("model-missing-path", ["--model", "./no/such/model"], "--model: no such directory './no/such/model'"),
    ("model-file", ["--model", "{root}/model.txt"], "--model must be a diffusers pipeline folder or a hub id, got"),
    ("model-not-an-id", ["--model", "not a model!"],
     "--model must be a diffusers pipeline folder or a hub id (owner/name), got 'not a model!'"),
    ("model-unknown-hub-id", ["--model", "zzz/not-a-model"],
     "--model 'zzz/not-a-model' is not a local folder, and the hub"),
    ("model-not-a-pipeline", ["--model", "{root}/not_a_pipeline"],
     "--model: {root}/not_a_pipeline is not a diffusers pipeline folder: "
     "{root}/not_a_pipeline/model_index.json is missing"),
    ("model-unsupported", ["--model", "{root}/ddim", "--prompt", "a cat"],
     "--model: ZeroSmooth supports the diffusers pipelines StableVideoDiffusionPipeline, AnimateDiffPipeline, "
     "TextToVideoSDPipeline; {root}/ddim holds a DDIMPipeline"),
    ("prompt-for-svd", ["--model", "{svd}", "--prompt", "a cat"],
     "--prompt: StableVideoDiffusionPipeline is image-to-video and takes no prompt; drop --prompt"),
    ("negative-prompt-for-svd", ["--model", "{svd}", "--image", "{root}/cat.png", "--negative-prompt", "blur"],
     "--negative-prompt: StableVideoDiffusionPipeline is image-to-video and takes no prompt; drop --negative-prompt"),
    ("image-for-t2v", ["--model", "{t2v}", "--image", "{root}/cat.png"],
     "--image: TextToVideoSDPipeline is text-to-video and takes a prompt, not an image; drop --image"),
    ("t2v-without-prompt", ["--model", "{t2v}"],
     "--prompt is required for the text-to-video pipeline TextToVideoSDPipeline"),
    ("height-34-width-46", ["--model", "{svd}", "--height", "34", "--width", "46"],
     "--height must be a multiple of 8 for StableVideoDiffusionPipeline, got 34; the pipeline wants multiples of 8, "
     "ZeroSmooth of the VAE factor 2 x the UNet downsampling 2; nearest: 32 or 40"),
    ("width-too-small", ["--model", "{svd}", "--width", "4"], "--width must be a multiple of 8 for "),
    ("out-empty", ["--out", ""], "--out must be a file stem or a name ending in .mp4 or .gif, not empty, got ''"),
    ("out-suffix-only", ["--out", "videos/.mp4"], "the name before the suffix is empty"),
    ("out-avi", ["--out", "clip.avi"], "--out must be a file stem or a name ending in .mp4 or .gif, got 'clip.avi'; "
     "zerosmooth writes mp4, gif and png files, not .avi"),
    ("out-under-a-file", ["--model", "{svd}", "--out", "{root}/notes.txt/clip"],
     "--out must be a path under a folder, got '{root}/notes.txt/clip'; {root}/notes.txt is a file, not a folder"),
    ("out-name-too-long", ["--model", "{svd}", "--out", "x" * 250], "is longer than 255 bytes"),
    ("out-folder-name-too-long", ["--model", "{svd}", "--out", "y" * 300 + "/clip"],
     "--out must be a path in a writable folder, got '" + "y" * 300 + "/clip'; OSError: [Errno 36] File name too long"),
    ("overwrite-without-batch", ["--overwrite"], "--overwrite applies with --batch only"),
    ("report-folder", ["--report", "{root}/a_folder"],
     "--report must be a file name, got '{root}/a_folder', which is a folder"),
    ("batch-missing", ["--batch", "jobs.jsonl"],
     "--batch must be a jobs file (one JSON object per line), got 'jobs.jsonl', "
     "which does not exist"),
    ("batch-bad-lines", ["--model", "{svd}", "--batch", "{root}/bad.jsonl"],
     "{root}/bad.jsonl has 3 bad lines (nothing was run):\n"
     "  line 2: not a JSON object (Expecting property name enclosed in double quotes: line 1 column 12 (char 11))\n"
     "  line 3: sead is not a job option (did you mean 'seed'?); the options are image, prompt"),
    ("batch-run-setting-in-a-line", ["--model", "{svd}", "--batch", "{root}/bad.jsonl"],
     "line 5: model applies to the whole run: give it on the command line"),
    ("batch-same-output-twice", ["--model", "{svd}", "--batch", "{root}/twice.jsonl"],
     "line 2: out 'same' is also line 1's output; give each job its own"),
    ("batch-size-in-a-line", ["--model", "{svd}", "--batch", "{root}/sizes.jsonl"],
     "line 2: height must be a multiple of 8 for StableVideoDiffusionPipeline, got 34"),
    ("batch-empty", ["--model", "{svd}", "--batch", "{root}/empty.jsonl"],
     "{root}/empty.jsonl holds no jobs (every line is blank)"),
    ("cuda-without-cuda", ["--model", "{svd}", "--device", "cuda"],
     "--device 'cuda': CUDA is not available on this machine (use --device cpu)"),
]
NEEDS_TORCH = {"cuda-without-cuda"}


@pytest.mark.parametrize(("case", "args", "message"), CASES, ids=[case[0] for case in CASES])
def test_bad_input_is_refused_before_anything_loads(case, args, message, inputs, tmp_path):
    if case == "cuda-without-cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    fill = {name: str(value) for name, value in inputs.items()}
    args = [argument.format(**fill) for argument in args]
    message = message.format(**fill)
    before = tree(inputs["root"])
    result = run_command(["generate", *args], cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr and "stacktrace" not in result.stderr
    assert result.stderr.startswith("usage: zerosmooth generate")  # argparse's form, whatever found the error
    assert result.stdout == ""
    assert tree(tmp_path) == set() and tree(inputs["root"]) == before
    heavy = imported_heavy_modules(result.stderr)
    assert heavy == ({"torch"} if case in NEEDS_TORCH else set()), heavy


def test_the_table_is_large_enough():
    assert len(CASES) >= 25
    assert len({case[0] for case in CASES}) == len(CASES)
