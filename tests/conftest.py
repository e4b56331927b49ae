"""Shared test configuration: Hypothesis profiles.

``ci`` (the default) is bounded and derandomised so CI time and results are stable;
``thorough`` draws many more examples: ``HYPOTHESIS_PROFILE=thorough ./dev test``.
"""

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("thorough", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread() -> Iterator[None]:
    """NOTE: torch on one thread for the whole run. Its OpenMP threads busy-wait at every barrier
    and fight XLA's and ONNX Runtime's pools for the 2 cores of a CI machine: a 32×32 resnet110
    pass took 4-6 s instead of 0.02 s next to jax. The suite's small inputs gain little from two."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
