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


@pytest.fixture
def nan_poisoned_allocations(monkeypatch):
    """Make every uninitialised float allocation (torch.empty_like, Tensor.new_empty, torch.empty)
    start as NaN, so an op that leaves part of its output unwritten fails the comparison."""
    empty_like, new_empty, empty = torch.empty_like, torch.Tensor.new_empty, torch.empty

    def poison(tensor):
        if tensor.is_floating_point():
            tensor.fill_(float("nan"))
        return tensor

    monkeypatch.setattr(torch, "empty_like", lambda *args, **kwargs: poison(empty_like(*args, **kwargs)))
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, *args, **kwargs: poison(new_empty(self, *args, **kwargs)))
    monkeypatch.setattr(torch, "empty", lambda *args, **kwargs: poison(empty(*args, **kwargs)))
