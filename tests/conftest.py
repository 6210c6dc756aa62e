import os

import pytest
import torch

# Tests share two cores with everything else; keep them from oversubscribing.
torch.set_num_threads(int(os.environ.get("NTM_TEST_THREADS", "2")))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
