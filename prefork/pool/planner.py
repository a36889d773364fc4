"""Runs in the master: its decisions, pure functions over an immutable snapshot of the pool.

    plan(snapshot, config, now) -> Plan(actions, sizing, problems)

The master's loop gathers what it knows (snapshot.py) and carries out what
plan() returns (actions.py), then asks again until the plan is empty. Nothing
here reads a clock or makes a system call, so every situation is a row of a
table in tests/pool/test_planner.py. What an exit means and how long to back off
after failed boots are decided by exits.py, as purely.

The rules, in the order plan() applies them:

1. A worker past its SIGKILL deadline is killed (Kill).
2. A worker silent for longer than its timeout (boot_timeout before it is
   ready, worker_timeout after) is told to dump its stacks, with a SIGKILL
   deadline (Stop). A zygote still importing after boot_timeout is killed.
3. No worker ever booted and max_boot_failures boots failed in a row: Halt.
4. A handler called server.shutdown() in a worker: StopPool.
5. During a stop of the pool, every worker is told to go: SIGTERM, draining
   the accept queues, within the graceful timeout; or SIGQUIT for a quick
   stop. A worker already being killed for a timeout keeps that kill.
6. With zygotes: a reload's generation is adopted once its zygote is ready;
   a missing zygote for the current generation (after the boot backoff) or
   for a reload is started; a reload's zygote made stale by a newer reload
   is killed; a zygote whose generation has no worker left is stopped.
7. The pool policy gives the target size, from the load of the serving
   workers that are not due for replacement: a due worker and its successor
   count once. A bad answer is replaced by a safe one and reported.
8. A worker is *due* when it is of an older generation (reload), asked for a
   successor as it nears --max-requests (recycle), uses more unique memory
   than --max-worker-memory (memory), or has lived its --max-worker-age (age). Missing slots are filled at once, from
   a ready spare first (Activate), else by a fork (Spawn), after the boot
   backoff; due workers get one successor at a time, in the due worker's own
   slot, the most pressing first. A due worker is retired (SIGTERM: it
   finishes the request in hand) as soon as the pool without it still has
   its target of ready workers. So is a worker at its request cap, which
   accepts no more: its last connection is served until then.
9. Serving workers beyond the target are retired, chosen by the policy among
   the highest slots, so that slots stay 1..N.
10. Spares are topped up to spare_workers, a moment after one was activated.
"""

import signal
from collections.abc import Iterator
from typing import Optional, cast

from prefork.errors import WorkerSignal
from prefork.policies import Candidate, PooledPolicy, PoolLoad, Sizing, idle_then_oldest
from prefork.pool import actions as act
from prefork.pool import scoreboard
from prefork.pool.actions import Plan
from prefork.pool.exits import backoff_delay
from prefork.pool.snapshot import Snapshot, WorkerView, ZygoteView
from prefork.pool.states import DUE_ORDER, Reason, StopMode, ZygoteState
from prefork.supervision import Config

KILL_GRACE = 1.0             # seconds between SIGQUIT and SIGKILL, in a quick stop
DUMP_GRACE = 0.2             # seconds a hung worker gets to write its stacks before SIGKILL
SPARE_REFILL_DELAY = 0.05    # seconds between activating a spare and forking the next one


# -- the plan ---------------------------------------------------------------------

def plan(snapshot: Snapshot, config: Config, now: float) -> Plan:
    """What the master should do now; see the module docstring for the rules."""
    actions: list[act.Action] = []
    problems: list[str] = []
    actions += [act.Kill(w.pid, w.stop_reason or Reason.STOP) for w in snapshot.workers
                if w.kill_at is not None and now >= w.kill_at]
    timeouts = _timeouts(snapshot, config, now)
    actions += timeouts
    stopped = {a.pid for a in timeouts}
    if (not snapshot.ever_ready and snapshot.failed_boots >= config.max_boot_failures
            and snapshot.stopping is None):
        actions.append(act.Halt(f"no worker could boot ({snapshot.failed_boots} attempts): "
                                f"{snapshot.last_boot_failure}"))
        return Plan(tuple(actions))
    if snapshot.stopping is None:
        asking = next((w for w in snapshot.workers if w.stop_pool), None)
        if asking is not None:
            actions.append(act.StopPool(asking.pid, asking.slot))
    if snapshot.stopping:
        actions += _stop_everyone(snapshot, config, now, stopped)
        return Plan(tuple(actions))
    if snapshot.zygotes is not None:
        actions += _tend_zygotes(snapshot, config, now)
    sizing, fill = _fill_the_pool(snapshot, config, now, stopped, problems)
    return Plan(tuple(actions + fill), sizing, tuple(problems))


def _fill_the_pool(snapshot: Snapshot, config: Config, now: float, stopped: set[int],
                   problems: list[str]) -> tuple[Sizing, list[act.Action]]:
    """Rules 7 to 10: the target, successors, retirements, shrinking and spares."""
    actions: list[act.Action] = []
    live = [w for w in snapshot.workers if w.stop_reason is None and w.pid not in stopped]
    spares = [w for w in live if w.spare]
    for spare in spares:
        if spare.generation < snapshot.generation:
            actions.append(act.Retire(spare.pid, Reason.RELOAD, now + config.graceful_timeout))
    spares = [w for w in spares if w.generation >= snapshot.generation]
    exhausted = [w for w in live if not w.spare and w.exhausted]
    serving = [w for w in live if not w.spare and not w.exhausted]
    reasons = [(w, _due_reason(w, snapshot, config, now)) for w in serving if w.ready]
    due = sorted(((w, reason) for w, reason in reasons if reason is not None),
                 key=lambda pair: (DUE_ORDER.index(pair[1]), pair[0].slot))
    due_pids = {w.pid for w, _ in due}
    fresh = [w for w in serving if w.pid not in due_pids]
    sizing = _size(snapshot, fresh, now, problems)
    target = sizing.target

    # Fill the pool: missing slots at once, due workers' successors one at a time, in their slots.
    wanted = min(target - len(fresh), target + (1 if due else 0) - len(serving))
    free_slots = _free_slots(target, fresh, [w.slot for w, _ in due])
    ready_spares = [s for s in spares if s.ready]
    activated = []
    for spare in ready_spares[:max(0, wanted)]:
        actions.append(act.Activate(spare.pid, next(free_slots)))
        activated.append(spare)
    forks = max(0, wanted - len(activated))
    may_fork = _may_fork(snapshot, now)
    if snapshot.failed_boots:             # probe with one worker until one boots
        booting = any(not w.ready for w in live)
        forks = 0 if booting or not may_fork else min(forks, 1)
    elif not may_fork:
        forks = 0
    room = snapshot.capacity - len(snapshot.workers)
    if forks > room:
        problems.append(f"the scoreboard is full ({snapshot.capacity} workers alive at once): "
                        f"not forking {forks - max(room, 0)} worker(s) until some exit")
        forks = max(room, 0)
    actions += [act.Spawn(next(free_slots)) for _ in range(forks)]

    # Retire due workers (most pressing first), then workers at their cap, once the rest of the
    # pool has its target of ready workers.
    ready_count = sum(1 for w in serving if w.ready) + len(activated)
    successors = {w.slot: w.pid for w in fresh if w.ready}
    successors.update((a.slot, a.pid) for a in actions if isinstance(a, act.Activate))
    retiring = due[:max(0, min(len(due), ready_count - target))]
    for worker, reason in retiring:
        actions.append(act.Retire(worker.pid, reason, now + config.graceful_timeout,
                                  _due_detail(worker, reason, config), successor=successors.get(worker.slot)))
    if ready_count - len(retiring) >= target:
        for worker in exhausted:
            actions.append(act.Retire(worker.pid, Reason.RECYCLE, now + config.graceful_timeout,
                                      f"served its --max-requests ({worker.requests} requests)",
                                      successor=successors.get(worker.slot)))

    actions += _shrink(snapshot, fresh, activated, target, now, config, problems)
    actions += _top_up_spares(snapshot, config, spares, activated, target, may_fork, now)
    return sizing, actions


def _shrink(snapshot: Snapshot, fresh: list[WorkerView], activated: list[WorkerView], target: int, now: float,
            config: Config, problems: list[str]) -> list[act.Retire]:
    """Retire serving workers beyond the target, the highest slots first, as the policy chooses."""
    actions = []
    excess = len(fresh) + len(activated) - target
    candidates = [w for w in fresh if w.ready]
    while excess > 0 and candidates:
        above = [w for w in candidates if w.slot > target]
        # Among the highest slots, so that slots stay 1..N; a policy that will not retire any of
        # them (an adaptive pool keeps a busy worker) may take a lower one: a hole the next fork fills.
        worker = _choose(snapshot.policy, above, now, problems) or _choose(snapshot.policy, candidates, now, problems)
        if worker is None:
            break
        candidates.remove(worker)
        actions.append(act.Retire(worker.pid, Reason.STOP, now + config.graceful_timeout, "the pool shrinks"))
        excess -= 1
    return actions


def _choose(policy: Optional[PooledPolicy], workers: list[WorkerView], now: float,
            problems: list[str]) -> Optional[WorkerView]:
    """The worker the policy retires among workers, or None; a bad answer is reported and not followed."""
    if not workers:
        return None
    offered = [_candidate(w, now) for w in workers]
    chosen = cast(PooledPolicy, policy).choose_retire(offered)   # a pool's snapshot has its policy
    if chosen is None:
        return None
    if chosen not in offered:
        problems.append(f"policy {type(policy).__name__}.choose_retire() returned {chosen!r}, which is not one "
                        f"of the workers offered; retiring the idlest, oldest one instead")
        chosen = idle_then_oldest(offered)
    return workers[offered.index(cast(Candidate, chosen))]   # idle_then_oldest(): None only if offered is empty


def _top_up_spares(snapshot: Snapshot, config: Config, spares: list[WorkerView], activated: list[WorkerView],
                   target: int, may_fork: bool, now: float) -> list[act.Spawn]:
    """Spares up to spare_workers, a moment after an activation, never while boots fail."""
    spares_wanted = config.spare_workers - (len(spares) - len(activated))
    if (spares_wanted <= 0 or activated or snapshot.failed_boots or not may_fork
            or now < snapshot.last_activation + SPARE_REFILL_DELAY):
        return []
    spares_wanted = min(spares_wanted, max(0, snapshot.capacity - len(snapshot.workers)))
    taken = {w.slot for w in spares if w not in activated}
    slots = (s for s in range(target + 1, target + 1 + 4 * config.spare_workers + 1) if s not in taken)
    return [act.Spawn(next(slots), spare=True) for _ in range(spares_wanted)]


def _tend_zygotes(snapshot: Snapshot, config: Config, now: float) -> list[act.Action]:
    """Rule 6: the zygotes of the current generation and of a reload in progress."""
    actions: list[act.Action] = []
    zygotes = cast("tuple[ZygoteView, ...]", snapshot.zygotes)     # plan() calls this only with zygotes
    generation = snapshot.generation
    loading = [z for z in zygotes if snapshot.loading is not None and z.generation == snapshot.loading
               and z.state != ZygoteState.STOPPING]
    if any(z.state == ZygoteState.READY and z.born >= snapshot.loading_since for z in loading):
        actions.append(act.AdoptGeneration(cast(int, snapshot.loading)))   # a zygote loads it: not None
        generation = cast(int, snapshot.loading)
    for zygote in zygotes:
        if zygote.state == ZygoteState.BOOTING and zygote in loading and zygote.born < snapshot.loading_since:
            actions.append(act.StopZygote(zygote.pid, signal.SIGKILL, "a newer reload replaces it"))
        elif zygote.state == ZygoteState.BOOTING and _zygote_overdue(zygote, snapshot, config, now):
            limit = f"not ready within the boot timeout of {float(config.boot_timeout)} s"
            actions.append(act.StopZygote(zygote.pid, signal.SIGKILL, limit, failure=limit))
        elif zygote.state == ZygoteState.READY and zygote.generation < generation and not any(
                w.generation == zygote.generation for w in snapshot.workers):
            actions.append(act.StopZygote(zygote.pid, signal.SIGTERM, "its last worker is gone"))
    # A zygote that is going (killed for a timeout, or by a failed request) is reaped first: its exit
    # counts as a boot failure, and the next one waits for the backoff.
    if not any(z.generation == generation for z in zygotes) and _after_backoff(snapshot, now):
        actions.append(act.StartZygote(generation))
    if (snapshot.loading is not None and snapshot.loading > generation
            and not any(z.generation == snapshot.loading and z.born >= snapshot.loading_since for z in zygotes)):
        actions.append(act.StartZygote(snapshot.loading, Reason.RELOAD))
    return actions


def next_deadline(snapshot: Snapshot, config: Config, now: float) -> Optional[float]:
    """The earliest future time at which plan() could decide something new, or None."""
    deadlines = []
    for worker in snapshot.workers:
        if worker.kill_at is not None:
            deadlines.append(worker.kill_at)
        elif snapshot.stopping is None:
            limit, since = _limit_and_since(worker, snapshot, config)
            if limit:
                deadlines.append(since + limit)
            if worker.age_limit and worker.ready and worker.stop_reason is None and worker.born + worker.age_limit > now:
                deadlines.append(worker.born + worker.age_limit)      # past it, it waits for a successor: no spin
    if snapshot.stopping is None and config.boot_timeout:
        deadlines += [max(z.born, snapshot.resumed_at) + config.boot_timeout
                      for z in snapshot.zygotes or () if z.state == ZygoteState.BOOTING]
    backoff_end = spawn_after(snapshot)
    if backoff_end > now:
        deadlines.append(backoff_end)
    refill = snapshot.last_activation + SPARE_REFILL_DELAY
    if refill > now:
        deadlines.append(refill)
    policy = snapshot.policy if snapshot.stopping is None else None
    interval = policy.check_interval(snapshot.policy_state) if policy is not None else None
    if interval:
        deadlines.append(now + interval)
    return min(deadlines) if deadlines else None


def spawn_after(snapshot: Snapshot) -> float:
    """No fork before this monotonic time: the boot backoff."""
    if not snapshot.failed_boots:
        return 0.0
    return snapshot.last_boot_failure_at + backoff_delay(snapshot.failed_boots)


# -- helpers ----------------------------------------------------------------------

def _after_backoff(snapshot: Snapshot, now: float) -> bool:
    return now >= spawn_after(snapshot)


def _may_fork(snapshot: Snapshot, now: float) -> bool:
    """After the boot backoff, and with zygotes, once the current generation's zygote is ready."""
    if not _after_backoff(snapshot, now):
        return False
    if snapshot.zygotes is None:
        return True
    return any(z.generation == snapshot.generation and z.state == ZygoteState.READY for z in snapshot.zygotes)


def _timeouts(snapshot: Snapshot, config: Config, now: float) -> list[act.Stop]:
    found = []
    for worker in snapshot.workers:
        if worker.stop_reason is None:
            overdue = _overdue(worker, snapshot, config, now)
            if overdue:
                found.append(act.Stop(worker.pid, Reason.TIMEOUT, WorkerSignal.DUMP_STACKS, now + DUMP_GRACE, overdue))
    return found


def _limit_and_since(worker: WorkerView, snapshot: Snapshot, config: Config) -> tuple[float, float]:
    if not worker.ready:
        return config.boot_timeout, max(worker.born, snapshot.resumed_at)
    return config.worker_timeout, max(worker.last_seen, snapshot.resumed_at)


def _overdue(worker: WorkerView, snapshot: Snapshot, config: Config, now: float) -> str:
    """Why the worker is taken for hung, or ''."""
    limit, since = _limit_and_since(worker, snapshot, config)
    silent = now - since
    if not limit or silent <= limit:
        return ""
    what = "boot timeout" if not worker.ready else "timeout"
    return f"silent for {silent:.1f} s, over its {what} of {float(limit)} s"


def _zygote_overdue(zygote: ZygoteView, snapshot: Snapshot, config: Config, now: float) -> bool:
    return bool(config.boot_timeout) and now - max(zygote.born, snapshot.resumed_at) > config.boot_timeout


def _stop_everyone(snapshot: Snapshot, config: Config, now: float, stopped: set[int]) -> list[act.Action]:
    actions: list[act.Action] = []
    quick = snapshot.stopping == StopMode.QUICK
    for worker in snapshot.workers:
        if worker.pid in stopped or worker.stop_reason == Reason.TIMEOUT:
            continue                      # a kill for a timeout keeps its deadline and reason
        if not quick:
            if worker.stop_reason is None:
                actions.append(act.Retire(worker.pid, Reason.STOP, now + config.graceful_timeout, drain=True))
        elif worker.stop_signal != signal.SIGQUIT:
            deadline = now + KILL_GRACE
            if worker.kill_at is not None:
                deadline = min(deadline, worker.kill_at)
            actions.append(act.Stop(worker.pid, worker.stop_reason or Reason.STOP, signal.SIGQUIT, deadline))
    return actions


def _size(snapshot: Snapshot, fresh: list[WorkerView], now: float, problems: list[str]) -> Sizing:
    busy = sum(1 for w in fresh if w.busy)
    ready = sum(1 for w in fresh if w.ready)
    load = PoolLoad(workers=len(fresh), idle=ready - busy, busy=busy, backlog=snapshot.backlog,
                    requested=snapshot.requested_size, now=now,
                    busy_threads=sum(max(w.busy_threads, w.busy) for w in fresh))
    target: object                    # the policy's answer may be anything: checked below
    try:
        target, reason, state = cast(PooledPolicy, snapshot.policy).size(load, snapshot.policy_state)
    except (TypeError, ValueError):
        target = None
    if isinstance(target, bool) or not isinstance(target, int):
        problems.append(f"policy {type(snapshot.policy).__name__}.size() did not return a Sizing with a whole "
                        f"number of workers; keeping {max(1, len(fresh))}")
        target, reason, state = max(1, len(fresh)), "the policy's answer was not usable", snapshot.policy_state
    return Sizing(max(1, min(target, snapshot.max_size)), reason, state)


def _due_reason(worker: WorkerView, snapshot: Snapshot, config: Config, now: float) -> Optional[Reason]:
    if worker.retire == scoreboard.WANTS_SUCCESSOR:
        return Reason.RECYCLE
    limit = config.max_worker_memory * 1024 * 1024
    if (limit and worker.uss is not None and worker.uss > limit
            and now - worker.born >= config.min_worker_lifetime):
        return Reason.MEMORY
    if worker.age_limit and now - worker.born >= worker.age_limit:
        return Reason.AGE
    if worker.generation < snapshot.generation:
        return Reason.RELOAD
    return None


def _due_detail(worker: WorkerView, reason: Reason, config: Config) -> str:
    if reason == Reason.MEMORY:
        return (f"uses {cast(int, worker.uss) / 2**20:.1f} MB unique memory, over {config.max_worker_memory} MB")
    if reason == Reason.RECYCLE:
        return f"served {worker.requests} requests, near --max-requests {config.max_requests}"
    if reason == Reason.AGE:
        return f"lived {worker.age_limit:.1f} s, its --max-worker-age"
    return ""


def _free_slots(target: int, fresh: list[WorkerView], due_slots: list[int]) -> Iterator[int]:
    """Slots to fill, in order: those nobody holds, then the due workers' (their successors'), then above."""
    taken = {w.slot for w in fresh}
    missing = [slot for slot in range(1, target + 1) if slot not in taken and slot not in due_slots]
    for slot in missing + [s for s in due_slots if s not in taken]:
        taken.add(slot)
        yield slot
    slot = target
    while True:                           # more than the target (a pool in the middle of shrinking)
        slot += 1
        if slot not in taken:
            taken.add(slot)
            yield slot


def _candidate(worker: WorkerView, now: float) -> Candidate:
    return Candidate(worker.slot, now - worker.born, worker.busy)
