"""Suite-wide settings.

One intra-op thread for the whole session, set before any fixture runs: the tensors in
these tests are tiny, and on a shared 2-core machine OpenMP spin-waits of a second
thread make them 5-15x slower. Worker processes that tests start set their own.

Triton kernels run through Triton's interpreter on CPU tensors (this machine has no GPU);
the variable must be set before anything imports ``triton``.

Hypothesis runs derandomized (the same examples every run, no example database): the
suite is deterministic, and generated inputs that pass once pass in CI.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

settings.register_profile("metaprune", derandomize=True, database=None, deadline=None)
settings.load_profile("metaprune")


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)
