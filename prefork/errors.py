"""Runs in any process: exception types; the exit codes and signals the master and its workers share.

Library code raises these and never calls sys.exit: only the CLI turns an
error into a message and an exit status.
"""

import enum
import signal
import sys


class PreforkError(Exception):
    """Base class for the errors prefork reports to its user in one line."""


class ConfigError(PreforkError, ValueError):
    """A setting, flag or policy argument has a value that cannot work.

    When it is about one setting, ``setting`` names it (the API's name, such
    as worker_timeout) and ``problem`` and ``value`` say what is wrong, so the
    CLI can say the same with the flag's name (--timeout).
    """

    def __init__(self, message, setting=None, problem=None, value=None):
        super().__init__(message)
        self.setting, self.problem, self.value = setting, problem, value

    @classmethod
    def about(cls, setting, problem, value):
        return cls(f"{setting} {problem}, got {value!r}", setting, problem, value)

    def named(self, label):
        """The same error, naming the setting as label (a flag, a file key)."""
        if self.setting is None:
            return self
        return ConfigError(f"{label} {self.problem}, got {self.value!r}", self.setting, self.problem, self.value)


class BindError(PreforkError):
    """A listening address is malformed, cannot be resolved, or cannot be bound."""


class AppLoadError(PreforkError):
    """A ``module:object`` handler spec cannot be imported or is not a handler class."""


class SpawnError(PreforkError):
    """A worker could not be forked (out of processes or memory, or its zygote failed); a boot failure."""


class HaltServer(PreforkError):
    """The master gave up: no worker could ever boot. ``exit_code`` says so to a shell."""

    def __init__(self, reason, exit_code=None):
        super().__init__(reason)
        self.exit_code = Exit.NO_WORKER_BOOTED if exit_code is None else exit_code


class Exit(enum.IntEnum):
    """Exit statuses of the ``prefork`` command (the master process)."""

    OK = 0
    ERROR = 1                #: a runtime failure such as a port already in use
    USAGE = 2                #: bad flags, bad bind syntax, bad handler spec (as argparse uses 2)
    NO_WORKER_BOOTED = 3     #: workers failed to boot again and again, none ever became ready
    NOT_READY = 4            #: `prefork ctl status`: the master answers, but no worker of its current code is ready


class WorkerExit(enum.IntEnum):
    """Exit statuses a worker uses to tell the master why it stopped.

    Like gunicorn's WORKER_BOOT_ERROR / APP_LOAD_ERROR. Whether an exit is a
    boot failure (retried with backoff, not in a tight loop) the master
    decides from the worker's scoreboard slot: it never became ready. The
    status, and the message the worker leaves in its slot, say why.
    """

    OK = 0
    CRASH = 1                #: an unexpected exception escaped the worker's loop
    BOOT_ERROR = 3           #: a post_fork or worker_ready hook raised
    APP_LOAD_ERROR = 4       #: the handler module could not be imported or is not a handler
    RECYCLE = 5              #: served its --max-requests and stopped by itself


class WorkerSignal:
    """Signals the master sends a worker beyond the usual TERM (graceful) and QUIT (at once).

    Real-time signals, which nobody sends by habit (pkill -USR1 might reach
    workers), and queued by the kernel rather than merged.
    """

    ACTIVATE = signal.SIGRTMIN          #: a spare starts serving
    DUMP_STACKS = signal.SIGRTMIN + 1   #: a hung worker writes every thread's stack to stderr (then SIGKILL)


def report(problem, code):
    """For the CLI's commands: say what went wrong in one line on stderr; return the exit status."""
    print(f"prefork: error: {problem}", file=sys.stderr)
    return code
