import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The model tests are small: one thread is faster than two on shared, busy cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
