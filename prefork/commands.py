"""Named commands: what a signal, an API call or a control request asks of a running server.

One table for all three. A signal is looked up in SIGNAL_COMMANDS; an API
call (``server.scale(4)``) builds the same object; the control socket parses
one from a JSON request by name (from_request). The loop that owns the pool
runs ``command.run(target)``, where target is the master of a pool or the
request loop of an in-process policy, and the result (text, or a dict for
status) goes back to a control client. The first line of a command's
docstring is its help in `prefork ctl --help`.

A target provides: begin_stop(graceful, why, interrupt), begin_reload(why),
set_size(size, relative, why), reopen_logs(why), begin_upgrade(why),
resume(why), ignore(why) and status(); each returns a short text saying what it did, or raises PreforkError. A target that cannot do something (a serial server asked to
reload) says so in its log: every command has a defined meaning everywhere.
"""

import signal
from dataclasses import dataclass
from typing import ClassVar

from .errors import ConfigError


@dataclass(frozen=True)
class Command:
    name: ClassVar[str] = ""
    why: str = ""

    def run(self, target):
        raise NotImplementedError

    @classmethod
    def from_request(cls, request, why):
        """The command a control request asks for (its other keys are arguments)."""
        return cls(why=why)


@dataclass(frozen=True)
class Status(Command):
    """Status: the master, each worker (pid, slot, state, requests, memory, CPU, age, last exit), restarts."""

    name: ClassVar[str] = "status"

    def run(self, target):
        return target.status()


@dataclass(frozen=True)
class Stop(Command):
    """Stop: stop accepting, let the requests in hand finish (up to the graceful timeout), exit.
    quick: stop at once, abandoning requests in hand."""

    name: ClassVar[str] = "stop"
    quick: bool = False
    interrupt: bool = False      #: a Ctrl-C: serve_forever() raises KeyboardInterrupt once stopped

    def run(self, target):
        return target.begin_stop(graceful=not self.quick, why=self.why or self.name, interrupt=self.interrupt)

    @classmethod
    def from_request(cls, request, why):
        return cls(why=why, quick=bool(request.get("quick", False)))


@dataclass(frozen=True)
class Reload(Command):
    """Reload: replace every worker, one at a time, each successor ready before its predecessor stops."""

    name: ClassVar[str] = "reload"

    def run(self, target):
        return target.begin_reload(why=self.why or self.name)


@dataclass(frozen=True)
class Scale(Command):
    """Scale: set the number of workers to N, or change it by +N / -N (never below one)."""

    name: ClassVar[str] = "scale"
    size: int = 0
    relative: bool = False

    def run(self, target):
        return target.set_size(self.size, self.relative, why=self.why or self.name)

    @classmethod
    def from_request(cls, request, why):
        return cls.parse(request.get("size", ""), why=why)

    @classmethod
    def parse(cls, text, why=""):
        """'8', '+1' or '-2' as a Scale command, or ConfigError."""
        text = str(text).strip()
        relative = text[:1] in ("+", "-")
        digits = text[1:] if relative else text
        if not (digits.isascii() and digits.isdigit()):
            raise ConfigError(f"scale wants N, +N or -N, got {text!r}")
        size = int(digits) * (-1 if text.startswith("-") else 1)
        if not relative and size < 1:
            raise ConfigError(f"scale wants at least 1 worker, got {size}")
        return cls(why=why, size=size, relative=relative)


@dataclass(frozen=True)
class ReopenLogs(Command):
    """Reopen logs: reopen the log file (after logrotate moved it), in the master and every worker."""

    name: ClassVar[str] = "reopen-logs"

    def run(self, target):
        return target.reopen_logs(why=self.why or self.name)


@dataclass(frozen=True)
class Upgrade(Command):
    """Upgrade: start a new master from the same command, on the same sockets; stop the old one after."""

    name: ClassVar[str] = "upgrade"

    def run(self, target):
        return target.begin_upgrade(why=self.why or self.name)


@dataclass(frozen=True)
class Resume(Command):
    """After SIGCONT: the master may have been stopped; give every worker a fresh timeout."""

    name: ClassVar[str] = "resume"

    def run(self, target):
        return target.resume(why=self.why or self.name)


@dataclass(frozen=True)
class Ignore(Command):
    """A signal with no meaning here: logged and otherwise ignored, so that habit cannot kill the server."""

    name: ClassVar[str] = "ignore"

    def run(self, target):
        return target.ignore(why=self.why)


# What each signal means to a running server (the README's table says the same).
SIGNAL_COMMANDS = {
    signal.SIGTERM: Stop(why="SIGTERM"),
    signal.SIGINT: Stop(why="SIGINT", quick=True, interrupt=True),
    signal.SIGQUIT: Stop(why="SIGQUIT", quick=True),
    signal.SIGHUP: Reload(why="SIGHUP"),
    signal.SIGTTIN: Scale(why="SIGTTIN", size=1, relative=True),
    signal.SIGTTOU: Scale(why="SIGTTOU", size=-1, relative=True),
    signal.SIGUSR1: ReopenLogs(why="SIGUSR1"),
    signal.SIGUSR2: Upgrade(why="SIGUSR2"),
    signal.SIGWINCH: Ignore(why="SIGWINCH"),
    signal.SIGCONT: Resume(why="SIGCONT"),
}

COMMANDS = {cls.name: cls for cls in (Status, Scale, Reload, Stop, ReopenLogs, Upgrade)}


def from_request(request, why):
    """A command from a decoded control request ({"command": "scale", "size": "+1"}), or ConfigError."""
    name = request.get("command") if isinstance(request, dict) else None
    if name not in COMMANDS:
        raise ConfigError(f"unknown command {name!r}; the commands are {', '.join(COMMANDS)}")
    return COMMANDS[name].from_request(request, why)


def help_lines():
    """One line per command, from its docstring: for `prefork ctl --help`."""
    return [f"{name:<12} {cls.__doc__.split(':', 1)[1].strip().splitlines()[0]}" for name, cls in COMMANDS.items()]


def for_signal(signum):
    return SIGNAL_COMMANDS.get(signum) or Ignore(why=f"signal {signum}")
