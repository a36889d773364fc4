"""Runs in the `prefork` command's process: every setting of `prefork serve`, from flags, environment and file.

Each setting is declared once, as a field of supervision.Config or
of ServeOptions below (what to serve, and how the process runs). From that
one declaration come its flag, its key in a TOML file (the long flag's name
with _ for -: `workers`, `max_requests`, `timeout`, `bind` as a list), its
environment variable (PREFORK_ and the key in capitals: PREFORK_WORKERS),
its validation and its line in docs/settings.md.

Precedence: command line > environment > file > defaults. The file is
`-c/--config FILE`, else the [tool.prefork] table of ./pyproject.toml if it
has one. An unknown key or a bad value anywhere is a ConfigError naming where
it came from (`--workers`, `PREFORK_WORKERS`, `prefork.toml: workers`).
Unknown PREFORK_* variables are not errors (other programs use the prefix),
but one that looks like a misspelled setting gets a warning.
"""

import dataclasses
import difflib
import os
from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

from prefork.errors import ConfigError
from prefork.policies import MAX_THREADS, MAX_WORKERS, POLICIES_BY_NAME
from prefork.supervision import Config, at_least, check_fields, checked, kind_of, setting

try:
    import tomllib
except ImportError:                  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True)
class ServeOptions:
    """What `prefork serve` serves and how its process runs, beside Config."""

    handler: str = setting(
        "echo", None, "a socketserver request handler class as MODULE:CLASS, or a built-in one by name: "
        "echo, hello; with --wsgi, a WSGI app as MODULE:APP or MODULE:FACTORY()", metavar="MODULE:CLASS")
    wsgi: bool = setting(
        False, "--wsgi", "serve a WSGI app (PEP 3333), named as MODULE:APP or MODULE:FACTORY(), over HTTP/1.1; "
        "needs pip install 'prefork[wsgi]'")
    root_path: str = setting(
        "", "--root-path", "with --wsgi: the path the app is mounted at behind a proxy (SCRIPT_NAME), "
        "such as /api; stripped from the start of PATH_INFO", metavar="PATH")
    limit_request_line: int = setting(
        4094, "--limit-request-line", "with --wsgi: most bytes in a request's target (URL), else 414; 0: no limit",
        at_least(0, 65536), "N")
    limit_request_fields: int = setting(
        100, "--limit-request-fields", "with --wsgi: most header fields in a request, else 431",
        at_least(1, 32768), "N")
    limit_request_field_size: int = setting(
        8190, "--limit-request-field-size", "with --wsgi: most bytes in one header field, name and value, "
        "else 431; 0: no limit", at_least(0, 1 << 20), "N")
    bind: Tuple[str, ...] = setting(
        ("127.0.0.1:8000",), "--bind",
        "HOST:PORT, [IPV6]:PORT, tcp://HOST:PORT, udp://HOST:PORT, unix:PATH or unix-dgram:PATH; repeat "
        "for several (a list in a file, commas in PREFORK_BIND)", short="-b", metavar="ADDR", kind="list",
        restart=True)
    policy: str = setting(
        "prefork", "--policy", "prefork: a pool of workers; adaptive: a pool sized by its load (--min-workers, "
        "--max-workers, --min-spare, --max-spare, --scale-down-after); fork / thread: a process / thread per "
        "request; serial: one request at a time", choices=tuple(POLICIES_BY_NAME), restart=True)
    workers: Optional[int] = setting(
        None, "--workers", "worker processes, for --policy prefork (default: one per CPU)",
        at_least(1, MAX_WORKERS), "N", short="-w", kind="optional-int")
    threads: int = setting(
        1, "--threads", "accept threads in each worker, for --policy prefork and adaptive", at_least(1, MAX_THREADS),
        "N", restart=True)
    min_workers: int = setting(
        1, "--min-workers", "fewest worker processes, for --policy adaptive", at_least(1, MAX_WORKERS), "N",
        restart=True)
    max_workers: Optional[int] = setting(
        None, "--max-workers", "most worker processes, for --policy adaptive (default: 4 per CPU)",
        at_least(1, MAX_WORKERS), "N", kind="optional-int", restart=True)
    min_spare: int = setting(
        1, "--min-spare", "for --policy adaptive: fork more workers when fewer than N are idle (idle threads "
        "with --threads), or while connections wait in a TCP accept queue", at_least(0, MAX_WORKERS * MAX_THREADS),
        "N", restart=True)
    max_spare: Optional[int] = setting(
        None, "--max-spare", "for --policy adaptive: retire idle workers, one a second, once more than N have been "
        "idle for --scale-down-after (default: --min-spare + --threads)", at_least(0, MAX_WORKERS * MAX_THREADS),
        "N", kind="optional-int", restart=True)
    scale_down_after: float = setting(
        10.0, "--scale-down-after", "for --policy adaptive: seconds the pool must have had more than --max-spare "
        "idle workers before it retires one", at_least(0, None), "S", restart=True)
    backlog: int = setting(
        2048, "--backlog", "listen queue length of stream sockets", at_least(1, 65535), "N", restart=True)
    hooks: str = setting(
        "", "--hooks", "a module defining any of on_starting, pre_fork, post_fork, worker_ready, worker_exit, "
        "on_exit, pre_request, post_request; each is called with the server first", metavar="MODULE", restart=True)
    log_level: str = setting(
        "info", "--log-level", "level of the log messages", choices=LOG_LEVELS)
    log_file: str = setting(
        "", "--log-file", "append log messages to FILE instead of stderr; reopened on SIGUSR1 and "
        "`prefork ctl reopen-logs`", metavar="FILE", restart=True)
    control: str = setting(
        "", "--control", "a Unix socket for `prefork ctl` (mode 0600; only root and this user are served)",
        metavar="PATH", restart=True)
    proxy_protocol: str = setting(
        "", "--proxy-protocol", "the stream listeners whose connections start with a PROXY protocol header "
        "(v1 or v2: HAProxy's send-proxy, nginx's proxy_protocol): * for all of them (systemd's sockets "
        "too), or binds as given to -b, separated by commas; client_address is then the client the header names",
        metavar="BINDS", restart=True)
    proxy_allow: str = setting(
        "127.0.0.1,::1", "--proxy-allow", "the proxies allowed to send a PROXY header, as addresses and CIDR "
        "networks separated by commas, or *; a connection from any other peer is refused", metavar="CIDRS",
        restart=True)
    certfile: str = setting(
        "", "--certfile", "serve TLS with this PEM certificate (chain first, then intermediates; the key too, "
        "unless --keyfile); read by the master at start and at each reload, which rotates it", metavar="FILE")
    keyfile: str = setting(
        "", "--keyfile", "with --certfile: the PEM private key, when not in the certificate's file", metavar="FILE")
    keyfile_password_file: str = setting(
        "", "--keyfile-password-file", "with --certfile: a file whose first line is the encrypted key's "
        "password", metavar="FILE")
    ca_certs: str = setting(
        "", "--ca-certs", "with --cert-reqs optional or required: the PEM CA certificates that client "
        "certificates must chain to (mutual TLS)", metavar="FILE")
    cert_reqs: str = setting(
        "none", "--cert-reqs", "with --certfile: ask clients for a certificate: none, optional (checked if "
        "sent) or required", choices=("none", "optional", "required"))
    tls: str = setting(
        "*", "--tls", "with --certfile: the stream listeners that speak TLS: * for all of them (systemd's "
        "sockets too), or binds as given to -b, separated by commas", metavar="BINDS", restart=True)
    metrics: str = setting(
        "", "--metrics", "serve Prometheus metrics on /metrics, and /healthz and /readyz, from the master, on a TCP "
        "HOST:PORT or a Unix socket PATH (mode 0660; off by default)", metavar="ADDR", restart=True)
    pid: str = setting(
        "", "--pid", "write the master's pid to FILE (refused if it names a live master); removed at exit",
        metavar="FILE", restart=True)
    user: str = setting(
        "", "--user", "workers drop to this user (name or uid) once the sockets are bound; needs root",
        metavar="USER", restart=True)
    group: str = setting(
        "", "--group", "workers drop to this group (name or gid; default: the user's group)", metavar="GROUP",
        restart=True)
    umask: Optional[int] = setting(
        None, "--umask", "the master's umask, in octal, for the files it creates (default: unchanged)",
        metavar="MASK", kind="octal", restart=True)
    socket_mode: Optional[int] = setting(
        None, "--socket-mode", "mode of the Unix socket files bound with -b, in octal, such as 660 "
        "(default: from the umask)", metavar="MODE", kind="octal", restart=True)
    socket_owner: str = setting(
        "", "--socket-owner", "owner of the Unix socket files bound with -b, as USER or USER:GROUP",
        metavar="USER[:GROUP]", restart=True)

    def __post_init__(self):
        check_fields(self)


class Setting(NamedTuple):
    """One setting, as the CLI, the files and the environment know it."""

    name: str                 #: the field's name (Config's, for supervision settings)
    key: str                  #: in a file, and PREFORK_<KEY> in the environment
    field: dataclasses.Field
    owner: type               #: Config or ServeOptions

    @property
    def flag(self):
        return self.field.metadata["flag"]

    @property
    def env(self):
        return "PREFORK_" + self.key.upper()

    @property
    def kind(self):
        return kind_of(self.field)

    @property
    def restart(self):
        return self.field.metadata["restart"]


def _all_settings():
    found = []
    for owner in (ServeOptions, Config):
        for f in dataclasses.fields(owner):
            key = f.metadata["flag"].lstrip("-").replace("-", "_") if f.metadata["flag"] else f.name
            found.append(Setting(f.name, key, f, owner))
    return tuple(found)


SETTINGS = _all_settings()
BY_KEY = {s.key: s for s in SETTINGS}


# -- values from text (command line, environment) ----------------------------------------

TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_text(item, text):
    """A setting's value from text, checked; or ConfigError with the problem (unlabelled)."""
    kind, text = item.kind, text.strip()
    try:
        if kind == "bool":
            if text.lower() not in TRUE + FALSE:
                raise ValueError("must be true or false (1, yes, on / 0, no, off)")
            value = text.lower() in TRUE
        elif kind in ("int", "optional-int"):
            value = int(text)
        elif kind == "octal":
            value = int(text, 8)
        elif kind == "float":
            value = float(text)
        elif kind == "list":
            value = tuple(part.strip() for part in text.split(",") if part.strip())
        else:
            value = text
    except ValueError as exc:
        problem = str(exc) if kind == "bool" else {
            "int": "must be a whole number", "optional-int": "must be a whole number",
            "octal": "must be an octal number such as 022", "float": "must be a number"}[kind]
        raise ConfigError.about(item.name, problem, text) from None
    return check_value(item, value)


def check_value(item, value):
    """value checked against the setting's kind, check and choices (supervision.checked); ConfigError
    (unlabelled) if wrong."""
    return checked(item.field, value, item.name)


# -- the layers ----------------------------------------------------------------------------

class Resolved(NamedTuple):
    """Every setting's value and where it came from."""

    values: dict              #: name -> value
    sources: dict             #: name -> "default", "file PATH", "environment PREFORK_X", "command line"
    file: Optional[str]       #: the config file that was read, if any

    def config(self):
        return Config(**{s.name: self.values[s.name] for s in SETTINGS if s.owner is Config})

    def label(self, name):
        """How the user set a setting, for messages: --workers, PREFORK_WORKERS, FILE: workers."""
        item = next(s for s in SETTINGS if s.name == name)
        source = self.sources[name]
        if source.startswith("environment"):
            return item.env
        if source.startswith("file"):
            return f"{self.file}: {item.key}"
        return item.flag or item.key

    def options(self):
        return ServeOptions(**{s.name: self.values[s.name] for s in SETTINGS if s.owner is ServeOptions})


def resolve(command_line, environ=None, config_file=None, cwd=None):
    """Layer defaults, the file, the environment and command_line (name -> value given on it)."""
    environ = os.environ if environ is None else environ
    values = {s.name: s.field.default for s in SETTINGS}
    sources = dict.fromkeys(values, "default")
    path, table = read_file(config_file, cwd or os.getcwd())
    for key, raw in table.items():
        item = BY_KEY.get(key)
        if item is None:
            close = difflib.get_close_matches(key, BY_KEY, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{path}: unknown setting {key!r}{hint}")
        values[item.name] = _labelled(lambda: check_value(item, raw), f"{path}: {key}")
        sources[item.name] = f"file {path}"
    for item in SETTINGS:
        if item.env in environ:
            values[item.name] = _labelled(lambda: parse_text(item, environ[item.env]), item.env)
            sources[item.name] = f"environment {item.env}"
    for name, value in command_line.items():
        values[name] = value
        sources[name] = "command line"
    return Resolved(values, sources, path)


# Read by the parts of prefork that are not settings: an upgrade's inherited descriptors.
_OTHER_VARIABLES = {"PREFORK_FDS", "PREFORK_SYSTEMD_FDS", "PREFORK_CONTROL_FD", "PREFORK_UPGRADE_FD",
                    "PREFORK_PREDECESSOR"}


def misspelled_variables(environ=None):
    """Warnings for PREFORK_* variables that are no setting but look like one (PREFORK_WROKERS)."""
    environ = os.environ if environ is None else environ
    known = {item.env for item in SETTINGS} | _OTHER_VARIABLES
    warnings = []
    for name in sorted(environ):
        if name.startswith("PREFORK_") and name not in known:
            close = difflib.get_close_matches(name, known - _OTHER_VARIABLES, n=1, cutoff=0.8)
            if close:
                warnings.append(f"{name} is not a setting (did you mean {close[0]}?); ignored")
    return warnings


def read_file(config_file, cwd):
    """(path, table) of the config file: -c FILE, else [tool.prefork] in ./pyproject.toml, else (None, {})."""
    if config_file:
        data = _load_toml(config_file)
        if not _is_pyproject(config_file):
            return config_file, data
        table = data.get("tool", {}).get("prefork")
        if not isinstance(table, dict):
            raise ConfigError(f"{config_file} has no [tool.prefork] table")
        return f"{config_file} [tool.prefork]", table
    pyproject = os.path.join(cwd, "pyproject.toml")
    if os.path.isfile(pyproject):
        table = _load_toml(pyproject).get("tool", {}).get("prefork")
        if isinstance(table, dict):
            return "pyproject.toml [tool.prefork]", table
    return None, {}


def _is_pyproject(path):
    return os.path.basename(path) == "pyproject.toml"


def _load_toml(path):
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _labelled(get, label):
    try:
        return get()
    except ConfigError as exc:
        raise exc.named(label) from None


# -- showing them ----------------------------------------------------------------------------

def show_value(value, kind=None):
    if kind == "octal" and value is not None:
        return f"{value:04o}"
    if isinstance(value, tuple):
        return ", ".join(value)
    if value is None:
        return "(auto)"
    if value == "":
        return '""'
    return str(value)


def effective_table(resolved):
    """The lines `prefork check-config` prints: each setting, its value and where it came from."""
    rows = [(s.key, show_value(resolved.values[s.name], s.kind), resolved.sources[s.name]) for s in SETTINGS]
    widths = [max(len(row[i]) for row in rows + [("setting", "value", "from")]) for i in range(2)]
    lines = [f"{'setting':<{widths[0]}}  {'value':<{widths[1]}}  from"]
    lines += [f"{key:<{widths[0]}}  {value:<{widths[1]}}  {source}" for key, value, source in rows]
    return "\n".join(lines) + "\n"


def settings_markdown():
    """docs/settings.md, made from the declarations."""
    lines = [
        "# Settings",
        "",
        "Generated by `prefork settings` from the declarations in `prefork/supervision.py` and",
        "`prefork/serve/settings.py`; a test keeps it in step. Every setting of `prefork serve` can be given",
        "on the command line, as an environment variable, or as a key in a TOML file (`-c FILE`, or the",
        "`[tool.prefork]` table of `./pyproject.toml`). Precedence: command line > environment > file >",
        "default. `prefork check-config` prints the effective settings and where each came from.",
        "Supervision settings are also fields of `prefork.Config` in the Python API (the last column).",
        "Settings marked *restart* are not changed by a reload (SIGHUP): they need a new master.",
        "",
        "| flag | file key | environment | default | meaning | `Config` field |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for item in SETTINGS:
        meta = item.field.metadata
        flag = "/".join(filter(None, (meta["short"], meta["flag"]))) or "MODULE:CLASS (argument)"
        if item.kind == "bool":
            flag += f"`, `--no-{meta['flag'][2:]}"
        flag += f" {meta['metavar']}" if meta["metavar"] and meta["flag"] else ""
        default = item.field.default
        shown = "one per CPU" if default is None and item.name == "workers" else show_value(default, item.kind)
        meaning = meta["help"] + (" *(restart)*" if item.restart else "")
        api = f"`{item.name}`" if item.owner is Config else ""
        lines.append(f"| `{flag}` | `{item.key}` | `{item.env}` | `{shown}` | {meaning} | {api} |")
    return "\n".join(lines) + "\n"
