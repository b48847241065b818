"""Jobs: one video each, checked against the model before anything loads, run in one process or
split between the processes of an ``accelerate launch`` / ``torchrun`` launch.

    from zerosmooth.batch import run_jobs, format_summary
    results = run_jobs(pipe, [{"image": "cat.png", "seed": 1, "out": "out/cat"},
                              {"image": "dog.png", "seed": 2, "out": "out/dog", "scale": 4}])
    print(format_summary(results))

A job takes ``zerosmooth generate``'s options by their long names (:data:`JOB_OPTIONS`). Each job
is seeded by its own seed, so its frames do not depend on which process runs it or how many there
are (given the same torch thread count everywhere: it changes float rounding). A job that fails is
reported and the others go on; a job whose outputs all exist is skipped unless ``overwrite=True``,
so an interrupted batch resumes where it stopped. Every job writes its files together: all of them
are rendered to hidden temporary files first and renamed into place at the end, so a failed or
interrupted job leaves no partial output; if they cannot be written where asked, they go to a
rescue folder instead (see :func:`write_outputs`).

``zerosmooth generate`` is a batch of one job, and ``zerosmooth generate --batch JOBS.jsonl`` one
job per line. This module imports only the standard library at import time: the command line
validates jobs with it before it imports torch, diffusers or accelerate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, TextIO, Union

from .config import KEY_FRAMES, METHODS, SPREADS, ZeroSmoothConfig

__all__ = [
    "JOB_OPTIONS",
    "Job",
    "JobError",
    "JobResult",
    "JobsFileError",
    "ModelSpec",
    "ModelSpecError",
    "format_summary",
    "make_job",
    "read_jobs",
    "run_job",
    "run_jobs",
]


# --- options ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One option of a job: ``--name`` on the command line, ``"name"`` in a jobs file."""

    name: str
    kind: type  # int, float, str, bool, or Path (a path given as a string)
    help: str
    minimum: Optional[int] = None
    choices: tuple[str, ...] = ()

    @property
    def attribute(self) -> str:
        return self.name.replace("-", "_")


JOB_OPTIONS: tuple[Option, ...] = (
    Option("image", Path, "conditioning image for image-to-video pipelines (SVD); default: the first frame of a "
           "procedural-world clip at the model's size"),
    Option("prompt", str, "text prompt for text-to-video pipelines (AnimateDiff, ModelScope)"),
    Option("negative-prompt", str, "negative prompt for text-to-video pipelines"),
    # scale and stages are checked by ZeroSmoothConfig, so their rules live in one place.
    Option("scale", int, "frame-rate factor per stage, an integer >= 2 (default 2)"),
    Option("stages", int, "stages; stage 1 is the base video (default 2)"),
    Option("frames", int, "base frame count t0; the last stage has t0*scale^(stages-1) frames (default: the "
           "model's own, e.g. unet/config.json num_frames for SVD)", minimum=1),
    Option("steps", int, "denoising steps (default: the pipeline's own)", minimum=1),
    Option("seed", int, "seed of the noise and of the K/V operator draws (default 0)", minimum=0),
    Option("fps", int, "frame rate of the base video (default: the model's training fps where its folder records "
           "it, else the pipeline's fps default for SVD, 8 otherwise); SVD's fps condition; stage s plays at "
           "fps*scale^(s-1) so every stage lasts as long", minimum=1),
    Option("height", int, "frame height in pixels (default: the model's, unet sample_size x VAE factor)", minimum=1),
    Option("width", int, "frame width in pixels (default: the model's, unet sample_size x VAE factor)", minimum=1),
    Option("guidance", float, "guidance scale (SVD: the max of its per-frame guidance)", minimum=0),
    Option("method", str, "zerosmooth+ddnm (default: the method plus latent DDNM's pull towards the finished "
           "previous stage), zerosmooth (the method alone, stages in lockstep: one step's key states, never a "
           "re-run), direct (the base model run at every stage's frame count) or latent_ddnm (baseline)",
           choices=METHODS),
    Option("key-state-budget-mib", int, "with a pull (zerosmooth+ddnm, latent_ddnm): MiB of key states a stage may "
           "hold for every step so that the next stage need not re-run it (default 2048; 0 re-runs the earlier "
           "stages: one step's states, more compute; the videos are the same either way)", minimum=0),
    Option("strength", float, "maximum w of the paper's attention blend o + w(ô − o) (default 0.8)"),
    Option("strength-until", float, "denoising progress (0 to 1] up to which the attention blend acts (default 1)"),
    Option("residual-strength", float, "strength of the residual-stream correction, which pins the long branch's "
           "key-frame rows at the model's ResNet outputs (0 switches it off; default: the library's)"),
    Option("residual-until", float, "denoising progress (0 to 1] up to which the residual-stream correction acts "
           "(default: the library's)"),
    Option("ddnm-until", float, "with a pull (zerosmooth+ddnm, latent_ddnm): denoising progress (0 to 1] up to "
           "which the pull towards the finished previous stage acts (default 1)"),
    Option("residual-spread", str, "how the residual correction reaches the in-between frames: keys (the key-frame "
           "rows only) or linear (each in-between frame moves with its two key frames); default: the library's",
           choices=SPREADS),
    Option("key-frames", str, "exact (default): after the last step every long stage's key frames are set to the "
           "previous stage's, the change spread over the in-between frames; free: kept as denoised (the paper; with "
           "--method zerosmooth --residual-strength 0 --no-color-correction)", choices=KEY_FRAMES),
    Option("key-guidance", bool, "SVD: give long-branch frame f the guidance of base position f/n^(s-1)"),
    Option("color-correction", bool, "AdaIN every long-branch frame to its key frame after each step (default: on; "
           "--no-color-correction for the paper's method)"),
    Option("out", Path, "output stem, or a name ending in .mp4/.gif; writes STEM.mp4, STEM.gif, STEM_sheet.png and, "
           "with 2+ stages, STEM_compare.mp4/.gif; an existing folder (or a name ending in /) writes "
           "FOLDER/zerosmooth.* (default out/zerosmooth)"),
    Option("save-frames", bool, "also write STEM_frames.npz: every stage's frames exactly as generated (float32 "
           "[T, C, H, W] in [0, 1])"),
)
OPTIONS_BY_NAME = {option.name: option for option in JOB_OPTIONS}
# ZeroSmoothConfig fields the job options set, and the option that sets each (for error messages).
CONFIG_OPTIONS = {"scale": "scale", "stages": "stages", "seed": "seed", "method": "method", "strength": "strength",
                  "strength_window": "strength-until", "residual_strength": "residual-strength",
                  "residual_window": "residual-until", "ddnm_window": "ddnm-until",
                  "residual_spread": "residual-spread", "key_frames": "key-frames", "key_guidance": "key-guidance",
                  "color_correction": "color-correction", "key_state_budget": "key-state-budget-mib"}
# Each correction's window (0, until), by config field: the options set its stop only.
WINDOW_OPTIONS = {"strength_window": "strength_until", "residual_window": "residual_until",
                  "ddnm_window": "ddnm_until"}


def config_fields(values: dict) -> dict:
    """The ZeroSmoothConfig fields a job's option values (by attribute name) set; unset ones keep
    the library's defaults."""
    fields = {name: values[name] for name in CONFIG_OPTIONS
              if name not in (*WINDOW_OPTIONS, "key_state_budget") and values.get(name) is not None}
    for name, until in WINDOW_OPTIONS.items():
        if values.get(until) is not None:
            fields[name] = (0.0, values[until])
    if values.get("key_state_budget_mib") is not None:
        fields["key_state_budget"] = values["key_state_budget_mib"] * 2**20
    return fields

# Settings of the whole run, given once on the command line: a jobs file naming one is told so.
RUN_SETTINGS = ("model", "device", "dtype", "threads", "batch", "overwrite", "report", "verbose", "no-progress")

# Media a user might name with --out that we do not write: refused rather than turned into clip.avi.mp4.
OTHER_MEDIA_SUFFIXES = (".avi", ".mov", ".mkv", ".webm", ".png", ".jpg", ".jpeg", ".webp", ".npz")
OUTPUT_SUFFIXES = (".mp4", ".gif")
DEFAULT_STEM_NAME = "zerosmooth"
DEFAULT_OUT = "out/zerosmooth"


LABEL = "\x00"  # where a message names the option: "--height" on the command line, "height" in a file


class JobError(ValueError):
    """A job's option has a bad value. The message names the option, the value and what was
    expected; :meth:`describe` spells the option as the user wrote it (``--height``, ``height``)."""

    def __init__(self, option: str, value: Any, expected: str, note: str = "", template: str = ""):
        self.option, self.value = option, value
        self.line = 0  # set where the job's line is known
        shown = str(value) if isinstance(value, Path) else value
        self.template = template or f"{LABEL} must be {expected}, got {shown!r}" + (f"; {note}" if note else "")
        super().__init__(self.describe(option))

    @classmethod
    def text(cls, option: str, value: Any, template: str) -> "JobError":
        """An error worded freely; ``LABEL`` in ``template`` stands for the option."""
        return cls(option, value, "", template=template)

    def describe(self, label: str) -> str:
        return self.template.replace(LABEL, label)


def _check_type(option: Option, value: Any) -> Any:
    """``value`` as ``option.kind``; JSON gives ints, floats, strings and booleans as such."""
    kind = option.kind
    at_least = f" >= {option.minimum}" if option.minimum is not None else ""
    if kind is bool:
        if not isinstance(value, bool):
            raise JobError(option.name, value, "true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise JobError(option.name, value, "an integer" + at_least)
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise JobError(option.name, value, "a finite number" + at_least)
        value = float(value)
    elif not isinstance(value, (str, Path)):
        raise JobError(option.name, value, "a string")
    if option.minimum is not None and value < option.minimum:
        expected = "an integer" if kind is int else "a number"
        raise JobError(option.name, value, f"{expected} >= {option.minimum}")
    if option.choices and value not in option.choices:
        raise JobError(option.name, value, f"one of {', '.join(option.choices)}")
    return value


# --- the model, read from its configs -------------------------------------------------------------


class ModelSpecError(ValueError):
    """The model cannot be used: no such folder, not a pipeline folder, unsupported pipeline, …"""


# What ZeroSmooth supports, per pipeline class: the input the pipeline takes, and the multiple
# its check_inputs demands of height and width (each of the three tests ``height % 8``). The
# adapters own the list of supported classes (``zerosmooth.adapters``, which imports diffusers);
# a test keeps this table equal to it.
PIPELINES = {
    "StableVideoDiffusionPipeline": ("image", 8),
    "AnimateDiffPipeline": ("prompt", 8),
    "TextToVideoSDPipeline": ("prompt", 8),
}
# The fps text-to-video pipelines are usually shown at (they take no fps argument).
TEXT_TO_VIDEO_FPS = 8


@dataclass(frozen=True)
class ModelSpec:
    """What the jobs are checked against, read from a pipeline's saved configs (``model_index.json``,
    ``unet/config.json``, ``vae/config.json``) without loading any weights, or from a loaded pipeline.

    ``size_multiple`` is what height and width must be multiples of: both the pipeline's own check
    (multiples of 8) and ZeroSmooth's (the VAE's downsampling times the UNet's, one factor 2 per
    down block but the last; ``Adapter.size_multiple``). ``trained_frames`` is the frame count the
    model was trained on where its config says (SVD's ``num_frames``; ``Adapter.trained_frames``).
    """

    name: str
    pipeline: str
    takes: str  # "image" or "prompt"
    size_multiple: int
    vae_factor: int
    unet_factor: int
    default_size: tuple[int, int]  # (height, width)
    trained_frames: Optional[int] = None  # SVD: unet num_frames
    max_positions: Optional[int] = None  # AnimateDiff: the motion module's position table
    trained_fps: Optional[int] = None  # the fps condition a ZeroSmooth-trained model used
    default_steps: Optional[int] = None  # the denoising steps a ZeroSmooth-trained model's record recommends

    @classmethod
    def from_configs(cls, name: str, pipeline: str, unet: dict, vae: dict, training: Optional[dict] = None):
        if pipeline not in PIPELINES:
            raise ModelSpecError(
                f"ZeroSmooth supports the diffusers pipelines {', '.join(PIPELINES)}; {name} is a {pipeline}"
            )
        takes, pipeline_multiple = PIPELINES[pipeline]
        vae_factor = 2 ** (len(vae.get("block_out_channels", ())) - 1)
        unet_factor = 2 ** (len(unet.get("block_out_channels", ())) - 1)
        size = unet.get("sample_size")
        size = size if isinstance(size, (list, tuple)) else (size, size)
        return cls(
            name=name,
            pipeline=pipeline,
            takes=takes,
            size_multiple=math.lcm(pipeline_multiple, vae_factor * unet_factor),
            vae_factor=vae_factor,
            unet_factor=unet_factor,
            default_size=(size[0] * vae_factor, size[1] * vae_factor),
            trained_frames=unet.get("num_frames") if takes == "image" else None,
            max_positions=unet.get("motion_max_seq_length"),
            trained_fps=(training or {}).get("fps_argument"),
            default_steps=(training or {}).get("inference_steps"),
        )

    @classmethod
    def from_directory(cls, path: Union[str, Path], name: Optional[str] = None) -> "ModelSpec":
        """Read the spec of the pipeline saved in ``path`` (``save_pretrained`` layout)."""
        path = Path(path)
        name = name or str(path)
        index = _read_json(path / "model_index.json", f"{name} is not a diffusers pipeline folder")
        pipeline = index.get("_class_name")
        if pipeline not in PIPELINES:
            raise ModelSpecError(
                f"ZeroSmooth supports the diffusers pipelines {', '.join(PIPELINES)}; {name} holds a {pipeline}"
            )
        unet = _read_json(path / "unet" / "config.json", f"{name} is an incomplete {pipeline}")
        vae = _read_json(path / "vae" / "config.json", f"{name} is an incomplete {pipeline}")
        training_file = path / "zerosmooth_training.json"
        training = None
        if training_file.is_file():
            training = _read_json(training_file, f"{name} has a broken training record")
        return cls.from_configs(name, pipeline, unet, vae, training)

    @classmethod
    def from_pipeline(cls, pipe) -> "ModelSpec":
        """The spec of a loaded pipeline (its components' configs)."""
        pipeline = type(pipe).__name__
        # A pipeline loaded from a folder remembers it; a ZeroSmooth-trained one keeps its training record there.
        record = Path(str(getattr(pipe.config, "_name_or_path", "") or "")) / "zerosmooth_training.json"
        training = _read_json(record, "the training record is broken") if record.is_file() else None
        unet = dict(pipe.unet.config) if hasattr(pipe, "unet") else {}
        vae = dict(pipe.vae.config) if hasattr(pipe, "vae") else {}
        return cls.from_configs(pipeline, pipeline, unet, vae, training)

    def playback_fps(self, job: "Job", pipe=None) -> int:
        """The base video's frame rate: the job's, else what the model was trained with, else the
        pipeline's fps default (SVD), else :data:`TEXT_TO_VIDEO_FPS`."""
        if job.fps is not None:
            return job.fps
        if self.trained_fps is not None:
            return self.trained_fps
        if self.takes == "image" and pipe is not None:
            import inspect

            default = inspect.signature(type(pipe).__call__).parameters.get("fps")
            if default is not None and isinstance(default.default, int):
                return default.default
        return TEXT_TO_VIDEO_FPS


def _read_json(path: Path, problem: str) -> dict:
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except FileNotFoundError:
        raise ModelSpecError(f"{problem}: {path} is missing") from None
    except (OSError, ValueError) as error:
        raise ModelSpecError(f"{problem}: {path} is unreadable ({error})") from None
    if not isinstance(data, dict):
        raise ModelSpecError(f"{problem}: {path} does not hold a JSON object")
    return data


# --- jobs ---------------------------------------------------------------------------------------


@dataclass
class Job:
    """One video to generate, validated (see :func:`make_job`). ``line`` is its line in a jobs
    file (0 for the command line's single job); ``stem`` the output stem; ``warnings`` what the
    user should know about it (e.g. a frame count the model was not trained on)."""

    line: int
    stem: Path
    image: Optional[Path] = None
    prompt: Optional[str] = None
    negative_prompt: Optional[str] = None
    scale: int = 2
    stages: int = 2
    frames: Optional[int] = None
    steps: Optional[int] = None
    seed: int = 0
    fps: Optional[int] = None
    height: Optional[int] = None
    width: Optional[int] = None
    guidance: Optional[float] = None
    method: str = ZeroSmoothConfig.method
    key_state_budget_mib: Optional[int] = None
    strength: Optional[float] = None
    strength_until: Optional[float] = None
    residual_strength: Optional[float] = None
    residual_until: Optional[float] = None
    ddnm_until: Optional[float] = None
    residual_spread: Optional[str] = None
    key_frames: Optional[str] = None
    key_guidance: Optional[bool] = None
    color_correction: Optional[bool] = None
    save_frames: bool = False
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (option, message with LABEL for it)

    def config(self) -> ZeroSmoothConfig:
        return ZeroSmoothConfig(**config_fields(vars(self)))

    def outputs(self, stem: Optional[Path] = None) -> dict[str, Path]:
        """The files the job writes, by kind; the main video (``mp4``) comes last, so that a job
        whose files were renamed into place in this order is finished exactly when all exist."""
        stem = self.stem if stem is None else stem
        paths = {"gif": stem.with_name(stem.name + ".gif"), "sheet": stem.with_name(stem.name + "_sheet.png")}
        if self.stages > 1:
            paths["compare_gif"] = stem.with_name(stem.name + "_compare.gif")
            paths["compare_mp4"] = stem.with_name(stem.name + "_compare.mp4")
        if self.save_frames:
            paths["frames"] = stem.with_name(stem.name + "_frames.npz")
        paths["mp4"] = stem.with_name(stem.name + ".mp4")
        return paths

    def finished(self) -> bool:
        return all(path.is_file() for path in self.outputs().values())


def output_stem(out: Union[str, Path]) -> Path:
    """The output stem ``--out`` names: a stem, a name ending in .mp4/.gif (the suffix is dropped),
    or a folder (an existing one, or a name ending in a slash) that gets ``zerosmooth.*`` files."""
    text = str(out)
    if not text.strip():
        raise JobError("out", text, "a file stem or a name ending in .mp4 or .gif, not empty")
    path = Path(text).expanduser()
    if text.endswith(("/", os.sep)) or _is_dir(path):
        return path / DEFAULT_STEM_NAME
    if path.name.lower() in OUTPUT_SUFFIXES:
        raise JobError("out", text, "a file stem or a name ending in .mp4 or .gif",
                       note="the name before the suffix is empty")
    suffix = path.suffix.lower()
    if suffix in OUTPUT_SUFFIXES:
        return path.with_suffix("")
    if suffix in OTHER_MEDIA_SUFFIXES:
        raise JobError("out", text, "a file stem or a name ending in .mp4 or .gif",
                       note=f"zerosmooth writes mp4, gif and png files, not {suffix}")
    return path


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a name too long for the file system is no folder (Python < 3.12 raises)
        return False


def _check_image(value: Path) -> Path:
    path = Path(value).expanduser()
    if not path.exists():
        raise JobError("image", str(value), "an existing image file", note="no such file")
    if not path.is_file():
        raise JobError("image", str(value), "an image file", note="it is a folder")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.size  # the header is read; decoding the pixels is the job's work
    except (UnidentifiedImageError, OSError) as error:
        raise JobError("image", str(value), "an image file PIL can read", note=root_message(error)) from None
    return path


def make_job(values: dict, spec: Optional[ModelSpec], line: int = 0, default_stem: Optional[Path] = None) -> Job:
    """Validate one job's option values (keys: :data:`JOB_OPTIONS` names, dashes or underscores)
    and return the :class:`Job`. With ``spec`` the values are also checked against the model.

    ``default_stem`` is the stem of a job that gives no ``out``. Raises :class:`JobError` naming
    the first bad option.
    """
    checked: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("_", "-")
        option = OPTIONS_BY_NAME.get(name)
        if option is None:
            if name in RUN_SETTINGS:
                raise JobError.text(key, value, f"{LABEL} applies to the whole run: give it on the command line")
            close = difflib.get_close_matches(name, OPTIONS_BY_NAME, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise JobError.text(key, value, f"{LABEL} is not a job option{hint}; the options are "
                                + ", ".join(OPTIONS_BY_NAME))
        if value is not None:
            checked[option.attribute] = _check_type(option, value)
    for text in ("prompt", "negative_prompt"):
        if text in checked and not checked[text].strip():
            raise JobError(text.replace("_", "-"), checked[text], "a non-empty text")
    if checked.get("seed", 0) >= 2**64:
        raise JobError("seed", checked["seed"], "an integer below 2**64 (torch.Generator's range)")
    for until in WINDOW_OPTIONS.values():
        if checked.get(until) is not None and not 0 < checked[until] <= 1:
            raise JobError(until.replace("_", "-"), checked[until], "a fraction of the denoising in (0, 1]")
    given = config_fields(checked)
    try:
        ZeroSmoothConfig(**given)
    except ValueError as error:  # the config names its field: "ZeroSmoothConfig.scale must be …"
        message = str(error)
        field_name = next((name for name in given if f"ZeroSmoothConfig.{name} " in message), "scale")
        option = CONFIG_OPTIONS.get(field_name, field_name)
        value = checked.get(option.replace("-", "_"), given.get(field_name))
        raise JobError.text(option, value, message.replace(f"ZeroSmoothConfig.{field_name}", LABEL)) from None
    if "image" in checked:
        checked["image"] = _check_image(checked["image"])
    if "out" in checked:
        stem = output_stem(checked.pop("out"))
    elif default_stem is not None:
        stem = default_stem
    else:
        stem = output_stem(DEFAULT_OUT)
    job = Job(line=line, stem=stem, **checked)
    idle_window_warnings(job)
    if spec is not None:
        check_against_model(job, spec)
    return job


def check_against_model(job: Job, spec: ModelSpec) -> None:
    """The checks that need the model: input kind, frame size, frame count (a warning)."""
    pipeline = spec.pipeline
    if spec.takes == "image":
        for name in ("prompt", "negative_prompt"):
            if getattr(job, name) is not None:
                raise JobError.text(name.replace("_", "-"), getattr(job, name),
                                    f"{LABEL}: {pipeline} is image-to-video and takes no prompt; drop {LABEL}")
    else:
        if job.image is not None:
            raise JobError.text("image", str(job.image),
                                f"{LABEL}: {pipeline} is text-to-video and takes a prompt, not an image; drop {LABEL}")
        if job.prompt is None:
            raise JobError.text("prompt", None, f"{LABEL} is required for the text-to-video pipeline {pipeline}")
    check_sizes(job, spec)
    frame_warnings(job, spec)


def check_sizes(job: Job, spec: ModelSpec) -> None:
    """Height and width against the pipeline's real constraint (see :class:`ModelSpec`)."""
    pipeline = spec.pipeline
    for side in ("height", "width"):
        value = getattr(job, side)
        multiple = spec.size_multiple
        if value is not None and value % multiple:
            lower, upper = value // multiple * multiple, (value // multiple + 1) * multiple
            nearest = f"{lower} or {upper}" if lower else str(upper)
            raise JobError(
                side, value, f"a multiple of {multiple} for {pipeline}",
                note=f"the pipeline wants multiples of {PIPELINES[pipeline][1]}, ZeroSmooth of the VAE factor "
                     f"{spec.vae_factor} x the UNet downsampling {spec.unet_factor}; nearest: {nearest}",
            )


def idle_window_warnings(job: Job) -> None:
    """Warn (``job.warnings``) about a correction's window given to a method without that correction."""
    config = job.config()
    if job.strength_until is not None and not config.corrects:
        job.warnings.append(("strength-until", (
            f"{LABEL} has no effect with method {config.method}, which has no attention blend "
            "(zerosmooth, zerosmooth+ddnm have)")))
    if job.ddnm_until is not None and not config.pulls:
        job.warnings.append(("ddnm-until", (
            f"{LABEL} has no effect with method {config.method}, which has no pull "
            "(zerosmooth+ddnm, latent_ddnm have)")))


def frame_warnings(job: Job, spec: ModelSpec) -> None:
    """Warn (``job.warnings``) about a frame count the model was not made for."""
    if job.frames is not None:
        if spec.trained_frames is not None and job.frames != spec.trained_frames:
            relation = "below" if job.frames < spec.trained_frames else "above"
            job.warnings.append(("frames", (
                f"{LABEL} {job.frames} is {relation} the {spec.trained_frames} frames the model was trained on "
                "(unet/config.json num_frames); the base video may suffer"
            )))
        if spec.max_positions is not None and job.frames > spec.max_positions:
            job.warnings.append(("frames", (
                f"{LABEL} {job.frames} is above the {spec.max_positions} frame positions of the motion module "
                "(unet/config.json motion_max_seq_length); the later frames get extrapolated positions"
            )))


class JobsFileError(ValueError):
    """Some jobs are bad; ``problems`` holds ``(number, message)`` for each, numbered as ``unit``s
    of ``source`` (lines of a jobs file, or jobs of a list)."""

    def __init__(self, source: str, problems: list[tuple[int, str]], unit: str = "line"):
        self.source, self.problems = source, problems
        if not problems:
            super().__init__(f"{source} holds no jobs (every {unit} is blank)")
            return
        shown = "\n".join(f"  {unit} {number}: {message}" for number, message in problems[:20])
        more = f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else ""
        count = f"1 bad {unit}" if len(problems) == 1 else f"{len(problems)} bad {unit}s"
        super().__init__(f"{source} has {count} (nothing was run):\n{shown}{more}")


def numbered_stem(stem: Path, line: int) -> Path:
    """The stem of a job that names no ``out``: ``STEM_jobLINE``."""
    return stem.with_name(f"{stem.name}_job{line}")


def read_jobs(path: Union[str, Path], defaults: dict, spec: Optional[ModelSpec], default_stem: Path) -> list[Job]:
    """Read a jobs file: one JSON object per line with :data:`JOB_OPTIONS` (blank lines are
    skipped); ``defaults`` fill in what a line does not give. A job without ``out`` writes
    ``DEFAULT_STEM_jobLINE.*``. Every line is checked before anything runs; raises
    :class:`JobsFileError` listing every bad line, or :class:`OSError` if the file is unreadable.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    jobs, problems = [], []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            values = json.loads(raw)
        except ValueError as error:
            problems.append((number, f"not a JSON object ({error})"))
            continue
        if not isinstance(values, dict):
            problems.append((number, f"not a JSON object (got {type(values).__name__})"))
            continue
        try:
            stem = numbered_stem(default_stem, number)
            jobs.append(make_job({**defaults, **values}, spec, line=number, default_stem=stem))
        except JobError as error:
            problems.append((number, error.describe(error.option)))
    if not jobs and not problems:
        raise JobsFileError(str(path), [])
    problems += _shared_outputs(jobs, "line")
    if problems:
        raise JobsFileError(str(path), sorted(problems))
    return jobs


def _shared_outputs(jobs: Sequence[Job], unit: str) -> list[tuple[int, str]]:
    """A problem for every job that would write another job's files."""
    problems, seen = [], {}
    for job in jobs:
        key = job.stem.resolve()
        if key in seen:
            message = f"out {str(job.stem)!r} is also {unit} {seen[key]}'s output; give each job its own"
            problems.append((job.line, message))
        seen.setdefault(key, job.line)
    return problems


def prepare_outputs(jobs: Sequence[Job]) -> list[Path]:
    """Make sure every job can write its files: create the folders, refuse a file standing where a
    folder or an output must go, names the file system cannot hold, and folders it cannot write
    (a file is created and removed to find out). Returns the folders created, deepest last, so a
    caller that gives up can remove them. Raises :class:`JobError` (``out``) with ``job.line``
    set as ``error.line``."""
    created: list[Path] = []
    checked: set[Path] = set()
    try:
        for job in jobs:
            folder = job.stem.parent
            try:
                if folder not in checked:
                    created += _make_folder(folder, job)
                    checked.add(folder)
                for path in job.outputs().values():
                    if len(os.fsencode(path.name)) > _name_max(folder):
                        raise JobError("out", str(job.stem), "a stem the file system can hold",
                                       note=f"{path.name!r} is longer than {_name_max(folder)} bytes")
                    if path.is_dir():
                        raise JobError("out", str(job.stem), "a stem whose outputs are free names",
                                       note=f"{path} is a folder")
            except JobError as error:
                error.line = job.line
                raise
    except BaseException:
        remove_empty_folders(created)
        raise
    return created


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def _make_folder(folder: Path, job: Job) -> list[Path]:
    created: list[Path] = []
    try:
        missing = []
        existing = folder
        while not existing.exists():
            missing.append(existing)
            existing = existing.parent
        if not existing.is_dir():
            raise JobError("out", str(job.stem), "a path under a folder", note=f"{existing} is a file, not a folder")
        for path in reversed(missing):
            path.mkdir(exist_ok=True)  # the other processes of a launch make the same folders
            created.append(path)
        probe = folder / f".zs-probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        remove_empty_folders(created)
        raise JobError("out", str(job.stem), "a path in a writable folder", note=root_message(error)) from None
    return created


def remove_empty_folders(folders: Sequence[Path]) -> None:
    """Remove folders :func:`prepare_outputs` created, deepest first, if they are still empty."""
    for folder in reversed(folders):
        with contextlib.suppress(OSError):
            folder.rmdir()


# --- running ------------------------------------------------------------------------------------


@dataclass
class JobResult:
    """How one job went. ``status``: ``done``; ``skipped`` (its outputs existed); ``rescued`` (the
    frames were generated but could not be written where asked; ``outputs`` are in the rescue
    folder and ``message`` says why); ``failed`` (``message`` says why; ``detail`` holds the
    traceback). Plain data, so results travel between processes."""

    line: int
    status: str
    outputs: list[str]
    seconds: float
    process: int = 0
    frames: list[int] = field(default_factory=list)  # per stage
    size: list[int] = field(default_factory=list)  # [height, width]
    fps: float = 0.0  # the last stage's playback rate
    message: str = ""
    detail: str = ""


def root_message(error: BaseException) -> str:
    """The innermost cause of ``error`` as ``Type: message`` (one line). Libraries wrap errors
    and refer to "the stacktrace above", which the user is not shown."""
    while error.__cause__ is not None or (error.__context__ is not None and not error.__suppress_context__):
        error = error.__cause__ or error.__context__
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def _world_frame(size: tuple[int, int], seed: int):
    """The first frame of a held-out procedural-world clip at ``size = (height, width)``: the kind
    of input the embedded model knows."""
    from PIL import Image

    from . import video
    from .lab.world import HELD_OUT_SEED_BASE, WorldConfig, render_clip

    height, width = size
    frames = render_clip(HELD_OUT_SEED_BASE + seed, 1, WorldConfig(size=height)).frames
    image = Image.fromarray(video.to_uint8(frames)[0])
    return image if image.size == (width, height) else image.resize((width, height))


def pipeline_arguments(pipe, job: Job, spec: ModelSpec) -> tuple[dict, int, str]:
    """The wrapped pipeline's keyword arguments for ``job``, the base video's fps and a description
    of the input. Decodes the job's image (raises OSError if it cannot)."""
    import torch
    from PIL import Image

    # The size is always passed: SVD's own default (576x1024) is not the model's, unet sample_size x VAE factor is.
    height, width = job.height or spec.default_size[0], job.width or spec.default_size[1]
    kwargs: dict[str, Any] = {
        "generator": torch.Generator("cpu").manual_seed(job.seed),
        "output_type": "pt",
        "height": height,
        "width": width,
    }
    if job.frames is not None:
        kwargs["num_frames"] = job.frames
    steps = job.steps or spec.default_steps
    if steps is not None:
        kwargs["num_inference_steps"] = steps
    fps = spec.playback_fps(job, pipe)
    if spec.takes == "image":
        if job.image is not None:
            try:
                with Image.open(job.image) as image:
                    kwargs["image"] = image.convert("RGB")
            except Exception as error:  # noqa: BLE001 - PIL raises OSError, struct.error, …
                raise OSError(f"image {str(job.image)!r} cannot be decoded ({root_message(error)})") from None
            source = f"image {job.image}"
        else:
            kwargs["image"] = _world_frame((height, width), job.seed)
            source = f"a {width}x{height} first frame of the procedural world, seed {job.seed} (no image given)"
        kwargs["fps"] = fps
        if job.guidance is not None:
            kwargs["max_guidance_scale"] = job.guidance
    else:
        kwargs["prompt"] = job.prompt
        if job.negative_prompt is not None:
            kwargs["negative_prompt"] = job.negative_prompt
        if job.guidance is not None:
            kwargs["guidance_scale"] = job.guidance
        source = f"prompt {job.prompt!r}"
    return kwargs, fps, source


def generate(pipe, job: Job, spec: ModelSpec, progress_bar: bool = False,
             announce: Optional[Callable[[str], None]] = None) -> tuple[list, int]:
    """Run ``job`` through the ZeroSmooth cascade: every stage's frames ``[T_s, C, H, W]`` (float,
    in [0, 1]) and the base video's fps."""
    from . import ZeroSmooth

    kwargs, fps, source = pipeline_arguments(pipe, job, spec)
    if announce is not None:
        announce(f"Input: {source}")
        announce(f"Generating {job.stages} stage(s), scale {job.scale}, method {job.method}")
    output = ZeroSmooth(pipe, job.config())(progress_bar=progress_bar, **kwargs)
    return [stage[0] for stage in output.stages], fps


@contextlib.contextmanager
def _interrupts_deferred():
    """Hold Ctrl-C back while a set of files is renamed into place, so the set is never split."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda *_: received.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def _write_set(job: Job, stages: list, fps: int, stem: Path) -> list[Path]:
    """Write the job's files for ``stem`` all or nothing: each to a hidden temporary file, then all
    renamed into place (the mp4 last). Returns their paths, the mp4 first."""
    from . import video

    out_fps = fps * job.scale ** (len(stages) - 1)
    writers = {
        "gif": lambda path: video.write_gif(stages[-1], path, fps=out_fps),
        "sheet": lambda path: video.contact_sheet(stages, job.scale, path),
        "compare_gif": lambda path: video.write_gif(video.side_by_side(stages, job.scale), path, fps=out_fps),
        "compare_mp4": lambda path: video.write_mp4(video.side_by_side(stages, job.scale), path, fps=out_fps),
        "frames": lambda path: video.write_npz(stages, path),
        "mp4": lambda path: video.write_mp4(stages[-1], path, fps=out_fps),
    }
    targets = job.outputs(stem)
    staged: dict[Path, Path] = {}
    committed: list[Path] = []
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        for kind, final in targets.items():
            staged[final] = video.temporary_path(final)
            writers[kind](staged[final])
        with _interrupts_deferred():
            for final, temporary in staged.items():
                os.replace(temporary, final)
                committed.append(final)
    except BaseException:
        for path in [*staged.values(), *committed]:
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    written = list(targets.values())
    return [written[-1], *written[:-1]]  # the main video first


def rescue_folders() -> list[Path]:
    """Where a job's files go when its own folder fails: the current folder, then the temp folder."""
    return [Path.cwd(), Path(tempfile.gettempdir())]


def write_outputs(job: Job, stages: list, fps: int) -> tuple[list[Path], str]:
    """Write the job's files to its stem; if that fails, to a new ``zerosmooth-rescued-*`` folder in
    the first of :func:`rescue_folders` that works (the frames alone as ``.npz`` if even the video
    writers fail there). Returns the paths written and, when rescued, the reason (else ``""``).
    Raises the first error if nothing could be written anywhere."""
    from . import video

    try:
        return _write_set(job, stages, fps, job.stem), ""
    except Exception as error:  # noqa: BLE001 - any failure to write gets the rescue attempt
        failure = error
    reason = f"could not write {job.stem}.*: {root_message(failure)}"
    for write_all in (True, False):
        for parent in rescue_folders():
            try:
                folder = Path(tempfile.mkdtemp(prefix=f"zerosmooth-rescued-{job.stem.name}-", dir=parent))
            except OSError:
                continue
            try:
                if write_all:
                    return _write_set(job, stages, fps, folder / job.stem.name), reason
                return [video.write_npz(stages, folder / f"{job.stem.name}_frames.npz")], reason
            except Exception:  # noqa: BLE001 - try the next place
                remove_empty_folders([folder])
    raise failure


def run_job(pipe, job: Job, spec: Optional[ModelSpec] = None, *, overwrite: bool = True, progress_bar: bool = False,
            announce: Optional[Callable[[str], None]] = None, process: int = 0) -> JobResult:
    """Generate and write one job in this process; any error except an interrupt becomes a
    ``failed`` result. With ``overwrite=False`` a job whose outputs all exist is skipped."""
    spec = spec or ModelSpec.from_pipeline(pipe)
    start = time.perf_counter()
    main = str(job.outputs()["mp4"])

    def result(status: str, outputs: Iterable, message: str = "", detail: str = "", stages=(), fps=0) -> JobResult:
        return JobResult(
            line=job.line, status=status, outputs=[str(path) for path in outputs],
            seconds=round(time.perf_counter() - start, 3), process=process, frames=[len(stage) for stage in stages],
            size=list(stages[-1].shape[-2:]) if stages else [],
            fps=fps * job.scale ** (len(stages) - 1) if stages else 0,
            message=message, detail=detail,
        )

    if not overwrite and job.finished():
        return result("skipped", [main], "its outputs exist (overwrite to redo)")
    try:
        stages, fps = generate(pipe, job, spec, progress_bar=progress_bar, announce=announce)
        if announce is not None:
            announce("Writing the outputs")
        written, rescued = write_outputs(job, stages, fps)
    except Exception as error:  # noqa: BLE001 - failure isolation: the error is the job's result
        return result("failed", [], root_message(error), traceback.format_exc())
    if rescued:
        return result("rescued", written, rescued, stages=stages, fps=fps)
    return result("done", written, stages=stages, fps=fps)


# --- many jobs, many processes ------------------------------------------------------------------


def launched_processes() -> int:
    """How many processes ``torchrun`` / ``accelerate launch`` started (1 when run directly)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


class Team:
    """The processes of this launch, through accelerate's ``PartialState`` (gloo between CPU
    processes), or this process alone when not launched. Results and progress travel over gloo
    and a TCP store whatever the device backend (NCCL cannot carry Python objects)."""

    _current: Optional["Team"] = None

    def __init__(self, cpu: bool):
        self.rank, self.size, self.group, self.state = 0, 1, None, None
        if launched_processes() > 1:
            from accelerate import PartialState

            self.state = PartialState(cpu=cpu)
            self.rank, self.size = self.state.process_index, self.state.num_processes
        if self.size > 1:
            import torch.distributed as dist

            self.group = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")

    @classmethod
    def current(cls, cpu: bool = True) -> "Team":
        """This process's team, made once (every process must make it at the same point)."""
        if cls._current is None:
            cls._current = cls(cpu)
        return cls._current

    @property
    def device(self):
        """This process's device: its own GPU under a multi-GPU launch."""
        return None if self.state is None else self.state.device

    def share(self, jobs: list) -> list:
        if self.state is None:
            return list(jobs)
        with self.state.split_between_processes(list(jobs)) as mine:
            return list(mine)

    def broadcast(self, value):
        if self.size == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, values: list) -> list:
        """Every process's ``values`` concatenated, on every process."""
        if self.size == 1:
            return list(values)
        import torch.distributed as dist

        parts: list = [None] * self.size
        dist.all_gather_object(parts, list(values), group=self.group)
        return [value for part in parts for value in part]


class _Board:
    """The batch's one progress view: jobs done / total, per process, drawn by process 0 alone
    (one line redrawn in place on a terminal, a plain line per change otherwise). Other processes
    post their results to a TCP store that process 0 reads."""

    def __init__(self, team: Team, total: int, mine: int, show: bool, stream: Optional[TextIO] = None):
        self.team, self.total, self.show = team, total, show
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.shares = [mine]
        self.counts = [0] * team.size
        self.failed = self.skipped = 0
        self.last = ""
        self.store = self.thread = None
        if team.size > 1:
            import torch.distributed as dist

            host = os.environ.get("MASTER_ADDR", "127.0.0.1")
            server = dist.TCPStore(host, 0, is_master=True, wait_for_workers=False) if team.rank == 0 else None
            port = team.broadcast(server.port if server else None)
            self.store = server or dist.TCPStore(host, port, is_master=False)
            self.store.set(f"share/{team.rank}", str(mine))
            self.posted = 0
            if team.rank == 0 and show:
                self.shares = [int(self.store.get(f"share/{rank}")) for rank in range(team.size)]
                self.thread = threading.Thread(target=self._poll, args=(host, port), daemon=True)
                self.thread.start()
        self._draw()

    def post(self, result: JobResult) -> None:
        if self.store is None:
            self._count(result)
            self._draw()
            return
        self.store.set(f"result/{self.team.rank}/{self.posted}", json.dumps(dataclasses.asdict(result)))
        self.posted += 1
        self.store.add(f"count/{self.team.rank}", 1)

    def close(self) -> None:
        if self.thread is not None:
            self.thread.join()
        if self.show and self.tty and self.last:
            self.stream.write("\n")
            self.stream.flush()

    def _poll(self, host: str, port: int) -> None:
        import torch.distributed as dist

        store = dist.TCPStore(host, port, is_master=False)  # its own connection: stores are not thread-safe
        while sum(self.counts) < self.total:
            for rank in range(self.team.size):
                posted = int(store.add(f"count/{rank}", 0))
                while self.counts[rank] < posted:
                    data = json.loads(store.get(f"result/{rank}/{self.counts[rank]}"))
                    self._count(JobResult(**data))
            self._draw()
            time.sleep(0.2)

    def _count(self, result: JobResult) -> None:
        self.counts[result.process] += 1
        self.failed += result.status == "failed"
        self.skipped += result.status == "skipped"
        if result.status in ("failed", "rescued") and self.show:
            self._print(f"line {result.line} {result.status}: {result.message}")

    def _draw(self) -> None:
        if not self.show or self.team.rank != 0:
            return
        text = f"jobs {sum(self.counts)}/{self.total} done"
        extras = [f"{count} {name}" for count, name in ((self.failed, "failed"), (self.skipped, "skipped")) if count]
        if extras:
            text += f" ({', '.join(extras)})"
        if self.team.size > 1:
            text += "".join(f" | process {rank}: {self.counts[rank]}/{share}" for rank, share in enumerate(self.shares))
        if text == self.last:
            return
        self.last = text
        self.stream.write(f"\r\033[K{text}" if self.tty else f"{text}\n")
        self.stream.flush()

    def _print(self, text: str) -> None:
        if self.team.rank != 0:
            return
        self.stream.write(f"\r\033[K{text}\n" if self.tty else f"{text}\n")
        self.last = ""
        self.stream.flush()


def run_jobs(pipe, jobs: Sequence[Union[Job, dict]], *, overwrite: bool = False, progress: bool = True,
             stream: Optional[TextIO] = None) -> list[JobResult]:
    """Run ``jobs`` with ``pipe``: in this process, or split between the processes of an
    ``accelerate launch`` / ``torchrun`` launch (every process calls ``run_jobs`` with the same
    jobs and its own copy of the pipeline on its own device).

    Jobs are :class:`Job` objects or dicts of :data:`JOB_OPTIONS` values; all are checked before
    any runs (raises :class:`JobsFileError` naming each bad one, numbered from 1). A job that
    fails becomes a ``failed`` result and the others go on; with ``overwrite=False`` a job whose
    outputs all exist is skipped. ``progress`` shows jobs done / total per process on ``stream``
    (stderr). Returns every job's :class:`JobResult`, in job order, on every process.
    """
    import torch

    spec = ModelSpec.from_pipeline(pipe)
    checked, problems = [], []
    for number, job in enumerate(jobs, start=1):
        if isinstance(job, Job):
            checked.append(job)
            continue
        try:
            job = make_job(job, spec, line=number, default_stem=numbered_stem(output_stem(DEFAULT_OUT), number))
            checked.append(job)
        except JobError as error:
            problems.append((number, error.describe(error.option)))
    problems += _shared_outputs(checked, "job")
    if problems:
        raise JobsFileError("the job list", sorted(problems), unit="job")
    team = Team.current(cpu=torch.device(pipe.device).type == "cpu")
    mine = team.share(checked)
    board = _Board(team, len(checked), len(mine), progress, stream)
    results = []
    for job in mine:
        results.append(run_job(pipe, job, spec, overwrite=overwrite, process=team.rank))
        board.post(results[-1])
    board.close()
    order = {job.line: index for index, job in enumerate(checked)}
    return sorted(team.gather(results), key=lambda result: order[result.line])


def format_summary(results: Sequence[JobResult]) -> str:
    """One table of the batch: job (line), status, seconds, process (when several) and output (or
    why it failed)."""
    several = len({result.process for result in results}) > 1
    header = ["job", "status", "seconds"] + (["process"] if several else []) + ["output"]
    rows = []
    for result in results:
        output = result.outputs[0] if result.outputs else ""
        if result.status == "failed":
            output = result.message
        elif result.status == "rescued":
            output = f"{output} ({result.message})"
        row = [f"line {result.line}" if result.line else "job", result.status, f"{result.seconds:.1f}"]
        rows.append(row + ([str(result.process)] if several else []) + [output])
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    statuses = ("done", "skipped", "rescued", "failed")
    counts = {status: sum(result.status == status for result in results) for status in statuses}
    lines.append(", ".join(f"{count} {status}" for status, count in counts.items() if count) or "no jobs")
    return "\n".join(line.rstrip() for line in lines)
