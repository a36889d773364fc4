"""Runs in the master: what it knows at one moment, as immutable values for the planner.

The master's loop builds a Snapshot each pass from its worker table, the
scoreboard, psutil samples and its zygotes; nothing here makes a system call.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

from prefork.policies import PooledPolicy
from prefork.pool import scoreboard
from prefork.pool.states import Reason, StopMode, ZygoteState


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
    stop_pool: bool = False           #: its handler called server.shutdown(): stop the whole pool
    uss: Optional[int] = None         #: unique memory, bytes, from the latest sample
    stop_reason: Optional[Reason] = None  #: set once the master told it to go
    stop_signal: Optional[int] = None
    kill_at: Optional[float] = None   #: SIGKILL deadline once told to go
    age_limit: float = 0.0            #: seconds it may live (--max-worker-age, jittered); 0: no limit

    @property
    def exhausted(self) -> bool:
        """At its request cap: it accepts no more, and leaves once its last request is done."""
        return self.retire == scoreboard.EXHAUSTED


@dataclass(frozen=True)
class ZygoteView:
    """What the master knows of one zygote (--preload): the process that forks one generation's workers."""

    pid: int
    generation: int
    state: ZygoteState = ZygoteState.BOOTING
    born: float = 0.0                 #: monotonic time of its fork


@dataclass(frozen=True)
class Snapshot:
    """The pool as the master's loop saw it in one pass."""

    workers: Tuple[WorkerView, ...] = ()
    policy: Optional[PooledPolicy] = None   #: a pooled policy (prefork.Prefork, ...)
    policy_state: object = None       #: what the policy returned last time
    requested_size: Optional[int] = None   #: set by scale commands (SIGTTIN, SIGTTOU, ctl scale)
    generation: int = 0               #: the code workers are forked with; moved on by each reload
    stopping: Optional[StopMode] = None   #: set once the pool stops
    resumed_at: float = 0.0           #: when the master came back from being stopped
    failed_boots: int = 0             #: in a row, since a worker was last ready
    last_boot_failure_at: float = 0.0  #: monotonic time of the latest boot failure
    ever_ready: bool = False
    last_boot_failure: str = ""
    last_activation: float = float("-inf")
    backlog: Optional[int] = None     #: connections waiting in the accept queues, where known
    max_size: int = 4096              #: the most workers the pool may have at its target
    capacity: int = 1 << 20           #: the most live workers the scoreboard can hold at once
    zygotes: Optional[Tuple[ZygoteView, ...]] = None   #: None: no zygote, the master forks workers itself
    loading: Optional[int] = None     #: with zygotes: the generation a reload is loading, until it is ready
    loading_since: float = 0.0        #: when that reload was asked for (a zygote born before it is stale)
