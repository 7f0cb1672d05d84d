"""One torch thread for the audit tests: their models are tiny, and on a shared
2-core machine a second intra-op thread makes small ops far slower, not faster."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
