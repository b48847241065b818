"""``python -m zs_kernels.gpu_check`` on CPU: the dry run (the plan, exit 0, nothing heavy
imported), the plan's coverage, and the GPU path's machinery — every check run on small shapes
(the kernels through the interpreter) with fake timings, the bandwidth arithmetic, the peak table
and the report."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from zs_kernels import gpu_check


def cpu_environment():
    environment = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    environment["CUDA_VISIBLE_DEVICES"] = ""
    return environment


def test_dry_run_prints_the_plan_and_exits_cleanly(tmp_path):
    """Without CUDA: every check with its shapes, exit 0, no report, neither triton nor the front end imported."""
    code = (
        "import sys\n"
        "from zs_kernels import gpu_check\n"
        "code = gpu_check.main(['--out', 'report.md'])\n"
        "assert code == 0, code\n"
        "heavy = [name for name in ('triton', 'zerosmooth', 'diffusers') if name in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=cpu_environment(), cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "dry run" in done.stdout
    for check in gpu_check.plan():
        assert check.describe() in done.stdout
    assert not (tmp_path / "report.md").exists()


def test_module_entry_point(tmp_path):
    done = subprocess.run([sys.executable, "-m", "zs_kernels.gpu_check"], env=cpu_environment(), cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "[accuracy] windowed_attention" in done.stdout and "[cascade]" in done.stdout


def test_plan_covers_the_proof():
    checks = gpu_check.plan()
    accuracy = [check for check in checks if check.section == "accuracy"]
    assert {check.op for check in accuracy} == {"windowed_attention", "corrected_qkv"}
    assert all(set(check.dtypes) == set(gpu_check.DTYPES) for check in accuracy if "shape" not in check.spec
               or check.spec["shape"][0] * check.spec["shape"][1] < 10**6)
    specs = [check.spec for check in accuracy]
    assert any(spec.get("layout") == "frames_major" for spec in specs)
    assert any(spec.get("layout") == "strided_d" for spec in specs)
    assert any("tables" in spec for spec in specs) and any("blend" in spec for spec in specs)
    assert any("tables" in spec and "blend" in spec for spec in specs)
    # a tail window: the last window start is not a multiple of the stride
    assert any("shape" in spec and (spec["shape"][2] - spec["window"]) % spec["stride"] for spec in specs)
    assert any("shape" in spec and spec["shape"][0] * spec["shape"][1] >= 2 * 10**6 for spec in specs)
    assert any(spec.get("layouts") for spec in specs) and any(spec.get("scale", 0) > 8 for spec in specs)
    assert {check.op for check in checks if check.section == "speed"} == {"windowed_attention", "corrected_qkv"}
    assert [check.section for check in checks].count("cascade") == 1


@pytest.mark.parametrize(
    "name, override, expected",
    [
        ("NVIDIA H200", None, 4800.0),
        ("NVIDIA H100 80GB HBM3", None, 3350.0),
        ("NVIDIA H100 PCIe", None, 2000.0),
        ("NVIDIA H100 NVL", None, 3900.0),
        ("NVIDIA A100-SXM4-80GB", None, 2039.0),
        ("NVIDIA A100-SXM4-40GB", None, 1555.0),
        ("NVIDIA H200", 4000.0, 4000.0),
    ],
)
def test_hbm_peak_table_and_override(name, override, expected):
    peak, source = gpu_check.hbm_peak_gbs(name, override)
    assert peak == expected and source


def test_hbm_peak_of_an_unknown_device():
    class Properties:
        memory_clock_rate = 2_619_000  # kHz
        memory_bus_width = 5120  # bits

    peak, source = gpu_check.hbm_peak_gbs("Some GPU", None, Properties())
    assert peak == pytest.approx(2 * 2_619_000e3 * 5120 / 8 / 1e9) and "properties" in source
    assert gpu_check.hbm_peak_gbs("Some GPU") == (None, "unknown device: pass --hbm-peak-gbs")


def test_bandwidth_arithmetic():
    assert gpu_check.achieved_gbs(4 * 10**9, 1e-3) == pytest.approx(4000.0)  # 4 GB in 1 ms
    q = torch.empty(2, 3, 4, 5, dtype=torch.float16)
    assert gpu_check.tensor_bytes(q, q, None) == 2 * 120 * 2


def small_checks():
    """The plan's kinds of check, on shapes the interpreter runs in seconds."""
    Check = gpu_check.Check
    projection = dict(batch=1, key_frames=2, scale=3, tokens=5, channels=20, c_out=12, kv_kind="box_left",
                      temporal=True)
    return [
        Check("accuracy", "windowed_attention", "tail, rpe + dual", (torch.float32, torch.float16),
              dict(shape=(2, 2, 13, 16), window=8, stride=3, tables=(5, 5), blend=0.4, layout="frames_major")),
        Check("accuracy", "corrected_qkv", "projections in different memory", (torch.float32,),
              dict(projection, layouts=True)),
        Check("accuracy", "windowed_attention", "bad spec", (torch.float32,),
              dict(shape=(1, 1, 4, 16), window=0, stride=1)),
        Check("speed", "windowed_attention", "small", (torch.float32,), dict(shape=(2, 2, 12, 16), window=8, stride=4)),
        Check("speed", "corrected_qkv", "small", (torch.float32,), projection),
        Check("cascade", "ZeroSmooth", "tiny SVD", (torch.float32,),
              dict(base_frames=4, scale=2, size=32, steps=1, rounds=1)),
    ]


def test_every_kind_of_check_runs_and_reports(tmp_path):
    """The GPU path's orchestration on CPU: accuracy through the interpreter against the oracle,
    speed with fake timings (each function still runs once), the cascade with a fake clock, a
    failing check reported without stopping the rest, and the markdown report."""
    seconds = iter([1e-3, 2e-3, 4e-3, 8e-3, 1e-3, 3e-3, 2e-3])

    def timer(function):
        function()
        return next(seconds)

    pipeline_seconds = iter([1.5, 1.0])  # the cascade, then base + direct

    def rounds_timer(function, rounds):
        function()
        return next(pipeline_seconds)

    log = []
    results = gpu_check.run(small_checks(), torch.device("cpu"), timer, rounds_timer, log.append)
    assert len(results) == len(log) == 7
    accuracy = results[:4]
    assert [result.passed for result in accuracy] == [True, True, True, False]
    assert "window" in accuracy[3].error
    assert set(accuracy[2].values) == {"qkv", "qkv_hat"}
    for result in accuracy[:3]:
        for error, pytorch_error, bound in result.values.values():
            assert error <= bound

    attention, projection, cascade = results[4:]
    assert attention.values["kernel"][0] == 1e-3 and attention.values["diffusers per-window loop"][0] == 8e-3
    q_bytes = 2 * 2 * 12 * 16 * 4
    assert attention.values["kernel"][1] == pytest.approx(4 * q_bytes / 1e-3 / 1e9)
    assert attention.values["kernel, dual pass"][1] == pytest.approx(7 * q_bytes / 2e-3 / 1e9)
    assert attention.values["SDPA per window"][1] is None
    h, key_qkv, weights, biases, outputs = 6 * 5 * 20, 2 * 5 * 36, 3 * 12 * 20, 3 * 12, 2 * 6 * 5 * 36
    assert projection.values["kernel"][1] == pytest.approx(4 * (h + key_qkv + weights + biases + outputs) / 1e-3 / 1e9)
    assert cascade.passed and cascade.values == dict(cascade=1.5, baseline=1.0, ratio=1.5)

    path = gpu_check.write_report(str(tmp_path / "report.md"), results, {"device": "fake"}, (1.0, "test"))
    text = open(path, encoding="utf-8").read()
    assert text.startswith("# ZeroSmooth GPU check") and "- device: fake" in text
    assert "6 of 7 passed" in text and "**FAIL**" in text
    assert all(result.seconds > 0 for result in results) and "- time per section: accuracy " in text
    loop_row = "| small ([2, 2, 12, 16] window 8, stride 4) | diffusers per-window loop | 8.000 | 8.00 |"
    assert loop_row in text
    assert "1.50 (missed)" in text
    kernel_row = next(line for line in text.splitlines() if "| small (" in line and "| kernel |" in line)
    assert kernel_row.endswith(f"| {4 * q_bytes / 1e-3 / 1e9:.0f} | {100 * 4 * q_bytes / 1e-3 / 1e9:.0f} % |")


def test_every_planned_attention_case_is_one_the_kernel_takes():
    """No planned ``windowed_attention`` case would be refused by the Triton launcher on the GPU
    (checked on meta tensors: shapes and options only)."""
    from zs_kernels.windowed_attention import triton as kernel

    for check in gpu_check.plan():
        if check.op != "windowed_attention":
            continue
        for dtype in check.dtypes:
            q = torch.empty(check.spec["shape"], dtype=dtype, device="meta")
            options = gpu_check.attention_options(check.spec, dtype, "meta")
            reason = kernel.unsupported_reason(q, check.spec["window"], options.get("rel_k"), options.get("rel_v"),
                                               options.get("corrected"))
            assert reason is None, (check.describe(), reason)
            assert kernel.launch_grid(q.shape[0] * q.shape[1], kernel.LaunchConfig.of(seqs=1))[0] >= 1


def test_projections_in_different_memory_are_views():
    """The ``layouts`` case hands the op a row slice, a transposed view and an offset row block."""
    spec = dict(batch=1, key_frames=2, scale=2, tokens=3, channels=8, c_out=4, kv_kind="sample", temporal=True,
                layouts=True)
    w_q, w_k, w_v = gpu_check.projection_inputs(spec, torch.float32, "cpu")["weights"]
    assert w_q.stride() == (15, 1) and w_k.stride() == (1, 4) and w_v.storage_offset() == 4 * 8
