"""Triton infrastructure shared by the ops' kernels: the launch-configuration type, the bounded
autotuner (with its pinning context manager), the alignment test behind the vectorised kernel
variants, and what an ahead-of-time build needs (:class:`KernelConfiguration`, :func:`aot_signature`).

Only the ops' ``triton.py`` modules import this module (it imports triton).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
from typing import Callable, Hashable, Iterator, Optional, Sequence

import torch
import triton.testing

# Bytes a vectorised load moves (LDG.128): rows aligned to this load as vectors.
VECTOR_BYTES = 16
# Triton's JIT specialises integer arguments that are multiples of this (tt.divisibility).
JIT_DIVISIBILITY = 16


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """Launch parameters that do not change a kernel's result: its tile sizes by name (read by the
    op's launcher), warps and software-pipeline stages. Hashable, so it can key caches."""

    tiles: tuple[tuple[str, int], ...]
    num_warps: int = 4
    num_stages: int = 1

    @classmethod
    def of(cls, *, num_warps: int = 4, num_stages: int = 1, **tiles: int) -> LaunchConfig:
        return cls(tuple(tiles.items()), num_warps, num_stages)

    def __getitem__(self, name: str) -> int:
        return dict(self.tiles)[name]

    @property
    def label(self) -> str:
        """Compact name, e.g. ``block_m16 seqs1 w4 s1``."""
        tiles = [f"{name}{value}" for name, value in self.tiles]
        return " ".join(tiles + [f"w{self.num_warps}", f"s{self.num_stages}"])


class Autotuner:
    """Chooses one launch configuration per problem key.

    The pinned configuration (:meth:`pinned`) wins; otherwise with one candidate, or off CUDA
    (the interpreter cannot time), the first candidate (callers order them by preference);
    otherwise every candidate is launched and timed once per key with
    ``triton.testing.do_bench`` and the fastest is kept. The cache holds at most ``max_entries``
    keys and drops the least recently used, so a long-running process with ever-new shapes does
    not grow without bound. Timing re-runs the real launch: kernels must be idempotent (they only
    write their outputs).
    """

    def __init__(self, max_entries: int = 256, timer: Optional[Callable[[Callable[[], None]], float]] = None):
        self.max_entries = max_entries
        self._timer = timer
        self._pinned: Optional[LaunchConfig] = None
        self._chosen: collections.OrderedDict[Hashable, LaunchConfig] = collections.OrderedDict()

    @contextlib.contextmanager
    def pinned(self, config: LaunchConfig) -> Iterator[LaunchConfig]:
        """Launch with ``config`` inside the ``with`` block, whatever the problem (tests, benches)."""
        previous, self._pinned = self._pinned, config
        try:
            yield config
        finally:
            self._pinned = previous

    def choose(
        self,
        key: Hashable,
        candidates: Sequence[LaunchConfig],
        launch: Callable[[LaunchConfig], None],
        device: torch.device,
    ) -> LaunchConfig:
        """The configuration to launch ``key``'s problem with (``candidates`` non-empty)."""
        if self._pinned is not None:
            return self._pinned
        if len(candidates) == 1 or device.type != "cuda":
            return candidates[0]
        if key in self._chosen:
            self._chosen.move_to_end(key)
            return self._chosen[key]
        timer = self._timer or triton.testing.do_bench
        timings = {config: timer(lambda config=config: launch(config)) for config in candidates}
        self._chosen[key] = min(timings, key=timings.get)
        if len(self._chosen) > self.max_entries:
            self._chosen.popitem(last=False)
        return self._chosen[key]


def vector_alignment(tensors: Sequence[torch.Tensor], integers: Sequence[int] = ()) -> int:
    """Elements per 16 bytes if every tensor's rows start 16-byte aligned — data pointer aligned,
    unit last-dim stride, every other stride a multiple of that many elements — and every value in
    ``integers`` is a multiple of 16 (what Triton's JIT specialises integer arguments on); else 1.

    Kernels built for the aligned case hint their loads as vectors; 1 means the unhinted variant.
    """
    vector = VECTOR_BYTES // tensors[0].element_size()
    for tensor in tensors:
        if tensor.data_ptr() % VECTOR_BYTES or tensor.stride(-1) != 1:
            return 1
        if any(stride % vector for stride in tensor.stride()[:-1]):
            return 1
    if any(value % JIT_DIVISIBILITY for value in integers):
        return 1
    return vector


@dataclasses.dataclass(frozen=True)
class KernelConfiguration:
    """One ahead-of-time build of a ``@triton.jit`` function: its signature and constexprs as a
    launch specialises them, the compile options, and the arguments a launch guarantees to be
    multiples of 16 (``divisible_by_16``: what Triton's JIT specialises on when it sees aligned
    pointers and sizes; empty means the unspecialised worst case)."""

    function: object
    label: str
    signature: dict
    constexprs: dict
    num_warps: int = 4
    num_stages: int = 2
    divisible_by_16: tuple = ()


def aot_signature(function, dtype: str, *, floats: Sequence[str] = (), constants: Sequence[str] = ()) -> dict:
    """Triton signature of ``function`` for an ahead-of-time build with ``dtype`` tensors.

    ``*dtype`` for every ``*_ptr`` argument, ``fp32`` for ``floats``, ``constexpr`` for upper-case
    (meta-parameter) names and for ``constants`` (e.g. unit strides the launch guarantees), ``i32``
    for every other argument.
    """
    signature = {}
    for name in function.arg_names:
        if name.endswith("_ptr"):
            signature[name] = f"*{dtype}"
        elif name in floats:
            signature[name] = "fp32"
        elif name.isupper() or name in constants:
            signature[name] = "constexpr"
        else:
            signature[name] = "i32"
    return signature
