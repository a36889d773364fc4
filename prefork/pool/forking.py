"""Runs in the master and the zygote: fork mechanics, written once.

- Signals a child handles are blocked across fork(); the child unblocks
  them once its own handlers are in place. A stop sent to a new worker in
  the instant after fork then waits for its handler, instead of running the
  parent's copy in the child and being lost.
- Python 3.12+ warns (DeprecationWarning) on a fork from a threaded process:
  the master says so once at start, not at every fork.
- A child never returns into its parent's stack: it leaves with exit_child().
"""

import ctypes
import os
import signal
import sys
import warnings

from prefork.errors import WorkerSignal

# Blocked across fork; a child unblocks them once its handlers are in place, before user code runs.
FORK_BLOCKED_SIGNALS = frozenset({
    signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU,
    signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGCHLD, WorkerSignal.ACTIVATE,
    WorkerSignal.DUMP_STACKS})
# Signals meant for the master, which reach its children too when sent to the process group (Ctrl-C
# in a terminal, systemd's KillMode). A child *handles* them by doing nothing rather than ignoring
# them: an ignored signal stays ignored across exec, in every program a handler starts.
MASTERS_SIGNALS = (signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR2, signal.SIGWINCH)

PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36
try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:                      # pragma: no cover - not Linux
    _libc = None


def fork(child):
    """Fork with the children's signals blocked; the child runs child(), which never returns.

    Returns the child's pid in the parent, whose signal mask is restored;
    raises OSError when the kernel refuses (out of processes or memory).
    """
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORK_BLOCKED_SIGNALS)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            child()                   # never returns: it ends in exit_child()
            exit_child(1)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)   # in the parent only: the child never gets here
    return pid


def do_nothing(signum, frame):
    """A signal meant for the master: the master tells its children what to do."""


def handle_masters_signals():
    """In a child: handle the master's signals by doing nothing (see MASTERS_SIGNALS)."""
    for signum in MASTERS_SIGNALS:
        signal.signal(signum, do_nothing)


def prctl(option, value):
    """prctl(2) with one argument; False where it is not available or refused."""
    return _libc is not None and _libc.prctl(option, value, 0, 0, 0) == 0


def exit_child(code):
    """Leave a forked child: flush what Python buffered, then _exit (never unwind into the parent's stack)."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def exit_code(exc):
    """The exit status a SystemExit asks for, as Python's own exit gives it: None is 0, a number is
    that number, anything else (sys.exit("message")) is printed to stderr and is 1."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    print(exc.code, file=sys.stderr)
    return 1
