"""The master's and workers' settings: one frozen dataclass, one field table.

Each field carries its CLI flag, help text and check in its metadata, so the
same table drives validation (``Config(...)`` raises ConfigError), the
``prefork serve`` flags and docs/settings.md (``python -m prefork.config``
prints it; a test keeps the file in step).

Settings that choose *what* to serve (binds, handler, policy, workers,
threads) are not here: they belong to the server objects and the policy.
"""

import dataclasses
import math
from dataclasses import dataclass, field

from .errors import ConfigError


def setting(default, flag, help, check=None, metavar=None, short=None):
    """Declare one setting: its default, its ``prefork serve`` flag(s), its help and its check."""
    return field(default=default, metadata={"flag": flag, "short": short, "help": help, "check": check,
                                            "metavar": metavar})


def range_problem(value, low, most=None):
    """Why value is outside low..most, or None. The one range check of the API, the CLI and policies."""
    if value < low or (most is not None and value > most):
        return f"must be at least {low}" if most is None else f"must be between {low} and {most}"
    return None


def whole_number_problem(value, low, most=None):
    """Why value is not a whole number in low..most, or None."""
    if isinstance(value, bool) or not isinstance(value, int):
        return "must be a whole number"
    return range_problem(value, low, most)


def at_least(low, most=None):
    return lambda value: range_problem(value, low, most)


def above(low):
    def check(value):
        return None if value > low else f"must be greater than {low}"
    return check


@dataclass(frozen=True)
class Config:
    """Supervision settings of a prefork pool.

    Give one to a server as ``config=Config(...)`` or as the class attribute
    ``config``; ``prefork serve`` builds one from its flags. Times are in
    seconds, 0 turns a limit off where the help says so.
    """

    name: str = setting(
        "", "--name", "name shown in process titles and log lines (default: the handler's name)",
        metavar="NAME", short="-n")
    graceful_timeout: float = setting(
        30.0, "--graceful-timeout",
        "on a graceful stop, seconds workers get to finish the request in hand before SIGKILL",
        at_least(0), "S")
    worker_timeout: float = setting(
        30.0, "--timeout",
        "kill and replace a worker silent for this long (stuck handler, deadlock, SIGSTOP); 0 disables",
        at_least(0), "S")
    boot_timeout: float = setting(
        30.0, "--boot-timeout", "kill a worker that is not ready this long after fork; 0 disables",
        at_least(0), "S")
    max_requests: int = setting(
        0, "--max-requests", "retire a worker after this many requests; 0 disables", at_least(0), "N")
    max_requests_jitter: int = setting(
        0, "--max-requests-jitter", "add a random 0..J to each worker's --max-requests", at_least(0), "J")
    max_worker_memory: float = setting(
        0.0, "--max-worker-memory",
        "retire a worker whose unique memory (USS) exceeds this many MB; 0 disables", at_least(0), "MB")
    spare_workers: int = setting(
        0, "--spare-workers",
        "keep N more workers booted but not accepting; one takes over at once when a worker dies "
        "or retires, so no fork and boot stands between them", at_least(0, 1024), "N")
    min_worker_lifetime: float = setting(
        10.0, "--min-worker-lifetime",
        "never retire a worker for memory before it has lived this long (prevents retire storms)",
        at_least(0), "S")
    max_boot_failures: int = setting(
        5, "--max-boot-failures",
        "stop the master after this many consecutive boot failures if no worker was ever ready",
        at_least(1), "N")
    client_timeout: float = setting(
        10.0, "--client-timeout",
        "close a client connection whose next read or write waits this long (a quiet or stalled client); "
        "below --timeout, so a quiet client is dropped before its worker is taken for hung; 0 disables",
        at_least(0), "S")
    defer_accept: bool = setting(
        True, "--defer-accept",
        "TCP: leave a connection that has sent nothing in the kernel (TCP_DEFER_ACCEPT) for the client "
        "timeout, and never hand it to a worker if it stays silent; turn off (--no-defer-accept) for "
        "protocols where the server speaks first")
    monitor_interval: float = setting(
        1.0, "--monitor-interval",
        "seconds between psutil samples (memory, CPU) of every worker that served since its last one; "
        "an idle worker is sampled every 30 s",
        above(0), "S")
    preload: bool = setting(
        False, "--preload",
        "import the handler in the master before forking and gc.freeze() it, so workers share it")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            problem = _type_problem(f.type, value)
            if problem is None and f.metadata["check"] is not None:
                problem = f.metadata["check"](value)
            if problem:
                raise ConfigError.about(f.name, problem, value)

    def replace(self, **changes):
        """A copy with some settings changed (validated like the original)."""
        return dataclasses.replace(self, **changes)


def _type_problem(type_name, value):
    """Why value does not fit the field's declared type, or None."""
    type_name = getattr(type_name, "__name__", type_name)
    if type_name == "bool":
        return None if isinstance(value, bool) else "must be true or false"
    if isinstance(value, bool):
        return "must be a number"
    if type_name == "int":
        return None if isinstance(value, int) else "must be a whole number"
    if type_name == "float":
        if not isinstance(value, (int, float)):
            return "must be a number"
        return None if math.isfinite(value) else "must be a finite number"
    return None if isinstance(value, str) else "must be text"


def settings_markdown():
    """The settings table of docs/settings.md, made from the field table."""
    lines = [
        "# Settings",
        "",
        "Generated by `prefork settings` from `prefork/config.py`; a test keeps it in step.",
        "Each is a field of `prefork.Config` (Python API) and a flag of `prefork serve` (CLI).",
        "",
        "| `Config` field | `prefork serve` flag | default | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for f in dataclasses.fields(Config):
        flag = "/".join(filter(None, (f.metadata["short"], f.metadata["flag"])))
        flag += f" {f.metadata['metavar']}" if f.metadata["metavar"] else ""
        default = repr(f.default) if f.default != "" else '`""`'
        lines.append(f"| `{f.name}` | `{flag}` | {default} | {f.metadata['help']} |")
    return "\n".join(lines) + "\n"
