"""Shared test set-up."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The math tests run thousands of ops on small tensors; with intra-op threads on a loaded
    2-core machine they run tens of times slower (threads wait on each other), so use one.
    Ray Train workers set their own thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
