"""Runs in the serving process: Config, the pool's supervision settings, declared once in a field table.

Each field is declared once with setting(): its default, its `prefork serve`
flag, its help, its check and its kind. That one declaration drives
validation (``Config(...)`` raises ConfigError naming the field), the CLI
flag, the config-file key and PREFORK_* environment variable (settings.py),
and docs/settings.md (`prefork settings` prints it; a test keeps it in step).

Settings that choose *what* to serve (handler, binds, policy, workers,
threads) live in settings.ServeOptions, declared the same way: they belong
to the CLI, while an API user gives them to the server objects and the policy.
"""

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, TypeVar, cast

from prefork.errors import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_T = TypeVar("_T")


def setting(default: _T, flag: str, help: str, check: Optional[Callable[[Any], Optional[str]]] = None,
            metavar: Optional[str] = None, short: Optional[str] = None, kind: Optional[str] = None,
            choices: Optional[Sequence[str]] = None, restart: bool = False) -> _T:
    """Declare one setting.

    kind is how its values are checked and parsed from text (str, int, float,
    bool, list, octal, optional-int); by default the field's type. restart:
    changing it needs a new master (a reload cannot apply it).
    """
    # A Field, typed as its default (as dataclasses.field() is), so that `name: str = setting("", ...)` checks.
    return field(default=default, metadata={"flag": flag, "short": short, "help": help, "check": check,
                                            "metavar": metavar, "kind": kind, "choices": choices,
                                            "restart": restart})


def range_problem(value: float, low: float, most: Optional[float] = None) -> Optional[str]:
    """Why value is outside low..most, or None. The one range check of the API, the CLI and policies."""
    if value < low or (most is not None and value > most):
        return f"must be at least {low}" if most is None else f"must be between {low} and {most}"
    return None


def whole_number_problem(value: object, low: int, most: Optional[int] = None) -> Optional[str]:
    """Why value is not a whole number in low..most, or None."""
    if isinstance(value, bool) or not isinstance(value, int):
        return "must be a whole number"
    return range_problem(value, low, most)


def at_least(low: float, most: Optional[float] = None) -> Callable[[float], Optional[str]]:
    return lambda value: range_problem(value, low, most)


def above(low: float) -> Callable[[float], Optional[str]]:
    def check(value: float) -> Optional[str]:
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
        metavar="NAME", short="-n", restart=True)
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
    max_worker_age: float = setting(
        0.0, "--max-worker-age",
        "replace a worker once it has lived this many seconds, its successor first (uWSGI's "
        "max-worker-lifetime); 0 disables", at_least(0), "S")
    max_worker_age_jitter: float = setting(
        0.0, "--max-worker-age-jitter",
        "add a random 0..J seconds to each worker's --max-worker-age, so that workers started together "
        "are not replaced together", at_least(0), "J")
    max_worker_memory: float = setting(
        0.0, "--max-worker-memory",
        "retire a worker whose unique memory (USS) exceeds this many MB; 0 disables", at_least(0), "MB")
    spare_workers: int = setting(
        0, "--spare-workers",
        "keep N more workers booted but not accepting; one takes over at once when a worker dies "
        "or retires, so no fork and boot stands between them", at_least(0, 1024), "N", restart=True)
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
        at_least(0), "S", restart=True)
    keepalive_timeout: float = setting(
        75.0, "--keepalive-timeout",
        "parking handlers: close a connection parked with no request for this long. 75 s, nginx's default, "
        "outlasts the 60 s idle timeout of common load balancers, so that they, not we, close an idle "
        "connection (a request crossing our close would fail); 0 never closes one",
        at_least(0), "S")
    max_connections: int = setting(
        1000, "--max-connections",
        "parking handlers: connections one worker holds at most (parked or in service), split among its "
        "threads; at the cap it accepts no more and new ones wait for other workers. The open-file limit "
        "is raised to fit where allowed",
        at_least(1), "N")
    defer_accept: bool = setting(
        False, "--defer-accept",
        "TCP: leave a connection that has sent nothing in the kernel (TCP_DEFER_ACCEPT) for the client "
        "timeout, and never hand it to a worker if it stays silent. Off by default: it breaks protocols where "
        "the server speaks first (SMTP, FTP, a banner), whose clients then wait about 16 s and get nothing",
        restart=True)
    access_log: str = setting(
        "", "--access-log", "write a line per request to FILE, or to stdout with -; written by the workers, "
        "reopened on SIGUSR1 (off by default)", metavar="FILE", restart=True)
    access_log_format: str = setting(
        "text", "--access-log-format", "text: one line a person reads; json: one JSON object per line",
        choices=("text", "json"), restart=True)
    monitor_interval: float = setting(
        1.0, "--monitor-interval",
        "seconds between psutil samples (memory, CPU) of every worker that served since its last one; "
        "an idle worker is sampled every 30 s",
        above(0), "S")
    preload: bool = setting(
        False, "--preload",
        "import the handler once, in a zygote process the master forks, and fork workers from it: they "
        "share its memory (gc.freeze()), the master runs none of the handler's code, and SIGHUP loads new "
        "code in a new zygote",
        restart=True)

    def __post_init__(self) -> None:
        check_fields(self)

    def replace(self, **changes: Any) -> "Config":
        """A copy with some settings changed (validated like the original)."""
        return dataclasses.replace(self, **changes)


def kind_of(f: dataclasses.Field[Any]) -> str:
    """A field's kind: declared, or from its type."""
    return cast(str, f.metadata.get("kind") or getattr(f.type, "__name__", f.type))   # mypy: "Any | None"


def check_fields(instance: "DataclassInstance") -> None:
    """Validate every field of a settings dataclass; normalize ints given for floats, lists to tuples,
    choices to their declared spelling."""
    for f in dataclasses.fields(instance):
        object.__setattr__(instance, f.name, checked(f, getattr(instance, f.name)))


def checked(f: dataclasses.Field[Any], value: object, name: Optional[str] = None) -> Any:
    """value, normalized, if it fits the field (kind, check, choices); else ConfigError naming it.

    The one check of a setting, whether it comes from the API, the command
    line, the environment or a file. A choice matches in any case
    (``--log-level DEBUG``) and becomes the declared spelling.
    """
    problem, normalized = value_problem(f, value)
    if problem is None and f.metadata["check"] is not None and normalized is not None:
        problem = f.metadata["check"](normalized)
    if problem is None and f.metadata["choices"]:
        normalized = next((choice for choice in f.metadata["choices"] if choice.lower() == normalized.lower()), None)
        if normalized is None:
            problem = f"must be one of {', '.join(f.metadata['choices'])}"
    if problem:
        raise ConfigError.about(name or f.name, problem, value)
    return normalized


def value_problem(f: dataclasses.Field[Any], value: object) -> tuple[Optional[str], Any]:
    """(why value does not fit the field's kind or None, the value normalized)."""
    kind = kind_of(f)
    if kind == "bool":
        return (None if isinstance(value, bool) else "must be true or false"), value
    if kind == "str":
        return (None if isinstance(value, str) else "must be text"), value
    if kind == "list":
        if isinstance(value, str):
            value = (value,)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            return "must be a list of text", value
        return (None if value else "must not be empty"), tuple(value)
    if value is None and kind in ("octal", "optional-int"):
        return None, value
    if isinstance(value, bool):
        return "must be a number", value
    if kind in ("int", "octal", "optional-int"):
        if not isinstance(value, int):
            return "must be a whole number", value
        return (range_problem(value, 0, 0o7777) if kind == "octal" else None), value
    if not isinstance(value, (int, float)):
        return "must be a number", value
    return (None if math.isfinite(value) else "must be a finite number"), float(value)
