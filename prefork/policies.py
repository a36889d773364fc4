"""Runs in the serving process (the master's planner): pool policies, how requests get concurrency.

socketserver's ForkingMixIn and ThreadingMixIn become two policies among
several. A policy is a small frozen value with no system calls of its own
(a size left to default comes from prefork.cpus when it is made): the server
asks it which behaviour to use, and the master's planner asks a pooled
policy two questions, "how many workers now?" (size) and "which worker should
go first?" (choose_retire).

    Serial()              one request at a time in the calling process (socketserver's default)
    ForkPerRequest()      a new process per request (ForkingMixIn)
    ThreadPerRequest()    a new thread per request (ThreadingMixIn)
    Prefork(workers, threads)
                          a static pool of worker processes forked up front;
                          threads > 1 runs that many accept threads per worker
    Adaptive(min_workers, max_workers, min_spare, max_spare, threads, scale_down_after)
                          a pool that keeps min_spare..max_spare idle workers and
                          grows while connections wait in the accept queue
"""

import math
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple, Optional, Protocol, Sequence, cast

from prefork.cpus import usable_cpus
from prefork.errors import ConfigError
from prefork.supervision import whole_number_problem


def cpu_count() -> int:
    """CPUs this process may use: the fewest of the CPU count, the affinity mask (taskset, cpusets)
    and the cgroup CPU quota (containers), rounded up."""
    return usable_cpus()[0]


# A size left to default: None, filled from the usable CPUs in __post_init__, where the policy
# also notes in sized_by which limit decided it (the master's start-up line says so).
PER_CPU = cast(int, None)


class PoolLoad(NamedTuple):
    """What a pooled policy sees of its pool when the planner asks for a target size."""

    workers: int                 #: serving workers that are not on their way out (booting ones included)
    idle: int                    #: ready workers with no request in hand
    busy: int                    #: workers serving a request right now
    backlog: Optional[int]       #: connections waiting in the accept queues, where the kernel says
    requested: Optional[int]     #: the size an operator asked for (SIGTTIN/SIGTTOU, scale), if any
    now: float                   #: monotonic seconds
    busy_threads: int = 0        #: accept threads holding a request, over all workers


class Sizing(NamedTuple):
    """A pooled policy's answer: how many serving workers, why, and what to remember till next time."""

    target: int
    reason: str = ""
    state: object = None


class Candidate(NamedTuple):
    """What a pooled policy sees of one worker when choosing which to retire."""

    slot: int
    age: float        #: seconds since fork
    busy: bool


@dataclass(frozen=True)
class Policy:
    """Base class. ``pooled`` policies run a master and worker processes."""

    pooled: ClassVar[bool] = False
    name: ClassVar[str] = ""

    def check_interval(self, state: object) -> Optional[float]:
        """Seconds until the master must look at the load again, though nothing woke it (a worker
        taking a request wakes nobody); None: only when something happens (an exit, a signal)."""
        return None


class PooledPolicy(Protocol):
    """What the master's planner asks of a pooled policy (Prefork, Adaptive, or a user's own subclass)."""

    workers: int
    threads: int

    def size(self, load: PoolLoad, state: object = None) -> Sizing: ...

    def choose_retire(self, candidates: Sequence[Candidate]) -> Optional[Candidate]: ...

    def check_interval(self, state: object) -> Optional[float]: ...


@dataclass(frozen=True)
class Serial(Policy):
    """Handle one request at a time in the calling process, as socketserver does by default."""

    name: ClassVar[str] = "serial"


@dataclass(frozen=True)
class ForkPerRequest(Policy):
    """Fork a new process for every request (socketserver.ForkingMixIn).

    The server attributes max_children, active_children and block_on_close
    keep their socketserver meaning.
    """

    name: ClassVar[str] = "fork"


@dataclass(frozen=True)
class ThreadPerRequest(Policy):
    """Start a new thread for every request (socketserver.ThreadingMixIn).

    The server attributes daemon_threads and block_on_close keep their
    socketserver meaning.
    """

    name: ClassVar[str] = "thread"


MAX_WORKERS = 4096
MAX_THREADS = 1024


def _check_count(what: str, value: object, most: int) -> None:
    problem = whole_number_problem(value, 1, most)
    if problem:
        raise ConfigError.about(what, problem, value)


@dataclass(frozen=True)
class Prefork(Policy):
    """A static pool: ``workers`` processes forked up front, each running
    ``threads`` accept loops on every listening socket.

    The size can still be nudged at run time (SIGTTIN / SIGTTOU); the pool
    never goes below one worker.
    """

    workers: int = PER_CPU          #: default: one per usable CPU (cpu_count)
    threads: int = 1
    sized_by: str = field(default="", init=False, repr=False, compare=False)   #: why, if the CPUs set the size
    pooled: ClassVar[bool] = True
    name: ClassVar[str] = "prefork"

    def __post_init__(self) -> None:
        if self.workers is PER_CPU:
            count, why = usable_cpus()
            object.__setattr__(self, "workers", count)
            object.__setattr__(self, "sized_by", f"one per CPU: {why}")
        _check_count("workers", self.workers, MAX_WORKERS)
        _check_count("threads", self.threads, MAX_THREADS)

    def size(self, load: PoolLoad, state: object = None) -> Sizing:
        """How many workers the pool should have now: ``workers``, or what an operator asked for."""
        if load.requested is not None:
            return Sizing(load.requested, f"{load.requested} worker(s), as scaled by the operator")
        return Sizing(self.workers, f"a static pool of {self.workers}")

    def choose_retire(self, candidates: Sequence[Candidate]) -> Optional[Candidate]:
        """Which worker to stop when the pool shrinks: an idle one first, then the oldest.

        An idle worker loses no request in hand; among equals the oldest has
        grown the most (fragmentation, caches) and gains most from a restart.
        """
        return idle_then_oldest(candidates)


def idle_then_oldest(candidates: Sequence[Candidate]) -> Optional[Candidate]:
    """An idle worker first, then the oldest; None if there is no candidate."""
    return max(candidates, key=lambda c: (not c.busy, c.age), default=None)


MAX_SPAWN_RATE = 32      # forks per second at most, however long the shortage lasts (Apache's cap too)
RETIRE_INTERVAL = 1.0    # seconds between two retirements, once the pool has been too idle long enough
# How often the master looks at an adaptive pool's load: often while it moves, less at rest, where the
# spares serve a new burst's first requests meanwhile (what each costs: docs/design.md, "An adaptive pool").
CHECK_INTERVAL = 0.1
CHECK_INTERVAL_AT_REST = 0.5


class AdaptiveState(NamedTuple):
    """What Adaptive remembers from one pass to the next: it travels in Sizing.state and the Snapshot."""

    window_start: float                 #: when the current one-second spawn window began
    rate: int = 1                       #: forks allowed in this window: 1, 2, 4, ... MAX_SPAWN_RATE
    spawned: int = 0                    #: forks asked for in this window
    short: bool = False                 #: the pool lacked idle workers during this window
    throttled: bool = False             #: ... and the rate held the growth back: double it next window
    idle_since: Optional[float] = None  #: since when more than max_spare have been idle, if they are
    retired_at: float = float("-inf")   #: the latest retirement for idleness
    at_rest: bool = False               #: every worker idle, nothing queued, nothing to do or wait for


@dataclass(frozen=True)
class Adaptive(Policy):
    """A pool sized by its load: between min_spare and max_spare idle workers, within
    [min_workers, max_workers], and more while connections wait in the accept queue.

    Grows fast: forks per second start at 1 and double each second the
    shortage outruns them (1, 2, 4, ... 32); a new worker counts as idle while
    it boots, so a burst is not answered twice. Shrinks slowly: only after more
    than max_spare workers have been idle for scale_down_after seconds, then one
    worker a second, the youngest idle one; never a worker with a request in hand.

    With threads > 1 the spares are counted in threads: min_spare and max_spare
    are idle accept threads, as Apache's MinSpareThreads. So that retiring a
    worker (threads idle threads) cannot leave fewer than min_spare, max_spare
    must be at least min_spare + threads - 1; by default it is min_spare + threads.

    An operator's size (SIGTTIN, SIGTTOU, scale N) sets the floor, clamped to
    [min_workers, max_workers]: the pool grows to it at once and never shrinks
    below it; the load may still take the pool above it.

    All memory (the spawn rate, since when the pool has been too idle) is in
    the AdaptiveState that size() returns and is given back: the policy is a
    value, and every decision a row of a table (tests/test_adaptive_policy.py).
    """

    min_workers: int = 1
    max_workers: int = PER_CPU      #: default: 4 per usable CPU (cpu_count)
    min_spare: int = 1
    max_spare: Optional[int] = None     #: default: min_spare + threads (an int once __post_init__ has run)
    threads: int = 1
    scale_down_after: float = 10.0
    sized_by: str = field(default="", init=False, repr=False, compare=False)   #: why, if the CPUs set max_workers
    pooled: ClassVar[bool] = True
    name: ClassVar[str] = "adaptive"

    def __post_init__(self) -> None:
        if self.max_workers is PER_CPU:
            count, why = usable_cpus()
            # Never below --min-workers: a quota says how many CPUs, not that fewer workers were asked for.
            wanted = max(4 * count, self.min_workers) if isinstance(self.min_workers, int) else 4 * count
            object.__setattr__(self, "max_workers", min(wanted, MAX_WORKERS))
            object.__setattr__(self, "sized_by", f"at most {self.max_workers}, 4 per CPU: {why}")
        _check_count("min_workers", self.min_workers, MAX_WORKERS)
        _check_count("max_workers", self.max_workers, MAX_WORKERS)
        _check_count("threads", self.threads, MAX_THREADS)
        _check_whole("min_spare", self.min_spare, 0)
        if self.max_spare is None:
            object.__setattr__(self, "max_spare", self.min_spare + self.threads)
        _check_whole("max_spare", self.max_spare, 0)
        if (isinstance(self.scale_down_after, bool) or not isinstance(self.scale_down_after, (int, float))
                or not math.isfinite(self.scale_down_after) or self.scale_down_after < 0):
            raise ConfigError.about("scale_down_after", "must be a finite number of seconds, at least 0",
                                    self.scale_down_after)
        if self.min_workers > self.max_workers:
            raise ConfigError.about("min_workers", f"must not be above max_workers ({self.max_workers})",
                                    self.min_workers)
        if self.min_spare > self.max_workers * self.threads:
            raise ConfigError.about("min_spare", "must not be above max_workers x threads "
                                    f"({self.max_workers * self.threads}), the most a pool can hold",
                                    self.min_spare)
        if self.threads == 1 and cast(int, self.max_spare) < self.min_spare:
            raise ConfigError.about("max_spare", f"must not be below min_spare ({self.min_spare})", self.max_spare)
        if cast(int, self.max_spare) < self.min_spare + self.threads - 1:
            raise ConfigError.about(
                "max_spare", f"must be at least min_spare + threads - 1 ({self.min_spare + self.threads - 1}), "
                "or retiring an idle worker would leave fewer than min_spare idle", self.max_spare)

    @property
    def workers(self) -> int:
        """How many workers the pool starts with: min_workers, or enough for min_spare."""
        return self._minimum(None)

    def size(self, load: PoolLoad, state: object = None) -> Sizing:
        """The target for this pass, why, and the state to give back next time."""
        sizing = self._decide(load, _next_window(state, load.now))
        kept = cast(AdaptiveState, sizing.state)        # what _decide puts in a Sizing
        at_rest = sizing.target == load.workers == load.idle and not load.backlog and kept.idle_since is None
        return sizing._replace(state=kept._replace(at_rest=at_rest))

    def _decide(self, load: PoolLoad, state: AdaptiveState) -> Sizing:
        minimum, threads, backlog = self._minimum(load.requested), self.threads, load.backlog or 0
        busy_threads = max(load.busy_threads, load.busy)
        booting = load.workers - load.idle - load.busy
        idle = (load.idle + load.busy) * threads - busy_threads       # idle threads of ready workers
        spare = idle + booting * threads                             # ... and of those about to be ready
        facts = f"{idle} idle{' threads' if threads > 1 else ''}" + (f" (+{booting} booting)" if booting else "")
        if load.workers < minimum:
            floor = "the operator's floor" if load.requested is not None else "the minimum"
            return Sizing(minimum, f"{facts}: below {floor} of {minimum} workers: adding "
                                   f"{minimum - load.workers}", state._replace(idle_since=None))
        if load.workers > self.max_workers:
            return Sizing(self.max_workers, f"{facts}: above max_workers {self.max_workers}",
                          state._replace(idle_since=None))
        if spare < self.min_spare + backlog:
            return self._grow(load, state, self.min_spare + backlog - spare, facts, backlog)
        if idle > cast(int, self.max_spare) and load.workers > minimum:
            return self._shrink(load, state, facts)
        within = "at the minimum" if idle > cast(int, self.max_spare) else \
            f"min_spare {self.min_spare}..max_spare {self.max_spare}"
        return Sizing(load.workers, f"{facts}{f', backlog {backlog}' if backlog else ''}, {within}: "
                                    f"holding {load.workers}", state._replace(idle_since=None))

    def check_interval(self, state: object) -> float:
        """Look at the load often while it moves, less often at rest (see CHECK_INTERVAL)."""
        return CHECK_INTERVAL_AT_REST if isinstance(state, AdaptiveState) and state.at_rest else CHECK_INTERVAL

    def choose_retire(self, candidates: Sequence[Candidate]) -> Optional[Candidate]:
        """The youngest idle worker, or None: never one with a request in hand.

        The kernel hands a connection to the idle worker that has waited
        longest (the oldest), so the youngest is the coldest and the least
        likely to be taking a request at the moment it is told to go.
        """
        return min((c for c in candidates if not c.busy), key=lambda c: c.age, default=None)

    def _minimum(self, requested: Optional[int]) -> int:
        """The fewest workers: min_workers (or the operator's size), and enough for min_spare at rest."""
        floor = self.min_workers if requested is None else max(self.min_workers, requested)
        return min(max(floor, math.ceil(self.min_spare / self.threads)), self.max_workers)

    def _grow(self, load: PoolLoad, state: AdaptiveState, shortfall: int, facts: str, backlog: int) -> Sizing:
        need = math.ceil(shortfall / self.threads)
        room = self.max_workers - load.workers
        budget = state.rate - state.spawned
        grow = min(need, room, budget)
        held_back = budget < min(need, room)
        state = state._replace(spawned=state.spawned + grow, short=True, throttled=state.throttled or held_back,
                               idle_since=None)
        why = f"{facts} < min_spare {self.min_spare}" + (f" + backlog {backlog}" if backlog else "")
        if grow:
            action = f"growing by {grow}" + (f" (at most {state.rate} a second now)" if held_back else "")
        elif not room:
            action = f"at max_workers {self.max_workers}"
        else:
            action = f"waiting: {state.rate} fork(s) this second already"
        return Sizing(load.workers + grow, f"{why}: {action}", state)

    def _shrink(self, load: PoolLoad, state: AdaptiveState, facts: str) -> Sizing:
        now = load.now
        since = now if state.idle_since is None else state.idle_since
        state = state._replace(idle_since=since)
        too_idle = f"{facts} > max_spare {self.max_spare} for {now - since:.1f} s"
        if now - since >= self.scale_down_after and now - state.retired_at >= RETIRE_INTERVAL:
            return Sizing(load.workers - 1, f"{too_idle}: retiring 1", state._replace(retired_at=now))
        return Sizing(load.workers, f"{too_idle} (retiring after {self.scale_down_after:g} s): holding "
                                    f"{load.workers}", state)


def _next_window(state: object, now: float) -> AdaptiveState:
    """The state for a pass at now: a new one-second window, with a new rate, once the last is over.

    The rate doubles after a window whose growth it held back, stays while
    the pool is still short, and falls back to 1 once a window passes
    without a shortage.
    """
    if not isinstance(state, AdaptiveState):
        return AdaptiveState(window_start=now)
    if now - state.window_start < 1.0:
        return state
    rate = min(state.rate * 2, MAX_SPAWN_RATE) if state.throttled else state.rate if state.short else 1
    return state._replace(window_start=now, rate=rate, spawned=0, short=False, throttled=False)


def _check_whole(what: str, value: object, low: int) -> None:
    problem = whole_number_problem(value, low, MAX_WORKERS * MAX_THREADS)
    if problem:
        raise ConfigError.about(what, problem, value)


POLICIES_BY_NAME = {cls.name: cls for cls in (Serial, ForkPerRequest, ThreadPerRequest, Prefork, Adaptive)}
