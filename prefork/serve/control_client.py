"""Runs in the `prefork ctl` process: one request to a running master's control socket.

    prefork ctl --control /run/app.ctl status [--json]     # or: prefork ctl status --control /run/app.ctl
    prefork ctl scale 8 | scale +1 | scale -1
    prefork ctl reload [--no-wait] [--timeout S] | stop [--quick] | reopen-logs | upgrade

The socket comes from --control or PREFORK_CONTROL. Each invocation sends one
JSON request and prints the reply: a table (or JSON) for status, one line
for the rest. `reload` then waits for the outcome (the master's status says
it), so that a reload whose new code fails to load exits non-zero. Nobody
listening, a refused peer, an error from the master or a failed reload is
one line on stderr and exit status 1.
"""

import argparse
import json
import os
import socket
import time

from prefork import commands
from prefork.arguments import positive_number
from prefork.errors import Exit, report

TIMEOUT = 10.0
RELOAD_TIMEOUT = 60.0      # seconds `ctl reload` waits for the outcome by default
RELOAD_POLL = 0.1


def add_parser(subparsers):
    ctl = subparsers.add_parser(
        "ctl", help="control a running master through its control socket (prefork serve --control PATH)",
        description="Send one command to a running master. Commands:\n  " + "\n  ".join(commands.help_lines()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ctl.add_argument("--control", metavar="PATH", default=os.environ.get("PREFORK_CONTROL", ""),
                     help="the master's control socket, here or after COMMAND (default: $PREFORK_CONTROL)")
    # --control after the command too (`prefork ctl status --control PATH`); absent there, it leaves the
    # value given before the command, or $PREFORK_CONTROL, alone.
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument("--control", metavar="PATH", default=argparse.SUPPRESS,
                       help="the master's control socket (default: $PREFORK_CONTROL)")
    actions = ctl.add_subparsers(dest="action", metavar="COMMAND", parser_class=type(ctl))
    actions.required = True

    def action(name, help):
        return actions.add_parser(name, help=help, parents=[after])

    status = action("status", "the master and each worker, as a table; exit status 0 when the pool is ready, "
                              "4 when the master answers but is not ready, 1 when no master answers")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    scale = action("scale", "set the number of workers: N, +N or -N")
    scale.add_argument("size", metavar="N|+N|-N")
    reload = action("reload", "replace every worker, one at a time (re-reading the config file); wait for "
                              "the outcome and exit 1 if the new code or a new worker fails")
    reload.add_argument("--no-wait", action="store_true", help="return once the master has begun the reload")
    reload.add_argument("--timeout", type=positive_number, default=RELOAD_TIMEOUT, metavar="S",
                        help=f"seconds to wait for the outcome (default: {RELOAD_TIMEOUT:g})")
    stop = action("stop", "stop gracefully")
    stop.add_argument("--quick", action="store_true", help="stop at once, abandoning requests in hand")
    action("reopen-logs", "reopen the log file in the master and every worker")
    action("upgrade", "start a new master on the same sockets (like SIGUSR2)")
    ctl.set_defaults(run=run_ctl)
    return ctl


class CtlError(Exception):
    """A problem to report in one line, exit status 1."""


def run_ctl(args):
    if not args.control:
        return report("no control socket: give --control PATH or set PREFORK_CONTROL", Exit.USAGE)
    request = {"command": args.action}
    if args.action == "scale":
        request["size"] = args.size
    if args.action == "stop":
        request["quick"] = args.quick
    try:
        before = ask(args.control, {"command": "status"}) if args.action == "reload" and not args.no_wait else None
        result = ask(args.control, request)
        if before is not None:
            print(result)
            result = wait_for_reload(args.control, _reload_number(before), args.timeout)
    except CtlError as exc:
        return report(exc, Exit.ERROR)
    if args.action == "status":
        print(json.dumps(result, indent=2) if args.json else status_table(result))
        if result["master"].get("ready") is False:       # alive but not ready: /readyz's 503
            return Exit.NOT_READY
    else:
        print(result)
    return Exit.OK


def ask(path, request):
    """The result of one request, or CtlError saying why there is none."""
    try:
        reply = send(path, request)
    except FileNotFoundError:
        raise CtlError(f"no master is listening on {path} (no such socket)") from None
    except ConnectionRefusedError:
        raise CtlError(f"no master is listening on {path} (connection refused)") from None
    except PermissionError:
        raise CtlError(f"permission denied on {path}: run as root or as the master's user") from None
    except (OSError, ValueError) as exc:
        raise CtlError(f"the master at {path} did not answer: {exc}") from None
    if not reply.get("ok"):
        raise CtlError(reply.get("error", "the master refused the command"))
    return reply.get("result")


def wait_for_reload(path, number_before, timeout):
    """Poll the status until the reload after number_before is done (a line) or failed (CtlError)."""
    deadline = time.monotonic() + timeout
    while True:
        reload = ask(path, {"command": "status"})["master"].get("reload") or {}
        if reload.get("number", 0) > number_before:
            if reload["state"] == "done":
                return f"reloaded: every worker runs generation {reload['generation']}"
            if reload["state"] == "failed":
                raise CtlError(f"reload failed, the old workers keep serving: {reload['error']}")
        if time.monotonic() > deadline:
            raise CtlError(f"the reload did not finish within {timeout:g} s (state: {reload.get('state', '?')}); "
                           f"`prefork ctl status` shows where it stands")
        time.sleep(RELOAD_POLL)


def _reload_number(status):
    return (status["master"].get("reload") or {}).get("number", 0)


def send(path, request, timeout=TIMEOUT):
    """One request to the control socket at path; the decoded reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data:
        raise ValueError("it closed the connection without a reply")
    return json.loads(data)


def status_table(stats, now=None):
    """The status as a person reads it: the master in one line, then a row per worker."""
    now = time.time() if now is None else now
    master = stats["master"]
    lines = [f"master {master['pid']} [{master['name']}] {master['state']}, policy {master['policy']}, "
             f"{len(stats['workers'])} worker(s), target {master.get('target_workers')}"
             f" ({master.get('target_reason') or '-'}), generation {master.get('generation', 0)}, "
             f"up {_age(now - master['started_at']) if master.get('started_at') else '-'}"
             + ("" if "ready" not in master else ", ready" if master["ready"] else
                f", not ready ({master.get('ready_reason')})")]
    if master.get("upgrade"):
        upgrade = master["upgrade"]
        lines.append(f"upgrade: new master {upgrade['new_master']}, {'serving' if upgrade['ready'] else 'starting'}")
    header = ("pid", "slot", "state", "requests", "conns", "uss", "cpu", "age", "last exit")
    rows = [header]
    for worker in stats["workers"]:
        rows.append((str(worker["pid"]), str(worker["slot"]), worker["state"], str(worker["requests"]),
                     str(worker.get("connections", 0)), _megabytes(worker.get("uss")), _percent(worker.get("cpu_percent")),
                     _age(now - worker["started_at"]), worker.get("last_exit_reason") or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines += ["  ".join(cell.rjust(width) if i in (0, 1, 3, 4, 5, 6, 7) else cell.ljust(width)
                        for i, (cell, width) in enumerate(zip(row, widths))).rstrip() for row in rows]
    restarts = {reason: count for reason, count in stats.get("restarts", {}).items() if count}
    lines.append("restarts: " + (", ".join(f"{reason} {count}" for reason, count in restarts.items()) or "none"))
    return "\n".join(lines)


def _megabytes(value):
    return "-" if value is None else f"{value / 2**20:.1f}M"


def _percent(value):
    return "-" if value is None else f"{value:.1f}%"


def _age(seconds):
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
