"""Ahead-of-time build of every shipped Triton kernel configuration for sm_80 and sm_90.

    python -m zs_kernels.compile_check [--arch 80 90] [--dtype fp16 bf16] [--op ...] [--jobs N]

No GPU is needed: ``triton.compile`` lowers to PTX and ptxas assembles a cubin for the target.
For every kernel, configuration, architecture and dtype it prints registers, spills, stack and
shared memory, and exits non-zero on any build failure, any spill, shared memory beyond what an
A100 grants one block, or a kernel module that cannot be imported. This is how we know the
kernels build and fit on real GPUs.

Each op in :data:`KERNEL_OPS` has a ``zs_kernels/<op>/triton.py`` whose
``aot_configurations(dtype)`` yields :class:`zs_kernels._triton_common.KernelConfiguration`
objects: the ``@triton.jit`` function, a label, the signature and constexprs it is launched
with, the compile options and the arguments a launch guarantees to be multiples of 16. Nothing
in the library imports this module.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import importlib
import io
import multiprocessing
import os
import re
import sys

KERNEL_OPS = ("windowed_attention", "corrected_qkv")
ARCHITECTURES = (80, 90)
DTYPES = ("fp16", "bf16")
# cudaDevAttrMaxSharedMemoryPerBlockOptin on an A100 (sm_80): 163 KiB.
SHARED_MEMORY_LIMIT = 163 * 1024


@dataclasses.dataclass
class Build:
    kernel: str
    label: str
    arch: int
    dtype: str
    registers: int = -1
    spill_stores: int = -1
    spill_loads: int = -1
    stack: int = -1
    shared: int = -1
    error: str = ""

    @property
    def problems(self) -> list[str]:
        if self.error:
            return [f"build failed: {self.error}"]
        found = []
        if self.spill_stores or self.spill_loads:
            found.append(f"spills ({self.spill_stores} B stores, {self.spill_loads} B loads)")
        if self.shared > SHARED_MEMORY_LIMIT:
            found.append(f"shared memory {self.shared} B > {SHARED_MEMORY_LIMIT} B")
        return found

    def row(self) -> str:
        spill = self.spill_stores + self.spill_loads if not self.error else -1
        return (
            f"{self.kernel:<20} {self.label:<52} sm_{self.arch:<2} {self.dtype:>5} {self.registers:>5} {spill:>6} "
            f"{self.stack:>6} {self.shared:>8}  {'; '.join(self.problems) or 'ok'}"
        )


_PTXAS_PATTERNS = {
    "stack": r"(\d+) bytes stack frame",
    "spill_stores": r"(\d+) bytes spill stores",
    "spill_loads": r"(\d+) bytes spill loads",
    "registers": r"Used (\d+) registers",
}


def compile_configuration(kernel: str, configuration, arch: int, dtype: str) -> Build:
    """Compile one ``KernelConfiguration`` for ``sm_<arch>`` and read ptxas's resource report."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    build = Build(kernel, configuration.label, arch, dtype)
    arg_names = configuration.function.arg_names
    attrs = {(arg_names.index(name),): [["tt.divisibility", 16]] for name in configuration.divisible_by_16}
    source = ASTSource(
        configuration.function, signature=configuration.signature, constexprs=configuration.constexprs, attrs=attrs
    )
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(
                source,
                target=GPUTarget("cuda", arch, 32),
                options={"num_warps": configuration.num_warps, "num_stages": configuration.num_stages},
            )
    except Exception as error:  # report every failure, keep checking the rest
        build.error = f"{type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error).strip() else ''}"
        return build
    build.shared = int(compiled.metadata.shared)
    text = log.getvalue()
    for field, pattern in _PTXAS_PATTERNS.items():
        match = re.search(pattern, text)
        if match is None:
            build.error = f"no '{field}' in the ptxas log"
            return build
        setattr(build, field, int(match.group(1)))
    return build


# The work list of a run; forked workers read it by index (jit functions do not pickle).
_jobs: list[tuple] = []


def _build_job(index: int) -> Build:
    return compile_configuration(*_jobs[index])


def run(architectures=ARCHITECTURES, dtypes=DTYPES, ops=KERNEL_OPS, jobs: int = 1, out=sys.stdout) -> list[Build]:
    """Compile every configuration of every op's kernel on ``jobs`` processes; print one row per build."""
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    # On a cache hit ptxas does not run and prints no resource report: always compile.
    os.environ["TRITON_ALWAYS_COMPILE"] = "1"
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    _jobs.clear()
    for op in ops:
        module = importlib.import_module(f"zs_kernels.{op}.triton")
        for dtype in dtypes:
            for configuration in module.aot_configurations(dtype):
                _jobs.extend((op, configuration, arch, dtype) for arch in architectures)
    print(
        f"{'kernel':<20} {'configuration':<52} {'arch':>5} {'dtype':>5} {'regs':>5} {'spill':>6} {'stack':>6} "
        f"{'shared':>8}  status",
        file=out,
    )
    builds = []
    if jobs > 1:
        context = multiprocessing.get_context("fork")
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
            for build in pool.map(_build_job, range(len(_jobs))):
                builds.append(build)
                print(build.row(), file=out, flush=True)
    else:
        for index in range(len(_jobs)):
            builds.append(_build_job(index))
            print(builds[-1].row(), file=out, flush=True)
    return builds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zs_kernels.compile_check", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    parser.add_argument("--dtype", nargs="+", default=list(DTYPES), choices=("fp16", "bf16", "fp32"))
    parser.add_argument("--op", nargs="+", default=list(KERNEL_OPS), choices=KERNEL_OPS)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel builds (default: CPU count)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        parser.error("TRITON_INTERPRET=1 is set: the interpreter replaces compilation; unset it")
    builds = run(args.arch, args.dtype, args.op, args.jobs)
    failed = [build for build in builds if build.problems]
    print(f"{len(builds) - len(failed)} of {len(builds)} builds clean")
    return 1 if failed or not builds else 0


if __name__ == "__main__":
    sys.exit(main())
