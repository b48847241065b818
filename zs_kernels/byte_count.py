"""Counted memory traffic: the bytes a Triton kernel and its PyTorch peers read and write.

Kernels — :func:`count_kernel`, under the Triton interpreter
-------------------------------------------------------------
Every ``tl.load`` and ``tl.store`` reaches the interpreter's builder as ``create_masked_load`` /
``create_masked_store`` (an unmasked one is given an all-true mask), with the block of pointers,
the mask and the element type. The counter wraps those two for the duration of the call and
counts, separately for bytes read and bytes written:

* ``issued``: unmasked lanes × element size, summed over every load and store of every program —
  what the kernel asks of the memory system, cache hits included (a masked-off lane moves no
  memory on a GPU);
* ``per_program``: the distinct bytes each program touches, summed over the programs — the DRAM
  traffic when a program's re-reads of its own data hit in L1/L2 and programs share nothing;
* ``unique``: the distinct bytes over everything counted — the DRAM traffic of a cache that never
  evicts, i.e. each byte fetched or written once however many programs touch it.

Bytes are counted as used bytes, not as the 32-byte sectors DRAM moves, so a row that starts
mid-sector costs its bytes only. Loads through tensor descriptors and atomics are refused
(``NotImplementedError``) rather than left uncounted; none of our kernels uses them.

The interpreter must be on before triton is first imported (triton's own jit'd language functions
are then interpreted too); :func:`in_interpreter` runs a function where that holds, in this process
or a fresh one.

Peers — :func:`count_torch`, a ``TorchDispatchMode``
--------------------------------------------------------
Every ATen op that runs (after PyTorch's own decompositions, i.e. the kernels eager mode launches)
is taken to read each tensor argument once and write each output once: the DRAM traffic of eager
execution, whose intermediates round-trip through memory between ops. The op's schema says which
arguments it writes (in-place, ``out=``) and which outputs are fresh. Views move nothing,
including ops whose result is their input's memory though their schema does not say so
(``_unsafe_view``); allocations without initialisation (``empty*``) move nothing; factories
such as ``zeros_like`` read nothing of their tensor argument (only its shape and dtype);
``fill_``, ``zero_`` and ``copy_`` do not read the tensor they overwrite, and a ``copy_`` between two identical views of the same
memory moves nothing (ATen returns early). A tensor's bytes are its distinct elements (a
broadcast dimension, stride 0, counts once) × its element size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator, TypeVar
from unittest import mock

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

T = TypeVar("T")

_READ, _WRITE = 0, 1
# Memory operations of the interpreter the counter does not count; refusing them keeps a kernel
# that uses one from being reported with too few bytes.
_UNCOUNTED_BUILDER_METHODS = (
    "create_descriptor_load",
    "create_descriptor_store",
    "create_descriptor_gather",
    "create_descriptor_scatter",
    "create_atomic_cas",
    "create_atomic_rmw",
    "create_atomic_load",
    "create_atomic_store",
    "create_atomic_poll",
)


@dataclasses.dataclass(frozen=True)
class Traffic:
    """Bytes read and bytes written."""

    read: int
    written: int

    @property
    def total(self) -> int:
        return self.read + self.written

    def __add__(self, other: "Traffic") -> "Traffic":
        return Traffic(self.read + other.read, self.written + other.written)


@dataclasses.dataclass(frozen=True)
class KernelTraffic:
    """What :func:`count_kernel` counted (see the module docstring for each figure); ``programs``
    counts the programs that loaded or stored anything, over all ``launches``."""

    issued: Traffic
    per_program: Traffic
    unique: Traffic
    launches: int
    programs: int


class _KernelRecorder:
    def __init__(self, builder) -> None:
        self._builder = builder
        self._issued = [0, 0]
        self._per_program = [0, 0]
        self._launches = 0
        self._programs = 0
        self._program = None
        # Byte addresses of the program running now, and the distinct ones of every finished program.
        self._current: tuple[list, list] = ([], [])
        self._finished: tuple[list, list] = ([], [])

    def launch(self) -> None:
        self._finish_program()
        self._launches += 1

    def access(self, kind: int, pointers, mask) -> None:
        program = (self._launches, self._builder.grid_idx)
        if program != self._program:
            self._finish_program()
            self._program = program
            self._programs += 1
        element_bytes = (pointers.get_element_ty().primitive_bitwidth + 7) // 8
        addresses = pointers.data[mask.data].astype(np.uint64)
        self._issued[kind] += addresses.size * element_bytes
        self._current[kind].append((addresses[:, None] + np.arange(element_bytes, dtype=np.uint64)).ravel())

    def _finish_program(self) -> None:
        for kind in (_READ, _WRITE):
            if self._current[kind]:
                distinct = np.unique(np.concatenate(self._current[kind]))
                self._per_program[kind] += distinct.size
                self._finished[kind].append(distinct)
                self._current[kind].clear()
        self._program = None

    def result(self) -> KernelTraffic:
        self._finish_program()
        unique = [np.unique(np.concatenate(arrays)).size if arrays else 0 for arrays in self._finished]
        return KernelTraffic(
            issued=Traffic(*self._issued),
            per_program=Traffic(*self._per_program),
            unique=Traffic(*unique),
            launches=self._launches,
            programs=self._programs,
        )


def _interpreter_active() -> bool:
    """Whether this process's triton was imported with the interpreter on: its jit'd language
    functions (``tl.zeros``, …) are then interpreted, which running a kernel interpreted needs."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.zeros, InterpretedFunction)


@contextlib.contextmanager
def _counting_interpreter() -> Iterator[_KernelRecorder]:
    from triton.runtime.interpreter import interpreter_builder as builder

    recorder = _KernelRecorder(builder)
    load, store, set_grid_dim = builder.create_masked_load, builder.create_masked_store, builder.set_grid_dim

    def counted_load(pointers, mask, other, cache_policy, is_volatile):
        recorder.access(_READ, pointers, mask)
        return load(pointers, mask, other, cache_policy, is_volatile)

    def counted_store(pointers, value, mask, cache_policy):
        recorder.access(_WRITE, pointers, mask)
        return store(pointers, value, mask, cache_policy)

    def counted_grid(*grid_dim):
        recorder.launch()
        return set_grid_dim(*grid_dim)

    def refuse(name):
        def refused(*args, **kwargs):
            raise NotImplementedError(f"the byte counter does not count {name}")

        return refused

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(builder, "create_masked_load", counted_load))
        stack.enter_context(mock.patch.object(builder, "create_masked_store", counted_store))
        stack.enter_context(mock.patch.object(builder, "set_grid_dim", counted_grid))
        for name in _UNCOUNTED_BUILDER_METHODS:
            if hasattr(builder, name):
                stack.enter_context(mock.patch.object(builder, name, refuse(name)))
        yield recorder


def count_kernel(call: Callable[[], T]) -> tuple[T, KernelTraffic]:
    """Run ``call()`` — any code that launches interpreted Triton kernels on CPU tensors — and
    count the bytes its kernels load and store (all launches inside ``call`` together).

    Returns ``(call's result, KernelTraffic)``. Raises ``RuntimeError`` when triton was not
    imported under ``TRITON_INTERPRET=1`` (use :func:`in_interpreter`), or when ``call`` launched
    no kernel (nothing would have been counted).
    """
    if not _interpreter_active():
        raise RuntimeError("count_kernel needs triton imported with TRITON_INTERPRET=1; run it through in_interpreter")
    with _counting_interpreter() as recorder:
        result = call()
    traffic = recorder.result()
    if traffic.launches == 0:
        raise RuntimeError("no Triton kernel was launched: the call took another backend")
    return result, traffic


def in_interpreter(function: Callable[..., T], *args, **kwargs) -> T:
    """``function(*args, **kwargs)`` with Triton kernels interpreted.

    In this process when its triton already runs the interpreter (the tests without CUDA);
    otherwise in a fresh Python process with ``TRITON_INTERPRET=1``, no visible GPU and this
    process's ``sys.path`` (the benches, and any process that imported triton compiled).
    ``function`` must be importable by its module and name, and its arguments and result
    picklable. Raises ``RuntimeError`` with the child's stderr if it fails.
    """
    if _interpreter_active():
        return function(*args, **kwargs)
    code = (
        "import pickle, sys\n"
        "function, args, kwargs = pickle.loads(open(sys.argv[1], 'rb').read())\n"
        "open(sys.argv[2], 'wb').write(pickle.dumps(function(*args, **kwargs)))\n"
    )
    environment = dict(
        os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=os.pathsep.join(sys.path)
    )
    with tempfile.TemporaryDirectory() as folder:
        request, answer = Path(folder, "request.pickle"), Path(folder, "answer.pickle")
        request.write_bytes(pickle.dumps((function, args, kwargs)))
        done = subprocess.run(
            [sys.executable, "-c", code, str(request), str(answer)], env=environment, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"{function.__qualname__} failed in the interpreter process:\n{done.stderr[-6000:]}")
        return pickle.loads(answer.read_bytes())


# --- peers ----------------------------------------------------------------------------------------

_ALLOCATIONS = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}
_OVERWRITES = {"fill_", "zero_", "copy_"}


def _reads_tensor_arguments(name: str) -> bool:
    """False for factories whose tensor argument gives only shape and dtype (``zeros_like``, ``new_ones``, …)."""
    return not (name.endswith("_like") or name.startswith("new_"))


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Distinct elements × element size (a stride-0, broadcast dimension counts once)."""
    distinct = math.prod(size for size, stride in zip(tensor.shape, tensor.stride()) if stride != 0)
    return distinct * tensor.element_size()


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [item for item in value if isinstance(item, torch.Tensor)]
    return []


def _same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
        and a.storage_offset() == b.storage_offset()
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.dtype == b.dtype
    )


class _TorchCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.read = 0
        self.written = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        self._count(func, args, kwargs, result)
        return result

    def _count(self, func, args, kwargs, result) -> None:
        name = func.overloadpacket.__name__
        if func.is_view or name in _ALLOCATIONS:
            return
        if name == "copy_" and _same_view(args[0], args[1]):
            return
        schema = func._schema
        arguments = [
            (argument, args[index] if index < len(args) else kwargs.get(argument.name))
            for index, argument in enumerate(schema.arguments)
        ]
        storages = {tensor.untyped_storage().data_ptr() for _, value in arguments for tensor in _tensors(value)}
        results = [result] if len(schema.returns) == 1 else result
        fresh = [
            tensor
            for returned, value in zip(schema.returns, results)
            if returned.alias_info is None
            for tensor in _tensors(value)
            if tensor.untyped_storage().data_ptr() not in storages
        ]
        writes = [argument.alias_info is not None and argument.alias_info.is_write for argument, _ in arguments]
        if not fresh and not any(writes):
            return  # a view under another name (``_unsafe_view``): its result is its input's memory
        reads = _reads_tensor_arguments(name)
        for (argument, value), written in zip(arguments, writes):
            overwritten = written and (argument.kwarg_only or name in _OVERWRITES)
            for tensor in _tensors(value):
                if reads and not overwritten:
                    self.read += tensor_bytes(tensor)
                if written:
                    self.written += tensor_bytes(tensor)
        self.written += sum(tensor_bytes(tensor) for tensor in fresh)


def count_torch(call: Callable[[], T]) -> tuple[T, Traffic]:
    """Run ``call()`` (eager PyTorch) and count the bytes its ATen ops read and write (see the
    module docstring). Returns ``(call's result, Traffic)``."""
    with _TorchCounter() as counter:
        result = call()
    return result, Traffic(counter.read, counter.written)
