"""Runs in the master: what a child's exit means, and how long to wait after failed boots; pure.

The pool and the zygotes record facts (an exit status, what the scoreboard
said); these functions decide what the facts mean, and are tested as tables
in tests/pool/test_planner.py.
"""

from typing import Optional

from prefork.errors import WorkerExit
from prefork.pool.states import Reason, ZygoteExit, ZygoteState

BACKOFF_FIRST, BACKOFF_MAX = 0.1, 10.0   # seconds between boot attempts after failures: doubling, capped


def exit_reason(code: int, stop_reason: Optional[str], pool_stopping: bool, ready: bool, exhausted: bool) -> str:
    """Why a worker went, from its exit status and what the master knew of it.

    Only a worker that reached its request cap exits for a recycle by itself:
    the same status from a handler's sys.exit(5) is a crash.
    """
    if stop_reason:
        return stop_reason
    if pool_stopping:
        return Reason.STOP
    if not ready:
        return Reason.BOOT
    if exhausted and code == WorkerExit.RECYCLE:
        return Reason.RECYCLE
    return Reason.SIGNAL if code < 0 else Reason.CRASH


def exit_kind(reason: str, pool_stopping: bool) -> str:
    """How the metrics count an exit: its reason, but a worker stopped while the pool goes on left
    because the pool shrank (fewer workers wanted, or a spare no longer needed)."""
    if reason == Reason.STOP and not pool_stopping:
        return "scale_down"
    return str(reason)


def zygote_exit(state: ZygoteState, generation: int, current_generation: int, loading: Optional[int],
                already_counted: bool) -> ZygoteExit:
    """What a zygote's exit means (a ZygoteExit), from its state when it went."""
    if state == ZygoteState.STOPPING or (state == ZygoteState.READY and generation < current_generation):
        return ZygoteExit.EXPECTED
    if already_counted:
        return ZygoteExit.COUNTED
    if state == ZygoteState.BOOTING and loading is not None and generation == loading:
        return ZygoteExit.RELOAD_FAILED
    if state == ZygoteState.BOOTING:
        return ZygoteExit.BOOT_FAILURE
    return ZygoteExit.DIED


def backoff_delay(failed_boots: int) -> float:
    """Seconds to wait before the next boot after failed_boots failures in a row: 0.1 s, doubling, up to 10 s."""
    return min(BACKOFF_FIRST * 2 ** (failed_boots - 1), BACKOFF_MAX) if failed_boots else 0.0
