import pytest

from prefork import ConfigError, ForkPerRequest, Prefork, Serial, ThreadPerRequest
from prefork.policies import Candidate, PoolState, cpu_count


def test_prefork_defaults_to_one_worker_per_cpu():
    assert Prefork().workers == cpu_count() >= 1
    assert Prefork().threads == 1


@pytest.mark.parametrize("kwargs, message", [
    ({"workers": 0}, "workers must be between 1 and 4096, got 0"),
    ({"workers": -3}, "workers must be between 1 and 4096, got -3"),
    ({"workers": 10**11}, "workers must be between 1 and 4096"),
    ({"threads": 0}, "threads must be between 1 and 1024, got 0"),
    ({"workers": 2.5}, "workers must be a whole number"),
    ({"workers": True}, "workers must be a whole number"),
])
def test_prefork_rejects_bad_sizes(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Prefork(**kwargs)


def test_only_prefork_is_pooled():
    assert Prefork(workers=1).pooled
    assert not any(p.pooled for p in (Serial(), ForkPerRequest(), ThreadPerRequest()))


def test_target_follows_adjustments_but_never_below_one():
    policy = Prefork(workers=3)
    assert policy.target_workers(PoolState(3, 0)) == 3
    assert policy.target_workers(PoolState(3, 0), adjustment=2) == 5
    assert policy.target_workers(PoolState(3, 0), adjustment=-10) == 1


def test_choose_retire_prefers_idle_then_oldest():
    policy = Prefork(workers=2)
    busy_old = Candidate(slot=1, age=100.0, requests=5, busy=True)
    idle_young = Candidate(slot=2, age=1.0, requests=0, busy=False)
    idle_old = Candidate(slot=3, age=50.0, requests=9, busy=False)
    assert policy.choose_retire([busy_old, idle_young, idle_old]) == idle_old
    assert policy.choose_retire([busy_old, idle_young]) == idle_young
