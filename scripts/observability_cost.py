#!/usr/bin/env python3
"""What observability costs prefork: the access log and a scraped /metrics, each beside the same server without it.

    python scripts/observability_cost.py              # the full run: 3 interleaved rounds of 5 s, about 2 minutes
    python scripts/observability_cost.py --quick      # proves the harness works: 1 round of 1 s
    python scripts/observability_cost.py --json PATH  # where the figures go (full run: docs/bench/observability-results.json)

Every server is `prefork serve hello -w 2` (keep-alive, parking: one thread
per worker holds all of its connections), loaded by wrk as scripts/bench.py
loads it (wrk -t2 -c50, keep-alive, 1 s of warm-up first).

  access-log   (a) no access log, (b) --access-log FILE (text, logfmt),
               (c) --access-log FILE --access-log-format json; the file is in a
               temporary directory, truncated before each run. The goal of the
               observability issue: the log costs under 10 % of throughput,
               b/a and c/a >= 0.90. Sanity: the file holds one line per
               request wrk counted (plus at most one per connection, for the
               requests in flight when wrk stopped).
  metrics      --metrics HOST:PORT on both, (a) not scraped, (b) scraped 100
               times a second for the whole wrk run by a thread of this script:
               a GET /metrics on a new connection every 10 ms, paced (a late
               scrape is not made up for), which is a tenth of Prometheus's
               shortest usual interval (1 s) times ten jobs. Goal: b/a >= 0.97,
               and no failed scrape. Also the master's CPU time during the run
               (/proc/PID/schedstat), with and without scraping, and so its
               CPU per scrape.

Why side by side: the machine's cores are shared with wrk (and with the
scraper thread, which therefore charges its own CPU to the scraped variant:
the ratio errs on the side of a higher cost). Absolute req/s drift with
whatever else runs; within one round every variant runs once, one after
another, so drift touches them alike. The figures are medians of the rounds;
each round's own ratios are printed too, to show how much they scatter.
Besides req/s, the workers' CPU time per request (microseconds) is a second
view of the access log's cost that does not depend on wrk's share of the
cores.

Other work on the machine (a test suite run beside, a build) is what upsets
such ratios most on 2 cores, so each run first waits (--settle, up to 30 s)
until the machine is quiet (under a quarter of a core busy), and is measured
for the CPU that processes other than the server, wrk and this script used
meanwhile (/proc/stat): "other work", in % of one core. A run beside more
than 10 % is made again (--retries, twice at most; the discarded figures
are kept in the JSON), and the ratios over the clean rounds alone are
printed beside the targets. The JSON also records prefork's commit and any
uncommitted change to prefork/ before and after the run.

What it needs: wrk (Debian's package, installed with apt-get when running as
root, as scripts/bench.py does; --no-install to use only what is there).
"""

import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, SCRIPTS)
import bench  # noqa: E402  (scripts/ is not a package)

HELLO = "hello"                    # prefork's built-in prefork_workers.hello:HelloHandler
EXPECT = b"Hello, World!"
SCRAPES_PER_SECOND = 100
DEFAULT_JSON = os.path.join(bench.REPO, "docs", "bench", "observability-results.json")
ACCESS_LOG_GOAL, METRICS_GOAL = 0.90, 0.97
SETTLE = 30.0                      # seconds to wait at most, before each run, for the machine to be quiet
QUIET_CORES = 0.25                 # quiet: less than this much of a core busy
FOREIGN_LIMIT = 10.0               # a run is clean when other work used at most this % of a core meanwhile
RETRIES = 2                        # a run that was not clean is made again (after waiting for quiet) this often
NO_LOG, TEXT_LOG, JSON_LOG = "no access log", "--access-log (text)", "--access-log (json)"
NOT_SCRAPED, SCRAPED = "--metrics, not scraped", f"--metrics, scraped {SCRAPES_PER_SECOND}/s"


# -- the servers ----------------------------------------------------------------------------------

class Variant:
    """One server under test, a bench.Server, and what its runs need to know: its log file, its metrics
    port, whether to scrape it. The metrics port is chosen when the server starts (as bench.Server
    chooses its port)."""

    def __init__(self, name, *flags, log=None, log_format="text", metrics=False, scrape=False):
        self.name, self.log, self.log_format, self.metrics, self.scrape = name, log, log_format, metrics, scrape
        self.metrics_port = None
        self.server = bench.Server(name, self._command(flags), peer=False)

    def _command(self, flags):
        def command(port):
            extra = list(flags)
            if self.log:
                extra += ["--access-log", self.log, "--access-log-format", self.log_format]
            if self.metrics:
                self.metrics_port = bench.free_port()
                extra += ["--metrics", f"127.0.0.1:{self.metrics_port}"]
            return bench.prefork_cmd(HELLO, "-w", "2", *extra)(port)
        return command


def access_log_variants(workdir):
    return [Variant(NO_LOG),
            Variant(TEXT_LOG, log=os.path.join(workdir, "access-text.log")),
            Variant(JSON_LOG, log=os.path.join(workdir, "access-json.log"), log_format="json")]


def metrics_variants():
    return [Variant(NOT_SCRAPED, metrics=True), Variant(SCRAPED, metrics=True, scrape=True)]


# -- one run ---------------------------------------------------------------------------------------

def run_wrk(wrk, port, seconds):
    """bench.run_wrk's keep-alive run (the same command line and figures), and the requests wrk completed."""
    argv = [wrk, "-t2", f"-c{bench.CONNECTIONS}", f"-d{seconds}s", "--latency", "--timeout", "5s",
            f"http://127.0.0.1:{port}/"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30).stdout
    rps, requests = re.search(r"Requests/sec:\s+([\d.]+)", out), re.search(r"(\d+) requests in ", out)
    if not rps or not requests:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(rps.group(1)), "requests": int(requests.group(1)),
            "p50_ms": bench._wrk_latency(out, "50%"), "p99_ms": bench._wrk_latency(out, "99%"),
            "errors": errors + (int(non_2xx.group(1)) if non_2xx else 0)}


def measure_run(variant, wrk, seconds, settle_seconds=SETTLE):
    """One wrk run on the variant's server, with the CPU its master and workers used meanwhile, the
    access log's lines, the scrapes made (if it is scraped), and the pool's request counter."""
    master, workers = variant.server.processes()
    if variant.log:
        os.truncate(variant.log, 0)            # opened O_APPEND by the workers: they go on at the new end
    counted_before = requests_counted(variant.metrics_port) if variant.metrics else None
    scraper = Scraper(variant.metrics_port, SCRAPES_PER_SECOND) if variant.scrape else None
    waited, quiet = settle(settle_seconds) if settle_seconds > 0 else (0.0, None)
    cpu_before = [bench._cpu_seconds(p) for p in [master] + workers]
    machine_before, ours_before = machine_busy_seconds(), own_cpu_seconds()
    started = time.perf_counter()
    if scraper:
        scraper.start()
    try:
        result = run_wrk(wrk, variant.server.port, seconds)
    finally:
        if scraper:
            scraper.stop()
    wall = time.perf_counter() - started
    cpu_after = [bench._cpu_seconds(p) for p in [master] + workers]
    machine_used, ours_used = machine_busy_seconds() - machine_before, own_cpu_seconds() - ours_before
    used = [b - a for a, b in zip(cpu_before, cpu_after)]
    foreign = max(0.0, machine_used - sum(used) - ours_used)
    result |= {"settle_wait_s": waited, "quiet_before": quiet,
               "foreign_cpu_percent": round(foreign / wall * 100, 1),
               "wall_s": round(wall, 3), "master_cpu_s": round(used[0], 4),
               "master_cpu_percent": round(used[0] / wall * 100, 3),
               "workers_cpu_s": round(sum(used[1:]), 3),
               "worker_cpu_us_per_request": round(sum(used[1:]) / max(1, result["requests"]) * 1e6, 2)}
    time.sleep(0.3)                            # the workers write their last lines and scoreboard figures
    if variant.log:
        result |= count_log(variant.log, variant.log_format)
        result["log_lines_per_request"] = round(result["log_lines"] / max(1, result["requests"]), 5)
    if scraper:
        result |= scraper.figures()
    if counted_before is not None:
        result["metrics_requests"] = requests_counted(variant.metrics_port) - counted_before
    return result


def machine_busy_seconds():
    """CPU seconds all cores have spent busy since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as f:
        ticks = [int(n) for n in f.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds():
    """CPU seconds used by this script (its scraper thread) and its reaped children (wrk)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def settle(most):
    """Wait, up to most seconds, until the machine is quiet: under QUIET_CORES of a core busy over half a
    second (the servers under test idle meanwhile). (seconds waited, quiet at last). Whatever else runs on
    the machine (a test suite, a build) takes cores from the server and wrk alike, unevenly between the
    variants; waiting for it to pass keeps most of it out of the runs, and foreign_cpu_percent shows
    what was left."""
    started = time.monotonic()
    while True:
        before = machine_busy_seconds()
        time.sleep(0.5)
        busy = (machine_busy_seconds() - before) / 0.5
        waited = time.monotonic() - started
        if busy < QUIET_CORES or waited >= most:
            return round(waited, 1), busy < QUIET_CORES


def count_log(path, log_format):
    """Lines in the access log, and how many of them say the request ended well (outcome ok)."""
    ok = b'"outcome":"ok"' if log_format == "json" else b" outcome=ok "
    lines = oks = size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            size += len(chunk)
            lines += chunk.count(b"\n")
            oks += chunk.count(ok)        # a pattern split across two chunks is missed: a few in millions
    return {"log_lines": lines, "log_lines_ok": oks, "log_bytes": size}


def sane_log(run):
    """Whether the log holds a line per request wrk completed, plus at most one per connection in flight."""
    return run["requests"] <= run["log_lines"] <= run["requests"] + bench.CONNECTIONS


# -- the scraper -------------------------------------------------------------------------------------

def scrape(port, timeout=2.0):
    """GET /metrics on a new connection, as Prometheus does; the body (RuntimeError if it is not a 200)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nAccept: text/plain\r\nConnection: close\r\n\r\n")
        reply = bench._read_reply(sock)
    if not reply.startswith(b"HTTP/1.1 200 ") and not reply.startswith(b"HTTP/1.0 200 "):
        raise RuntimeError(f"unexpected reply {reply[:200]!r}")
    return reply.split(b"\r\n\r\n", 1)[1]


def requests_counted(port):
    """prefork_requests_total, from one scrape."""
    match = re.search(rb"^prefork_requests_total (\d+)", scrape(port), re.M)
    if not match:
        raise RuntimeError("no prefork_requests_total in /metrics")
    return int(match.group(1))


class Scraper(threading.Thread):
    """GET /metrics rate times a second until stopped: paced on a fixed schedule, a scrape that is due
    while the one before is still going is skipped (counted late), not made up for later."""

    def __init__(self, port, rate):
        super().__init__(daemon=True)
        self.port, self.interval = port, 1.0 / rate
        self.stopping = threading.Event()
        self.done, self.failed, self.late, self.latencies, self.errors = 0, 0, 0, [], []
        self.cpu_s = 0.0

    def run(self):
        cpu = time.thread_time()
        due = time.monotonic()
        while not self.stopping.is_set():
            started = time.perf_counter()
            try:
                body = scrape(self.port)
                if b"prefork_requests_total" not in body:
                    raise RuntimeError("no prefork_requests_total in the body")
                self.done += 1
                self.latencies.append((time.perf_counter() - started) * 1000)
            except (OSError, RuntimeError) as exc:
                self.failed += 1
                if len(self.errors) < 5:
                    self.errors.append(repr(exc))
            due += self.interval
            now = time.monotonic()
            while due < now:                   # missed a turn: skip it
                due += self.interval
                self.late += 1
            self.stopping.wait(due - now)
        self.cpu_s = time.thread_time() - cpu

    def stop(self):
        self.stopping.set()
        self.join(10)

    def figures(self):
        ordered = sorted(self.latencies)

        def quantile(q):
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3) if ordered else None
        return {"scrapes": self.done, "scrapes_failed": self.failed, "scrapes_skipped_late": self.late,
                "scrape_p50_ms": quantile(0.5), "scrape_p99_ms": quantile(0.99),
                "scrape_max_ms": round(ordered[-1], 3) if ordered else None,
                "scraper_cpu_s": round(self.cpu_s, 3), "scrape_errors": self.errors}


# -- a workload: rounds of every variant, interleaved ------------------------------------------------

def workload(name, variants, wrk, rounds, seconds, settle_seconds=SETTLE, retries=RETRIES):
    """bench.throughput over the variants' servers, each run measured by measure_run; per variant, the
    medians of its runs (bench.summarize) and of the figures measure_run adds, and each round's ratio
    of req/s to the first variant's."""
    by_port = {}

    def run(port, run_seconds):
        if not by_port:
            by_port.update({v.server.port: v for v in variants})
        discarded = []
        while True:         # a run that shared the machine with other work is made again, retries times at most
            result = measure_run(by_port[port], wrk, max(1, int(round(run_seconds))), settle_seconds)
            if result["foreign_cpu_percent"] <= FOREIGN_LIMIT or len(discarded) >= retries or settle_seconds <= 0:
                return result | {"discarded": discarded}
            discarded.append({key: result[key] for key in ("rps", "foreign_cpu_percent", "worker_cpu_us_per_request")})

    results = bench.throughput(name, [v.server for v in variants], run, rounds, seconds,
                               check=lambda port: bench.check_http(port, False, EXPECT))
    base = results.get(variants[0].name)
    for variant in variants:
        figures = results.get(variant.name)
        if figures is None:
            continue
        for key in ("master_cpu_percent", "master_cpu_s", "worker_cpu_us_per_request", "log_lines_per_request",
                    "scrapes", "scrape_p50_ms", "scrape_p99_ms", "scraper_cpu_s", "requests", "foreign_cpu_percent"):
            values = [r[key] for r in figures["runs"] if r.get(key) is not None]
            figures[key] = statistics.median(values) if values else None
        figures["scrapes_failed"] = sum(r.get("scrapes_failed", 0) for r in figures["runs"])
        if variant.log:
            figures["log_sane"] = all(sane_log(r) for r in figures["runs"])
        if base is not None:
            figures["ratio"] = figures["rps"] / base["rps"]
            figures["round_ratios"] = [round(r["rps"] / b["rps"], 4) for r, b in zip(figures["runs"], base["runs"])]
    # The rounds in which no run shared the machine with more than FOREIGN_LIMIT % of a core of other work.
    quiet = [n for n in range(rounds) if all(len(r["runs"]) > n and r["runs"][n]["foreign_cpu_percent"] <= FOREIGN_LIMIT
                                               for r in results.values())]
    for figures in results.values():
        figures["quiet_rounds"] = quiet
        if quiet and "round_ratios" in figures:
            figures["quiet_rounds_ratio"] = statistics.median(figures["round_ratios"][n] for n in quiet)
    return results


# -- report -------------------------------------------------------------------------------------------

def print_access_log(results, rounds, seconds):
    print(f"\naccess-log  (median of {rounds} round(s) of {seconds} s; wrk -t2 -c{bench.CONNECTIONS} keep-alive; "
          f"hello -w 2)")
    print(f"  {'variant':<22}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'/no log':>9}"
          f"{'worker us/req':>15}{'master CPU %':>14}{'log lines/req':>15}")
    for name, r in results.items():
        lines = "" if r.get("log_lines_per_request") is None else f"{r['log_lines_per_request']:.4f}"
        print(f"  {name:<22}{r['rps']:>10.0f}{bench._ms(r['p50_ms'])}{bench._ms(r['p99_ms'])}{r['errors']:>8}"
              f"{r.get('ratio', 0):>9.3f}{r['worker_cpu_us_per_request']:>15.1f}{r['master_cpu_percent']:>14.2f}"
              f"{lines:>15}")
    print_rounds(results, rounds)
    for name, r in results.items():
        for number, run in enumerate(r["runs"], 1):
            if "log_lines" in run:
                print(f"  {name}, round {number}: wrk counted {run['requests']} requests, the log has "
                      f"{run['log_lines']} lines ({run['log_lines_ok']} outcome ok, {run['log_bytes'] / 2**20:.1f} MB)"
                      f"{'' if sane_log(run) else '  <-- NOT one line per request'}")


def print_rounds(results, rounds):
    """Each round: every variant's req/s, its ratio to the first's, and the other work on the machine meanwhile."""
    names = list(results)
    print(f"  by round: req/s (ratio to {names[0]}) [other work on the machine: % of a core; s waited for quiet "
          f"before the run]")
    for n in range(rounds):
        cells = []
        for name, r in results.items():
            if len(r["runs"]) <= n:
                continue
            run = r["runs"][n]
            ratio = f" ({r['round_ratios'][n]:.3f})" if name != names[0] else ""
            discarded = ", ".join(f"{d['foreign_cpu_percent']:.0f} %" for d in run["discarded"])
            again = f"; made again, discarded beside: {discarded}" if discarded else ""
            cells.append(f"{run['rps']:.0f}{ratio} [{run['foreign_cpu_percent']:.0f} %; {run['settle_wait_s']:.1f} s{again}]")
        print(f"    round {n + 1}: " + " | ".join(cells))
    quiet = results[names[0]]["quiet_rounds"]
    clean = ", ".join(f"{name} {r['quiet_rounds_ratio']:.3f}" for name, r in results.items()
                      if name != names[0] and "quiet_rounds_ratio" in r)
    print(f"  clean rounds (no run beside more than {FOREIGN_LIMIT:.0f} % of a core of other work): "
          f"{len(quiet)} of {rounds}" + (f"; their median ratio: {clean}" if clean else ""))


def print_metrics(results, rounds, seconds):
    print(f"\nmetrics  (median of {rounds} round(s) of {seconds} s; wrk -t2 -c{bench.CONNECTIONS} keep-alive; "
          f"hello -w 2 --metrics)")
    print(f"  {'variant':<28}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'/unscraped':>11}"
          f"{'master CPU %':>14}{'scrapes':>9}{'failed':>8}{'scrape p50/p99 ms':>19}")
    for name, r in results.items():
        scrapes = "" if r.get("scrapes") is None else f"{r['scrapes']:.0f}"
        latency = ("" if r.get("scrape_p50_ms") is None
                   else f"{r['scrape_p50_ms']:.2f}/{r['scrape_p99_ms']:.2f}")
        print(f"  {name:<28}{r['rps']:>10.0f}{bench._ms(r['p50_ms'])}{bench._ms(r['p99_ms'])}{r['errors']:>8}"
              f"{r.get('ratio', 0):>11.3f}{r['master_cpu_percent']:>14.2f}{scrapes:>9}"
              f"{r['scrapes_failed'] if name == SCRAPED else '':>8}{latency:>19}")
    scraped, quiet = results.get(SCRAPED), results.get(NOT_SCRAPED)
    print_rounds(results, rounds)
    if scraped:
        for number, run in enumerate(scraped["runs"], 1):
            print(f"  {SCRAPED}, round {number}: {run['scrapes']} scrapes, {run['scrapes_failed']} failed, "
                  f"{run['scrapes_skipped_late']} skipped (late), max {run['scrape_max_ms']} ms; master CPU "
                  f"{run['master_cpu_s'] * 1000:.0f} ms in {run['wall_s']:.2f} s; scraper thread CPU "
                  f"{run['scraper_cpu_s'] * 1000:.0f} ms" + (f"; errors: {run['scrape_errors']}" if run['scrape_errors']
                                                            else ""))
    if scraped and quiet and scraped.get("scrapes"):
        per_scrape = (scraped["master_cpu_s"] - quiet["master_cpu_s"]) / scraped["scrapes"] * 1000
        scraped["master_cpu_ms_per_scrape"] = round(per_scrape, 4)
        print(f"  master CPU per scrape (median CPU scraped - not scraped, / scrapes): {per_scrape:.3f} ms")
    for name, r in results.items():
        counted = [(run["metrics_requests"], run["requests"]) for run in r["runs"] if "metrics_requests" in run]
        print(f"  {name}: prefork_requests_total grew by / wrk counted: "
              + ", ".join(f"{a}/{b}" for a, b in counted))


def targets(report):
    lines = []

    def check(text, value, goal, fmt="{:.3f}", below=False):
        if value is None:
            lines.append(f"  [ n/a ] {text}: not measured")
            return
        met = value < goal if below else value >= goal
        miss = "" if met else f", missed by {abs(value - goal):{fmt[2:-1]}}"
        lines.append(f"  [{'met ' if met else 'MISS'}] {text}: {fmt.format(value)} (goal {'<' if below else '>='} "
                     f"{fmt.format(goal)}{miss})")

    def clean(figures):
        """The same ratio over the clean rounds only, as a note: the target is judged on the medians."""
        if figures and "quiet_rounds_ratio" in figures:
            lines.append(f"          (clean rounds only, {len(figures['quiet_rounds'])}: median of their ratios "
                         f"{figures['quiet_rounds_ratio']:.3f})")

    access, metrics = report["workloads"].get("access-log", {}), report["workloads"].get("metrics", {})
    for name in (TEXT_LOG, JSON_LOG):
        check(f"access-log, {name} vs no access log, req/s", (access.get(name) or {}).get("ratio"), ACCESS_LOG_GOAL)
        clean(access.get(name))
        sane = (access.get(name) or {}).get("log_sane")
        check(f"access-log, {name}: runs whose log lacks a line per request (or has too many)",
              None if sane is None else int(not sane), 1, "{}", below=True)
    check(f"metrics, {SCRAPED} vs not scraped, req/s", (metrics.get(SCRAPED) or {}).get("ratio"), METRICS_GOAL)
    clean(metrics.get(SCRAPED))
    check("metrics, failed scrapes", (metrics.get(SCRAPED) or {}).get("scrapes_failed"), 1, "{}", below=True)
    return lines


def code_state():
    """Which prefork was measured: HEAD's commit, and the files under prefork/ that differ from it (another
    edit may be under way while this runs: the servers import the code once, when each starts)."""
    def git(*argv):
        done = subprocess.run(["git", "-C", bench.REPO, *argv], capture_output=True, text=True, timeout=30)
        return done.stdout.strip() if done.returncode == 0 else None
    diff = subprocess.run(["git", "-C", bench.REPO, "diff", "HEAD", "--", "prefork"], capture_output=True,
                          timeout=30).stdout
    changed = git("status", "--short", "--", "prefork")
    return {"commit": git("rev-parse", "--short", "HEAD"), "subject": git("log", "-1", "--format=%s"),
            "changed": changed.splitlines() if changed else [],
            "diff_sha1": hashlib.sha1(diff).hexdigest()[:12] if diff else None}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s: proves the harness works")
    parser.add_argument("--seconds", type=float, help="length of each measurement (default 5, quick 1)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3, quick 1)")
    parser.add_argument("--only", help="comma-separated workloads: access-log,metrics")
    parser.add_argument("--settle", type=float, default=SETTLE,
                        help=f"before each run, wait up to this many seconds for the machine to be quiet (under "
                             f"{QUIET_CORES} of a core busy); 0: do not wait (default {SETTLE:.0f})")
    parser.add_argument("--retries", type=int, default=RETRIES,
                        help=f"make a run again, this often at most, when other work used more than "
                             f"{FOREIGN_LIMIT:.0f} %% of a core meanwhile (default {RETRIES})")
    parser.add_argument("--no-install", action="store_true", help="use only what is already installed")
    parser.add_argument("--json", help="where to write the JSON results (default: a full run "
                                       "docs/bench/observability-results.json, else bench-results/)")
    args = parser.parse_args()
    seconds = max(1, int(round(args.seconds or (1 if args.quick else 5))))
    rounds = args.rounds or (1 if args.quick else 3)
    wanted = set(args.only.split(",")) if args.only else {"access-log", "metrics"}

    tools = bench.Tools.__new__(bench.Tools)      # wrk only: bench.Tools() would install all of bench's tools
    tools.missing = []
    tools.wrk = tools._debian("wrk", "wrk", not args.no_install)
    if not tools.wrk:
        print(f"missing {tools.missing[0]}: nothing to measure", file=sys.stderr)
        return 1
    wrk_version = subprocess.run([tools.wrk, "--version"], capture_output=True, text=True).stdout.strip()
    report = {"machine": bench.machine(), "tools": {"wrk": wrk_version.splitlines()[0] if wrk_version else None},
              "seconds": seconds, "rounds": rounds, "connections": bench.CONNECTIONS,
              "scrapes_per_second": SCRAPES_PER_SECOND, "settle_s": args.settle, "retries": args.retries,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "load_average_before": os.getloadavg(), "code_before": code_state(), "workloads": {}}
    workdir = tempfile.mkdtemp(prefix="prefork-observability-")
    try:
        if "access-log" in wanted:
            report["workloads"]["access-log"] = workload("access-log", access_log_variants(workdir), tools.wrk,
                                                         rounds, seconds, args.settle, args.retries)
        if "metrics" in wanted:
            report["workloads"]["metrics"] = workload("metrics", metrics_variants(), tools.wrk, rounds, seconds,
                                                      args.settle, args.retries)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["load_average_after"] = os.getloadavg()
    report["code_after"] = code_state()

    print(f"\nmachine: {report['machine']}")
    for when in ("before", "after"):
        code = report[f"code_{when}"]
        print(f"prefork {when}: HEAD {code['commit']} ({code['subject'][:60]}), changed under prefork/: "
              f"{', '.join(code['changed']) or 'none'}" + (f" (diff {code['diff_sha1']})" if code["diff_sha1"] else ""))
    if report["code_before"] != report["code_after"]:
        print("  NOTE: prefork's code changed during the run: the servers started at different times may differ")
    print(f"load average (1, 5, 15 min) before: {report['load_average_before']}, after: {report['load_average_after']}")
    if "access-log" in report["workloads"]:
        print_access_log(report["workloads"]["access-log"], rounds, seconds)
    if "metrics" in report["workloads"]:
        print_metrics(report["workloads"]["metrics"], rounds, seconds)
    report["targets"] = targets(report)
    print("\ntargets (from the observability issue):")
    print("\n".join(report["targets"]))
    if args.json:
        path = args.json
    elif not args.quick and args.seconds is None and args.rounds is None and args.only is None:
        path = DEFAULT_JSON
    else:
        os.makedirs(bench.RESULTS, exist_ok=True)
        path = os.path.join(bench.RESULTS, f"observability-{time.strftime('%Y%m%d-%H%M%S')}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nall figures: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
