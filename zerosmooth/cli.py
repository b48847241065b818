"""The ``zerosmooth`` command.

* ``zerosmooth generate``: run a diffusers video pipeline through the ZeroSmooth cascade and write
  an mp4, a gif, a PNG contact sheet (key vs interpolated frames per stage) and a side-by-side
  comparison video of all stages over the same time span. With no ``--model`` it runs the
  embedded default model (``zerosmooth.demo``), fed a frame of the procedural world.
  ``--batch JOBS.jsonl`` runs one job per line, in one process or split between the processes of
  ``accelerate launch`` / ``torchrun`` (see ``zerosmooth.batch``).
* ``zerosmooth train-tiny …``: ``python -m zerosmooth.lab.train …`` (trains the embedded model).
* ``zerosmooth evaluate …``: ``python -m zerosmooth.lab.evaluate …`` (the paper-style comparison).

Every argument is checked before anything heavy is imported or loaded: ``--help`` and argument
errors cost about as much as starting Python, and the model's constraints are read from its saved
configs. Exit codes: 0 done, 1 failed (a job, the model's loading), 2 bad input (nothing was done),
3 generated but written elsewhere than asked (the message says where), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

from . import batch
from .batch import LABEL, JOB_OPTIONS, Job, JobError, JobResult, JobsFileError, ModelSpec, ModelSpecError

EXIT_DONE, EXIT_FAILED, EXIT_USAGE, EXIT_RESCUED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
DTYPES = ("float32", "float16", "bfloat16")
DEVICE = re.compile(r"(auto|cpu|cuda|mps|xpu)(:\d+)?")
# A hub id: "name" or "owner/name" of letters, digits, "-", "_", ".".
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[\w.-]{1,96})?")
TRAIN_COMMAND = "zerosmooth train-tiny --out RUN_DIR --export {path}"

DELEGATED_COMMANDS = (
    ("train-tiny", "zerosmooth.lab.train", "train the embedded model on the procedural world"),
    ("evaluate", "zerosmooth.lab.evaluate", "compare ZeroSmooth with baselines and ablations on the embedded model"),
)


class UsageError(Exception):
    """Bad input found after parsing; nothing was done (exit 2)."""


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
        epilog="Exit codes: 0 done; 1 failed (a job, or loading the model); 2 bad input, nothing was done; "
        "3 generated but written elsewhere than asked (the message says where); 130 interrupted.",
    )
    gen.add_argument(
        "--model",
        help="local diffusers pipeline folder or hub id, loaded with DiffusionPipeline.from_pretrained "
        "(default: the embedded 64-pixel, 14-frame SVD-style model trained on the procedural world)",
    )
    _add_job_options(gen)
    gen.add_argument("--device", default="auto", help="torch device: cpu, cuda, cuda:N, mps, xpu (default: cuda if "
                     "available; under a multi-process launch each process takes its own GPU)")
    gen.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                     help="model dtype (default: float16 on CUDA, float32 otherwise)")
    gen.add_argument("--threads", type=int, help="CPU intra-op threads per process (default: torch's own; 1 with "
                     "--batch, so a job's frames do not depend on how many processes share the machine, and 1 for "
                     "the embedded model, whose ops are too small to gain from threads)")
    gen.add_argument("--batch", type=Path, metavar="JOBS.jsonl",
                     help="run one job per line: a JSON object of this command's options by their long names "
                     "(image or prompt, seed, out, frames, scale, stages, …); the options given here are every "
                     "job's defaults; a job without out writes OUT_jobLINE.*")
    gen.add_argument("--overwrite", action="store_true",
                     help="with --batch: redo jobs whose outputs exist (by default they are skipped, so a rerun "
                     "resumes)")
    gen.add_argument("--report", type=Path, metavar="FILE.json",
                     help="also write every job's result (line, status, outputs, seconds, process, error) as JSON")
    gen.add_argument("--verbose", action="store_true",
                     help="show everything: third-party warnings, loading bars, tracebacks of errors")
    gen.add_argument("--no-progress", action="store_true", help="hide progress bars")
    gen.set_defaults(error=gen.error)
    _diagnose_parser(commands)
    return parser


def _add_job_options(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """Every job option but ``skip`` as a command-line flag; ``--image`` and ``--prompt`` exclude each other."""
    source = parser.add_mutually_exclusive_group()
    for option in JOB_OPTIONS:
        if option.name in skip:
            continue
        target = source if option.name in ("image", "prompt") else parser
        if option.kind is bool:
            target.add_argument(f"--{option.name}", action=argparse.BooleanOptionalAction, default=None,
                                help=option.help)
        else:
            kind = {int: int, float: float}.get(option.kind, str)
            target.add_argument(f"--{option.name}", type=kind, choices=option.choices or None, help=option.help)


# Job options that do not apply to a diagnosis (it writes tables, not videos).
NOT_DIAGNOSED = ("out", "save-frames")


def _diagnose_parser(commands) -> None:
    diag = commands.add_parser(
        "diagnose",
        help="where a model loses key-frame consistency: per-module drift between the branches, and its mixers",
        description=(
            "Run one ZeroSmooth call with read-only probes and report, at the chosen denoising steps, how far "
            "every attention module's, ResNet block's and temporal layer's output at the long branch's key "
            "frames is from the key branch's (relative drift, 0 = pinned); and every spatial/temporal mixer's "
            "spatial weight and measured temporal share. Writes OUT/drift.md, drift.csv, drift.png (with "
            "matplotlib) and mixers.md."
        ),
    )
    diag.add_argument("--model", help="local diffusers pipeline folder or hub id (default: the embedded model)")
    _add_job_options(diag, skip=NOT_DIAGNOSED)
    diag.add_argument("--at", default="first,middle,last", metavar="STEPS",
                      help="denoising steps to measure: 0-based numbers and/or first, middle, last (comma-separated)")
    diag.add_argument("--out", type=Path, default=Path("out/diagnose"), help="output folder")
    diag.add_argument("--device", default="auto", help="torch device (default: cuda if available)")
    diag.add_argument("--dtype", choices=["auto", *DTYPES], default="auto", help="model dtype")
    diag.add_argument("--threads", type=int, help="CPU intra-op threads (default: 1 for the embedded model)")
    diag.add_argument("--verbose", action="store_true", help="show third-party warnings and loading bars")
    diag.set_defaults(error=diag.error, batch=None, overwrite=False, report=None)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``zerosmooth`` console script and ``python -m zerosmooth``; returns the
    exit code (bad arguments exit with 2 through argparse, naming the argument, the value and what
    was expected)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for name, module, _ in DELEGATED_COMMANDS:
        if argv[:1] == [name]:
            return importlib.import_module(module).main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return _diagnose(args) if args.command == "diagnose" else _generate(args)
    except UsageError as error:
        if _rank_from_environment() != 0:  # every process found the same error; one says it
            raise SystemExit(EXIT_USAGE) from None
        args.error(str(error))
    except KeyboardInterrupt:
        print("Interrupted: no partial outputs were left.", file=sys.stderr)
        return EXIT_INTERRUPTED


def _rank_from_environment() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _say(text: str) -> None:
    print(text, flush=True)


# --- checks -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _as_usage(label=lambda error: f"--{error.option}") -> Iterator[None]:
    try:
        yield
    except JobError as error:
        raise UsageError(error.describe(label(error))) from None
    except JobsFileError as error:
        raise UsageError(str(error)) from None
    except ModelSpecError as error:
        raise UsageError(f"--model: {error}") from None


def _job_values(args: argparse.Namespace) -> dict:
    """The job options given on the command line."""
    values = {}
    for option in JOB_OPTIONS:
        value = getattr(args, option.attribute, None)  # diagnose has no output options
        if value is not None:
            values[option.name] = value
    return values


def _check_run_settings(args: argparse.Namespace) -> None:
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be a positive integer, got {args.threads}")
    if DEVICE.fullmatch(args.device) is None:
        raise UsageError(f"--device must be auto, cpu, cuda, cuda:N, mps or xpu, got {args.device!r}")
    if args.batch is None:
        if args.overwrite:
            raise UsageError("--overwrite applies with --batch only (a single run always replaces its outputs)")
    elif not args.batch.is_file():
        problem = "is a folder" if args.batch.is_dir() else "does not exist"
        raise UsageError(
            f"--batch must be a jobs file (one JSON object per line), got {str(args.batch)!r}, which {problem}"
        )
    if args.report is not None:
        if args.report.is_dir():
            raise UsageError(f"--report must be a file name, got {str(args.report)!r}, which is a folder")
        if not args.report.parent.is_dir():
            raise UsageError(f"--report must be in an existing folder, got {str(args.report)!r}")


def resolve_model(model: Optional[str]) -> tuple[ModelSpec, str]:
    """The model's spec, read from its configs without loading it, and what to load: a local
    folder, or a hub id whose configs were fetched (``--model``'s value; None: the embedded model)."""
    if model is None:
        from .demo import embedded_model_path

        path = embedded_model_path()
        if not (path / "model_index.json").is_file():
            raise UsageError(
                f"the embedded model's weights are not in this installation ({path} has no model_index.json). "
                f"Train them with: {TRAIN_COMMAND.format(path=path)}  (or pass --model)"
            )
        return ModelSpec.from_directory(path, name="the embedded model"), str(path)
    local = Path(model).expanduser()
    if local.is_file():
        raise UsageError(f"--model must be a diffusers pipeline folder or a hub id, got {model!r}, which is a file")
    if local.is_dir():
        return ModelSpec.from_directory(local, name=model), str(local)
    if model.startswith((".", "/", "~")) or "\\" in model or model.count("/") > 1 or model.endswith("/"):
        raise UsageError(f"--model: no such directory {model!r} (expected a diffusers pipeline directory or a hub id)")
    if HUB_ID.fullmatch(model) is None:
        raise UsageError(f"--model must be a diffusers pipeline folder or a hub id (owner/name), got {model!r}")
    return ModelSpec.from_directory(_hub_configs(model), name=model), model


def _hub_configs(repo_id: str) -> Path:
    """Fetch only the JSON configs of a hub model (the weights come when it loads)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json"]))
    except Exception as error:  # noqa: BLE001 - network, missing, gated, offline: each says why
        kind = type(error).__name__
        if kind in ("RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError"):
            why = f"the hub has no model {repo_id!r} you can access ({kind})"
        else:
            why = f"the hub could not be reached or has no copy cached ({batch.root_message(error)})"
        raise UsageError(
            f"--model {repo_id!r} is not a local folder, and {why}. Pass a diffusers pipeline folder, or a hub id "
            "where the network allows."
        ) from None


def _resolve_device(args: argparse.Namespace):
    """The torch device and dtype (imports torch: the last check before loading)."""
    import torch

    name = args.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {args.device!r}: CUDA is not available on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device must name one of this machine's {torch.cuda.device_count()} GPUs, "
                             f"got {args.device!r}")
    for kind in ("mps", "xpu"):
        backend = getattr(torch.backends, kind, None) if kind == "mps" else getattr(torch, kind, None)
        if device.type == kind and not (backend is not None and backend.is_available()):
            raise UsageError(f"--device {args.device!r}: {kind} is not available on this machine (use --device cpu)")
    if args.dtype == "auto":
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    else:
        dtype = getattr(torch, args.dtype)
    return device, dtype


def _describe_warnings(jobs: Sequence[Job], single: bool) -> list[str]:
    """One line per distinct warning; a batch names the lines it concerns (a few of them)."""
    grouped: dict[str, list[int]] = {}
    for job in jobs:
        for option, template in job.warnings:
            grouped.setdefault(template.replace(LABEL, f"--{option}" if single else option), []).append(job.line)
    lines = []
    for text, numbers in grouped.items():
        if single:
            lines.append(f"warning: {text}")
        else:
            shown = ", ".join(map(str, numbers[:5])) + (f" and {len(numbers) - 5} more" if len(numbers) > 5 else "")
            lines.append(f"warning: line{'s' if len(numbers) > 1 else ''} {shown}: {text}")
    return lines


# --- quiet third-party output -------------------------------------------------------------------


@contextlib.contextmanager
def _third_party_output(verbose: bool, tty: bool) -> Iterator[None]:
    """Quiet by default: no warnings a user cannot act on (deprecations, transformers' torchvision
    notice), no loading bars. ``--verbose`` leaves everything as the libraries make it. Whatever
    is changed is restored, so ``main()`` can run inside a larger program."""
    if verbose:
        yield
        return
    import logging
    import warnings

    import huggingface_hub.utils as hub_utils

    hub_bars = not hub_utils.are_progress_bars_disabled()
    if not tty:  # a download bar is worth its lines on a terminal only
        hub_utils.disable_progress_bars()
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from .demo import no_loading_bars

            with no_loading_bars():
                yield
    finally:
        logging.disable(logging.NOTSET)
        if hub_bars:
            hub_utils.enable_progress_bars()


# --- generate -----------------------------------------------------------------------------------


def _load_pipeline(model: Optional[str], location: str, device, dtype):
    """The pipeline on ``device`` in ``dtype``; loading errors name their root cause (exit 1)."""
    try:
        if model is None:
            from .demo import load_embedded_pipeline

            return load_embedded_pipeline(device, dtype)
        from diffusers import DiffusionPipeline

        return DiffusionPipeline.from_pretrained(location, dtype=dtype).to(device)
    except Exception as error:  # noqa: BLE001 - from_pretrained fails in many ways (files, memory, versions)
        raise _Failure(f"--model {model or location!r} could not be loaded: {batch.root_message(error)}") from error


class _Failure(Exception):
    """Work failed after the checks (exit 1); the message says why, ``--verbose`` shows the traceback."""


def _generate(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    _check_run_settings(args)
    values = _job_values(args)
    with _as_usage():
        template = batch.make_job(values, None)  # what needs no model first: no torch is imported for it
    with _as_usage():
        spec, location = resolve_model(args.model)
    if args.batch is None:
        with _as_usage():
            batch.check_against_model(template, spec)
            if template.image is not None:
                _decode(template.image)
        jobs = [template]
    else:
        with _as_usage():
            batch.check_sizes(template, spec)
        with _as_usage():
            try:
                jobs = batch.read_jobs(args.batch, values, spec, default_stem=template.stem)
            except (OSError, UnicodeDecodeError) as error:
                raise UsageError(f"--batch {str(args.batch)!r} is unreadable: {batch.root_message(error)}") from None
    with _as_usage(lambda error: f"--{error.option}" if not error.line else f"line {error.line}: {error.option}"):
        created = batch.prepare_outputs(jobs)
    threads = None
    try:
        device, dtype = _resolve_device(args)
        if _rank_from_environment() == 0:
            for line in _describe_warnings(jobs, single=args.batch is None):
                print(line, file=sys.stderr)
        import torch

        threads = torch.get_num_threads()
        # One thread unless asked: a batch's frames must not depend on how many processes share the
        # machine; the embedded model's ops are too small to gain from threads and slow down a lot
        # when the cores are busy (3x with 2 threads on a loaded 2-core machine).
        if args.threads is not None or args.batch is not None or args.model is None:
            torch.set_num_threads(args.threads or 1)
        with _third_party_output(args.verbose, sys.stderr.isatty()):
            if args.batch is None:
                return _single(args, jobs[0], spec, location, device, dtype, start)
            return _batch(args, jobs, spec, location, device, dtype)
    except _Failure as error:
        if args.verbose and error.__cause__ is not None:
            import traceback

            traceback.print_exception(error.__cause__)
        print(f"zerosmooth generate: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        batch.remove_empty_folders(created)  # those a finished job wrote into are not empty
        if threads is not None:
            torch.set_num_threads(threads)  # main() may run inside a larger program


def _measured_steps(text: str, count: int) -> list[int]:
    """``--at``'s steps as 0-based indices into ``count`` denoising steps."""
    named = {"first": 0, "middle": count // 2, "last": count - 1}
    steps = []
    for part in text.split(","):
        part = part.strip()
        step = named.get(part, int(part) if part.isdigit() else None)
        if step is None or not 0 <= step < count:
            raise UsageError(f"--at must list steps in [0, {count - 1}] or first, middle, last, got {text!r}")
        steps.append(step)
    return sorted(set(steps))


def _diagnose(args: argparse.Namespace) -> int:
    _check_run_settings(args)
    values = _job_values(args)
    with _as_usage():
        spec, location = resolve_model(args.model)
        job = batch.make_job(values, spec, default_stem=args.out / "unused")
        batch.check_against_model(job, spec)
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out must be a folder, got {str(args.out)!r}, which is a file")
    device, dtype = _resolve_device(args)
    import torch

    from . import diagnose

    threads = torch.get_num_threads()
    if args.threads is not None or args.model is None:
        torch.set_num_threads(args.threads or 1)
    try:
        with _third_party_output(args.verbose, sys.stderr.isatty()):
            pipe = _load_pipeline(args.model, location, device, dtype)
            kwargs, _, source = batch.pipeline_arguments(pipe, job, spec)
            count = kwargs.get("num_inference_steps") or diagnose.default_steps(pipe)
            steps = _measured_steps(args.at, count)
            _say(_model_line(args.model, pipe, device, dtype))
            _say(f"Input: {source}; measuring steps {', '.join(map(str, steps))} of {count}")
            written = diagnose.write_report(pipe, job.config(), steps, kwargs, args.out)
    except _Failure as error:
        print(f"zerosmooth diagnose: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        torch.set_num_threads(threads)
    for path in written:
        _say(f"Wrote {path}")
    return EXIT_DONE


def _decode(image: Path) -> None:
    """A single run decodes its image before the model loads (a batch leaves that to each job,
    so one bad picture does not stop the others)."""
    from PIL import Image

    try:
        with Image.open(image) as picture:
            picture.load()
    except (OSError, ValueError) as error:
        raise JobError("image", str(image), "an image file PIL can read", note=batch.root_message(error)) from None


def _model_line(model: Optional[str], pipe, device, dtype) -> str:
    name = model or "the embedded SVD-style model (64 px, 14 frames) trained on ZeroSmooth's procedural world"
    return f"Model: {name} ({type(pipe).__name__}) on {device}, {str(dtype).replace('torch.', '')}"


def _single(args, job: Job, spec: ModelSpec, location: str, device, dtype, start: float) -> int:
    if args.model is None:
        _say("No --model given: using the embedded model (pass --model <diffusers folder or hub id> for your own).")
    _say("Loading the model")
    pipe = _load_pipeline(args.model, location, device, dtype)
    _say(_model_line(args.model, pipe, device, dtype))
    bar = sys.stderr.isatty() and not args.no_progress
    result = batch.run_job(pipe, job, spec, overwrite=True, progress_bar=bar, announce=_say)
    _write_report(args.report, [result])
    if result.status == "failed":
        if args.verbose:
            print(result.detail, file=sys.stderr, end="")
        print(f"zerosmooth generate: error: the job failed: {result.message}", file=sys.stderr)
        return EXIT_FAILED
    counts = " -> ".join(map(str, result.frames))
    height, width = result.size
    _say(f"Generated {len(result.frames)} stage(s) with method {job.method}, scale {job.scale}: frames per stage "
         f"{counts} at {width}x{height} px; the last stage plays at {result.fps:g} fps.")
    for path in result.outputs:
        _say(f"Wrote {path}")
    _say(f"Done in {time.perf_counter() - start:.1f} s.")
    if result.status == "rescued":
        folder = Path(result.outputs[0]).parent
        print(f"warning: {result.message}; the outputs were saved in {folder} instead", file=sys.stderr)
        return EXIT_RESCUED
    return EXIT_DONE


def _batch(args, jobs: list[Job], spec: ModelSpec, location: str, device, dtype) -> int:
    team = batch.Team.current(cpu=device.type == "cpu")
    if team.device is not None and args.device in ("auto", "cuda"):
        device = team.device
    if team.rank == 0:
        _say(f"Loading the model; {len(jobs)} job(s) from {args.batch} in {team.size} process(es)")
    pipe = _load_pipeline(args.model, location, device, dtype)
    if team.rank == 0:
        _say(_model_line(args.model, pipe, device, dtype))
    results = batch.run_jobs(pipe, jobs, overwrite=args.overwrite, progress=not args.no_progress)
    if team.rank != 0:
        return _batch_status(results)
    _write_report(args.report, results)
    _say(batch.format_summary(results))
    if args.verbose:
        for result in results:
            if result.detail:
                print(f"line {result.line}:\n{result.detail}", file=sys.stderr, end="")
    return _batch_status(results)


def _batch_status(results: Sequence[JobResult]) -> int:
    statuses = {result.status for result in results}
    if "failed" in statuses:
        return EXIT_FAILED
    return EXIT_RESCUED if "rescued" in statuses else EXIT_DONE


def _write_report(path: Optional[Path], results: Sequence[JobResult]) -> None:
    if path is None:
        return
    import dataclasses

    from . import video

    with video.atomic_path(path) as temporary:
        temporary.write_text(json.dumps([dataclasses.asdict(result) for result in results], indent=1) + "\n")
