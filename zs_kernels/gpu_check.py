"""The GPU proof in one command: the compiled kernels against the float64 oracle, their speed
against the peers, their bandwidth against the device's HBM peak, and the cascade's cost.

    python -m zs_kernels.gpu_check [--out report.md] [--hbm-peak-gbs 4800]

Budgeted at under 8 minutes on one H100/H200, most of it Triton compiling and autotuning each
kernel variant on first use. Three sections, each a list of checks (:func:`plan`):

* **accuracy** — ``backend="triton"`` on CUDA tensors against the ops' float64 oracles
  (:mod:`zs_kernels.reference`) under :func:`zs_kernels.testing.assert_within_error_rule`
  (error ≤ 2× PyTorch's own error in that dtype + one ulp of the largest output): fp32, fp16 and
  bf16; strided layouts, tail windows, relative-position tables, the dual pass, three projections
  in different memory, and ``N ≥ 2·10⁶`` sequences on one launch.
* **speed** — CUDA-event timings (median of repetitions, L2 flushed before each) of the kernels
  against their peers (:func:`zs_kernels.testing.per_window_loop`, SDPA per window,
  :func:`zs_kernels.testing.unfused_corrected_qkv`, the bare ``F.linear``), and the kernels'
  achieved GB/s on their minimum bytes (inputs read once, outputs written once) as a fraction of
  the HBM peak (:data:`HBM_PEAK_GBS` by device name, ``--hbm-peak-gbs`` to override).
* **cascade** — the 2× cascade on a tiny SVD built from config (:mod:`zerosmooth.lab.tiny`)
  against a base run plus direct inference at the long length, as in ``bench/bench_cascade.py``.

It writes a markdown report (``--out``, default ``gpu_check_report.md`` in the working directory)
and exits 1 if any accuracy check fails or any check raises (speed and the cascade's ratio
are reported, not judged: one borrowed GPU is no place for timing thresholds). Without CUDA it prints the plan —
every check with its shapes — and exits 0 without importing triton or the front end.

A tool, like :mod:`zs_kernels.compile_check`: nothing in the library imports it, and it is the one
module of the back end that reaches the front end (:mod:`zerosmooth`, for the cascade only, on
first use).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import os
import statistics
import sys
import time
import traceback
from importlib import metadata
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from . import corrected_qkv, reference, testing, windowed_attention

DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# HBM peak in GB/s (vendor data sheets) by a substring of torch.cuda.get_device_name(), most
# specific first: "NVIDIA H100 PCIe" must not match the SXM entry "H100".
HBM_PEAK_GBS = (
    ("H200", 4800.0),
    ("H100 NVL", 3900.0),
    ("H100 PCIe", 2000.0),
    ("H100", 3350.0),
    ("A100-SXM4-80GB", 2039.0),
    ("A100 80GB PCIe", 1935.0),
    ("A100", 1555.0),
    ("L40S", 864.0),
    ("RTX 4090", 1008.0),
)

# Timing: each measurement is the median of REPETITIONS launches after WARMUP ones; before each,
# writing FLUSH_BYTES evicts the previous launch's data from L2 (50 MB on an H100/H200).
WARMUP, REPETITIONS, FLUSH_BYTES = 3, 10, 256 * 2**20
# Issue 14's goal for the 2x cascade's time over base + direct on the tiny SVD.
CASCADE_GOAL = 1.2


# --- the plan ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Check:
    """One line of the plan: ``section`` ("accuracy", "speed", "cascade"), the op and the case's
    name, the dtypes it runs in, and ``spec``, the case's shapes and options."""

    section: str
    op: str
    name: str
    dtypes: tuple
    spec: dict

    def describe(self) -> str:
        dtypes = ",".join(_dtype_name(dtype) for dtype in self.dtypes)
        shapes = " ".join(f"{key}={value}" for key, value in self.spec.items())
        return f"[{self.section}] {self.op} {self.name} ({dtypes}): {shapes}"


def plan() -> list[Check]:
    """Every check the command runs, in order."""
    attention = [
        ("tail window", dict(shape=(3, 4, 37, 64), window=16, stride=5)),
        ("frames-major layout", dict(shape=(3, 4, 28, 40), window=14, stride=7, layout="frames_major")),
        ("head-dim stride 2", dict(shape=(2, 3, 29, 80), window=14, stride=7, layout="strided_d")),
        ("F < window", dict(shape=(4, 3, 9, 40), window=16, stride=8)),
        ("relative positions", dict(shape=(3, 4, 33, 64), window=16, stride=8, tables=(5, 9))),
        ("dual pass", dict(shape=(3, 4, 37, 128), window=16, stride=8, blend=0.6)),
        ("rpe + dual, frames-major",
         dict(shape=(2, 4, 30, 40), window=14, stride=7, tables=(7, 7), blend=0.3, layout="frames_major")),
    ]
    projections = [
        ("SVD level 0 width, temporal",
         dict(batch=2, key_frames=14, scale=2, tokens=96, channels=320, kv_kind="box_left", temporal=True)),
        ("SVD level 1 width, spatial",
         dict(batch=2, key_frames=7, scale=4, tokens=64, channels=640, kv_kind="box_right", temporal=False)),
        ("odd sizes, chunked groups",
         dict(batch=2, key_frames=2, scale=11, tokens=33, channels=40, c_out=24, kv_kind="sample", temporal=False)),
        ("projections in different memory",
         dict(batch=2, key_frames=5, scale=3, tokens=77, channels=72, c_out=40, kv_kind="box_left", temporal=True,
              layouts=True)),
    ]
    checks = [Check("accuracy", "windowed_attention", name, DTYPES, spec) for name, spec in attention]
    checks.append(Check("accuracy", "windowed_attention", "2.1M sequences, one launch", (torch.float16,),
                        dict(shape=(2_097_152, 1, 24, 16), window=16, stride=8)))
    checks += [Check("accuracy", "corrected_qkv", name, DTYPES, spec) for name, spec in projections]
    for sequences, num_frames, window, stride, head_dim in (
        (100_000, 16, 16, 8, 64), (100_000, 64, 16, 4, 64), (100_000, 64, 16, 8, 64), (100_000, 56, 14, 7, 40),
    ):
        spec = dict(shape=(sequences // 8, 8, num_frames, head_dim), window=window, stride=stride)
        checks.append(Check("speed", "windowed_attention", f"F{num_frames} W{window} s{stride}", (torch.float16,),
                            spec))
    for level, tokens, channels in ((0, 9216, 320), (1, 2304, 640), (2, 576, 1280)):
        spec = dict(batch=2, key_frames=14, scale=2, tokens=tokens, channels=channels, kv_kind="box_left",
                    temporal=True)
        checks.append(Check("speed", "corrected_qkv", f"SVD level {level}", (torch.float16,), spec))
    checks.append(Check("cascade", "ZeroSmooth", "tiny SVD, default config", (torch.float32,),
                        dict(base_frames=4, scale=2, size=32, steps=3, rounds=3)))
    return checks


# --- inputs ----------------------------------------------------------------------------------------


def attention_inputs(spec: dict, dtype: torch.dtype, device, count: int = 3) -> list[torch.Tensor]:
    """``count`` fresh ``[N, H, F, D]`` tensors in the spec's layout: contiguous, ``frames_major``
    (``[N, F, H, D]`` storage, the model's) or ``strided_d`` (every other element of a wider dim)."""
    n, heads, num_frames, head_dim = spec["shape"]
    layout = spec.get("layout", "contiguous")
    tensors = []
    for _ in range(count):
        if layout == "frames_major":
            x = torch.randn(n, num_frames, heads, head_dim, device=device, dtype=dtype).transpose(1, 2)
        elif layout == "strided_d":
            x = torch.randn(n, heads, num_frames, 2 * head_dim, device=device, dtype=dtype)[..., ::2]
        else:
            x = torch.randn(n, heads, num_frames, head_dim, device=device, dtype=dtype)
        tensors.append(x)
    return tensors


def attention_options(spec: dict, dtype: torch.dtype, device) -> dict:
    """``windowed_attention`` keyword arguments of a spec: window, stride, tables, dual pass."""
    options = dict(window=spec["window"], stride=spec["stride"])
    head_dim = spec["shape"][-1]
    if "tables" in spec:
        options["rel_k"], options["rel_v"] = (
            torch.randn(rows, head_dim, device=device, dtype=dtype) for rows in spec["tables"]
        )
    if "blend" in spec:
        options["corrected"] = tuple(attention_inputs(spec, dtype, device))
        options["blend"] = spec["blend"]
    return options


def projection_inputs(spec: dict, dtype: torch.dtype, device) -> dict:
    """``h [B, t, L, C]`` (a temporal ``[B·L, t, C]`` or spatial ``[B·t, L, C]`` view), ``h_key``,
    ``key_qkv``, the three weights and biases. With ``layouts``: a row slice of a wider tensor, a
    transposed view and a row block of a stacked tensor, with a bias on K only."""
    batch, key_frames, scale, tokens, channels = (spec[key] for key in ("batch", "key_frames", "scale", "tokens",
                                                                        "channels"))
    c_out, num_frames = spec.get("c_out", channels), spec["key_frames"] * spec["scale"]

    def randn(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)

    if spec["temporal"]:
        h = randn(batch * tokens, num_frames, channels).view(batch, tokens, num_frames, channels).permute(0, 2, 1, 3)
    else:
        h = randn(batch * num_frames, tokens, channels).view(batch, num_frames, tokens, channels)
    scaled = channels**-0.5
    if spec.get("layouts"):
        weights = ((randn(c_out, channels + 7) * scaled)[:, :channels], (randn(channels, c_out) * scaled).t(),
                   (randn(3 * c_out, channels) * scaled)[c_out: 2 * c_out])
        biases = (None, randn(c_out), None)
    else:
        weights = tuple(randn(c_out, channels) * scaled for _ in range(3))
        biases = tuple(randn(c_out) for _ in range(3))
    h_key = randn(batch, key_frames, tokens, channels)
    key_qkv = torch.cat([F.linear(h_key, weight, bias) for weight, bias in zip(weights, biases)], dim=-1)
    return dict(h=h, h_key=h_key, key_qkv=key_qkv, weights=weights, biases=biases)


# --- results and the pure arithmetic ---------------------------------------------------------------


@dataclasses.dataclass
class Result:
    """One row of the report. ``values`` holds the measured numbers by column; ``error`` the last
    line of an exception the check raised (the row then counts as failed); ``seconds`` the wall
    time the check took, compilation and oracle included (where the 8-minute budget goes)."""

    check: Check
    dtype: Optional[torch.dtype] = None
    values: dict = dataclasses.field(default_factory=dict)
    passed: bool = True
    error: Optional[str] = None
    seconds: float = 0.0


def hbm_peak_gbs(device_name: str, override: Optional[float] = None, properties=None) -> tuple[Optional[float], str]:
    """The device's HBM peak in GB/s and where it comes from: ``override``, else the first
    :data:`HBM_PEAK_GBS` entry whose name is in ``device_name``, else the memory clock and bus
    width of ``properties`` (``torch.cuda.get_device_properties``) when torch exposes them."""
    if override is not None:
        return override, "--hbm-peak-gbs"
    for name, peak in HBM_PEAK_GBS:
        if name in device_name:
            return peak, f"table ({name})"
    clock_khz = getattr(properties, "memory_clock_rate", None)
    bus_bits = getattr(properties, "memory_bus_width", None)
    if clock_khz and bus_bits:
        return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9, "device properties (clock x bus width)"
    return None, "unknown device: pass --hbm-peak-gbs"


def achieved_gbs(moved_bytes: int, seconds: float) -> float:
    """Bytes over seconds in GB/s (10⁹ bytes per second)."""
    return moved_bytes / seconds / 1e9


def tensor_bytes(*tensors) -> int:
    """Bytes of the tensors' elements (each read or written once: the minimum traffic); None is 0."""
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors if tensor is not None)


def cuda_time(function: Callable[[], object], flush: Optional[torch.Tensor] = None) -> float:
    """Median seconds of one call of ``function`` on the current CUDA stream, by CUDA events."""
    for _ in range(WARMUP):
        function()
    starts, ends = ([torch.cuda.Event(enable_timing=True) for _ in range(REPETITIONS)] for _ in range(2))
    for start, end in zip(starts, ends):
        if flush is not None:
            flush.zero_()
        start.record()
        function()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in zip(starts, ends)) / 1e3


# --- the checks --------------------------------------------------------------------------------------


def check_accuracy(check: Check, dtype: torch.dtype, device) -> Result:
    """The Triton backend against the float64 oracle under the error rule (NaN-filled outputs, so
    an element left unwritten fails)."""
    if check.op == "windowed_attention":
        q, k, v = attention_inputs(check.spec, dtype, device)
        options = attention_options(check.spec, dtype, device)
        with testing.nan_filled_allocations():
            outputs = [windowed_attention(q, k, v, backend="triton", **options)]
        wide = {name: _double(value) for name, value in options.items() if name in ("rel_k", "rel_v", "corrected")}
        oracles = [reference.windowed_attention(q.double(), k.double(), v.double(), **{**options, **wide})]
        low = [reference.windowed_attention(q, k, v, **options)]
    else:
        inputs = projection_inputs(check.spec, dtype, device)
        arguments = (inputs["h"], inputs["key_qkv"], inputs["weights"], inputs["biases"])
        options = dict(scale=check.spec["scale"], kv_kind=check.spec["kv_kind"])
        with testing.nan_filled_allocations():
            outputs = corrected_qkv(*arguments, backend="triton", **options)
        oracles = reference.corrected_qkv(*(_double(argument) for argument in arguments), **options)
        low = reference.corrected_qkv(*arguments, **options)
    result = Result(check, dtype)
    names = ("qkv", "qkv_hat") if len(outputs) == 2 else ("out",)
    for name, output, truth, baseline in zip(names, outputs, oracles, low):
        try:
            error, pytorch_error = testing.assert_within_error_rule(output, baseline, truth, name=name)
        except AssertionError as failure:  # its message carries the numbers
            result.passed, result.error = False, str(failure)
            continue
        result.values[name] = (error, pytorch_error, 2 * pytorch_error + testing.error_floor(truth, dtype))
    return result


def _double(value):
    """A tensor, a tuple of tensors or None, in float64 (the oracle's inputs)."""
    if value is None:
        return value
    if isinstance(value, tuple):
        return tuple(_double(entry) for entry in value)
    return value.double()


def check_speed(check: Check, dtype: torch.dtype, device, timer: Callable) -> Result:
    """Our kernel and its peers timed side by side; the kernel's minimum bytes per second."""
    result = Result(check, dtype)
    if check.op == "windowed_attention":
        q, k, v = attention_inputs(check.spec, dtype, device)
        window, stride = check.spec["window"], check.spec["stride"]
        corrected = tuple(attention_inputs(check.spec, dtype, device))
        candidates = {
            "kernel": (lambda: windowed_attention(q, k, v, window=window, stride=stride, backend="triton"),
                       tensor_bytes(q, k, v, q)),
            "kernel, dual pass": (
                lambda: windowed_attention(q, k, v, window=window, stride=stride, corrected=corrected, blend=0.5,
                                           backend="triton"),
                tensor_bytes(q, k, v, *corrected, q)),
            "SDPA per window": (lambda: testing.sdpa_per_window(q, k, v, window, stride), None),
            "diffusers per-window loop": (lambda: testing.per_window_loop(q, k, v, window, stride), None),
        }
    else:
        inputs = projection_inputs(check.spec, dtype, device)
        h, key_qkv, weights, biases = (inputs[key] for key in ("h", "key_qkv", "weights", "biases"))
        options = dict(scale=check.spec["scale"], kv_kind=check.spec["kv_kind"])
        weight, bias = torch.cat(weights), torch.cat(biases)  # the peers' stacked form, built once
        outputs = 2 * (h.numel() // h.shape[-1]) * weight.shape[0] * h.element_size()  # qkv and qkv_hat
        candidates = {
            "kernel": (lambda: corrected_qkv(h, key_qkv, weights, biases, backend="triton", **options),
                       tensor_bytes(h, key_qkv, *weights, *biases) + outputs),
            "unfused QKV + correction": (
                lambda: testing.unfused_corrected_qkv(h, inputs["h_key"], weight, bias, **options), None),
            "bare F.linear (no correction)": (lambda: F.linear(h, weight, bias), None),
        }
    for implementation, (function, moved) in candidates.items():
        seconds = timer(function)
        result.values[implementation] = (seconds, None if moved is None else achieved_gbs(moved, seconds))
    return result


def check_cascade(check: Check, device, rounds_timer: Callable) -> Result:
    """2× cascade / (base + direct) on the tiny SVD, fastest of ``rounds`` interleaved runs each."""
    from PIL import Image

    from zerosmooth import ZeroSmooth, ZeroSmoothConfig
    from zerosmooth.lab.tiny import tiny_svd_pipeline

    spec = check.spec
    pipe = tiny_svd_pipeline(0).to(device)
    pipe.set_progress_bar_config(disable=True)

    def arguments(num_frames):
        return dict(image=Image.new("RGB", (spec["size"], spec["size"]), (200, 40, 40)), height=spec["size"],
                    width=spec["size"], num_frames=num_frames, num_inference_steps=spec["steps"], output_type="pt",
                    generator=torch.Generator(device).manual_seed(0))

    smoother = ZeroSmooth(pipe, ZeroSmoothConfig())
    cascade = rounds_timer(lambda: smoother(progress_bar=False, **arguments(spec["base_frames"])), spec["rounds"])
    baseline = rounds_timer(
        lambda: (pipe(**arguments(spec["base_frames"])), pipe(**arguments(spec["scale"] * spec["base_frames"]))),
        spec["rounds"],
    )
    return Result(check, torch.float32, dict(cascade=cascade, baseline=baseline, ratio=cascade / baseline))


def wall_time(function: Callable[[], object], rounds: int) -> float:
    """Fastest wall-clock seconds of ``rounds`` calls (after one warm-up), synchronising CUDA."""
    function()
    best = float("inf")
    for _ in range(rounds):
        torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def run(checks: list[Check], device, timer: Callable, rounds_timer: Callable, log: Callable = print) -> list[Result]:
    """Run every check in every dtype (``timer(function)``: seconds per call; ``rounds_timer(function,
    rounds)``: seconds of a whole pipeline call); a check that raises becomes a failed row, the
    others still run."""
    results = []
    for check in checks:
        for dtype in check.dtypes:
            log(f"{check.describe()} [{_dtype_name(dtype)}]")
            started = time.perf_counter()
            try:
                if check.section == "accuracy":
                    result = check_accuracy(check, dtype, device)
                elif check.section == "speed":
                    result = check_speed(check, dtype, device, timer)
                else:
                    result = check_cascade(check, device, rounds_timer)
            except Exception:  # noqa: BLE001 — reported in the row, the other checks still run
                lines = traceback.format_exc().strip().splitlines()
                result = Result(check, dtype, passed=False, error=lines[-1])
            result.seconds = time.perf_counter() - started
            results.append(result)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return results


# --- the report ---------------------------------------------------------------------------------------


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _shape(check: Check) -> str:
    spec = check.spec
    if "shape" in spec:
        extras = [f"{key} {value}" for key, value in spec.items() if key != "shape"]
        return f"[{', '.join(map(str, spec['shape']))}] " + ", ".join(extras)
    return ", ".join(f"{key} {value}" for key, value in spec.items())


def render_report(results: list[Result], info: dict, peak: tuple[Optional[float], str]) -> str:
    """The markdown report: environment, then one table per section."""
    peak_gbs, source = peak
    parts = [
        "# ZeroSmooth GPU check",
        "",
        "\n".join(f"- {key}: {value}" for key, value in info.items()),
        f"- HBM peak: {'unknown' if peak_gbs is None else f'{peak_gbs:.0f} GB/s'} ({source})",
        f"- checks: {sum(r.passed for r in results)} of {len(results)} passed",
        "- time per section: " + ", ".join(
            f"{section} {sum(r.seconds for r in results if r.check.section == section):.0f} s"
            for section in ("accuracy", "speed", "cascade")
        ),
    ]
    accuracy = [r for r in results if r.check.section == "accuracy"]
    if accuracy:
        rows = []
        for r in accuracy:
            measured = "; ".join(f"{name} {error:.3g} (PyTorch {low:.3g}, bound {bound:.3g})"
                                 for name, (error, low, bound) in r.values.items())
            rows.append([r.check.op, r.check.name, _dtype_name(r.dtype), _shape(r.check), measured or "–",
                         "pass" if r.passed else f"**FAIL** {r.error}"])
        parts += ["", "## Accuracy against the float64 oracle",
                  "", "Error rule: max |kernel − oracle| ≤ 2 × max |PyTorch in the same dtype − oracle| + one ulp of "
                  "the largest output.", "",
                  markdown_table(["op", "case", "dtype", "shapes", "max error", "result"], rows)]
    speed = [r for r in results if r.check.section == "speed"]
    if speed:
        rows = []
        for r in speed:
            if r.error:
                rows.append([r.check.op, r.check.name, "–", "–", "–", "–", f"**ERROR** {r.error}"])
                continue
            ours = r.values["kernel"][0]
            for implementation, (seconds, gbs) in r.values.items():
                fraction = "–" if gbs is None or peak_gbs is None else f"{100 * gbs / peak_gbs:.0f} %"
                rows.append([r.check.op, f"{r.check.name} ({_shape(r.check)})", implementation,
                             f"{seconds * 1e3:.3f}", f"{seconds / ours:.2f}", "–" if gbs is None else f"{gbs:.0f}",
                             fraction])
        parts += ["", "## Speed against the peers (fp16, CUDA events, median)", "",
                  "`time / kernel` > 1: the kernel is faster. GB/s: the kernel's minimum bytes (inputs read once, "
                  "outputs written once) per second.", "",
                  markdown_table(["op", "case", "implementation", "ms", "time / kernel", "GB/s", "of HBM peak"],
                                 rows)]
    cascade = [r for r in results if r.check.section == "cascade"]
    if cascade:
        rows = []
        for r in cascade:
            if r.error:
                rows.append([r.check.name, _shape(r.check), "–", "–", f"**ERROR** {r.error}"])
                continue
            ratio = r.values["ratio"]
            rows.append([r.check.name, _shape(r.check), f"{r.values['cascade']:.3f}", f"{r.values['baseline']:.3f}",
                         f"{ratio:.2f} ({'met' if ratio <= CASCADE_GOAL else 'missed'})"])
        parts += ["", f"## The 2x cascade against base + direct (goal <= {CASCADE_GOAL}, reported, not failed)", "",
                  markdown_table(["configuration", "sizes", "cascade s", "base + direct s", "ratio"], rows)]
    return "\n".join(parts) + "\n"


def write_report(path: str, results: list[Result], info: dict, peak: tuple[Optional[float], str]) -> str:
    """Write :func:`render_report` to ``path``; return its absolute path."""
    with open(path, "w", encoding="utf-8") as report:
        report.write(render_report(results, info, peak))
    return os.path.abspath(path)


def format_plan(checks: list[Check]) -> str:
    return "\n".join(check.describe() for check in checks)


# --- the command ------------------------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m zs_kernels.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu_check_report.md", help="markdown report path (default: %(default)s "
                        "in the working directory)")
    parser.add_argument("--hbm-peak-gbs", type=float, default=None,
                        help="the device's HBM peak in GB/s, instead of the built-in table")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    checks = plan()
    if not torch.cuda.is_available():
        print("No CUDA device: dry run. On a GPU, `python -m zs_kernels.gpu_check` runs these checks and writes "
              f"{args.out}:")
        print(format_plan(checks))
        return 0
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    peak = hbm_peak_gbs(name, args.hbm_peak_gbs, torch.cuda.get_device_properties(device))
    flush = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device=device)
    started = time.perf_counter()
    results = run(checks, device, lambda function: cuda_time(function, flush), wall_time,
                  functools.partial(print, flush=True))
    info = {
        "device": name,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch / triton / CUDA": f"{torch.__version__} / {metadata.version('triton')} / {torch.version.cuda}",
        "wall time": f"{time.perf_counter() - started:.0f} s",
    }
    path = write_report(args.out, results, info, peak)
    print(render_report(results, info, peak))
    print(f"report written to {path}")
    return 0 if all(result.passed for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
