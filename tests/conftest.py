"""Shared test configuration: Hypothesis profiles.

``ci`` (the default) is bounded and derandomised so CI time and results are stable;
``thorough`` draws many more examples: ``HYPOTHESIS_PROFILE=thorough ./dev test``.
"""

import os

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
