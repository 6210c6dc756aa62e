import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread_for_small_tensors():
    """The nn tests use tiny tensors: one intra-op thread is faster than two on these shared
    cores (no OpenMP hand-off per op).  Restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
