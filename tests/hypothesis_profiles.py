"""Hypothesis settings for the property tests: bounded by default, longer on request.

The default profile keeps every property test module to a few seconds on a 2-core machine (no
per-example deadline, no example database left in the checkout). The long profile runs 25
times as many examples per test::

    HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest -q \\
        tests/serving/test_batcher_properties.py tests/test_imaging_properties.py

Nothing here is loaded globally: each test takes its settings from :func:`budget`, so other
Hypothesis tests in the session keep their own.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "visionloop-bounded",
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("long", parent=settings.get_profile("visionloop-bounded"))

PROFILE = "long" if os.environ.get("HYPOTHESIS_PROFILE") == "long" else "visionloop-bounded"
SCALE = 25 if PROFILE == "long" else 1


def budget(examples: int) -> settings:
    """Settings for one test: ``examples`` examples by default, ``SCALE`` times that when long."""
    return settings(settings.get_profile(PROFILE), max_examples=examples * SCALE)
