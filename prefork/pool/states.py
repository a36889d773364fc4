"""Runs in the master: the names of its states and of the reasons it acts on, as enums.

Each member is a str (Python 3.11's StrEnum, written out for 3.10), so that a
member compares equal to its text and prints as it in the log. What leaves the
master (stats(), the worker_exit hook, `prefork ctl status`) is plain text.
"""

import enum


class Name(str, enum.Enum):
    """An enum whose members are their text."""

    def __str__(self) -> str:
        return self.value


class MasterState(Name):
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class StopMode(Name):
    """How the whole pool stops: SIGTERM and the graceful timeout, or SIGQUIT and a second."""
    GRACEFUL = "graceful"
    QUICK = "quick"


class Reason(Name):
    """Why a worker was told to go, or went (the keys of stats()["restarts"], but STOP)."""
    TIMEOUT = "timeout"       # silent past its timeout: stacks dumped, then killed
    RECYCLE = "recycle"       # at or near --max-requests
    MEMORY = "memory"         # over --max-worker-memory
    AGE = "age"               # older than --max-worker-age
    RELOAD = "reload"         # of an older generation of code
    BOOT = "boot"             # exited before it was ready
    CRASH = "crash"           # exited by itself with a status
    SIGNAL = "signal"         # killed by a signal nobody in the master sent
    STOP = "stop"             # the pool stops or shrinks: not a restart


RESTART_REASONS = tuple(reason for reason in Reason if reason is not Reason.STOP)

# Why a worker is due for a successor, in the order successors are given: one near its request cap
# will stop by itself soon, so it goes first.
DUE_ORDER = (Reason.RECYCLE, Reason.MEMORY, Reason.AGE, Reason.RELOAD)


class ZygoteState(Name):
    BOOTING = "booting"       # importing the handler
    READY = "ready"           # forks workers on request
    STOPPING = "stopping"     # told to go


class ZygoteExit(Name):
    """What a zygote's exit means (exits.zygote_exit)."""
    EXPECTED = "expected"
    COUNTED = "counted"               # its failure was already counted (a request to it failed)
    RELOAD_FAILED = "reload failed"   # a reload's new code did not load
    BOOT_FAILURE = "boot failure"     # the current generation's code did not load
    DIED = "died"                     # it was ready, then went


class ReloadState(Name):
    """A reload goes loading (a zygote imports the new code) -> replacing -> done, or -> failed."""
    NONE = "none"             # no reload asked for yet
    LOADING = "loading"
    REPLACING = "replacing"
    DONE = "done"
    FAILED = "failed"
