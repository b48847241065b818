"""The ahead-of-time build step (``-m compile``, run by ``.ci/run`` after the default suite):
``python -m zs_kernels.compile_check`` builds every shipped configuration of every kernel for
sm_80 and sm_90 in fp16 and bf16 and must report every build clean (no failure, no spill, shared
memory within an A100's). A kernel module that cannot be imported fails it.

The build runs in a subprocess without the Triton interpreter that ``conftest.py`` turns on for
this process, and with ``TRITON_ALWAYS_COMPILE=1``: on a Triton cache hit ptxas does not run,
so its register/spill report would be missing and compile_check would report a failure.
"""

import os
import subprocess
import sys
import time

import pytest

from zs_kernels import compile_check


@pytest.mark.compile
def test_every_shipped_configuration_builds_clean():
    environment = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    environment["TRITON_ALWAYS_COMPILE"] = "1"
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "zs_kernels.compile_check"],
        env=environment, capture_output=True, text=True, timeout=1800,
    )
    seconds = time.perf_counter() - start
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"compile_check failed:\n{output}"
    rows = [row for row in map(str.split, done.stdout.splitlines()) if row[:1] and row[0] in compile_check.KERNEL_OPS]
    assert rows and all(row[-1] == "ok" for row in rows), output
    built = {(row[0], row[-7], row[-6]) for row in rows}  # (op, arch, dtype)
    expected = {
        (op, f"sm_{arch}", dtype)
        for op in compile_check.KERNEL_OPS for arch in compile_check.ARCHITECTURES for dtype in compile_check.DTYPES
    }
    assert built == expected, output
    print(f"\n{len(rows)} kernel builds clean in {seconds:.0f} s")
