"""Shared fixtures and the run's cost profile.

Plain helpers (scenario builders, `run`, the command line) live in tests/helpers/, broken policy plugins in
tests/plugins/; test modules import those, never each other. Hypothesis profiles: `default` (CI, the
default run) keeps example counts small; `slow` (selected by `-m slow`, or HYPOTHESIS_PROFILE=slow) runs
every property with ten times as many examples. A test that sets max_examples itself scales it with
`helpers.examples(n)`.
"""
import os

import pytest
from helpers import SLOW_PROFILE_EXAMPLES, munmap_while_others_run
from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=30, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("slow", max_examples=SLOW_PROFILE_EXAMPLES, deadline=None, derandomize=False,
                          suppress_health_check=[HealthCheck.too_slow])


def pytest_configure(config: pytest.Config) -> None:
    """Pick the hypothesis profile: `slow` when the run selects slow tests, else `default`."""
    wanted = os.environ.get("HYPOTHESIS_PROFILE")
    if wanted is None:
        wanted = "slow" if "slow" in (config.option.markexpr or "").replace("not slow", "") else "default"
    settings.load_profile(wanted)


@pytest.fixture
def small_munmap():
    """munmap of 4 MiB on CPU 0 while three other threads of the mm keep touching their own memory."""
    return munmap_while_others_run()
