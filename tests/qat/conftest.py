"""qat tests train small torch models: one torch thread each (the machine's cores are shared, and
oversubscribed threads make tiny models slower, not faster)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
