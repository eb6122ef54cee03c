"""qat tests train small torch models: one torch thread each (the machine's cores are shared, and
oversubscribed threads make tiny models slower, not faster)."""

from __future__ import annotations

import pytest
import torch


def _exact_scheme(fmt: str, pass_name: str, extra: str, roles: str = "") -> str:
    """A scheme TOML with `fmt` weights and fp32 activations in the ops (accuracy_level 0 in `extra`)
    and FP32 embeddings: the compiled model is then exactly the trained student's arithmetic, up to
    summation order."""
    return f"""name = "{fmt}_exact"
summary = "test: {fmt} weights, fp32 activations, fp32 embeddings"
passes = ["canonicalize", "fold_layernorm", "{pass_name}", "cleanup"]
[weights]
format = "{fmt}"
recovery = "gptq"
n_outliers = 2
{extra}
{roles}"""


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def exact_scheme():
    """The `_exact_scheme` function, as a fixture (conftest modules are not importable by name)."""
    return _exact_scheme
