"""The worker's pure parts; its process behaviour is tested in tests/integration."""

import random

import pytest

from prefork.worker_process import _jittered, successor_threshold


def test_max_requests_jitter_adds_zero_to_j():
    random.seed(7)
    limits = {_jittered(100, 10) for _ in range(500)}
    assert limits == set(range(100, 111))


def test_no_limit_stays_no_limit():
    assert _jittered(0, 10) == 0
    assert successor_threshold(0) == 0


@pytest.mark.parametrize("cap, threshold", [
    (1, 1), (2, 1), (3, 2), (5, 4), (10, 9), (20, 18), (100, 90), (1000, 900), (5000, 4900), (10**6, 10**6 - 100),
])
def test_a_successor_is_asked_for_ahead_of_the_cap_but_never_before_a_first_request(cap, threshold):
    assert successor_threshold(cap) == threshold
    assert 1 <= successor_threshold(cap) <= cap
