"""The master's decisions as tables of situations: planner.plan() over snapshots, no processes."""

import random
from dataclasses import replace
import signal

import pytest

from prefork import Adaptive, Config, Prefork
from prefork.pool.actions import Activate, AdoptGeneration, Halt, Kill, Retire, Spawn, StartZygote, Stop, StopPool, StopZygote
from prefork.pool.exits import backoff_delay, exit_kind, exit_reason, zygote_exit
from prefork.pool.planner import DUMP_GRACE, KILL_GRACE, SPARE_REFILL_DELAY, next_deadline, plan
from prefork.policies import Candidate, Sizing
from prefork.pool.snapshot import Snapshot, WorkerView, ZygoteView
from prefork.pool.states import Reason
from prefork.errors import WorkerSignal
from prefork.pool.scoreboard import EXHAUSTED, WANTS_SUCCESSOR

DUMP = WorkerSignal.DUMP_STACKS
NOW = 1000.0
CONFIG = Config(graceful_timeout=30, worker_timeout=30, boot_timeout=20, max_worker_memory=100,
                min_worker_lifetime=10)
MB = 2**20


def worker(pid, slot=None, **fields):
    values = dict(pid=pid, slot=slot if slot is not None else pid, born=NOW - 100, ready=True, last_seen=NOW - 1)
    values.update(fields)
    return WorkerView(**values)


def pool(*workers, size=2, **fields):
    fields.setdefault("ever_ready", True)
    return Snapshot(workers=tuple(workers), policy=Prefork(workers=size), **fields)


def actions(snapshot, config=CONFIG, now=NOW):
    return list(plan(snapshot, config, now).actions)


# -- filling the pool ---------------------------------------------------------------

@pytest.mark.parametrize("situation, snapshot, expected", [
    ("an empty pool is filled at once",
     pool(ever_ready=False), [Spawn(1), Spawn(2)]),
    ("a full, healthy pool is left alone",
     pool(worker(1), worker(2)), []),
    ("a dead worker's slot is refilled",
     pool(worker(1)), [Spawn(2)]),
    ("a booting worker counts: no double spawn",
     pool(worker(1), worker(2, ready=False, born=NOW - 1)), []),
    ("a worker at its request cap no longer serves: replaced at once",
     pool(worker(1, retire=EXHAUSTED), worker(2)), [Spawn(1)]),
    ("an operator's size wins over the policy's",
     pool(worker(1), worker(2), requested_size=3), [Spawn(3)]),
    ("a stop being carried out spawns nothing",
     pool(stopping="graceful"), []),
])
def test_filling(situation, snapshot, expected):
    assert actions(snapshot) == expected, situation


def test_boot_failures_back_off_then_probe_with_one_worker():
    failing = dict(failed_boots=2, ever_ready=True)           # the second failure in a row: 0.2 s
    assert actions(pool(last_boot_failure_at=NOW - 0.15, **failing)) == []
    assert actions(pool(last_boot_failure_at=NOW - 0.2, **failing)) == [Spawn(1)]
    probing = worker(1, ready=False, born=NOW - 0.05)
    assert actions(pool(probing, last_boot_failure_at=NOW - 1, **failing)) == []


@pytest.mark.parametrize("failures, delay", [(0, 0.0), (1, 0.1), (2, 0.2), (4, 0.8), (7, 6.4), (8, 10.0), (30, 10.0)])
def test_the_backoff_doubles_from_a_tenth_of_a_second_up_to_ten(failures, delay):
    assert backoff_delay(failures) == pytest.approx(delay)


def test_a_pool_that_never_booted_halts_after_max_boot_failures():
    snapshot = Snapshot(policy=Prefork(workers=2), failed_boots=5, last_boot_failure="no module named x")
    assert actions(snapshot) == [Halt("no worker could boot (5 attempts): no module named x")]
    assert actions(Snapshot(policy=Prefork(workers=2), failed_boots=4, last_boot_failure_at=NOW - 2)) == [Spawn(1)]
    assert not any(isinstance(a, Halt) for a in actions(pool(failed_boots=9, last_boot_failure_at=NOW)))


def test_a_full_scoreboard_forks_nothing_more_and_says_so():
    result = plan(pool(worker(1), worker(2, stop_reason="stop", kill_at=NOW + 9), size=3, capacity=2), CONFIG, NOW)
    assert result.actions == ()
    assert result.problems == ("the scoreboard is full (2 workers alive at once): not forking 2 worker(s) "
                               "until some exit",)
    assert actions(pool(worker(1), size=3, capacity=2)) == [Spawn(2)]


# -- liveness ------------------------------------------------------------------------

@pytest.mark.parametrize("situation, view, resumed_at, expected", [
    ("silent past the timeout", worker(1, last_seen=NOW - 31), 0.0,
     Stop(1, "timeout", DUMP, NOW + DUMP_GRACE, "silent for 31.0 s, over its timeout of 30.0 s")),
    ("silent but within the timeout", worker(1, last_seen=NOW - 29), 0.0, None),
    ("the master was away: the silence is not counted", worker(1, last_seen=NOW - 31), NOW - 5, None),
    ("never ready within the boot timeout", worker(1, ready=False, born=NOW - 21), 0.0,
     Stop(1, "timeout", DUMP, NOW + DUMP_GRACE, "silent for 21.0 s, over its boot timeout of 20.0 s")),
    ("booting, within the boot timeout", worker(1, ready=False, born=NOW - 19), 0.0, None),
    ("already being stopped: its own deadline rules",
     worker(1, last_seen=NOW - 99, stop_reason="stop", stop_signal=signal.SIGTERM, kill_at=NOW + 5), 0.0, None),
])
def test_liveness(situation, view, resumed_at, expected):
    found = [a for a in actions(pool(view, worker(2), resumed_at=resumed_at)) if isinstance(a, Stop)]
    assert found == ([expected] if expected else []), situation


def test_a_timed_out_worker_is_replaced_without_waiting_for_its_death():
    assert actions(pool(worker(1, last_seen=NOW - 40), worker(2)))[1:] == [Spawn(1)]


def test_timeouts_of_zero_are_off():
    config = CONFIG.replace(worker_timeout=0, boot_timeout=0)
    snapshot = pool(worker(1, last_seen=0.0), worker(2, ready=False, born=0.0))
    assert actions(snapshot, config) == []


def test_a_worker_past_its_kill_deadline_is_killed():
    dying = worker(1, stop_reason="timeout", stop_signal=DUMP, kill_at=NOW - 0.01)
    assert actions(pool(dying, worker(2)))[0] == Kill(1, "timeout")
    assert Kill(1, "timeout") not in actions(pool(replace(dying, kill_at=NOW + 0.5), worker(2)))


# -- stopping the pool -----------------------------------------------------------------

def test_a_graceful_stop_signals_everyone_but_keeps_a_timeout_kill_as_it_was():
    timing_out = worker(1, stop_reason="timeout", stop_signal=DUMP, kill_at=NOW + 0.7)
    recycling = worker(2, stop_reason="recycle", stop_signal=signal.SIGTERM, kill_at=NOW + 20)
    snapshot = pool(timing_out, recycling, worker(3), worker(4, spare=True, slot=5), stopping="graceful")
    assert actions(snapshot) == [Retire(3, "stop", NOW + 30, drain=True), Retire(4, "stop", NOW + 30, drain=True)]


def test_a_quick_stop_hurries_everyone_but_never_postpones_a_kill():
    timing_out = worker(1, stop_reason="timeout", stop_signal=DUMP, kill_at=NOW + 0.7)
    recycling = worker(2, stop_reason="recycle", stop_signal=signal.SIGTERM, kill_at=NOW + 0.2)
    quitting = worker(3, stop_reason="stop", stop_signal=signal.SIGQUIT, kill_at=NOW + 0.9)
    snapshot = pool(timing_out, recycling, quitting, worker(4), stopping="quick")
    assert actions(snapshot) == [Stop(2, "recycle", signal.SIGQUIT, NOW + 0.2),
                                 Stop(4, "stop", signal.SIGQUIT, NOW + KILL_GRACE)]


def test_a_stop_that_begins_as_a_worker_times_out_keeps_that_kills_reason():
    snapshot = pool(worker(1, last_seen=NOW - 31), worker(2), stopping="graceful")
    found = actions(snapshot)
    assert found[0].reason == "timeout" and found[0].signum == DUMP
    assert found[1:] == [Retire(2, "stop", NOW + 30, drain=True)]


def test_a_handlers_shutdown_in_a_worker_stops_the_pool_once():
    asking = worker(2, stop_pool=True)
    assert actions(pool(worker(1), asking)) == [StopPool(2, 2)]
    assert StopPool(2, 2) not in actions(pool(worker(1), asking, stopping="graceful"))


# -- recycling, one at a time ----------------------------------------------------------------

def test_a_worker_at_its_cap_serves_its_last_connection_until_its_successor_is_ready():
    at_cap = worker(1, retire=EXHAUSTED, requests=100, busy=True)
    assert actions(pool(at_cap, worker(2))) == [Spawn(1)]
    booting = worker(3, slot=1, ready=False, born=NOW - 0.01)
    assert actions(pool(at_cap, worker(2), booting)) == []
    ready = replace(booting, ready=True)
    assert actions(pool(at_cap, worker(2), ready)) == [
        Retire(1, "recycle", NOW + 30, "served its --max-requests (100 requests)", successor=3)]


def test_a_successor_takes_the_slot_of_the_worker_it_replaces_the_most_pressing_first():
    reload_due = worker(1, generation=0)
    near_cap = worker(2, generation=0, retire=WANTS_SUCCESSOR, requests=95)
    assert actions(pool(reload_due, near_cap, generation=1)) == [Spawn(2)]
    successor = worker(3, slot=2, generation=1)
    (retire,) = actions(pool(reload_due, near_cap, successor, generation=1))
    assert (retire.pid, retire.reason, retire.successor) == (2, "recycle", 3)


def test_a_worker_near_its_cap_gets_a_successor_first_and_is_retired_once_it_is_ready():
    near_cap = worker(1, retire=WANTS_SUCCESSOR, requests=95)
    assert actions(pool(near_cap, worker(2))) == [Spawn(1)]
    successor = worker(3, slot=1, ready=False, born=NOW - 0.004)
    assert actions(pool(near_cap, worker(2), successor)) == []
    ready = replace(successor, ready=True)
    (retire,) = actions(pool(near_cap, worker(2), ready))
    assert (retire.pid, retire.reason, retire.deadline) == (1, "recycle", NOW + 30)


def test_the_turn_passes_when_the_successor_is_ready_not_when_a_slow_predecessor_is_reaped():
    """The bug of the review: a recycle waited behind a worker finishing a 3-second request."""
    slow = worker(1, busy=True, stop_reason="recycle", stop_signal=signal.SIGTERM, kill_at=NOW + 27)
    successor = worker(3, slot=1)
    next_due = worker(2, retire=WANTS_SUCCESSOR)
    assert actions(pool(slow, successor, next_due)) == [Spawn(2)]


def test_a_reload_replaces_one_worker_at_a_time():
    old = [worker(1, generation=0), worker(2, generation=0), worker(3, generation=0)]
    assert actions(pool(*old, size=3, generation=1)) == [Spawn(1)]
    booting = worker(4, slot=1, generation=1, ready=False, born=NOW - 0.01)
    assert actions(pool(*old, booting, size=3, generation=1)) == []
    ready = replace(booting, ready=True)
    retire = actions(pool(*old, ready, size=3, generation=1))
    assert [(a.pid, a.reason) for a in retire] == [(1, "reload")]
    retiring = replace(old[0], stop_reason="reload", stop_signal=signal.SIGTERM, kill_at=NOW + 30)
    assert actions(pool(retiring, *old[1:], ready, size=3, generation=1)) == [Spawn(2)]


def test_a_crash_during_a_reload_is_replaced_at_once_beside_the_successor():
    due = worker(1, generation=0)
    successor = worker(3, slot=1, generation=1, ready=False, born=NOW - 0.01)
    assert actions(pool(due, successor, generation=1)) == [Spawn(2)]


def test_memory_over_the_limit_is_due_only_after_the_minimum_lifetime():
    fat = worker(1, uss=150 * MB)
    assert actions(pool(fat, worker(2))) == [Spawn(1)]
    assert actions(pool(replace(fat, born=NOW - 5), worker(2))) == []
    assert actions(pool(replace(fat, uss=90 * MB), worker(2))) == []
    successor = worker(3, slot=1)
    (retire,) = actions(pool(fat, worker(2), successor))
    assert retire.reason == "memory" and "uses 150.0 MB unique memory, over 100.0 MB" in retire.detail


@pytest.mark.parametrize("lived, limit, due", [
    (99.9, 100.0, False),          # a moment short of its age: kept
    (100.0, 100.0, True),          # at its age: a successor first, in its slot
    (500.0, 0.0, False),           # no --max-worker-age
])
def test_a_worker_past_its_age_gets_a_successor_first(lived, limit, due):
    old = worker(1, born=NOW - lived, age_limit=limit)
    assert actions(pool(old, worker(2))) == ([Spawn(1)] if due else [])
    successor = worker(3, slot=1, born=NOW - 1, age_limit=limit)
    retirements = [a for a in actions(pool(old, worker(2), successor)) if a.reason == "age"]
    assert [(r.pid, r.successor) for r in retirements] == ([(1, 3)] if due else [])
    if due:
        assert retirements[0].detail == f"lived {limit:.1f} s, its --max-worker-age"


def test_the_next_deadline_is_the_oldest_workers_age():
    snapshot = pool(worker(1, born=NOW - 10, age_limit=30.0), worker(2, born=NOW - 5, age_limit=12.0))
    assert next_deadline(snapshot, Config(worker_timeout=0, boot_timeout=0), NOW) == NOW + 7
    overdue = pool(worker(1, born=NOW - 40, age_limit=30.0), worker(2, born=NOW - 5, age_limit=12.0))
    assert next_deadline(overdue, Config(worker_timeout=0, boot_timeout=0), NOW) == NOW + 7, \
        "a worker past its age waits for its successor: its deadline is no reason to wake at once"


def test_the_worker_nearest_its_cap_goes_before_a_reload():
    reload_due = worker(1, generation=0)
    near_cap = worker(2, generation=1, retire=WANTS_SUCCESSOR)
    successor = worker(3, slot=9, generation=1)
    (retire,) = actions(pool(reload_due, near_cap, successor, generation=1))
    assert (retire.pid, retire.reason) == (2, "recycle")


# -- spares --------------------------------------------------------------------------------

SPARE = CONFIG.replace(spare_workers=1)


def test_a_ready_spare_takes_a_missing_slot_and_its_successor_comes_a_moment_later():
    spare = worker(9, slot=3, spare=True)
    assert actions(pool(worker(1), spare), SPARE) == [Activate(9, 2)]
    activated_just_now = pool(worker(1), worker(9, slot=2), last_activation=NOW - 0.01)
    assert actions(activated_just_now, SPARE) == []
    later = pool(worker(1), worker(9, slot=2), last_activation=NOW - SPARE_REFILL_DELAY)
    assert actions(later, SPARE) == [Spawn(3, spare=True)]


def test_a_booting_spare_cannot_take_over_so_the_slot_gets_a_fork():
    spare = worker(9, slot=3, spare=True, ready=False, born=NOW - 0.01)
    assert actions(pool(worker(1), spare), SPARE) == [Spawn(2)]


def test_a_spare_makes_a_recycle_immediate():
    near_cap = worker(1, retire=WANTS_SUCCESSOR)
    spare = worker(9, slot=2, spare=True)
    found = actions(pool(near_cap, spare, size=1), SPARE)
    assert found[0] == Activate(9, 1) and (found[1].pid, found[1].reason) == (1, "recycle")


def test_a_reload_retires_spares_of_the_old_generation_at_once():
    old_spare = worker(9, slot=3, spare=True, generation=0)
    found = actions(pool(worker(1, generation=1), worker(2, generation=1), old_spare, generation=1), SPARE)
    assert found[0] == Retire(9, "reload", NOW + 30)


# -- shrinking ------------------------------------------------------------------------------

def test_shrinking_retires_an_idle_worker_first_then_the_oldest():
    busy_old = worker(1, busy=True, born=NOW - 500)
    idle_young = worker(2, born=NOW - 10)
    idle_old = worker(3, born=NOW - 300)
    assert actions(pool(busy_old, idle_young, idle_old, size=3, requested_size=2)) == \
        [Retire(3, "stop", NOW + 30, "the pool shrinks")]
    assert [a.pid for a in actions(pool(busy_old, idle_young, idle_old, size=3, requested_size=1))] == [3, 2]


def test_shrinking_keeps_slots_one_to_n():
    """The bug of the review: after scale 6 then scale -3 the slots were 4, 5 and 6."""
    six = [worker(pid, born=NOW - 100 * (7 - pid)) for pid in range(1, 7)]      # slot 1 the oldest
    retired = [a.pid for a in actions(pool(*six, size=6, requested_size=3))]
    assert sorted(retired) == [4, 5, 6]


def test_a_busy_worker_in_a_high_slot_is_kept_by_an_adaptive_pool_which_retires_a_lower_idle_one():
    policy = Adaptive(min_workers=1, max_workers=4, min_spare=0, max_spare=1, scale_down_after=0)
    views = (worker(1, born=NOW - 300), worker(2, born=NOW - 200), worker(3, busy=True, born=NOW - 100))
    snapshot = Snapshot(workers=views, policy=policy, ever_ready=True)
    (retire,) = actions(snapshot)
    assert (retire.pid, retire.reason) == (2, "stop")         # the youngest idle one: a hole the next fork fills


class _BadPolicy(Prefork):
    def choose_retire(self, candidates):
        return Candidate(slot=99, age=0.0, busy=False)


def test_a_policy_that_chooses_a_worker_not_offered_is_reported_and_not_followed():
    result = plan(pool(worker(1), worker(2), worker(3), size=2), CONFIG, NOW)
    assert [a.pid for a in result.actions] == [3]
    bad = Snapshot(workers=(worker(1), worker(2, born=NOW - 500), worker(3)), policy=_BadPolicy(workers=2),
                   ever_ready=True)
    result = plan(bad, CONFIG, NOW)
    assert [(a.pid, a.reason) for a in result.actions] == [(3, "stop")]
    assert "choose_retire() returned Candidate(slot=99" in result.problems[0]


class _SizeNonsense(Prefork):
    def size(self, load, state=None):
        return Sizing("lots")


def test_a_policy_whose_size_is_not_a_number_keeps_the_pool_as_it_is_and_is_reported():
    result = plan(Snapshot(workers=(worker(1), worker(2)), policy=_SizeNonsense(workers=2), ever_ready=True),
                  CONFIG, NOW)
    assert result.actions == () and result.sizing.target == 2
    assert "did not return a Sizing with a whole number" in result.problems[0]


# -- zygotes (--preload) -------------------------------------------------------------------

def zygote(pid, generation=0, state="ready", born=NOW - 50):
    return ZygoteView(pid, generation, state, born)


@pytest.mark.parametrize("situation, fields, expected", [
    ("the first zygote is started, and no worker forked before it is ready",
     dict(zygotes=(), ever_ready=False), [StartZygote(0)]),
    ("while it imports, nothing", dict(zygotes=(zygote(10, state="booting", born=NOW - 1),), ever_ready=False), []),
    ("once it is ready, the workers are forked", dict(zygotes=(zygote(10),), ever_ready=False),
     [Spawn(1), Spawn(2)]),
    ("a zygote still importing after the boot timeout is killed, its failure said",
     dict(zygotes=(zygote(10, state="booting", born=NOW - 21),), ever_ready=False),
     [StopZygote(10, signal.SIGKILL, "not ready within the boot timeout of 20.0 s",
                 "not ready within the boot timeout of 20.0 s")]),
    ("a dead zygote is replaced only after the boot backoff",
     dict(zygotes=(), failed_boots=3, last_boot_failure_at=NOW - 0.1), []),
    ("... and then it is",
     dict(zygotes=(), failed_boots=3, last_boot_failure_at=NOW - 0.5), [StartZygote(0)]),
])
def test_zygotes_of_the_current_generation(situation, fields, expected):
    assert actions(pool(**fields)) == expected, situation


def test_a_reload_loads_the_code_in_a_new_zygote_and_moves_on_only_once_it_is_ready():
    workers = (worker(1), worker(2))
    old = zygote(10)
    reload = dict(loading=1, loading_since=NOW - 1)
    assert actions(pool(*workers, zygotes=(old,), **reload)) == [StartZygote(1, "reload")]
    loading = zygote(11, generation=1, state="booting", born=NOW - 0.5)
    assert actions(pool(*workers, zygotes=(old, loading), **reload)) == []
    assert actions(pool(*workers, zygotes=(old, replace(loading, state="ready")), **reload)) == [AdoptGeneration(1)]


def test_a_second_reload_while_one_is_loading_replaces_its_zygote():
    stale = zygote(11, generation=1, state="booting", born=NOW - 2)
    found = actions(pool(worker(1), worker(2), zygotes=(zygote(10), stale), loading=1, loading_since=NOW - 1))
    assert found == [StopZygote(11, signal.SIGKILL, "a newer reload replaces it"), StartZygote(1, "reload")]


def test_a_reloads_zygote_that_hangs_at_import_is_killed_after_the_boot_timeout():
    hanging = zygote(11, generation=1, state="booting", born=NOW - 25)
    (kill,) = actions(pool(worker(1), worker(2), zygotes=(zygote(10), hanging), loading=1, loading_since=NOW - 25))
    assert (kill.pid, kill.signum, kill.failure) == (11, signal.SIGKILL, "not ready within the boot timeout of 20.0 s")


def test_an_old_generations_zygote_stops_once_its_last_worker_is_gone():
    zygotes = (zygote(10, generation=0), zygote(11, generation=1))
    still_serving = pool(worker(1, generation=0), worker(2, generation=1), worker(3, generation=1, slot=1),
                         zygotes=zygotes, generation=1)
    assert not [a for a in actions(still_serving) if isinstance(a, StopZygote)]
    gone = pool(worker(2, generation=1), worker(3, generation=1, slot=1), zygotes=zygotes, generation=1)
    assert actions(gone) == [StopZygote(10, signal.SIGTERM, "its last worker is gone")]


# -- what an exit means --------------------------------------------------------------------

@pytest.mark.parametrize("code, stop_reason, stopping, ready, exhausted, reason", [
    (0, "reload", False, True, False, "reload"),
    (-9, "timeout", False, True, False, "timeout"),
    (0, None, True, True, False, "stop"),
    (3, None, False, False, False, "boot"),
    (5, None, False, True, True, "recycle"),
    (5, None, False, True, False, "crash"),        # a handler's sys.exit(5) is no recycle
    (1, None, False, True, False, "crash"),
    (0, None, False, True, False, "crash"),
    (-11, None, False, True, False, "signal"),
])
def test_exit_reasons(code, stop_reason, stopping, ready, exhausted, reason):
    assert exit_reason(code, stop_reason, stopping, ready, exhausted) == reason


@pytest.mark.parametrize("state, generation, current, loading, counted, meaning", [
    ("stopping", 0, 0, None, False, "expected"),
    ("ready", 0, 1, None, False, "expected"),          # an old generation's, after its last worker
    ("booting", 1, 0, 1, False, "reload failed"),
    ("booting", 0, 0, None, False, "boot failure"),
    ("ready", 0, 0, None, False, "died"),
    ("ready", 0, 0, None, True, "counted"),
])
def test_what_a_zygotes_exit_means(state, generation, current, loading, counted, meaning):
    assert zygote_exit(state, generation, current, loading, counted) == meaning


# -- the loop's next wake-up ------------------------------------------------------------------

def test_next_deadline_is_the_nearest_thing_that_could_change_the_plan():
    snapshot = pool(worker(1, last_seen=NOW - 10), worker(2, ready=False, born=NOW - 1))
    assert next_deadline(snapshot, CONFIG, NOW) == NOW + 19          # worker 2's boot timeout
    dying = worker(3, stop_reason="stop", stop_signal=signal.SIGTERM, kill_at=NOW + 2)
    backing_off = dict(failed_boots=7, last_boot_failure_at=NOW)            # 6.4 s
    assert next_deadline(pool(worker(1), dying, **backing_off), CONFIG, NOW) == NOW + 2
    assert next_deadline(pool(worker(1, last_seen=NOW), **backing_off), CONFIG, NOW) == pytest.approx(NOW + 6.4)
    assert next_deadline(pool(worker(1, last_seen=0)), CONFIG.replace(worker_timeout=0), NOW) is None


# -- invariants over many random pools ------------------------------------------------------------

def test_invariants_hold_over_random_pools():
    """Whatever the pool looks like: never two actions for one worker; serving workers' slots unique
    and at most one successor per slot; at most one process over the target while workers are due;
    never a retire that would leave fewer ready workers than the target."""
    rng = random.Random(4)
    for _ in range(3000):
        size = rng.randint(1, 4)
        views, slots = [], list(range(1, size + 2))
        rng.shuffle(slots)
        for pid in range(1, rng.randint(0, 7) + 1):
            stopping = rng.random() < 0.15
            due_or_capped = rng.choice((0, 0, 0, WANTS_SUCCESSOR, EXHAUSTED))
            # the pool the master keeps: unique slots, except a successor beside its due predecessor
            slot = slots.pop() if slots and not stopping else rng.randint(1, size + 1)
            views.append(worker(
                pid, slot=slot, ready=rng.random() < 0.8, busy=rng.random() < 0.3,
                generation=rng.choice((0, 1)), retire=due_or_capped,
                last_seen=NOW - rng.choice((1, 1, 40)), spare=rng.random() < 0.1,
                stop_reason="stop" if stopping else None, stop_signal=signal.SIGTERM if stopping else None,
                kill_at=NOW + 10 if stopping else None))
        snapshot = pool(*views, size=size, generation=1)
        found = actions(snapshot)
        touched = [a.pid for a in found if hasattr(a, "pid")]
        assert len(touched) == len(set(touched)), (snapshot, found)
        timed_out = {a.pid for a in found if isinstance(a, Stop)}
        serving = [w for w in views if w.stop_reason is None and not w.spare and w.retire != EXHAUSTED
                   and w.pid not in timed_out]
        spawns = [a.slot for a in found if isinstance(a, Spawn) and not a.spare]
        activations = [a.slot for a in found if isinstance(a, Activate)]
        new_slots = spawns + activations
        assert len(new_slots) == len(set(new_slots)), (snapshot, found)
        due = [w for w in serving if w.ready and (w.generation < 1 or w.retire == WANTS_SUCCESSOR)]
        fresh_slots = [w.slot for w in serving if w not in due]
        assert not set(new_slots) & set(fresh_slots), (snapshot, found)          # one successor per slot
        if due:
            assert len(serving) + len(new_slots) <= max(size + 1, len(serving)), (snapshot, found)
        else:
            assert len(serving) + len(new_slots) <= max(size, len(serving)), (snapshot, found)
        spares = {w.pid for w in views if w.spare}
        retired = {a.pid for a in found if isinstance(a, Retire) and a.reason in ("reload", "recycle", "memory")
                   and a.pid not in spares}
        ready_left = sum(1 for w in serving if w.ready and w.pid not in retired) + len(activations)
        assert not (retired & {w.pid for w in serving}) or ready_left >= size, (snapshot, found)


@pytest.mark.parametrize("reason, stopping, kind", [
    (Reason.STOP, False, "scale_down"),      # stopped while the pool goes on: it shrank
    (Reason.STOP, True, "stop"),
    (Reason.RECYCLE, False, "recycle"),
    (Reason.RELOAD, True, "reload"),
    (Reason.SIGNAL, False, "signal"),
])
def test_exit_kinds_the_metrics_count(reason, stopping, kind):
    assert exit_kind(reason, stopping) == kind
