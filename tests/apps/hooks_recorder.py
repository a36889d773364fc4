"""Hooks for `prefork serve --hooks apps.hooks_recorder`.

Each hook appends one line to the file named by $PREFORK_TEST_EVENTS. post_fork
raises while the file named by $PREFORK_TEST_FAIL_BOOT exists, and sleeps for
$PREFORK_TEST_BOOT_SLEEP seconds; pre_fork raises when $PREFORK_TEST_PRE_FORK_RAISES
is set (a hook in the master that raises must not bring it down).
"""

import os
import time


def _record(*words):
    with open(os.environ["PREFORK_TEST_EVENTS"], "a") as f:
        f.write(" ".join(str(w) for w in words) + "\n")


def on_starting(server):
    _record("on_starting", os.getpid(), type(server).__name__)


def pre_fork(server, worker):
    _record("pre_fork", os.getpid(), worker.slot)
    if os.environ.get("PREFORK_TEST_PRE_FORK_RAISES"):
        raise RuntimeError("pre_fork hook raised on purpose")


def post_fork(server, worker):
    _record("post_fork", os.getpid(), worker.slot, worker.generation)
    time.sleep(float(os.environ.get("PREFORK_TEST_BOOT_SLEEP", "0")))
    if os.path.exists(os.environ.get("PREFORK_TEST_FAIL_BOOT", "/nonexistent")):
        raise RuntimeError("post_fork hook failed on purpose")


def worker_ready(server, worker):
    _record("worker_ready", os.getpid(), worker.slot)


def worker_exit(server, worker, status, reason):
    _record("worker_exit", os.getpid(), worker.slot, worker.pid, status, reason)


def on_exit(server):
    _record("on_exit", os.getpid())
