"""Fixtures shared by tests/ and bench/."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Run a module single-threaded. Tiny models are dominated by per-op overhead, so intra-op
    threads on a shared 2-core box only contend (a 0.1 s step can take seconds); one thread is
    also the steadiest measure for benches. Module scope: a module's cached runs and its reference
    runs must use the same thread count, or reductions round differently."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
