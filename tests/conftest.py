import os

import pytest
import torch

# The tests use small tensors on two shared cores: one intra-op thread is faster than two (no
# OpenMP hand-off per op) and keeps timings steady.  NTM_TEST_THREADS overrides it.
_THREADS = int(os.environ.get("NTM_TEST_THREADS", "1"))
torch.set_num_threads(_THREADS)


@pytest.fixture(autouse=True)
def _restore_threads():
    """Every test starts with the suite's thread count, whatever the previous one set."""
    torch.set_num_threads(_THREADS)
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
