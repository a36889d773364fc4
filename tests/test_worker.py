"""The worker's pure parts; its process behaviour is tested in tests/integration."""

import random

from prefork.worker import _jittered


def test_max_requests_jitter_adds_zero_to_j():
    random.seed(7)
    limits = {_jittered(100, 10) for _ in range(500)}
    assert limits == set(range(100, 111))


def test_no_limit_stays_no_limit():
    assert _jittered(0, 10) == 0
