"""Ahead-of-time build of every shipped Triton kernel configuration for sm_80 and sm_90.

    python -m zs_kernels.compile_check [--arch 80 90] [--dtype fp16 bf16]

No GPU is needed: ``triton.compile`` lowers to PTX and ptxas assembles a cubin for the target.
For every kernel, configuration, architecture and dtype it prints registers, spills, stack and
shared memory, and exits non-zero on any build failure, any spill, or shared memory beyond what
an A100 grants one block. This is how we know the kernels build and fit on real GPUs.

Each kernel module in :data:`KERNEL_MODULES` provides ``aot_configurations(dtype)`` yielding
:class:`KernelConfiguration` objects: the ``@triton.jit`` function, a label, the signature and
constexprs it is launched with, the compile options (``num_warps``, ``num_stages``), and the
arguments a launch guarantees to be multiples of 16 (``divisible_by_16``: what Triton's JIT
specialises on when it sees aligned pointers and sizes; empty means the unspecialised worst case).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import io
import os
import re
import sys

KERNEL_MODULES = ("windowed_attention", "qkv_correction")
ARCHITECTURES = (80, 90)
DTYPES = ("fp16", "bf16")
# cudaDevAttrMaxSharedMemoryPerBlockOptin on an A100 (sm_80): 163 KiB.
SHARED_MEMORY_LIMIT = 163 * 1024


@dataclasses.dataclass(frozen=True)
class KernelConfiguration:
    function: object
    label: str
    signature: dict
    constexprs: dict
    num_warps: int = 4
    num_stages: int = 2
    divisible_by_16: tuple = ()


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


_PTXAS_PATTERNS = {
    "stack": r"(\d+) bytes stack frame",
    "spill_stores": r"(\d+) bytes spill stores",
    "spill_loads": r"(\d+) bytes spill loads",
    "registers": r"Used (\d+) registers",
}


def compile_configuration(kernel: str, configuration: KernelConfiguration, arch: int, dtype: str) -> Build:
    """Compile one configuration for ``sm_<arch>`` and read ptxas's resource report."""
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


def run(architectures=ARCHITECTURES, dtypes=DTYPES, modules=KERNEL_MODULES, out=sys.stdout) -> list[Build]:
    """Compile every configuration of every kernel module; print one row per build."""
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    # On a cache hit ptxas does not run and prints no resource report: always compile.
    os.environ["TRITON_ALWAYS_COMPILE"] = "1"
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    builds = []
    header = f"{'kernel':<20} {'configuration':<44} {'arch':>5} {'dtype':>5} {'regs':>5} {'spill':>6} {'stack':>6} {'shared':>8}  status"
    print(header, file=out)
    for name in modules:
        module = importlib.import_module(f"zs_kernels.triton.{name}")
        for dtype in dtypes:
            for configuration in module.aot_configurations(dtype):
                for arch in architectures:
                    build = compile_configuration(name, configuration, arch, dtype)
                    builds.append(build)
                    status = "; ".join(build.problems) or "ok"
                    print(
                        f"{name:<20} {build.label:<44} sm_{arch:<2} {dtype:>5} {build.registers:>5} "
                        f"{build.spill_stores + build.spill_loads if not build.error else -1:>6} {build.stack:>6} "
                        f"{build.shared:>8}  {status}",
                        file=out,
                        flush=True,
                    )
    return builds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zs_kernels.compile_check", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    parser.add_argument("--dtype", nargs="+", default=list(DTYPES), choices=("fp16", "bf16", "fp32"))
    parser.add_argument("--kernel", nargs="+", default=list(KERNEL_MODULES), choices=KERNEL_MODULES)
    args = parser.parse_args(argv)
    builds = run(args.arch, args.dtype, args.kernel)
    failed = [build for build in builds if build.problems]
    print(f"{len(builds) - len(failed)} of {len(builds)} builds clean")
    return 1 if failed or not builds else 0


if __name__ == "__main__":
    sys.exit(main())
