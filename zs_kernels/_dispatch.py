"""Backend names, their resolution for a tensor, and the lazy import of an op's Triton module.

Backends:

* ``"torch"``     the op's vectorised PyTorch path (``<op>/vectorized.py``), any device;
* ``"triton"``    the op's Triton kernel (``<op>/triton.py``): CUDA tensors, or CPU tensors when
  the Triton interpreter is on (``TRITON_INTERPRET=1`` set before triton is imported), which is
  how tests without a GPU run them;
* ``"reference"`` the readable oracle (``<op>/reference.py``);
* ``"auto"``      Triton for CUDA tensors when Triton is installed (each op may still fall back to
  ``"torch"`` for problems its kernel does not support), the torch path otherwise.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType

import torch

from . import _checks

BACKENDS = ("auto", "torch", "triton", "reference")


def triton_interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def resolve_backend(backend: str, tensor: torch.Tensor, op: str) -> str:
    """The concrete backend for ``op`` on ``tensor``'s device.

    Raises:
        ValueError for an unknown name; RuntimeError when ``"triton"`` cannot run here (triton
        missing, or CPU tensors without the interpreter).
    """
    _checks.choice("backend", backend, BACKENDS)
    if backend == "auto":
        return "triton" if tensor.is_cuda and triton_installed() else "torch"
    if backend == "triton":
        if not triton_installed():
            raise RuntimeError(f"backend='triton' for {op} needs the triton package, which is not installed")
        if not (tensor.is_cuda or (tensor.device.type == "cpu" and triton_interpreter_enabled())):
            raise RuntimeError(
                f"backend='triton' for {op} needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 "
                f"set before triton is imported; got tensors on {tensor.device}"
            )
    return backend


def kernel_module(op: str) -> ModuleType:
    """Import ``zs_kernels.<op>.triton`` on first use, so that CPU-only users never import triton."""
    return importlib.import_module(f"zs_kernels.{op}.triton")
