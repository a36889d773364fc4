"""Pool policies: how requests get concurrency.

socketserver's ForkingMixIn and ThreadingMixIn become two policies among
several. A policy is a small frozen value with no system calls: the server
asks it which behaviour to use, and the master's planner asks a pooled
policy two questions, "how many workers now?" (size) and "which worker should
go first?" (choose_retire).

    Serial()              one request at a time in the calling process (socketserver's default)
    ForkPerRequest()      a new process per request (ForkingMixIn)
    ThreadPerRequest()    a new thread per request (ThreadingMixIn)
    Prefork(workers, threads)
                          a static pool of worker processes forked up front;
                          threads > 1 runs that many accept threads per worker
"""

import os
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple, Optional, Sequence

from .config import whole_number_problem
from .errors import ConfigError


def cpu_count():
    """CPUs this process may run on (respects taskset and container CPU sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class PoolLoad(NamedTuple):
    """What a pooled policy sees of its pool when the planner asks for a target size."""

    workers: int                 #: serving workers that are not on their way out (booting ones included)
    idle: int                    #: ready workers with no request in hand
    busy: int                    #: workers serving a request right now
    backlog: Optional[int]       #: connections waiting in the accept queues, where the kernel says
    requested: Optional[int]     #: the size an operator asked for (SIGTTIN/SIGTTOU, scale), if any
    now: float                   #: monotonic seconds


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


def _check_count(what, value, most):
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

    workers: int = field(default_factory=cpu_count)
    threads: int = 1
    pooled: ClassVar[bool] = True
    name: ClassVar[str] = "prefork"

    def __post_init__(self):
        _check_count("workers", self.workers, MAX_WORKERS)
        _check_count("threads", self.threads, MAX_THREADS)

    def size(self, load: PoolLoad, state=None) -> Sizing:
        """How many workers the pool should have now: ``workers``, or what an operator asked for."""
        if load.requested is not None:
            return Sizing(load.requested, f"{load.requested} worker(s), as scaled by the operator")
        return Sizing(self.workers, f"a static pool of {self.workers}")

    def choose_retire(self, candidates: Sequence[Candidate]) -> Optional[Candidate]:
        """Which worker to stop when the pool shrinks: an idle one first, then the oldest.

        An idle worker loses no request in hand; among equals the oldest has
        grown the most (fragmentation, caches) and gains most from a restart.
        """
        return max(candidates, key=lambda c: (not c.busy, c.age), default=None)


POLICIES_BY_NAME = {cls.name: cls for cls in (Serial, ForkPerRequest, ThreadPerRequest, Prefork)}
