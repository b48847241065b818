"""Test-wide setup.

Without a CUDA device the Triton kernels run on CPU tensors through the Triton interpreter, which
must be switched on before anything imports triton; with one they run compiled on the GPU (and
the kernel tests put their tensors there). ``torch.cuda.is_available()`` does not import triton.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same global RNG state; tests still draw fresh random inputs."""
    torch.manual_seed(0)
