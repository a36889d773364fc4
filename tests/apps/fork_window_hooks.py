"""Hooks that widen the moment between fork and the worker's own signal handlers.

An at-fork hook (as any library may register) sleeps 50 ms in each new child,
and pre_fork of slot 2 sends SIGTERM to the master, whose stop then reaches
worker 2 inside that moment. The signal must wait for the worker's handler,
not be swallowed by the master's copy of its own.
"""

import os
import signal
import time

os.register_at_fork(after_in_child=lambda: time.sleep(0.05))


def pre_fork(server, worker):
    if worker.slot == 2:
        os.kill(os.getpid(), signal.SIGTERM)
