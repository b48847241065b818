"""`python -m zs_kernels.compile_check` for every kernel module: sm_80 and sm_90, fp16 and bf16.

Each kernel module is built in its own pair of subprocesses (one per architecture, run side by
side), without the Triton interpreter that ``conftest.py`` turns on for this process, and with
``TRITON_ALWAYS_COMPILE=1``: on a Triton cache hit ptxas does not run, so its register/spill
report would be missing and compile_check would report a failure.
A module that does not exist yet (kernels are written concurrently) is skipped, with the reason.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

from zs_kernels import compile_check


def _environment() -> dict:
    environment = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    environment["TRITON_ALWAYS_COMPILE"] = "1"
    return environment


@pytest.mark.parametrize("module", compile_check.KERNEL_MODULES)
def test_compile_check(module):
    if importlib.util.find_spec(f"zs_kernels.triton.{module}") is None:
        pytest.skip(f"zs_kernels.triton.{module} does not exist yet")
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "zs_kernels.compile_check", "--kernel", module, "--arch", str(arch)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_environment(),
        )
        for arch in compile_check.ARCHITECTURES
    ]
    for arch, process in zip(compile_check.ARCHITECTURES, processes):
        output, _ = process.communicate(timeout=1200)
        rows = [line for line in output.splitlines() if line.startswith(module)]
        assert process.returncode == 0, f"compile_check failed for {module} on sm_{arch}:\n{output}"
        assert rows and all(f"sm_{arch}" in row and row.rstrip().endswith("ok") for row in rows), output
        assert {"fp16", "bf16"} <= {row.split()[-6] for row in rows}, output
