"""One torch thread for these tests: their models are tiny, and on a shared 2-core
machine a second intra-op thread makes small ops far slower, not faster.

Module-scoped and autouse, so it is set before the module-scoped fixtures that
train models, and restored when the module ends (other test folders keep theirs).
"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
