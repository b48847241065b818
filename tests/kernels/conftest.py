"""Fixtures of the kernel tests."""

import pytest
import torch

from zs_kernels import testing


@pytest.fixture
def nan_filled():
    """Every uninitialised float allocation inside the test starts as NaN, so an op that leaves
    part of its output unwritten fails the comparison."""
    with testing.nan_filled_allocations():
        yield


@pytest.fixture
def device():
    """Where the Triton backend runs: the GPU when there is one, else the CPU through the
    interpreter (tests/conftest.py turns it on)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def gpu():
    """The CUDA device for ``-m cuda`` tests; skips without one."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return torch.device("cuda")
