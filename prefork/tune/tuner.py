"""Runs in the `prefork tune` process: measure a handler at several pool sizes, and recommend one.

For each pool (workers x threads) it starts `prefork serve` as a real
subprocess, drives it at each concurrency with prefork.tune.loadgen, samples the
server's CPU time and its workers' unique memory, and stops it with SIGTERM.
The recommendation is a pure function of the results (recommend()), so it can
be tested with made-up tables.
"""

import argparse
import importlib
import json
import os
import signal
import sys
from collections import Counter

from prefork import __version__, loader
from prefork.tune import loadgen
from prefork.arguments import count_list, positive_number, whole_number  # noqa: F401 (tests use them here)
from prefork.errors import AppLoadError, BindError, Exit
from prefork.listeners import parse_bind
from prefork.policies import MAX_THREADS, MAX_WORKERS
from prefork.tune.server_under_test import ServerFailed, ServerUnderTest, ServerUsage, describe_pool, machine, plural

TOLERANCE = 0.05           # a pool within 5 % of the best throughput is as good as the best
REQUEST_TIMEOUT = 2.0      # seconds without a reply before a request counts as an error (as wrk's)
MAX_CONCURRENCY = 10000
MAX_GREETING = 65536       # bytes: the load client's buffer
PLOT_FIX = "pip install 'prefork[plot]'"


class TuneError(Exception):
    """A problem to report in one line, with the exit status to leave with."""

    def __init__(self, message, code=Exit.ERROR):
        super().__init__(message)
        self.code = code


# -- the command line ---------------------------------------------------------------------

def greeting(text):
    """An argparse type: 'line', or a number of bytes in 1..MAX_GREETING."""
    if text == loadgen.LINE:
        return text
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"expected 'line' or a number of bytes, got {text!r}")
    if not 1 <= int(text) <= MAX_GREETING:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_GREETING} bytes, got {int(text)}")
    return int(text)


def add_parser(commands):
    """Register `prefork tune` on the CLI's subparsers."""
    tune = commands.add_parser(
        "tune", help="measure a handler at several pool sizes and recommend one",
        description="Serve MODULE:CLASS with each pool (workers x threads), drive it with a built-in "
                    "closed-loop load generator at each concurrency, and recommend the smallest pool within "
                    "5 % of the best throughput (counting only runs with p99 at most --p99, if given).")
    tune.add_argument("handler", metavar="MODULE:CLASS",
                      help="the request handler class to measure (the current directory is on the import path)")
    tune.add_argument("-b", "--bind", default="127.0.0.1:0", metavar="ADDR",
                      help="HOST:PORT, [IPV6]:PORT or unix:PATH (default: 127.0.0.1:0, a free port)")
    tune.add_argument("--workers", type=count_list(MAX_WORKERS), default=[1, 2, 4, 8], metavar="N,N,...",
                      help="worker counts to try (default: 1,2,4,8)")
    tune.add_argument("--threads", type=count_list(MAX_THREADS), default=[1, 4], metavar="N,N,...",
                      help="accept threads per worker to try (default: 1,4)")
    tune.add_argument("--concurrency", type=count_list(MAX_CONCURRENCY), default=[4, 16, 64], metavar="N,N,...",
                      help="client connections to drive each pool with (default: 4,16,64)")
    tune.add_argument("--duration", type=positive_number, default=5.0, metavar="S",
                      help="measured seconds per run, after a warm-up of a fifth of it, at most 1 s (default: 5)")
    tune.add_argument("--keepalive", action="store_true",
                      help="reuse each connection for request after request (default: a new connection each)")
    tune.add_argument("--request", metavar="FILE",
                      help="send the bytes of FILE as each request (default: GET / HTTP/1.1 with Host)")
    tune.add_argument("--response-bytes", type=whole_number(1 << 30), metavar="N",
                      help="with --keepalive: each reply is exactly N bytes (default: an HTTP response "
                           "framed by Content-Length)")
    tune.add_argument("--greeting", type=greeting, metavar="line|N",
                      help="the server speaks first (SMTP, FTP, POP3): read its greeting, one line or exactly "
                           "N bytes, on each new connection before the first request")
    tune.add_argument("--p99", type=positive_number, metavar="MS", help="recommend only runs with p99 at most MS")
    tune.add_argument("--timeout", type=positive_number, default=REQUEST_TIMEOUT, metavar="S",
                      help=f"a request unanswered for S seconds is an error (default: {REQUEST_TIMEOUT:g})")
    tune.add_argument("--load-processes", type=whole_number(256), metavar="N",
                      help="client processes of the load generator (default: one per CPU)")
    tune.add_argument("--json", metavar="FILE", help="write the machine, settings, results and recommendation")
    tune.add_argument("--plot", metavar="FILE", help=f"draw throughput and p99 to a PNG (needs {PLOT_FIX})")
    tune.set_defaults(run=run_tune)
    return tune


def run_tune(args):
    """The `prefork tune` command: an exit status, and one line on stderr for any problem."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    results = []
    try:
        settings = _check(args)
        _measure_grid(settings, results)
    except (TuneError, ServerFailed) as exc:
        print(f"prefork: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print(f"prefork: interrupted after {len(results)} run(s); every server was stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    recommendation = recommend(results, args.p99, keepalive=args.keepalive)
    print(f"measured: {describe_mode(settings)}\n")
    print(format_table(results))
    print(f"\nrecommendation: {describe_pool(recommendation['workers'], recommendation['threads'])}"
          if recommendation["workers"] else "\nrecommendation: none")
    print(f"  {recommendation['reason']}")
    if recommendation["note"]:
        print(f"  note: {recommendation['note']}")
    public = {k: v for k, v in settings.items() if k not in ("request_bytes", "plt")}
    try:
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"machine": machine(), "settings": public, "results": results,
                           "recommendation": recommendation}, f, indent=2)
        if args.plot:
            draw_plot(settings["plt"], results, recommendation, args.plot, public)
    except OSError as exc:
        print(f"prefork: error: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return Exit.ERROR
    code, why = exit_status(results, recommendation)
    if why:
        print(f"prefork: error: {why}", file=sys.stderr)
    return code


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _check(args):
    """Everything that can be checked before measuring; the settings of the run."""
    plt = _pyplot() if args.plot else None
    for path in (args.json, args.plot):
        if path and not os.access(os.path.dirname(os.path.abspath(path)), os.W_OK):
            raise TuneError(f"cannot write {path}: its directory does not exist or is not writable", Exit.USAGE)
    if os.getcwd() not in sys.path:                 # as `prefork serve` imports it: from where you stand
        sys.path.insert(0, os.getcwd())
    try:
        bind = parse_bind(args.bind)
        loader.load_handler(args.handler)
    except (BindError, AppLoadError) as exc:
        raise TuneError(str(exc), Exit.USAGE) from None
    if bind.kind not in ("tcp", "unix"):
        raise TuneError(f"bad bind {args.bind!r}: tune drives stream sockets only (HOST:PORT or unix:PATH)",
                        Exit.USAGE)
    if args.request:
        try:
            with open(args.request, "rb") as f:
                request = f.read()
        except OSError as exc:
            raise TuneError(f"cannot read --request file {args.request}: {exc.strerror}", Exit.USAGE) from None
        if not request:
            raise TuneError(f"--request file {args.request} is empty", Exit.USAGE)
    else:
        request = None
    if args.response_bytes and not args.keepalive:
        raise TuneError("--response-bytes applies to --keepalive only", Exit.USAGE)
    return {"handler": args.handler, "bind": args.bind, "workers": args.workers, "threads": args.threads,
            "concurrency": args.concurrency, "duration": args.duration, "warmup": warmup(args.duration),
            "keepalive": args.keepalive, "request": args.request or "GET / HTTP/1.1 (built in)",
            "request_bytes": request, "response_bytes": args.response_bytes, "greeting": args.greeting,
            "p99_target_ms": args.p99, "timeout": args.timeout,
            "load_processes": args.load_processes,
            "prefork": __version__, "plt": plt}


def warmup(duration):
    """Seconds of load before each measured window: a fifth of it, at most one second."""
    return min(1.0, duration / 5)


def _pyplot():
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        raise TuneError(f"--plot needs matplotlib: {PLOT_FIX}", Exit.USAGE) from None
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


# -- measuring --------------------------------------------------------------------------------

def _measure_grid(settings, results):
    pools = [(w, t) for w in settings["workers"] for t in settings["threads"]]
    total, run = len(pools) * len(settings["concurrency"]), 0
    seconds = total * (settings["duration"] + settings["warmup"])
    print(f"prefork tune: {plural(len(pools), 'pool')} x {plural(len(settings['concurrency']), 'concurrency level')}, "
          f"{plural(total, 'run')}, about {max(seconds, 1):.0f} s of load", file=sys.stderr, flush=True)
    options = serve_options(settings)
    for workers, threads in pools:
        with ServerUnderTest(settings["handler"], settings["bind"], workers, threads, options) as server:
            request = settings["request_bytes"] or loadgen.http_get(server.address, settings["keepalive"])
            for concurrency in settings["concurrency"]:
                run += 1
                usage = ServerUsage(server.pid)
                load = loadgen.run_load(
                    server.address, request, concurrency, settings["duration"], keepalive=settings["keepalive"],
                    processes=settings["load_processes"], warmup=settings["warmup"], timeout=settings["timeout"],
                    reply_bytes=settings["response_bytes"], half_close=settings["request_bytes"] is not None,
                    greeting=settings["greeting"], during=usage.window)
                result = {"workers": workers, "threads": threads, "concurrency": concurrency,
                          "throughput": round(load.throughput, 1), "p50_ms": _round(load.p50_ms),
                          "p99_ms": _round(load.p99_ms), "errors": load.errors, "cpu_percent": usage.cpu_percent,
                          "uss_mb": usage.uss_mb, "error_kinds": load.error_kinds,
                          "connections": usage.connections}
                results.append(result)
                print(f"[{run}/{total}] {progress_line(result)}", file=sys.stderr, flush=True)
                server.check_alive()


def serve_options(settings):
    """Flags for `prefork serve` beyond the pool. A server that speaks first must not defer accept
    (TCP_DEFER_ACCEPT, on by default), which holds a connection in the kernel until its client
    sends: the greeting would never come."""
    return ["--no-defer-accept"] if settings["greeting"] is not None else []


def _round(value, digits=3):
    return None if value is None else round(value, digits)


def progress_line(result):
    p99 = "no reply" if result["p99_ms"] is None else f"p99 {result['p99_ms']:.1f} ms"
    errors = f", {plural(result['errors'], 'error')} ({_kinds(result)})" if result["errors"] else ""
    held = result.get("connections") or []
    held = f", connections per worker {'+'.join(map(str, held))}" if any(held) else ""
    return (f"{describe_pool(result['workers'], result['threads'])}, {plural(result['concurrency'], 'client')}: "
            f"{result['throughput']:,.0f} req/s, {p99}{errors}{held}")


def _kinds(result):
    return ", ".join(f"{kind}: {n}" for kind, n in sorted(result.get("error_kinds", {}).items()))


# -- the recommendation, the table, the report ------------------------------------------------------

def describe_mode(settings):
    """How the runs drove the server, for the line above the table."""
    levels = ", ".join(str(n) for n in settings["concurrency"])
    if settings["keepalive"]:
        mode = f"keep-alive, {levels} connections, each held for the whole run"
    else:
        mode = f"a new connection per request, {levels} clients at a time"
    size = settings["greeting"]
    if size is None:
        return mode
    return f"{mode}; a greeting of {'one line' if size == loadgen.LINE else plural(size, 'byte')} first"


NEW_CONNECTION_NOTE = ("A new connection per request holds a thread for one request only: this does not measure "
                       "how many long-lived connections a pool can serve (use --keepalive for that).")


def recommend(results, p99_target=None, tolerance=TOLERANCE, keepalive=False):
    """The smallest pool (fewest workers x threads, then fewest workers) whose best run is within
    tolerance of the best run overall; with p99_target only runs with p99 at most that count.
    Runs with errors never count: on one machine a healthy server answers every request, and a pool
    that starves some connections (keep-alive, more clients than threads) shows it as timeouts.
    Without keep-alive a recommendation carries NEW_CONNECTION_NOTE: for a long-lived protocol
    (one connection per client for minutes) it would be far too small."""
    chosen = _recommend(results, p99_target, tolerance)
    chosen["mode"] = "keep-alive" if keepalive else "new connection per request"
    chosen["note"] = NEW_CONNECTION_NOTE if chosen["workers"] and not keepalive else None
    return chosen


def _recommend(results, p99_target, tolerance):
    clean = [r for r in results if not r["errors"] and r["throughput"] > 0 and r["p99_ms"] is not None]
    if not clean:
        return {"workers": None, "threads": None, "met_p99": None, "reason": "Every run had errors or no "
                "replies, so there is nothing to recommend; see the errors column."}
    eligible = clean if p99_target is None else [r for r in clean if r["p99_ms"] <= p99_target]
    if not eligible:
        lowest = min(clean, key=lambda r: (r["p99_ms"], -r["throughput"]))
        return _choice(lowest, False, f"No run met the p99 target of {p99_target:g} ms; {_pool_of(lowest)} had "
                                      f"the lowest p99, {lowest['p99_ms']:.2f} ms at "
                                      f"{plural(lowest['concurrency'], 'client')} ({lowest['throughput']:,.0f} req/s).")
    best = max(eligible, key=lambda r: r["throughput"])
    best_per_pool = {}
    for r in eligible:
        key = (r["workers"], r["threads"])
        if key not in best_per_pool or r["throughput"] > best_per_pool[key]["throughput"]:
            best_per_pool[key] = r
    close_enough = [r for r in best_per_pool.values() if r["throughput"] >= (1 - tolerance) * best["throughput"]]
    chosen = min(close_enough, key=lambda r: (r["workers"] * r["threads"], r["workers"]))
    target = "" if p99_target is None else f" within the p99 target of {p99_target:g} ms"
    within = f"{tolerance * 100:g} %"
    run = (f"{chosen['throughput']:,.0f} req/s at {plural(chosen['concurrency'], 'client')}, "
           f"p99 {chosen['p99_ms']:.2f} ms")
    if _pool_of(chosen) == _pool_of(best):
        reason = (f"{_pool_of(chosen)} had the best throughput{target} ({run}), and no smaller pool came within "
                  f"{within} of it.")
    else:
        reason = (f"{_pool_of(chosen)} is the smallest pool within {within} of the best throughput{target} "
                  f"({best['throughput']:,.0f} req/s by {_pool_of(best)} at {plural(best['concurrency'], 'client')}): "
                  f"{run}.")
    return _choice(chosen, None if p99_target is None else True, reason)


HINTS = {"more reply bytes than expected": "is --response-bytes right, or does the server speak first (--greeting)?"}


def exit_status(results, recommendation):
    """Exit.OK with a recommendation. Without one no run succeeded, which a script must not take
    for success: Exit.ERROR, and a line naming the error the runs had most often."""
    if recommendation["workers"]:
        return Exit.OK, None
    kinds = Counter()
    for r in results:
        kinds.update(r.get("error_kinds", {}))
    if not kinds:
        return Exit.ERROR, "no run succeeded: no request was answered"
    kind, count = kinds.most_common(1)[0]
    hint = f"; {HINTS[kind]}" if kind in HINTS else ""
    return Exit.ERROR, (f"no run succeeded; the most common error: {kind} ({count:,} of "
                        f"{plural(kinds.total(), 'error')}){hint}")


def _pool_of(run):
    return describe_pool(run["workers"], run["threads"])


def _choice(run, met_p99, reason):
    return {"workers": run["workers"], "threads": run["threads"], "concurrency": run["concurrency"],
            "throughput": run["throughput"], "p99_ms": run["p99_ms"], "met_p99": met_p99, "reason": reason}


COLUMNS = [("workers", "workers", "{}"), ("threads", "threads", "{}"), ("concurrency", "clients", "{}"),
           ("throughput", "req/s", "{:,.0f}"), ("p50_ms", "p50 ms", "{:.2f}"), ("p99_ms", "p99 ms", "{:.2f}"),
           ("errors", "errors", "{:,}"), ("cpu_percent", "CPU %", "{:.0f}"), ("uss_mb", "USS MB", "{:.1f}"),
           ("connections", "conns/worker", "{}")]


def format_table(results):
    """The results as a Markdown table (it reads as plain text too). CPU % is of one CPU, for the
    master and its workers together; USS MB is the mean unique memory of one worker; conns/worker
    the client connections each worker held as the measured window opened (a parking handler holds
    every one of them; a worker with N threads that owns its connections, at most N)."""
    rows = [[label for _, label, _ in COLUMNS]]
    for r in sorted(results, key=lambda r: (r["workers"], r["threads"], r["concurrency"])):
        r = dict(r, connections="+".join(map(str, r.get("connections") or [])) or None)
        rows.append(["-" if r.get(key) is None else fmt.format(r[key]) for key, _, fmt in COLUMNS])
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["| " + " | ".join(cell.rjust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    return "\n".join(lines)


def draw_plot(plt, results, recommendation, path, settings):
    """Two panels, throughput and p99 against the pool (ordered by size), one line per concurrency."""
    pools = sorted({(r["workers"], r["threads"]) for r in results}, key=lambda p: (p[0] * p[1], p[0]))
    labels = [f"{w}x{t}" for w, t in pools]
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(8, 6.5))
    for concurrency in sorted({r["concurrency"] for r in results}):
        by_pool = {(r["workers"], r["threads"]): r for r in results if r["concurrency"] == concurrency}
        xs = [i for i, pool in enumerate(pools) if pool in by_pool]
        top.plot(xs, [by_pool[pools[i]]["throughput"] for i in xs], marker="o", label=f"{concurrency} clients")
        bottom.plot(xs, [by_pool[pools[i]]["p99_ms"] for i in xs], marker="o", label=f"{concurrency} clients")
    chosen = (recommendation["workers"], recommendation["threads"])
    for axes in (top, bottom):
        axes.grid(True, alpha=0.3)
        if chosen in pools:
            axes.axvline(pools.index(chosen), color="grey", linestyle="--", linewidth=1)
    top.set_ylim(bottom=0)
    bottom.set_ylim(bottom=0)
    top.set_ylabel("throughput (req/s)")
    bottom.set_ylabel("p99 latency (ms)")
    bottom.set_xlabel("pool: workers x threads (dashed: the recommendation)")
    bottom.set_xticks(range(len(pools)), labels)
    top.legend(loc="best", fontsize="small")
    mode = "keep-alive" if settings["keepalive"] else "a new connection per request"
    top.set_title(f"prefork tune {settings['handler']}: {mode}, {settings['duration']:g} s per run")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
