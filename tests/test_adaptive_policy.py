"""prefork.Adaptive as tables: size() over loads and states, then through planner.plan() over snapshots."""

import random

import pytest

from prefork import Adaptive, Config, ConfigError
from prefork.pool.actions import Retire, Spawn
from prefork.pool.planner import next_deadline, plan
from prefork.pool.snapshot import Snapshot, WorkerView
from prefork.policies import (
    CHECK_INTERVAL, CHECK_INTERVAL_AT_REST, MAX_SPAWN_RATE, AdaptiveState, Candidate, PoolLoad, cpu_count,
)

NOW = 1000.0
POLICY = Adaptive(min_workers=1, max_workers=6, min_spare=1, max_spare=2, scale_down_after=10)


def load(workers, idle, busy=0, backlog=None, requested=None, now=NOW, busy_threads=0):
    return PoolLoad(workers=workers, idle=idle, busy=busy, backlog=backlog, requested=requested, now=now,
                    busy_threads=busy_threads)


def state(**fields):
    return AdaptiveState(window_start=NOW, **fields)


# -- validation ------------------------------------------------------------------------

def test_defaults():
    policy = Adaptive()
    assert (policy.min_workers, policy.max_workers, policy.min_spare, policy.max_spare, policy.threads,
            policy.scale_down_after) == (1, 4 * cpu_count(), 1, 2, 1, 10.0)
    assert Adaptive(threads=4, min_spare=3).max_spare == 7
    assert policy.pooled and policy.name == "adaptive"
    assert Adaptive(min_workers=2, min_spare=5, max_spare=5).workers == 5     # enough for min_spare at rest
    assert Adaptive(min_workers=3, threads=4, min_spare=5, max_spare=9).workers == 3


@pytest.mark.parametrize("kwargs, message", [
    ({"min_workers": 0}, "min_workers must be between 1 and 4096, got 0"),
    ({"max_workers": 5000}, "max_workers must be between 1 and 4096, got 5000"),
    ({"max_workers": 2.5}, "max_workers must be a whole number"),
    ({"threads": 0}, "threads must be between 1 and 1024, got 0"),
    ({"min_spare": -1}, "min_spare must be between 0 and"),
    ({"max_spare": -1}, "max_spare must be between 0 and"),
    ({"min_spare": True}, "min_spare must be a whole number"),
    ({"scale_down_after": -1}, "scale_down_after must be a finite number of seconds, at least 0, got -1"),
    ({"scale_down_after": float("inf")}, "scale_down_after must be a finite number"),
    ({"scale_down_after": "10"}, "scale_down_after must be a finite number"),
    ({"min_workers": 4, "max_workers": 3}, "min_workers must not be above max_workers (3), got 4"),
    ({"min_spare": 3, "max_spare": 2}, "max_spare must not be below min_spare (3), got 2"),
    ({"min_spare": 2, "max_spare": 4, "threads": 4}, "max_spare must be at least min_spare + threads - 1 (5), "
                                                     "or retiring an idle worker would leave fewer than min_spare"),
    ({"max_workers": 2, "min_spare": 3, "max_spare": 3}, "min_spare must not be above max_workers x threads (2)"),
])
def test_bad_combinations_are_refused(kwargs, message):
    with pytest.raises(ConfigError) as info:
        Adaptive(**kwargs)
    assert str(info.value).startswith(message)
    assert info.value.setting == message.split()[0]


def test_it_is_a_frozen_value():
    with pytest.raises(Exception):
        POLICY.min_workers = 3
    assert Adaptive(min_workers=2, max_workers=4) == Adaptive(min_workers=2, max_workers=4)


# -- size(): one pass --------------------------------------------------------------------

GROW_BY_BACKLOG = Adaptive(min_workers=1, max_workers=6, min_spare=0, max_spare=1)
THREADED = Adaptive(min_workers=1, max_workers=4, min_spare=2, max_spare=6, threads=4)


@pytest.mark.parametrize("situation, policy, pool_load, before, target, reason", [
    ("an empty pool starts at min_workers, at once",
     POLICY, load(0, 0), None, 1, "0 idle: below the minimum of 1 workers: adding 1"),
    ("... or with enough workers for min_spare",
     Adaptive(max_workers=6, min_spare=3, max_spare=3), load(0, 0), None, 3, "adding 3"),
    ("... counted in threads with threads > 1",
     Adaptive(max_workers=6, min_spare=6, max_spare=9, threads=4), load(0, 0), None, 2, "adding 2"),
    ("idle workers between min_spare and max_spare: nothing to do",
     POLICY, load(3, 1, 2), None, 3, "1 idle, min_spare 1..max_spare 2: holding 3"),
    ("no idle worker: one more",
     POLICY, load(2, 0, 2), None, 3, "0 idle < min_spare 1: growing by 1"),
    ("a booting worker counts as idle: no second fork for the same need",
     POLICY, load(3, 0, 2), None, 3, "0 idle (+1 booting), min_spare 1..max_spare 2: holding 3"),
    ("connections waiting while every worker is busy: grow, though min_spare 0 is met",
     GROW_BY_BACKLOG, load(1, 0, 1, backlog=3), None, 2,
     "0 idle < min_spare 0 + backlog 3: growing by 1 (at most 1 a second now)"),
    ("every worker busy, nothing waiting, min_spare 0: nothing to do",
     GROW_BY_BACKLOG, load(1, 0, 1, backlog=0), None, 1, "holding 1"),
    ("no accept queue to read (UDP, Unix): the idle count decides",
     GROW_BY_BACKLOG, load(1, 0, 1, backlog=None), None, 1, "holding 1"),
    ("idle workers will take what waits: no growth beyond min_spare + backlog",
     POLICY, load(3, 2, 1, backlog=1), None, 3, "2 idle, backlog 1, min_spare 1..max_spare 2: holding 3"),
    ("a second worth of forks allowed: as many as needed, up to max_workers",
     POLICY, load(2, 0, 2, backlog=10), state(rate=4), 6, "0 idle < min_spare 1 + backlog 10: growing by 4"),
    ("this second's forks are spent: wait for the next",
     POLICY, load(3, 0, 3, backlog=5), state(rate=2, spawned=2), 3, "waiting: 2 fork(s) this second already"),
    ("at max_workers: no more",
     POLICY, load(6, 0, 6, backlog=4), None, 6, "0 idle < min_spare 1 + backlog 4: at max_workers 6"),
    ("above max_workers (never forked so, but bounded anyway)",
     POLICY, load(8, 8), None, 6, "above max_workers 6"),
    ("too many idle: the countdown starts, nothing retired yet",
     POLICY, load(5, 5), None, 5, "5 idle > max_spare 2 for 0.0 s (retiring after 10 s): holding 5"),
    ("too many idle for scale_down_after: one goes",
     POLICY, load(5, 5), state(idle_since=NOW - 10), 4, "5 idle > max_spare 2 for 10.0 s: retiring 1"),
    ("... then one a second, not faster",
     POLICY, load(4, 4), state(idle_since=NOW - 10.5, retired_at=NOW - 0.5), 4, "holding 4"),
    ("... a second later the next",
     POLICY, load(4, 4), state(idle_since=NOW - 11, retired_at=NOW - 1), 3, "retiring 1"),
    ("booting workers are not idle ones: they were wanted a moment ago",
     POLICY, load(5, 2, 0), state(idle_since=NOW - 30), 5, "2 idle (+3 booting), min_spare 1..max_spare 2"),
    ("too many idle at the minimum: nothing to retire",
     Adaptive(min_workers=3, max_workers=6, min_spare=1, max_spare=1), load(3, 3), None, 3,
     "3 idle, at the minimum: holding 3"),
    ("the operator's size is a floor, reached at once",
     POLICY, load(2, 2, requested=5), None, 5, "2 idle: below the operator's floor of 5 workers: adding 3"),
    ("... clamped to max_workers",
     POLICY, load(2, 2, requested=10), None, 6, "adding 4"),
    ("... and to min_workers",
     Adaptive(min_workers=2, max_workers=6), load(2, 1, 1, requested=1), None, 2, "holding 2"),
    ("... never shrunk below",
     POLICY, load(4, 4, requested=4), state(idle_since=NOW - 60), 4, "4 idle, at the minimum: holding 4"),
    ("... but not a ceiling: the load may take the pool above it",
     POLICY, load(4, 0, 4, requested=4), None, 5, "growing by 1"),
    ("threads: idle capacity is idle threads, a booting worker's included",
     THREADED, load(2, 0, 2, busy_threads=7), None, 3, "1 idle threads < min_spare 2: growing by 1"),
    ("threads: a worker with one request in hand still offers its other threads",
     THREADED, load(2, 0, 2, busy_threads=5), None, 2, "3 idle threads, min_spare 2..max_spare 6: holding 2"),
    ("threads: too many idle threads start the countdown",
     THREADED, load(3, 1, 2, busy_threads=2), None, 3, "10 idle threads > max_spare 6 for 0.0 s"),
])
def test_size(situation, policy, pool_load, before, target, reason):
    sizing = policy.size(pool_load, before)
    assert (sizing.target, reason in sizing.reason) == (target, True), (situation, sizing.reason)


def test_only_the_state_remembers():
    """The same load and state give the same answer: nothing is kept in the policy."""
    first = POLICY.size(load(5, 5), state(idle_since=NOW - 10))
    again = POLICY.size(load(5, 5), state(idle_since=NOW - 10))
    assert first == again and first.state.retired_at == NOW
    assert POLICY.size(load(5, 5), first.state).target == 5      # the state says: one just went


def test_the_countdown_restarts_whenever_the_pool_is_not_too_idle():
    sizing = POLICY.size(load(5, 2, 3), state(idle_since=NOW - 9))
    assert sizing.state.idle_since is None
    assert POLICY.size(load(5, 5, now=NOW + 1), sizing.state).state.idle_since == NOW + 1


# -- size() over time: the ramp up and the way down ----------------------------------------

def grow_each_second(policy, seconds, passes_per_second=3, backlog=10_000):
    """Every worker busy and an endless queue; the pool forks what it is told. Forks per second."""
    workers, current, grown = policy.min_workers, None, []
    for second in range(seconds):
        before = workers
        for step in range(passes_per_second):
            sizing = policy.size(load(workers, 0, workers, backlog=backlog, now=NOW + second + step / 10), current)
            current, workers = sizing.state, sizing.target
        grown.append(workers - before)
    return grown


def test_forks_per_second_double_while_the_shortage_outruns_them_up_to_a_cap():
    policy = Adaptive(min_workers=1, max_workers=4096, min_spare=1, max_spare=1)
    assert grow_each_second(policy, 8) == [1, 2, 4, 8, 16, MAX_SPAWN_RATE, MAX_SPAWN_RATE, MAX_SPAWN_RATE]


def test_growth_stops_at_max_workers():
    assert grow_each_second(POLICY, 5) == [1, 2, 2, 0, 0]


def test_the_rate_stays_while_the_pool_is_short_and_falls_back_after_a_quiet_second():
    throttled = state(rate=4, spawned=4, short=True, throttled=True)
    assert POLICY.size(load(2, 2, now=NOW + 1), throttled).state.rate == 8
    short = state(rate=4, spawned=1, short=True)
    assert POLICY.size(load(2, 2, now=NOW + 1), short).state.rate == 4
    quiet = state(rate=4)
    assert POLICY.size(load(2, 2, now=NOW + 1), quiet).state.rate == 1
    assert POLICY.size(load(2, 2, now=NOW + 0.5), throttled).state.rate == 4     # the same second


def test_after_a_burst_the_pool_shrinks_one_a_second_after_the_cooldown_and_stops_at_the_minimum():
    policy = Adaptive(min_workers=2, max_workers=6, min_spare=1, max_spare=1, scale_down_after=3)
    workers, current, retired_at = 6, None, []
    for tenth in range(150):
        now = NOW + tenth / 10
        sizing = policy.size(load(workers, workers, now=now), current)
        if sizing.target < workers:
            retired_at.append(round(now - NOW, 1))
        current, workers = sizing.state, sizing.target
    assert retired_at == [3.0, 4.0, 5.0, 6.0] and workers == 2


# -- choose_retire -----------------------------------------------------------------------------

def test_choose_retire_takes_the_youngest_idle_worker_and_never_a_busy_one():
    busy_young = Candidate(slot=1, age=1.0, busy=True)
    idle_old = Candidate(slot=2, age=100.0, busy=False)
    idle_young = Candidate(slot=3, age=5.0, busy=False)
    assert POLICY.choose_retire([busy_young, idle_old, idle_young]) == idle_young
    assert POLICY.choose_retire([busy_young, idle_old]) == idle_old
    assert POLICY.choose_retire([busy_young]) is None
    assert POLICY.choose_retire([]) is None


# -- through the planner -------------------------------------------------------------------------

CONFIG = Config()


def worker(pid, slot=None, **fields):
    values = dict(pid=pid, slot=slot if slot is not None else pid, born=NOW - 100, ready=True, last_seen=NOW - 0.1)
    values.update(fields)
    return WorkerView(**values)


def snapshot(*workers, policy=POLICY, **fields):
    return Snapshot(workers=tuple(workers), policy=policy, ever_ready=True, max_size=policy.max_workers, **fields)


def test_the_planner_forks_for_the_backlog_and_the_state_comes_back():
    busy = worker(1, busy=True, busy_threads=1)
    result = plan(snapshot(busy, policy=GROW_BY_BACKLOG, backlog=3), CONFIG, NOW)
    assert result.actions == (Spawn(2),) and "backlog 3" in result.sizing.reason
    booting = worker(2, ready=False, born=NOW)
    again = plan(snapshot(busy, booting, policy=GROW_BY_BACKLOG, backlog=3, policy_state=result.sizing.state),
                 CONFIG, NOW + 0.1)
    assert again.actions == () and "waiting: 1 fork(s) this second already" in again.sizing.reason


def test_the_planner_retires_the_youngest_idle_worker_once_too_idle_for_long_enough():
    busy_old = worker(1, busy=True, born=NOW - 500)
    idle_older = worker(2, born=NOW - 300)
    idle_young = worker(3, born=NOW - 20)
    idle_youngest = worker(4, born=NOW - 10)
    pool = (busy_old, idle_older, idle_young, idle_youngest)
    countdown = plan(snapshot(*pool), CONFIG, NOW)
    assert countdown.actions == () and countdown.sizing.state.idle_since == NOW
    later = plan(snapshot(*pool, policy_state=countdown.sizing.state), CONFIG, NOW + 10)
    assert later.actions == (Retire(4, "stop", NOW + 10 + CONFIG.graceful_timeout, "the pool shrinks"),)


def test_a_worker_due_for_replacement_and_its_successor_count_once():
    """A reload: worker 1 (old generation) waits for its booting successor, worker 3. Counted twice,
    the pool would look one worker larger, and a policy that sizes by it would fork again."""
    policy = Adaptive(min_workers=2, max_workers=6, min_spare=1, max_spare=1)
    due = worker(1, generation=0)
    successor = worker(3, slot=1, generation=1, ready=False, born=NOW - 0.01)
    result = plan(snapshot(due, worker(2, generation=1), successor, policy=policy, generation=1), CONFIG, NOW)
    assert result.actions == () and result.sizing.target == 2


def test_the_master_looks_again_soon_while_the_load_moves_and_less_often_at_rest():
    busy = snapshot(worker(1, busy=True), worker(2))
    moving = plan(busy, CONFIG, NOW).sizing.state
    assert next_deadline(snapshot(worker(1, busy=True), worker(2), policy_state=moving), CONFIG, NOW) == \
        NOW + CHECK_INTERVAL
    resting = plan(snapshot(worker(1), worker(2)), CONFIG, NOW).sizing.state
    assert next_deadline(snapshot(worker(1), worker(2), policy_state=resting), CONFIG, NOW) == \
        NOW + CHECK_INTERVAL_AT_REST
    assert next_deadline(snapshot(worker(1), worker(2), policy_state=moving, stopping="graceful"), CONFIG, NOW) \
        is None


# -- invariants over random load ---------------------------------------------------------------------

def test_invariants_over_random_bursts():
    """A pure model of a pool under random bursts, planned every 0.1 s: the pool never leaves
    [min_workers, max_workers], never retires a busy worker, forks at most the ramp allows, serves
    every request, and settles a while after the load stops."""
    rng = random.Random(10)
    for trial in range(25):
        policy = Adaptive(min_workers=rng.randint(1, 3), max_workers=rng.randint(3, 10), min_spare=rng.randint(0, 2),
                          max_spare=rng.randint(2, 3), scale_down_after=rng.choice((0, 1, 3)))
        workers, queue, next_pid, policy_state = {}, [], 1, None        # pid -> [born, ready_at, busy_until]
        forks = {}
        for tick in range(900):                     # 30 s of bursts, then 60 s to settle
            now = NOW + tick / 10
            if tick < 300 and rng.random() < 0.03:
                queue += [rng.choice((0.2, 1.0, 3.0)) for _ in range(rng.randint(1, 8))]
            for pid, (born, ready_at, busy_until) in sorted(workers.items()):
                if queue and ready_at <= now and busy_until <= now:
                    workers[pid][2] = now + queue.pop(0)
            views = [WorkerView(pid=pid, slot=pid, born=born, ready=ready_at <= now, busy=busy_until > now,
                                busy_threads=int(busy_until > now), last_seen=now)
                     for pid, (born, ready_at, busy_until) in workers.items()]
            result = plan(snapshot(*views, policy=policy, backlog=len(queue), policy_state=policy_state), CONFIG, now)
            policy_state = result.sizing.state
            for action in result.actions:
                if isinstance(action, Spawn):
                    workers[next_pid] = [now, now + 0.05, 0.0]
                    next_pid += 1
                    forks[int(now - NOW)] = forks.get(int(now - NOW), 0) + 1
                else:
                    assert isinstance(action, Retire) and workers[action.pid][2] <= now, (trial, tick, action)
                    del workers[action.pid]
            assert policy.workers <= len(workers) <= policy.max_workers, (trial, tick, len(workers))
        assert max(forks.values()) <= MAX_SPAWN_RATE and not queue
        at_rest = len(workers)                      # all idle: between min_spare and max_spare, or the minimum
        assert policy.min_spare <= at_rest <= policy.max_spare or at_rest == policy.workers, (trial, policy, at_rest)
