"""The `prefork` command: `prefork serve [MODULE:CLASS] [-b ADDR ...] [-w N] ...`.

Bad input never shows a traceback: every problem becomes one line on stderr,
``prefork: error: ...``, and an exit status from errors.Exit (2 for what the
user typed, 1 for what the machine refused, 3 when no worker could boot).
"""

import argparse
import dataclasses
import functools
import logging
import os
import signal
import sys

from . import __version__, loader, tune
from .config import Config, settings_markdown
from .errors import AppLoadError, BindError, ConfigError, Exit, HaltServer
from .listeners import parse_bind, open_listener
from .policies import MAX_THREADS, MAX_WORKERS, POLICIES_BY_NAME, Prefork, cpu_count
from .servers import TCPServer, UDPServer, UnixDatagramServer, UnixStreamServer, serve_together

DEFAULT_HANDLER = "workers.echo:EchoHandler"
DEFAULT_BIND = "127.0.0.1:8000"
HOOK_NAMES = ("on_starting", "pre_fork", "post_fork", "worker_ready", "worker_exit", "on_exit")
SERVER_CLASSES = {"tcp": TCPServer, "udp": UDPServer, "unix": UnixStreamServer, "unix-dgram": UnixDatagramServer}
LOG_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, not a usage block."""

    def error(self, message):
        self.exit(Exit.USAGE, f"prefork: error: {message} (see '{self.prog} --help')\n")


def whole_number(low, most):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= most:
            raise argparse.ArgumentTypeError(f"must be between {low} and {most}, got {value}")
        return value
    return parse


def build_parser():
    parser = _Parser(prog="prefork", description="A prefork server framework for Python.")
    parser.add_argument("--version", action="version", version=f"prefork {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    serve = commands.add_parser(
        "serve", help="serve a request handler class on one or more addresses",
        description="Bind every address once, then serve HANDLER with a pool of worker processes.")
    serve.add_argument("handler", nargs="?", default=DEFAULT_HANDLER, metavar="MODULE:CLASS",
                       help=f"a socketserver request handler class (default: {DEFAULT_HANDLER})")
    serve.add_argument("-b", "--bind", action="append", metavar="ADDR",
                       help=f"HOST:PORT, [IPV6]:PORT, tcp://HOST:PORT, udp://HOST:PORT, unix:PATH or "
                            f"unix-dgram:PATH; repeat for several (default: {DEFAULT_BIND})")
    serve.add_argument("--policy", choices=list(POLICIES_BY_NAME), default="prefork",
                       help="prefork: a pool of workers (default); fork / thread: one process / thread "
                            "per request; serial: one request at a time")
    serve.add_argument("-w", "--workers", type=whole_number(1, MAX_WORKERS), metavar="N",
                       help="worker processes, for --policy prefork (default: one per CPU)")
    serve.add_argument("--threads", type=whole_number(1, MAX_THREADS), metavar="N",
                       help="accept threads in each worker, for --policy prefork (default: 1)")
    serve.add_argument("--backlog", type=whole_number(1, 65535), default=2048, metavar="N",
                       help="listen queue length of stream sockets (default: 2048)")
    serve.add_argument("--hooks", metavar="MODULE",
                       help="a module defining any of " + ", ".join(HOOK_NAMES) +
                            "; each is called with the server first")
    serve.add_argument("--log-level", default="info", type=str.lower,
                       choices=["debug", "info", "warning", "error", "critical"],
                       help="log level of the messages on stderr (default: info)")
    for f in dataclasses.fields(Config):
        flags = [flag for flag in (f.metadata["short"], f.metadata["flag"]) if flag]
        shown = "" if "(default:" in f.metadata["help"] else f" (default: {f.default})"
        options = {"dest": f.name, "default": f.default, "help": f.metadata["help"] + shown}
        if f.type in (bool, "bool"):
            options.update(action="store_true")
        else:
            options.update(type=f.type, metavar=f.metadata["metavar"])
        serve.add_argument(*flags, **options)
    serve.set_defaults(run=run_serve)
    settings = commands.add_parser("settings", help="print the table of settings (docs/settings.md)")
    settings.set_defaults(run=lambda args: print(settings_markdown(), end="") or Exit.OK)
    parser.commands = {"serve": serve, "settings": settings}
    parser.commands["tune"] = tune.add_parser(commands)
    return parser


def main(argv=None):
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:          # reported by the subcommand, so that the hint names its --help
        parser.commands.get(args.command, parser).error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        build_parser().print_help(sys.stderr)
        return Exit.USAGE
    return args.run(args)


def run_serve(args):
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S %z",
                        stream=sys.stderr)
    if os.getcwd() not in sys.path:        # like gunicorn: serve modules from where you stand
        sys.path.insert(0, os.getcwd())
    try:
        config, policy = _settings(args)
        binds = [parse_bind(text) for text in args.bind or [DEFAULT_BIND]]
        handler, load_handler = _handler(args, policy, config)
        hooks = loader.load_module(args.hooks, "hooks module") if args.hooks else None
    except (ConfigError, AppLoadError, BindError) as exc:
        return _fail(exc, Exit.USAGE)
    servers = []
    try:
        for bind in binds:
            sock = open_listener(bind, args.backlog)
            servers.append(SERVER_CLASSES[bind.kind].from_socket(sock, handler, policy=policy, config=config))
    except BindError as exc:
        _close(servers)
        return _fail(exc, Exit.ERROR)
    if hooks is not None:
        for name in HOOK_NAMES:
            if hasattr(hooks, name):
                setattr(servers[0], name, functools.partial(getattr(hooks, name), servers[0]))
    try:
        if not policy.pooled:
            _stop_on_sigterm()
        serve_together(servers, load_handler=load_handler)
    except HaltServer as exc:
        return _fail(exc, exc.exit_code)
    except KeyboardInterrupt:
        pass
    finally:
        _close(servers)
    return Exit.OK


def _settings(args):
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)}
    config = Config(**dict(values, name=values["name"] or args.handler))
    if args.policy != "prefork":
        for flag, value in (("--workers", args.workers), ("--threads", args.threads)):
            if value is not None:
                raise ConfigError(f"{flag} applies to --policy prefork only, not --policy {args.policy}")
        return config, POLICIES_BY_NAME[args.policy]()
    return config, Prefork(workers=args.workers or cpu_count(), threads=args.threads or 1)


def _handler(args, policy, config):
    """The handler class to build servers with, and the loader workers run (None if preloaded)."""
    spec = args.handler
    loader.split_spec(spec)
    if config.preload or not policy.pooled:
        return loader.load_handler(spec), None
    loader.check_findable(spec)
    return None, functools.partial(loader.load_handler, spec)


def _fail(exc, code):
    print(f"prefork: error: {exc}", file=sys.stderr)
    return code


def _close(servers):
    for server in servers:
        server.server_close()


def _stop_on_sigterm():
    def stop(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
