"""The ``zerosmooth`` command.

* ``zerosmooth generate``: run a diffusers video pipeline through the ZeroSmooth cascade and write
  an mp4, a gif, a PNG contact sheet (key vs interpolated frames per stage) and a side-by-side
  comparison video of all stages over the same time span. With no
  ``--model`` it runs the embedded default model, a tiny SVD-style pipeline trained on the
  procedural world (``zerosmooth.demo``), fed a frame of that world; in a checkout without the
  shipped weights it falls back to the tiny *untrained* pipeline built from config
  (``zerosmooth.lab.tiny``), whose output is noise-like by design.
* ``zerosmooth train-tiny …``: ``python -m zerosmooth.lab.train …`` (trains the embedded model).
* ``zerosmooth evaluate …``: ``python -m zerosmooth.lab.evaluate …`` (the paper-style comparison).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
from PIL import Image, ImageDraw

from . import video
from .config import METHODS

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Settings of the built-in models (embedded or untrained): what the embedded one was trained at.
DEFAULT_MODEL_FRAMES = 8
DEFAULT_MODEL_STEPS = 10
DEFAULT_MODEL_SIZE = 32

EMBEDDED_NOTICE = (
    "No --model given: using the embedded tiny SVD-style model trained on ZeroSmooth's procedural world of "
    "moving shapes (32x32 px, 8 frames at 7 fps). Pass --model <diffusers directory or hub id> for your own model."
)
UNTRAINED_NOTICE = (
    "No --model given: using the built-in tiny SVD pipeline. It is an UNTRAINED model built from config "
    "(random weights), so the video is noise-like; it shows the pipeline runs end to end. "
    "Pass --model <diffusers directory or hub id> for real results."
)


DELEGATED_COMMANDS = (
    ("train-tiny", "zerosmooth.lab.train", "train the embedded tiny model on the procedural world"),
    ("evaluate", "zerosmooth.lab.evaluate", "compare ZeroSmooth with baselines and ablations on the embedded model"),
)


class CLIError(Exception):
    """A user error found after parsing (e.g. a model that does not fit the other arguments)."""


def build_parser() -> argparse.ArgumentParser:
    """The ``zerosmooth`` argument parser with its ``generate`` subcommand."""
    parser = argparse.ArgumentParser(
        prog="zerosmooth",
        description="Training-free high-frame-rate video generation for diffusers video pipelines.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, _, summary in DELEGATED_COMMANDS:  # listed for --help; main() hands their arguments over
        commands.add_parser(name, help=f"{summary} (see 'zerosmooth {name} --help')", add_help=False)
    gen = commands.add_parser(
        "generate",
        help="generate a video at scale^(stages-1) times the model's frame rate",
        description=(
            "Generate a video with a diffusers video pipeline (StableVideoDiffusionPipeline, AnimateDiffPipeline, "
            "TextToVideoSDPipeline) and multiply its frame rate with the ZeroSmooth cascade. Writes OUT.mp4, "
            "OUT.gif, OUT_sheet.png and (with 2+ stages) OUT_compare.mp4/.gif, all stages side by side."
        ),
    )
    gen.add_argument(
        "--model",
        help="local diffusers pipeline directory or hub id, loaded with DiffusionPipeline.from_pretrained "
        "(default: the embedded tiny SVD model trained on the procedural world)",
    )
    source = gen.add_mutually_exclusive_group()
    source.add_argument("--image", type=Path, help="conditioning image for image-to-video pipelines (SVD)")
    source.add_argument("--prompt", help="text prompt for text-to-video pipelines (AnimateDiff, ModelScope)")
    gen.add_argument("--negative-prompt", help="negative prompt for text-to-video pipelines")
    gen.add_argument("--scale", type=int, default=2, help="frame-rate factor per stage, an integer >= 2 (default 2)")
    gen.add_argument("--stages", type=int, default=2, help="stages; stage 1 is the base video (default 2)")
    gen.add_argument(
        "--frames",
        type=int,
        help="base frame count t0; the last stage has t0*scale^(stages-1) frames "
        f"(default: the model's own, {DEFAULT_MODEL_FRAMES} for the built-in model)",
    )
    gen.add_argument(
        "--steps",
        type=int,
        help=f"denoising steps (default: the pipeline's own, {DEFAULT_MODEL_STEPS} for the built-in model)",
    )
    gen.add_argument("--seed", type=int, default=0, help="seed of the noise and of the K/V operator draws (default 0)")
    gen.add_argument(
        "--fps",
        type=int,
        help="frame rate of the base video (default 7 for SVD, 8 otherwise); it is SVD's fps condition, and "
        "stage s plays at fps*scale^(s-1) so every stage lasts as long",
    )
    for side in ("height", "width"):
        gen.add_argument(
            f"--{side}",
            type=int,
            help=f"frame {side} in pixels (default: the pipeline's own, {DEFAULT_MODEL_SIZE} for the built-in model)",
        )
    gen.add_argument("--guidance", type=float, help="guidance scale (SVD: the max of its per-frame guidance)")
    gen.add_argument(
        "--method",
        choices=METHODS,
        default="zerosmooth",
        help="zerosmooth (the method), direct (base model run at every stage's frame count) or latent_ddnm "
        "(baseline); default zerosmooth",
    )
    gen.add_argument(
        "--out",
        type=Path,
        default=Path("out/zerosmooth"),
        help="output stem: writes STEM.mp4, STEM.gif, STEM_sheet.png, STEM_compare.mp4/.gif; an existing "
        "directory writes DIR/zerosmooth.* (default out/zerosmooth)",
    )
    gen.add_argument(
        "--device", default="auto", help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available)"
    )
    gen.add_argument(
        "--dtype",
        choices=["auto", *DTYPES],
        default="auto",
        help="model dtype (default: float16 on CUDA, float32 on CPU)",
    )
    gen.add_argument(
        "--threads",
        type=int,
        help="CPU intra-op threads (default: torch's own; 1 for the built-in tiny model, whose ops are too "
        "small to gain from threads and slow down a lot when cores are busy)",
    )
    gen.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    # Semantic errors found after parsing are reported through the subcommand's own parser.
    gen.set_defaults(error=gen.error)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``zerosmooth`` console script and ``python -m zerosmooth``.

    Returns 0 on success. Bad arguments exit with status 2 and a message naming the argument, the
    value and what was expected (argparse's convention).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    for name, module, _ in DELEGATED_COMMANDS:
        if argv[:1] == [name]:
            return importlib.import_module(module).main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return generate(args)
    except CLIError as error:
        args.error(str(error))


def _check_arguments(args: argparse.Namespace):
    """Semantic checks that need no model; returns the validated ZeroSmoothConfig."""
    from .config import ZeroSmoothConfig

    for name in ("frames", "steps", "fps", "height", "width", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CLIError(f"--{name} must be a positive integer, got {value}")
    if args.image is not None and not args.image.is_file():
        raise CLIError(f"--image: no such file {str(args.image)!r}")
    if args.model is not None and args.model.startswith((".", "/", "~")) and not Path(args.model).expanduser().exists():
        raise CLIError(
            f"--model: no such directory {args.model!r} (expected a diffusers pipeline directory or a hub id)"
        )
    try:
        return ZeroSmoothConfig(scale=args.scale, stages=args.stages, seed=args.seed, method=args.method)
    except ValueError as error:
        # The config names its field; point the user at the flag instead.
        message = str(error).replace("ZeroSmoothConfig.", "--")
        raise CLIError(message) from None


def _resolve_device_dtype(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    device_name = args.device
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device_name)
    except RuntimeError:
        raise CLIError(f"--device must be a torch device such as cpu or cuda, got {args.device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {args.device!r}: CUDA is not available on this machine (use --device cpu)")
    if args.dtype == "auto":
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    else:
        dtype = DTYPES[args.dtype]
    return device, dtype


def procedural_image(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A deterministic test picture: coloured shapes on a gradient, drawn at ``size = (width, height)``."""
    width, height = size
    generator = torch.Generator().manual_seed(seed)
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    for row in range(height):  # a vertical sky-to-ground gradient
        shade = row / max(1, height - 1)
        draw.line([(0, row), (width, row)], fill=(int(40 + 80 * shade), int(70 + 60 * shade), int(140 - 60 * shade)))
    colours = [(235, 60, 50), (60, 200, 80), (250, 210, 40), (220, 70, 220)]
    for index, colour in enumerate(colours):
        cx, cy, radius = (torch.rand(3, generator=generator) * torch.tensor([width, height, 0.15])).tolist()
        radius = max(2.0, (0.1 + radius) * min(width, height))
        box = [cx - radius, cy - radius, cx + radius, cy + radius]
        (draw.ellipse if index % 2 == 0 else draw.rectangle)(box, fill=colour)
    return image


def embedded_model_shipped() -> bool:
    from .demo import embedded_model_path

    return (embedded_model_path() / "model_index.json").is_file()


def world_image(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A first frame of the procedural world (held-out seeds), the kind of input the embedded model knows."""
    from .lab.world import HELD_OUT_SEED_BASE, WorldConfig, render_clip

    width, height = size
    frames = render_clip(HELD_OUT_SEED_BASE + seed, 1, WorldConfig(size=height)).frames  # [1, 3, H, W]
    image = Image.fromarray(video.to_uint8(frames)[0])
    return image if image.size == (width, height) else image.resize((width, height))


def _load_pipeline(args: argparse.Namespace, device: torch.device, dtype: torch.dtype):
    """The pipeline named by ``--model`` (or the default model) on ``device`` in ``dtype``."""
    if args.model is None:
        if embedded_model_shipped():
            from .demo import load_embedded_pipeline

            return load_embedded_pipeline(device, dtype)
        from .lab.tiny import tiny_svd_pipeline

        return tiny_svd_pipeline(seed=0).to(device=device, dtype=dtype)
    from diffusers import DiffusionPipeline

    try:
        pipe = DiffusionPipeline.from_pretrained(args.model, dtype=dtype)
    except Exception as error:  # from_pretrained fails in many ways (missing files, offline hub, bad index)
        raise CLIError(f"--model {args.model!r} could not be loaded as a diffusers pipeline: {error}") from None
    return pipe.to(device)


def _pipeline_kwargs(args: argparse.Namespace, pipe) -> tuple[dict, int, str]:
    """The wrapped pipeline's keyword arguments, the base fps and a description of the input."""
    parameters = inspect.signature(pipe.__call__).parameters
    image_to_video = "image" in parameters and "prompt" not in parameters
    builtin = args.model is None
    kwargs = {"generator": torch.Generator("cpu").manual_seed(args.seed), "output_type": "pt"}

    height = args.height or (DEFAULT_MODEL_SIZE if builtin else None)
    width = args.width or (DEFAULT_MODEL_SIZE if builtin else None)
    factor = getattr(pipe, "vae_scale_factor", 1)
    for name, value in (("height", height), ("width", width)):
        if value is not None:
            if value % factor:
                raise CLIError(
                    f"--{name} must be a multiple of {factor} (the VAE's downsampling) for this model, got {value}"
                )
            kwargs[name] = value
    frames = args.frames or (DEFAULT_MODEL_FRAMES if builtin else None)
    if frames is not None:
        kwargs["num_frames"] = frames
    steps = args.steps or (DEFAULT_MODEL_STEPS if builtin else None)
    if steps is not None:
        kwargs["num_inference_steps"] = steps

    fps = args.fps or (7 if image_to_video else 8)
    if image_to_video:
        if args.prompt is not None or args.negative_prompt is not None:
            raise CLIError(f"--prompt/--negative-prompt: {type(pipe).__name__} is image-to-video; pass --image instead")
        if args.image is not None:
            try:
                kwargs["image"] = Image.open(args.image).convert("RGB")
            except OSError as error:
                raise CLIError(f"--image {str(args.image)!r} is not a readable image: {error}") from None
            source = f"image {args.image}"
        elif builtin and embedded_model_shipped():
            size = (width, height)
            kwargs["image"] = world_image(size, seed=args.seed)
            source = f"a {size[0]}x{size[1]} first frame of the procedural world, seed {args.seed} (no --image given)"
        else:
            size = (width or 1024, height or 576)
            kwargs["image"] = procedural_image(size, seed=args.seed)
            source = f"a procedurally drawn {size[0]}x{size[1]} image of coloured shapes (no --image given)"
        if "fps" in parameters:
            kwargs["fps"] = fps
        if args.guidance is not None:
            kwargs["max_guidance_scale"] = args.guidance
    else:
        if args.image is not None:
            raise CLIError(f"--image: {type(pipe).__name__} is text-to-video; pass --prompt instead")
        if "prompt" not in parameters:
            raise CLIError(f"--model: {type(pipe).__name__} takes neither image= nor prompt=")
        if not args.prompt:
            raise CLIError(f"--prompt is required for the text-to-video pipeline {type(pipe).__name__}")
        kwargs["prompt"] = args.prompt
        if args.negative_prompt is not None:
            kwargs["negative_prompt"] = args.negative_prompt
        if args.guidance is not None:
            kwargs["guidance_scale"] = args.guidance
        source = f"prompt {args.prompt!r}"
    return kwargs, fps, source


def _output_stem(out: Path) -> Path:
    return out / "zerosmooth" if out.is_dir() else out


def generate(args: argparse.Namespace) -> int:
    """Run ``zerosmooth generate`` with parsed arguments; returns the exit status."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from . import ZeroSmooth

    config = _check_arguments(args)
    device, dtype = _resolve_device_dtype(args)
    start = time.perf_counter()
    untrained = args.model is None and not embedded_model_shipped()
    if args.model is None:
        print(UNTRAINED_NOTICE if untrained else EMBEDDED_NOTICE, flush=True)
    # Loading and the wrapped pipeline's own bars and deprecation notes would drown the report.
    verbosities = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    bars = diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    for log in (diffusers_logging, transformers_logging):
        log.set_verbosity_error()
        log.disable_progress_bar()
    threads = torch.get_num_threads()
    if args.threads is not None or args.model is None:
        torch.set_num_threads(args.threads or 1)
    try:
        pipe = _load_pipeline(args, device, dtype)
        pipe.set_progress_bar_config(disable=True)
        try:
            smoother = ZeroSmooth(pipe, config)
        except TypeError as error:
            raise CLIError(f"--model: {error}") from None
        kwargs, fps, source = _pipeline_kwargs(args, pipe)
        model_name = args.model or ("built-in tiny untrained SVD" if untrained else "embedded tiny world SVD")
        dtype_name = str(dtype).replace("torch.", "")
        print(f"Model: {model_name} ({type(pipe).__name__}) on {device}, {dtype_name}", flush=True)
        print(f"Input: {source}", flush=True)
        try:
            output = smoother(progress_bar=not args.no_progress, **kwargs)
        except ValueError as error:
            raise CLIError(str(error)) from None
    finally:
        # main() may run inside a larger program (tests): leave global state as it was.
        torch.set_num_threads(threads)
        for log, verbosity, bar in zip((diffusers_logging, transformers_logging), verbosities, bars):
            log.set_verbosity(verbosity)
            if bar:
                log.enable_progress_bar()

    stages = [stage[0] for stage in output.stages]  # first (only) video of the batch, [t_s, C, H, W]
    out_fps = fps * config.scale ** (len(stages) - 1)
    stem = _output_stem(args.out)
    written = [
        video.write_mp4(stages[-1], stem.with_name(stem.name + ".mp4"), fps=out_fps),
        video.write_gif(stages[-1], stem.with_name(stem.name + ".gif"), fps=out_fps),
    ]
    sheet_path = stem.with_name(stem.name + "_sheet.png")
    video.contact_sheet(stages, config.scale, sheet_path)
    written.append(sheet_path)
    if len(stages) > 1:
        comparison = video.side_by_side(stages, config.scale)
        written.append(video.write_mp4(comparison, stem.with_name(stem.name + "_compare.mp4"), fps=out_fps))
        written.append(video.write_gif(comparison, stem.with_name(stem.name + "_compare.gif"), fps=out_fps))

    elapsed = time.perf_counter() - start
    counts = " -> ".join(str(len(stage)) for stage in stages)
    height, width = stages[-1].shape[-2:]
    print(
        f"Generated {len(stages)} stage(s) with method {config.method}, scale {config.scale}: "
        f"frames per stage {counts} at {width}x{height} px; the last stage plays at {out_fps} fps."
    )
    for path in written:
        print(f"Wrote {path}")
    if untrained:
        print("(Untrained tiny model: the frames are noise-like by design.)")
    print(f"Done in {elapsed:.1f} s.")
    return 0
