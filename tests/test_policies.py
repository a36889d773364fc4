import pytest

from prefork import ConfigError, ForkPerRequest, Prefork, Serial, ThreadPerRequest
from prefork.policies import Candidate, PoolLoad, cpu_count


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


def load(requested=None):
    return PoolLoad(workers=3, idle=3, busy=0, backlog=None, requested=requested, now=0.0)


def test_size_is_static_unless_an_operator_asked_for_another():
    policy = Prefork(workers=3)
    assert policy.size(load()).target == 3 and "static pool of 3" in policy.size(load()).reason
    assert policy.size(load(requested=5)).target == 5
    assert "scaled by the operator" in policy.size(load(requested=5)).reason


def test_choose_retire_prefers_idle_then_oldest():
    policy = Prefork(workers=2)
    busy_old = Candidate(slot=1, age=100.0, busy=True)
    idle_young = Candidate(slot=2, age=1.0, busy=False)
    idle_old = Candidate(slot=3, age=50.0, busy=False)
    assert policy.choose_retire([busy_old, idle_young, idle_old]) == idle_old
    assert policy.choose_retire([busy_old, idle_young]) == idle_young
    assert policy.choose_retire([]) is None
