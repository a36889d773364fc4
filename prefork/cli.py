"""Runs in the `prefork` command's process: `prefork serve`, `check-config`, `settings`, `ctl` and `tune`.

Bad input never shows a traceback: every problem becomes one line on stderr,
``prefork: error: ...``, and an exit status from errors.Exit (2 for what the
user typed or configured, 1 for what the machine refused, 3 when no worker
could boot).

Every flag of `serve` and `check-config` comes from the settings table
(settings.py), with no default of its own: what was not typed is looked up in
the environment, then the config file, then the declared default.
"""

import argparse
import os
import sys

from prefork import __version__
from prefork.errors import ConfigError, Exit, PreforkError, report
from prefork.serve import control_client
from prefork.serve.launch import run_serve, validate
from prefork.serve.settings import (
    SETTINGS, effective_table, misspelled_variables, parse_text, resolve, settings_markdown,
)
from prefork.tune import tuner


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, not a usage block."""

    def error(self, message):
        self.exit(Exit.USAGE, f"prefork: error: {message} (see '{self.prog} --help')\n")


def build_parser():
    parser = _Parser(prog="prefork", description="A prefork server framework for Python.")
    parser.add_argument("--version", action="version", version=f"prefork {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    serve = commands.add_parser(
        "serve", help="serve a request handler class on one or more addresses",
        description="Bind every address once, then serve HANDLER with a pool of worker processes. "
                    "Every setting can also come from PREFORK_* environment variables or a config file "
                    "(see docs/settings.md).")
    add_setting_arguments(serve)
    serve.set_defaults(run=_serve)
    check = commands.add_parser(
        "check-config", help="validate the settings and show each one and where it came from",
        description="Resolve the settings as `prefork serve` would (command line > environment > config "
                    "file > defaults), check them, and print them with their sources.")
    add_setting_arguments(check)
    check.set_defaults(run=_check_config)
    settings = commands.add_parser("settings", help="print the table of settings (docs/settings.md)")
    settings.set_defaults(run=lambda args: print(settings_markdown(), end="") or Exit.OK)
    parser.commands = {"serve": serve, "check-config": check, "settings": settings,
                       "ctl": control_client.add_parser(commands), "tune": tuner.add_parser(commands)}
    return parser


def add_setting_arguments(parser):
    """One argument per setting; absent ones stay absent (the other layers decide)."""
    parser.add_argument("-c", "--config", metavar="FILE", default=None,
                        help="a TOML file of settings (default: the [tool.prefork] table of ./pyproject.toml)")
    for item in SETTINGS:
        meta, default = item.field.metadata, item.field.default
        shown = "one per CPU" if item.name == "workers" else ", ".join(default) if item.kind == "list" else default
        help_text = meta["help"] + ("" if "(default:" in meta["help"] else f" (default: {shown})")
        if item.flag is None:                       # the handler, positional
            parser.add_argument(item.name, nargs="?", metavar=meta["metavar"], default=argparse.SUPPRESS,
                                help=help_text)
            continue
        options = {"dest": item.name, "default": argparse.SUPPRESS, "help": help_text}
        if item.kind == "bool":         # --X and --no-X: the command line overrides the other layers both ways
            options["action"] = argparse.BooleanOptionalAction
        elif item.kind == "list":
            options.update(action="append", metavar=meta["metavar"])
        else:
            options.update(type=_argument_type(item), metavar=meta["metavar"])
            if meta["choices"]:
                options["choices"] = meta["choices"]
        parser.add_argument(*filter(None, (meta["short"], item.flag)), **options)


def _argument_type(item):
    def parse(text):
        try:
            return parse_text(item, text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(f"{exc.problem}, got {exc.value!r}") from None
    parse.__name__ = item.kind          # argparse names the type in some messages
    return parse


def main(argv=None):
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:          # reported by the subcommand, so that the hint names its --help
        parser.commands.get(args.command, parser).error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        build_parser().print_help(sys.stderr)
        return Exit.USAGE
    try:
        return args.run(args)
    except BrokenPipeError:                 # `prefork ctl status | head -2`: the reader left, not our fault
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return Exit.OK


def _command_line(args):
    """The settings typed on the command line: name -> value."""
    names = {item.name for item in SETTINGS}
    return {name: tuple(value) if isinstance(value, list) else value
            for name, value in vars(args).items() if name in names}


def _resolved(args):
    return resolve(_command_line(args), config_file=args.config)


def _warn_about_variables():
    for warning in misspelled_variables():
        print(f"prefork: warning: {warning}", file=sys.stderr)


def _serve(args):
    _warn_about_variables()
    try:
        resolved = _resolved(args)
    except ConfigError as exc:
        return report(exc, Exit.USAGE)
    return run_serve(resolved, lambda: _resolved(args))


def _check_config(args):
    _warn_about_variables()
    try:
        resolved = _resolved(args)
        validate(resolved)
    except PreforkError as exc:
        return report(exc, Exit.USAGE)
    print(effective_table(resolved), end="")
    return Exit.OK
