"""Runs in the serving process: named commands, what a signal, an API call or a control request asks.

One table for all three. A signal is looked up in SIGNAL_COMMANDS; an API
call (``server.scale(4)``) builds the same object; the control socket parses
one from a JSON request by name (from_request), after checking the request's
keys and their JSON types against the command's `arguments`: a request that
is not exactly right is refused, never guessed at (``"quick": "false"`` is
not a quick stop). The loop that owns the pool
runs ``command.run(target)``, where target is the master of a pool or the
request loop of an in-process policy, and the result (text, or a dict for
status) goes back to a control client. The first line of a command's
docstring is its help in `prefork ctl --help`.

A target provides: begin_stop(graceful, why, interrupt), begin_reload(why),
set_size(size, relative, why), reopen_logs(why), begin_upgrade(why),
resume(why), ignore(why) and status(); each returns a short text saying what it did, or raises PreforkError. A target that cannot do something (a serial server asked to
reload) says so in its log: every command has a defined meaning everywhere.
"""

import json
import signal
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, NamedTuple, Optional, Protocol, Tuple, Union, cast

from prefork.errors import ConfigError


class Argument(NamedTuple):
    """A key a control request may carry besides "command": the JSON types it takes, as a person says them."""

    types: Tuple[type, ...]      #: exact Python types json.loads gives (bool is not an int here)
    wanted: str                  #: for the error: "true or false (a JSON boolean)"


class Target(Protocol):
    """What a command runs on: the master of a pool, or the request loop of an in-process policy."""

    def begin_stop(self, graceful: bool, why: str, interrupt: bool = False) -> Optional[str]: ...

    def begin_reload(self, why: str) -> Optional[str]: ...

    def set_size(self, size: int, relative: bool, why: str) -> Optional[str]: ...

    def reopen_logs(self, why: str) -> Optional[str]: ...

    def begin_upgrade(self, why: str) -> Optional[str]: ...

    def resume(self, why: str) -> Optional[str]: ...

    def ignore(self, why: str) -> Optional[str]: ...

    def status(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Command:
    name: ClassVar[str] = ""
    arguments: ClassVar[dict[str, Argument]] = {}   #: key -> Argument: what a control request may add to "command"
    why: str = ""

    def run(self, target: Target) -> Union[str, dict[str, Any], None]:
        raise NotImplementedError

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any], why: str) -> "Command":
        """The command, from a control request's other keys (already checked against cls.arguments)."""
        return cls(why=why)


@dataclass(frozen=True)
class Status(Command):
    """Status: the master, each worker (pid, slot, state, requests, memory, CPU, age, last exit), restarts."""

    name: ClassVar[str] = "status"

    def run(self, target: Target) -> dict[str, Any]:
        return target.status()


@dataclass(frozen=True)
class Stop(Command):
    """Stop: stop accepting, let the requests in hand finish (up to the graceful timeout), exit.
    quick: stop at once, abandoning requests in hand."""

    name: ClassVar[str] = "stop"
    arguments: ClassVar[dict[str, Argument]] = {"quick": Argument((bool,), "true or false (a JSON boolean)")}
    quick: bool = False
    interrupt: bool = False      #: a Ctrl-C: serve_forever() raises KeyboardInterrupt once stopped

    def run(self, target: Target) -> Optional[str]:
        return target.begin_stop(graceful=not self.quick, why=self.why or self.name, interrupt=self.interrupt)

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any], why: str) -> "Stop":
        return cls(why=why, quick=arguments.get("quick", False))


@dataclass(frozen=True)
class Reload(Command):
    """Reload: replace every worker, one at a time, each successor ready before its predecessor stops."""

    name: ClassVar[str] = "reload"

    def run(self, target: Target) -> Optional[str]:
        return target.begin_reload(why=self.why or self.name)


@dataclass(frozen=True)
class Scale(Command):
    """Scale: set the number of workers to N, or change it by +N / -N (never below one)."""

    name: ClassVar[str] = "scale"
    arguments: ClassVar[dict[str, Argument]] = {
        "size": Argument((str, int), 'text such as "8", "+1", "-1", or a whole number')}
    size: int = 0
    relative: bool = False

    def run(self, target: Target) -> Optional[str]:
        return target.set_size(self.size, self.relative, why=self.why or self.name)

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any], why: str) -> "Scale":
        if "size" not in arguments:
            raise ConfigError(f'{cls.name}: "size" is missing; give N, +N or -N')
        return cls.parse(arguments["size"], why=why)

    @classmethod
    def parse(cls, text: Union[str, int], why: str = "") -> "Scale":
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

    def run(self, target: Target) -> Optional[str]:
        return target.reopen_logs(why=self.why or self.name)


@dataclass(frozen=True)
class Upgrade(Command):
    """Upgrade: start a new master from the same command, on the same sockets; stop the old one after."""

    name: ClassVar[str] = "upgrade"

    def run(self, target: Target) -> Optional[str]:
        return target.begin_upgrade(why=self.why or self.name)


@dataclass(frozen=True)
class Resume(Command):
    """After SIGCONT: the master may have been stopped; give every worker a fresh timeout."""

    name: ClassVar[str] = "resume"

    def run(self, target: Target) -> Optional[str]:
        return target.resume(why=self.why or self.name)


@dataclass(frozen=True)
class Ignore(Command):
    """A signal with no meaning here: logged and otherwise ignored, so that habit cannot kill the server."""

    name: ClassVar[str] = "ignore"

    def run(self, target: Target) -> Optional[str]:
        return target.ignore(why=self.why)


# What each signal means to a running server (the README's table says the same).
SIGNAL_COMMANDS: dict[int, Command] = {
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


_JSON_NAMES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


def from_request(request: object, origin: str) -> Command:
    """A command from a decoded control request ({"command": "scale", "size": "+1"}), or ConfigError
    naming the key that is unknown or of the wrong type. Its why is origin and the command's name."""
    if not isinstance(request, dict):
        raise ConfigError(f"not a JSON request object: {_JSON_NAMES.get(type(request), 'something else')}")
    if "command" not in request:
        raise ConfigError(f'the request has no "command"; the commands are {", ".join(COMMANDS)}')
    name = request["command"]
    if not isinstance(name, str) or name not in COMMANDS:
        raise ConfigError(f"unknown command {json.dumps(name)}; the commands are {', '.join(COMMANDS)}")
    cls = COMMANDS[name]
    arguments = {key: value for key, value in request.items() if key != "command"}
    for key, value in arguments.items():
        if key not in cls.arguments:
            takes = ", ".join(json.dumps(k) for k in cls.arguments) or "no other key"
            raise ConfigError(f"{name}: unknown key {json.dumps(key)}; {name} takes {takes}")
        if type(value) not in cls.arguments[key].types:
            raise ConfigError(f"{name}: {json.dumps(key)} must be {cls.arguments[key].wanted}, "
                              f"got {json.dumps(value)[:100]}")
    return cls.from_arguments(arguments, why=f"{origin} {name}")


def help_lines() -> list[str]:
    """One line per command, from its docstring: for `prefork ctl --help`."""
    return [f"{name:<12} {cast(str, cls.__doc__).split(':', 1)[1].strip().splitlines()[0]}"    # every command has one
            for name, cls in COMMANDS.items()]


def for_signal(signum: int) -> Command:
    return SIGNAL_COMMANDS.get(signum) or Ignore(why=f"signal {signum}")
