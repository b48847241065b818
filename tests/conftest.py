"""Test-wide setup. TRITON_INTERPRET must be set before anything imports triton, so that the
Triton kernels run on CPU tensors through the interpreter."""

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same global RNG state; tests still draw fresh random inputs."""
    torch.manual_seed(0)
