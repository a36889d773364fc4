#!/usr/bin/env python3
"""Reloads and an upgrade in place under load must not fail a single request (issue 9).

    python scripts/zero_downtime.py              # 3 `prefork ctl reload`s, 3 SIGHUPs, 1 upgrade; about 40 s
    python scripts/zero_downtime.py --quick      # 1 of each; about 16 s (the test suite runs this)
    python scripts/zero_downtime.py --json FILE  # also write every figure, with the machine's description

It starts `prefork serve hello -w 4 --control ... --pid ... --log-file ...` in a temporary
directory and drives it with prefork's closed-loop load generator: 50 clients, a new connection
per request (HTTP/1.1 with Connection: close). While the load runs it performs, one after the
other and each only once the pool has settled from the last:

  ctl reload   `prefork ctl reload`: every worker replaced, one at a time
  HUP          SIGHUP to the pid in the pid file: the same, by signal
  upgrade      SIGUSR2 to the master; once the new master serves (the pid file names it, and it
               answers the control socket with every worker ready), SIGTERM to the old one

"Settled" means the control socket reports as many workers as the target, every one ready and of
the current generation, none stopping. Requests in flight when the load stops are not counted
either way; every other request is answered or failed, and failures are sorted into refused,
reset and other (closed without a reply, unanswered after --timeout, an HTTP error status).

Exit status: 0 when every request was answered and every operation settled; 1 otherwise (a failed
request, an operation that did not settle, a process left behind); 2 for bad arguments.
"""

import os
import sys
import tempfile

from _operations import (Instance, OperationFailed, Parser, at_least_zero, become_subreaper, common_problems,
                         conclude, load_with_operations, machine, positive, print_tables, summarize,
                         terminate_on_sigterm)

FULL = {"reloads": 3, "hups": 3, "upgrades": 1, "gap": 3.0, "lead": 2.0, "tail": 2.0}
QUICK = {"reloads": 1, "hups": 1, "upgrades": 1, "gap": 2.0, "lead": 1.0, "tail": 1.0}
PER_OPERATION = 1.5          # seconds budgeted for an operation to settle, to size the load window


def parse_args(argv=None):
    parser = Parser(prog="zero_downtime.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one reload, one SIGHUP, one upgrade (~16 s)")
    parser.add_argument("-w", "--workers", type=positive(int), default=4, metavar="N", help="workers in the pool (4)")
    parser.add_argument("-c", "--clients", type=positive(int), default=50, metavar="N", help="concurrent clients (50)")
    parser.add_argument("--reloads", type=at_least_zero, metavar="N", help="`prefork ctl reload`s (3; --quick 1)")
    parser.add_argument("--hups", type=at_least_zero, metavar="N", help="SIGHUPs (3; --quick 1)")
    parser.add_argument("--upgrades", type=at_least_zero, metavar="N", help="SIGUSR2 + SIGTERM to the old master (1)")
    parser.add_argument("--gap", type=positive(float), metavar="S",
                        help="seconds of plain load after each operation settled (3; --quick 2)")
    parser.add_argument("--duration", type=positive(float), metavar="S",
                        help="seconds of measured load (default: enough for the operations and their gaps)")
    parser.add_argument("--timeout", type=positive(float), default=2.0, metavar="S",
                        help="seconds after which an unanswered request is a failure (2)")
    parser.add_argument("-b", "--bind", default="127.0.0.1:0", metavar="ADDR",
                        help="where the server listens: HOST:PORT or unix:PATH (a free port on 127.0.0.1)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (logs) for a post-mortem")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    for key in ("reloads", "hups", "upgrades", "gap"):
        if getattr(args, key) is None:
            setattr(args, key, plan[key])
    args.lead, args.tail = plan["lead"], plan["tail"]
    count = args.reloads + args.hups + args.upgrades
    if count == 0:
        parser.error("nothing to do: every one of --reloads, --hups and --upgrades is 0")
    if args.duration is None:
        args.duration = args.lead + count * (PER_OPERATION + args.gap) + args.upgrades * PER_OPERATION + args.tail
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        parser.error(f"--json {args.json}: no such directory")
    return args


def main(argv=None):
    args = parse_args(argv)
    become_subreaper()
    terminate_on_sigterm()
    workdir = tempfile.mkdtemp(prefix="pf-zd-")
    server = Instance("server", workdir, args.bind, args.workers)
    report = {"machine": machine(), "command": server.command(), "clients": args.clients,
              "new_connection_per_request": True, "duration": args.duration, "timeout": args.timeout,
              "workdir": workdir, "operations": [], "load": None, "left_behind": []}
    problems = []
    try:
        print(f"zero downtime: {server.command()}", flush=True)
        server.start()
        print(f"  {args.workers} workers ready, listening on {server.address}; {args.clients} clients for "
              f"{args.duration:.0f} s", flush=True)
        operations = ([("ctl reload", server, lambda: server.reload("ctl"))] * args.reloads
                      + [("HUP", server, lambda: server.reload("hup"))] * args.hups
                      + [("USR2 + TERM old", server, server.upgrade)] * args.upgrades)
        result, report["operations"] = load_with_operations(
            server.address, args.clients, args.duration, operations, args.lead, args.gap,
            timeout=args.timeout, log=lambda line: print(line, flush=True))
        report["load"] = summarize(result)
        report["final_master"] = server.master()
    except OperationFailed as exc:
        problems.append(str(exc))
    except KeyboardInterrupt:
        problems.append("interrupted")
    finally:
        report["left_behind"] = server.stop()
    problems += common_problems(report, args.reloads + args.hups + args.upgrades)
    print_tables(report)
    return conclude(report, problems, args.json, args.keep, workdir)


if __name__ == "__main__":
    sys.exit(main())
