"""The master's decisions: one pure function over an immutable snapshot of the pool.

    plan(snapshot, config, now) -> Plan(actions, sizing)

The master's loop gathers what it knows (exits it reaped, the scoreboard,
psutil samples, the commands that arrived) into a Snapshot, asks plan() what
to do, carries the actions out, and asks again until the plan is empty.
Nothing here reads a clock or makes a system call, so every situation the
master can meet is one row of a table in tests/test_planner.py.

The rules, in the order plan() applies them:

1. A worker past its SIGKILL deadline is killed (Kill).
2. A worker silent for longer than its timeout (boot_timeout before it is
   ready, worker_timeout after) is told to dump its stacks, and gets a
   SIGKILL deadline (Stop).
3. No worker ever booted and max_boot_failures boots failed in a row: Halt.
4. During a stop of the pool, every worker is told to go: SIGTERM and the
   graceful timeout, or SIGQUIT for a quick stop. A worker already being
   killed for a timeout keeps that kill's deadline and reason.
5. The pool policy gives the target size (Sizing), from the load of the
   serving workers that are not due for replacement (rule 6): a due worker
   and its successor count once.
6. A worker is *due* for replacement when it is of an older generation
   (reload), asked for a successor as it nears --max-requests (recycle), or
   uses more unique memory than --max-worker-memory (memory). Missing workers
   are replaced at once, from a ready spare first (Activate), else by a fork
   (Spawn); due workers get one successor at a time: the pool may hold one
   process more than its target while any worker is due. A due worker is
   retired (SIGTERM: it finishes the request in hand) as soon as the pool
   without it still has its target of ready workers, so the turn passes to
   the next due worker when the successor is ready, not when the old worker
   has finished a long request and been reaped.
7. Serving workers beyond the target are retired, as the policy chooses.
8. Spares are topped up to spare_workers, a moment after one was activated.
"""

import signal
from dataclasses import dataclass, field
from typing import Optional, Tuple, Union

from . import scoreboard
from .errors import WorkerSignal
from .policies import Candidate, PoolLoad, Sizing

KILL_GRACE = 1.0             # seconds between SIGQUIT and SIGKILL, in a quick stop
DUMP_GRACE = 0.2             # seconds a hung worker gets to write its stacks before SIGKILL
SPARE_REFILL_DELAY = 0.05    # seconds between activating a spare and forking the next one

# Why a worker is replaced, in the order a successor is given: one near its request cap
# will stop by itself soon, so it goes first.
DUE_ORDER = ("recycle", "memory", "reload")


@dataclass(frozen=True)
class WorkerView:
    """What the master knows of one live worker at one moment."""

    pid: int
    slot: int                         #: its place in the pool, 1..N (spares above N)
    generation: int = 0
    born: float = 0.0                 #: monotonic time of its fork
    spare: bool = False               #: booted, waiting to be activated
    ready: bool = True                #: finished booting
    busy: bool = False                #: a request in hand
    busy_threads: int = 0             #: how many of its accept threads hold one
    requests: int = 0
    last_seen: float = 0.0            #: its newest heartbeat
    retire: int = scoreboard.KEEP     #: what it says of --max-requests
    uss: Optional[int] = None         #: unique memory, bytes, from the latest sample
    stop_reason: Optional[str] = None  #: set once the master told it to go
    stop_signal: Optional[int] = None
    kill_at: Optional[float] = None   #: SIGKILL deadline once told to go


@dataclass(frozen=True)
class Snapshot:
    """The pool as the master's loop saw it in one pass."""

    workers: Tuple[WorkerView, ...] = ()
    policy: object = None             #: a pooled policy (prefork.Prefork, ...)
    policy_state: object = None       #: what the policy returned last time
    requested_size: Optional[int] = None   #: set by scale commands (SIGTTIN, SIGTTOU, ctl scale)
    generation: int = 0               #: bumped by each reload
    stopping: Optional[str] = None    #: None, "graceful" or "quick"
    resumed_at: float = 0.0           #: when the master came back from being stopped
    spawn_after: float = 0.0          #: boot backoff: no fork before this
    failed_boots: int = 0             #: in a row, since a worker was last ready
    ever_ready: bool = False
    last_boot_failure: str = ""
    last_activation: float = float("-inf")
    backlog: Optional[int] = None     #: connections waiting in the accept queues, where known
    max_size: int = 4096              #: the most workers the scoreboard can hold at the target


# -- actions ----------------------------------------------------------------------

@dataclass(frozen=True)
class Spawn:
    """Fork a worker for this slot (a spare if spare)."""
    slot: int
    spare: bool = False


@dataclass(frozen=True)
class Activate:
    """Turn a ready spare into the serving worker of this slot."""
    pid: int
    slot: int


@dataclass(frozen=True)
class Retire:
    """SIGTERM: stop accepting, finish the request in hand; SIGKILL at deadline."""
    pid: int
    reason: str
    deadline: float
    detail: str = ""


@dataclass(frozen=True)
class Stop:
    """A firmer signal (dump your stacks, for a timeout; SIGQUIT, for a quick stop); SIGKILL at deadline."""
    pid: int
    reason: str
    signum: int
    deadline: float
    detail: str = ""


@dataclass(frozen=True)
class Kill:
    """SIGKILL: the deadline of an earlier stop passed."""
    pid: int
    reason: str


@dataclass(frozen=True)
class Halt:
    """Give up: no worker could ever boot."""
    reason: str


Action = Union[Spawn, Activate, Retire, Stop, Kill, Halt]


@dataclass(frozen=True)
class Plan:
    actions: Tuple[Action, ...] = ()
    sizing: Optional[Sizing] = None
    due: Tuple[Tuple[int, str], ...] = field(default=())   #: (pid, reason) of workers awaiting a successor


# -- the plan ---------------------------------------------------------------------

def plan(snapshot, config, now):
    """What the master should do now; see the module docstring for the rules."""
    actions = []
    stopped = set()
    for worker in snapshot.workers:
        if worker.kill_at is not None and now >= worker.kill_at:
            actions.append(Kill(worker.pid, worker.stop_reason or "stop"))
    for worker in snapshot.workers:
        if worker.stop_reason is None:
            overdue = _overdue(worker, snapshot, config, now)
            if overdue:
                actions.append(Stop(worker.pid, "timeout", WorkerSignal.DUMP_STACKS, now + DUMP_GRACE, overdue))
                stopped.add(worker.pid)
    if (not snapshot.ever_ready and snapshot.failed_boots >= config.max_boot_failures
            and snapshot.stopping is None):
        actions.append(Halt(f"no worker could boot ({snapshot.failed_boots} attempts): "
                            f"{snapshot.last_boot_failure}"))
        return Plan(tuple(actions))
    if snapshot.stopping:
        actions += _stop_everyone(snapshot, config, now, stopped)
        return Plan(tuple(actions))
    live = [w for w in snapshot.workers if w.stop_reason is None and w.pid not in stopped]
    spares = [w for w in live if w.spare]
    for spare in spares:
        if spare.generation < snapshot.generation:
            actions.append(Retire(spare.pid, "reload", now + config.graceful_timeout))
    spares = [w for w in spares if w.generation >= snapshot.generation]
    serving = [w for w in live if not w.spare and w.retire != scoreboard.EXHAUSTED]
    due = sorted(((w, _due_reason(w, snapshot, config, now)) for w in serving if w.ready),
                 key=lambda pair: (DUE_ORDER.index(pair[1]) if pair[1] else 0, pair[0].slot))
    due = [(w, reason) for w, reason in due if reason]
    due_pids = {w.pid for w, _ in due}
    fresh = [w for w in serving if w.pid not in due_pids]
    sizing = _size(snapshot, fresh, now)
    target = sizing.target

    # Fill the pool: missing workers at once, due workers' successors one at a time.
    wanted = min(target - len(fresh), target + (1 if due else 0) - len(serving))
    free_slots = _free_slots(range(1, target + 1), fresh)
    ready_spares = [s for s in spares if s.ready]
    activated = []
    for spare in ready_spares[:max(0, wanted)]:
        slot = next(free_slots)
        actions.append(Activate(spare.pid, slot))
        activated.append(spare)
    forks = max(0, wanted - len(activated))
    may_fork = now >= snapshot.spawn_after
    if snapshot.failed_boots:             # probe with one worker until one boots
        booting = any(not w.ready for w in live)
        forks = 0 if booting or not may_fork else min(forks, 1)
    elif not may_fork:
        forks = 0
    for _ in range(forks):
        actions.append(Spawn(next(free_slots)))

    # Retire due workers whose successors are ready, most pressing first.
    ready_count = sum(1 for w in serving if w.ready) + len(activated)
    for worker, reason in due[:max(0, min(len(due), ready_count - target))]:
        actions.append(Retire(worker.pid, reason, now + config.graceful_timeout,
                              _due_detail(worker, reason, config)))

    # Shrink: serving workers beyond the target, as the policy chooses.
    excess = len(fresh) + len(activated) - target
    candidates = [w for w in fresh if w.ready]
    while excess > 0 and candidates:
        chosen = snapshot.policy.choose_retire([_candidate(w, now) for w in candidates])
        if chosen is None:
            break
        worker = next(w for w in candidates if w.slot == chosen.slot)
        candidates.remove(worker)
        actions.append(Retire(worker.pid, "stop", now + config.graceful_timeout, "the pool shrinks"))
        excess -= 1

    # Top up the spares, a moment after an activation, never while boots fail.
    spares_wanted = config.spare_workers - (len(spares) - len(activated))
    if (spares_wanted > 0 and not activated and not snapshot.failed_boots and may_fork
            and now >= snapshot.last_activation + SPARE_REFILL_DELAY):
        taken = {w.slot for w in spares if w not in activated}
        spare_slots = (s for s in range(target + 1, target + 1 + 4 * config.spare_workers + 1) if s not in taken)
        for _ in range(spares_wanted):
            actions.append(Spawn(next(spare_slots), spare=True))
    return Plan(tuple(actions), sizing, tuple((w.pid, reason) for w, reason in due))


def next_deadline(snapshot, config, now):
    """The earliest future time at which plan() could decide something new, or None."""
    deadlines = []
    for worker in snapshot.workers:
        if worker.kill_at is not None:
            deadlines.append(worker.kill_at)
        elif snapshot.stopping is None:
            limit, since = _limit_and_since(worker, snapshot, config)
            if limit:
                deadlines.append(since + limit)
    if snapshot.spawn_after > now:
        deadlines.append(snapshot.spawn_after)
    refill = snapshot.last_activation + SPARE_REFILL_DELAY
    if refill > now:
        deadlines.append(refill)
    policy = snapshot.policy if snapshot.stopping is None else None
    interval = policy.check_interval(snapshot.policy_state) if policy is not None else None
    if interval:
        deadlines.append(now + interval)
    return min(deadlines) if deadlines else None


# -- helpers ----------------------------------------------------------------------

def _limit_and_since(worker, snapshot, config):
    if not worker.ready:
        return config.boot_timeout, max(worker.born, snapshot.resumed_at)
    return config.worker_timeout, max(worker.last_seen, snapshot.resumed_at)


def _overdue(worker, snapshot, config, now):
    """Why the worker is taken for hung, or ''."""
    limit, since = _limit_and_since(worker, snapshot, config)
    silent = now - since
    if not limit or silent <= limit:
        return ""
    what = "boot timeout" if not worker.ready else "timeout"
    return f"silent for {silent:.1f} s, over its {what} of {float(limit)} s"


def _stop_everyone(snapshot, config, now, stopped):
    actions = []
    quick = snapshot.stopping == "quick"
    for worker in snapshot.workers:
        if worker.pid in stopped or worker.stop_reason == "timeout":
            continue                      # a kill for a timeout keeps its deadline and reason
        if not quick:
            if worker.stop_reason is None:
                actions.append(Retire(worker.pid, "stop", now + config.graceful_timeout))
        elif worker.stop_signal != signal.SIGQUIT:
            deadline = now + KILL_GRACE
            if worker.kill_at is not None:
                deadline = min(deadline, worker.kill_at)
            actions.append(Stop(worker.pid, worker.stop_reason or "stop", signal.SIGQUIT, deadline))
    return actions


def _size(snapshot, fresh, now):
    busy = sum(1 for w in fresh if w.busy)
    ready = sum(1 for w in fresh if w.ready)
    load = PoolLoad(workers=len(fresh), idle=ready - busy, busy=busy, backlog=snapshot.backlog,
                    requested=snapshot.requested_size, now=now,
                    busy_threads=sum(max(w.busy_threads, w.busy) for w in fresh))
    target, reason, state = snapshot.policy.size(load, snapshot.policy_state)
    return Sizing(max(1, min(target, snapshot.max_size)), reason, state)


def _due_reason(worker, snapshot, config, now):
    if worker.retire == scoreboard.WANTS_SUCCESSOR:
        return "recycle"
    limit = config.max_worker_memory * 1024 * 1024
    if (limit and worker.uss is not None and worker.uss > limit
            and now - worker.born >= config.min_worker_lifetime):
        return "memory"
    if worker.generation < snapshot.generation:
        return "reload"
    return ""


def _due_detail(worker, reason, config):
    if reason == "memory":
        return (f"uses {worker.uss / 2**20:.1f} MB unique memory, over {config.max_worker_memory} MB")
    if reason == "recycle":
        return f"served {worker.requests} requests, near --max-requests {config.max_requests}"
    return ""


def _free_slots(wanted, taken_by):
    taken = {w.slot for w in taken_by}
    for slot in wanted:
        if slot not in taken:
            yield slot
    slot = max(wanted, default=0)
    while True:                           # more than the target (a pool in the middle of shrinking)
        slot += 1
        if slot not in taken:
            yield slot


def _candidate(worker, now):
    return Candidate(worker.slot, now - worker.born, worker.busy)
