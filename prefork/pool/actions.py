"""Runs in the master: what the planner can decide, as immutable values the loop carries out."""

from dataclasses import dataclass
from typing import Optional, Tuple, Union

from prefork.policies import Sizing
from prefork.pool.states import Reason


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
    """SIGTERM: finish the request in hand; SIGKILL at deadline.

    drain: a stop of the whole pool, so the worker also serves the connections
    waiting in the accept queues until they are empty; otherwise (a recycle,
    a reload, the pool shrinking) it stops accepting at once and the rest of
    the pool serves them. successor: the ready worker that took its slot.
    """
    pid: int
    reason: Reason
    deadline: float
    detail: str = ""
    drain: bool = False
    successor: Optional[int] = None


@dataclass(frozen=True)
class Stop:
    """A firmer signal (dump your stacks, for a timeout; SIGQUIT, for a quick stop); SIGKILL at deadline."""
    pid: int
    reason: Reason
    signum: int
    deadline: float
    detail: str = ""


@dataclass(frozen=True)
class Kill:
    """SIGKILL: the deadline of an earlier stop passed."""
    pid: int
    reason: Reason


@dataclass(frozen=True)
class StopPool:
    """A worker's handler called server.shutdown(): a graceful stop of the whole pool."""
    pid: int
    slot: int


@dataclass(frozen=True)
class Halt:
    """Give up at once (a quick stop): no worker could ever boot."""
    reason: str


@dataclass(frozen=True)
class StartZygote:
    """Fork a zygote that imports the handler for this generation (why: the reload that asks for it)."""
    generation: int
    why: str = ""


@dataclass(frozen=True)
class StopZygote:
    """Tell a zygote to go (SIGTERM), or kill it (SIGKILL); failure: why, when it failed to load."""
    pid: int
    signum: int
    detail: str
    failure: str = ""


@dataclass(frozen=True)
class AdoptGeneration:
    """A reload's zygote is ready: workers are forked with its generation from now on."""
    generation: int


Action = Union[Spawn, Activate, Retire, Stop, Kill, StopPool, Halt, StartZygote, StopZygote, AdoptGeneration]


@dataclass(frozen=True)
class Plan:
    actions: Tuple[Action, ...] = ()
    sizing: Optional[Sizing] = None
    problems: Tuple[str, ...] = ()    #: what the master should log: a policy's bad answer, a full scoreboard
