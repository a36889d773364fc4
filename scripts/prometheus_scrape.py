#!/usr/bin/env python3
"""A real Prometheus scrapes a prefork pool under load, through a reload, a killed worker and recycles.

    python scripts/prometheus_scrape.py                 # 15 s of load; about 30 s in all
    python scripts/prometheus_scrape.py --seconds 5     # shorter
    python scripts/prometheus_scrape.py --json FILE --keep

The test suite parses /metrics with prometheus-client; this asks the real thing what it made of
them. It runs, in a temporary directory:

  prefork      prefork serve hello -b 127.0.0.1:PORT -w 2 --max-requests 5000 --metrics 127.0.0.1:MPORT
  prometheus   its own prometheus.yml (one job, "prefork", scraping MPORT every second), its own
               database and an unused port on 127.0.0.1

then drives the pool with wrk (50 keep-alive connections; prefork's own load generator when wrk
cannot be had, or with --no-wrk) for --seconds, and meanwhile sends the master SIGHUP (a reload:
every worker replaced) and SIGKILLs a worker, each time waiting until the pool has settled; with
--max-requests the workers also recycle all along (at 5,000, a few times a second at wrk's pace).
Every request counter lives in a worker until the worker exits, then in the master's tally of the
gone ones: if a hand-over lost or counted anything twice, Prometheus would see the counter go
down, a reset (resets() > 0), and every rate() and increase() over it would be wrong. Once the
load is over and Prometheus has scraped the final count, the script queries Prometheus's HTTP API
(/api/v1/query) and prints what it saw.

The reload is sent when every worker is far from its cap: one near it is replaced as a recycle,
reload or not, and with a cap of 500 (workers living some 30 ms) a reload often ended without one
exit counted as "reload". The last rows (USS and CPU samples per slot) are shown, not checked:
the master samples a worker once per --monitor-interval, so short-lived workers are seldom sampled.

Checks: the target up at every scrape; no counter series reset; Prometheus's last
prefork_requests_total equal to what /metrics says, at least the requests the load generator had
answered (less one per killed worker, which may die between answering and counting) and at most
those plus one in flight per connection and one per failed request; the same total by slot and in
the duration histogram; worker exits by reason including reload, signal and (with enough load)
recycle; generation 1, one reload done, no boot failure, the pool whole and ready at the end.

Prometheus: `prometheus` on PATH or /usr/bin/prometheus, else Debian's package with apt-get when
running as root (--no-install: never). Debian's package starts a prometheus service on :9090 where
it can; this script neither uses nor stops it. Exit status: 0 when every check passed; 1 when one
failed (one line says which); 2 for bad arguments or no prometheus. Every process it started is
stopped before it exits, on failure and on Ctrl-C too.
"""

import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from _operations import (SETTLE_TIMEOUT, Instance, OperationFailed, Parser, at_least_zero, machine, operations_table,
                         positive, run_operations, terminate_on_sigterm, wait_for, write_json)
from nginx_lb import Missing, apt_install, can_install, free_port
from prefork.tune import loadgen

SCRAPE_INTERVAL = 1         # seconds between two scrapes of /metrics
RATE_WINDOW = 5             # seconds of the rate() windows
RELOAD_AT = 0.3             # the reload begins this far into the load; the kill, as far after it settled
JOB = "prefork"

PROMETHEUS_YML = """\
# written by scripts/prometheus_scrape.py
global:
  scrape_interval: {interval}s
  scrape_timeout: {interval}s
  evaluation_interval: {interval}s
scrape_configs:
  - job_name: {job}
    static_configs:
      - targets: ["{target}"]
"""

# No proxy, whatever the environment says: every address here is 127.0.0.1.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url, timeout=5):
    """(status, body) of a GET, or (None, why) when nothing answered."""
    try:
        with _HTTP.open(url, timeout=timeout) as reply:
            return reply.status, reply.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError as exc:
        return None, str(exc)


# -- the tools ------------------------------------------------------------------------------

def find_prometheus(install):
    """The prometheus binary, installed from Debian's package if need be; Missing if it cannot be had."""
    def which():
        return shutil.which("prometheus") or shutil.which("prometheus", path="/usr/bin")

    binary = which()
    if binary is None:
        if not (install and can_install()):
            raise Missing("prometheus is missing: apt-get install prometheus (as root)")
        _, why = apt_install("prometheus")
        binary = which()
        if not binary:
            raise Missing(f"apt-get install prometheus failed: {why}")
    return binary, prometheus_version(binary)


def prometheus_version(binary):
    """`prometheus --version`'s first line; Missing if the binary does not run."""
    try:
        done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise Missing(f"{binary} --version failed: {exc}") from None
    lines = (done.stdout + done.stderr).strip().splitlines()
    if done.returncode != 0 or not lines:
        raise Missing(f"{binary} --version exited with status {done.returncode}: {' '.join(lines)[-200:]}")
    return lines[0]


def find_wrk(install):
    """wrk, installed from Debian's package when we may; None (the Python load generator then)."""
    wrk = shutil.which("wrk")
    if wrk is None and install and can_install():
        apt_install("wrk")
        wrk = shutil.which("wrk")
    return wrk


# -- Prometheus -----------------------------------------------------------------------------

class Prometheus:
    """Our own prometheus process: configuration, database and log in workdir, an unused port,
    a session of its own. Never the system's service (Debian's listens on :9090)."""

    def __init__(self, binary, workdir, target):
        self.binary, self.dir = binary, os.path.join(workdir, "prometheus")
        os.makedirs(self.dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.conf = os.path.join(self.dir, "prometheus.yml")
        with open(self.conf, "w") as f:
            f.write(PROMETHEUS_YML.format(interval=SCRAPE_INTERVAL, job=JOB, target=target))
        self.log_path = os.path.join(self.dir, "prometheus.log")
        self.proc = self.started_at = None

    def start(self):
        """Start it; return once it is ready and has scraped the target up."""
        argv = [self.binary, f"--config.file={self.conf}", f"--storage.tsdb.path={self.dir}/data",
                f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]
        with open(self.log_path, "wb") as log, loadgen.deferred_signals():
            self.proc = subprocess.Popen(argv, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.started_at = time.time()
        wait_for(lambda: self._died() or http_get(self.url + "/-/ready")[0] == 200, 30, "prometheus to be ready",
                 0.1)
        wait_for(lambda: self._died() or self.target_up(), 30, "prometheus to scrape prefork's /metrics", 0.1)
        return self

    def _died(self):
        if self.proc.poll() is not None:
            raise OperationFailed(f"prometheus exited with status {self.proc.returncode}: {self.log_tail()}")
        return False

    def log_tail(self, size=600):
        with contextlib.suppress(OSError), open(self.log_path, errors="replace") as f:
            return f.read()[-size:].strip()
        return ""

    def api(self, path, **params):
        """The data of an /api/v1 answer; OperationFailed if Prometheus refused the request."""
        status, body = http_get(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}", timeout=10)
        try:
            answer = json.loads(body)
        except ValueError:
            answer = {}
        if status != 200 or answer.get("status") != "success":
            raise OperationFailed(f"prometheus /api/v1/{path} {params}: {status} {answer.get('error') or body[:200]}")
        return answer["data"]

    def target_up(self):
        """Whether our scrape job's target is up (its last scrape succeeded)."""
        targets = self.api("targets", state="active")["activeTargets"]
        return any(t["labels"].get("job") == JOB and t["health"] == "up" for t in targets)

    def query(self, expr, at=None):
        """An instant query: [(labels without __name__, value)], at time `at` (Unix time) or now."""
        data = self.api("query", query=expr, **({"time": f"{at:.3f}"} if at else {}))
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        return [({k: v for k, v in series["metric"].items() if k != "__name__"}, float(series["value"][1]))
                for series in data["result"]]

    def latest(self, expr):
        """The single value of expr now, or None."""
        result = self.query(expr)
        return result[0][1] if len(result) == 1 else None

    def stop(self):
        """SIGTERM (it flushes its head block), then SIGKILL whatever is left of its session."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(15)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


# -- the pool and what happens to it -----------------------------------------------------------

def start_pool(workdir, args):
    """prefork serve hello with --metrics; returns (instance, metrics URL) once /readyz says 200."""
    metrics = f"127.0.0.1:{free_port()}"
    extra = ["--metrics", metrics] + (["--max-requests", str(args.max_requests)] if args.max_requests else [])
    pool = Instance("prefork", workdir, f"127.0.0.1:{free_port()}", args.workers, extra=extra)
    print(f"pool: {pool.command()}", flush=True)
    pool.start()
    url = f"http://{metrics}"
    wait_for(lambda: http_get(url + "/readyz")[0] == 200, 30, f"{url}/readyz to answer 200", 0.05)
    return pool, url


def reload(pool, max_requests):
    """SIGHUP to the master, once every worker is far from --max-requests (for up to 5 s), then until
    the pool has settled. Why wait: a worker near its cap is replaced as a recycle, reload or not
    (prefork's planner serves those first, states.DUE_ORDER), so a reload under heavy load, with
    short-lived workers, could end without a single exit counted as one."""
    if max_requests:
        def far_from_cap():
            status = pool.settled()
            return status and all(w["requests"] < max_requests // 2 for w in status["workers"])
        with contextlib.suppress(OperationFailed):
            wait_for(far_from_cap, 5, "every worker to be far from its cap")
    return pool.reload("hup")


def kill_worker(pool):
    """SIGKILL a serving worker, as the OOM killer would; until the master has replaced it.
    The victim is the worker furthest from --max-requests, so that it dies of the signal and not,
    in the same instant, of a recycle."""
    started = time.monotonic()
    before = wait_for(pool.settled, SETTLE_TIMEOUT, "the pool to settle before the kill")
    victim = min(before["workers"], key=lambda w: w["requests"])
    os.kill(victim["pid"], signal.SIGKILL)

    def replaced():
        status = pool.settled()
        return status if status and victim["pid"] not in {w["pid"] for w in status["workers"]} else None

    wait_for(replaced, SETTLE_TIMEOUT, f"worker {victim['pid']} to be replaced")
    return time.monotonic() - started, f"worker {victim['slot']} (pid {victim['pid']}) killed and replaced"


def disruptions(pool, seconds, max_requests, records, log):
    """A `during` for the load: in a thread, the reload RELOAD_AT into the load, then the kill as long
    after the reload settled. Each record also gets its Unix time, to line it up with Prometheus's samples."""
    operations = [("SIGHUP to the master", pool, lambda: reload(pool, max_requests)),
                  ("SIGKILL to a worker", pool, lambda: kill_worker(pool))]

    @contextlib.contextmanager
    def during():
        t0, wall = time.monotonic(), time.time()

        def body():
            done = run_operations(operations, seconds * RELOAD_AT, seconds * RELOAD_AT, t0 + seconds, t0, log)
            records.extend(dict(r, time=round(wall + r["at"], 3)) for r in done)

        # A thread only now: prefork's load generator forks its clients before the window opens.
        thread = threading.Thread(target=body, name="disruptions", daemon=True)
        thread.start()
        yield
        thread.join(2 * SETTLE_TIMEOUT + seconds)

    return during


# -- the load -------------------------------------------------------------------------------------

def run_load(wrk, address, clients, seconds, during):
    """Keep-alive GETs on `clients` connections for `seconds`: what the load generator counted."""
    started = time.time()
    load = run_wrk(wrk, address, clients, seconds, during) if wrk else \
        run_loadgen(address, clients, seconds, during)
    return dict(load, clients=clients, seconds=seconds, started=round(started, 3), ended=round(time.time(), 3))


def run_wrk(wrk, address, clients, seconds, during):
    """wrk, with the disruptions running meanwhile; its count of answered requests, and its errors."""
    argv = [wrk, f"-t{min(2, clients)}", f"-c{clients}", f"-d{seconds}s", "--timeout", "5s",
            f"http://{address[0]}:{address[1]}/"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        with during():
            out, _ = proc.communicate(timeout=seconds + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    answered = re.search(r"(\d+) requests in", out)
    if not answered:
        raise OperationFailed(f"cannot read wrk's output: {out.strip()[-300:]}")
    errors = {kind: int(n) for kind, n in re.findall(r"(connect|read|write|timeout) (\d+)", out)}
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        errors["non-2xx"] = int(non_2xx.group(1))
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return {"tool": f"wrk {' '.join(argv[1:])}", "answered": int(answered.group(1)),
            "failed": sum(errors.values()) - errors.get("non-2xx", 0), "error_kinds": errors,
            "rps": float(rps.group(1)) if rps else None}


def run_loadgen(address, clients, seconds, during):
    """prefork's own load generator (prefork tune's), with keep-alive; no warm-up, so that it counts
    every answer it got."""
    request = loadgen.http_get(address, keepalive=True)
    result = loadgen.run_load(address, request, clients, seconds, keepalive=True, timeout=5.0, during=during)
    return {"tool": f"prefork.tune.loadgen, {clients} keep-alive connections", "answered": result.completed,
            "failed": result.errors, "error_kinds": dict(result.error_kinds), "rps": round(result.throughput, 1)}


def scraped_final_count(prometheus, metrics_url):
    """/metrics' final prefork_requests_total, once Prometheus has scraped it too."""
    final = final_count(metrics_url)
    wait_for(lambda: prometheus.latest("prefork_requests_total") == final, 10 * SCRAPE_INTERVAL + 10,
             f"prometheus to scrape prefork_requests_total {final:.0f}", 0.2)
    return final


def final_count(metrics_url, still=0.5, timeout=30):
    """prefork_requests_total once it has held still for `still` seconds: as the load generator
    exits, the pool is still serving the requests it left in flight."""
    count, deadline = requests_total(metrics_url), time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(still)
        count, before = requests_total(metrics_url), count
        if count == before:
            return count
    raise OperationFailed(f"prefork_requests_total still moving {timeout} s after the load ended")


def requests_total(metrics_url):
    """prefork_requests_total as the master's /metrics says it now."""
    status, body = http_get(metrics_url + "/metrics")
    found = re.search(r"^prefork_requests_total (\S+)$", body or "", re.M)
    if status != 200 or not found:
        raise OperationFailed(f"{metrics_url}/metrics: {status} without prefork_requests_total")
    return float(found.group(1))


# -- what Prometheus saw ------------------------------------------------------------------------

def queries(run, load):
    """(key, PromQL, when): `run` is the range from Prometheus's start to now, `load` the load's;
    "end" is now (after the final scrape), "load" the load's last instant."""
    rate = f"rate(prefork_requests_total[{RATE_WINDOW}s])"
    during = f"[{max(load - RATE_WINDOW, SCRAPE_INTERVAL)}s:{SCRAPE_INTERVAL}s]"   # windows wholly inside the load
    return [
        ("up", f'up{{job="{JOB}"}}', "end"),
        ("up_every_scrape", f'min_over_time(up{{job="{JOB}"}}[{run}s])', "end"),
        ("requests", "prefork_requests_total", "end"),
        ("resets", f"resets(prefork_requests_total[{run}s])", "end"),
        ("by_slot", "sum(prefork_slot_requests_total)", "end"),
        ("histogram_count", "prefork_request_duration_seconds_count", "end"),
        ("rate", rate, "load"),
        ("rate_min", f"min_over_time({rate}{during})", "load"),
        ("rate_max", f"max_over_time({rate}{during})", "load"),
        ("p99", f"histogram_quantile(0.99, rate(prefork_request_duration_seconds_bucket[{RATE_WINDOW}s]))", "load"),
        ("p99_load", f"histogram_quantile(0.99, increase(prefork_request_duration_seconds_bucket[{load}s]))",
         "load"),
        ("exits", "sum by (reason) (prefork_worker_exits_total)", "end"),
        ("workers", "sum by (state) (prefork_workers)", "end"),
        ("generation", "prefork_generation", "end"),
        ("reloads", "sum by (outcome) (prefork_reloads_total)", "end"),
        ("boot_failures", "prefork_boot_failures_total", "end"),
        ("ready", "prefork_ready", "end"),
        ("scrape_seconds", f'max_over_time(scrape_duration_seconds{{job="{JOB}"}}[{run}s])', "end"),
        ("uss_samples", f"count_over_time(prefork_worker_uss_bytes[{load}s])", "load"),
        ("cpu_max", f"max_over_time(prefork_worker_cpu_percent[{load}s])", "load"),
    ]


def ask(prometheus, load):
    """Every query's result: {key: {"expr", "at", "result": [{"labels", "value"}]}}."""
    now = time.time()
    run = math.ceil(now - prometheus.started_at) + 5
    seconds = math.ceil(load["ended"] - load["started"])
    results = {}
    for key, expr, when in queries(run, seconds):
        at = now if when == "end" else load["ended"]
        results[key] = {"expr": expr, "at": when, "result": [
            {"labels": labels, "value": value} for labels, value in prometheus.query(expr, at)]}
    results["counters_reset"] = counter_resets(prometheus, run, now)
    return results


def counter_resets(prometheus, run, now):
    """resets() > 0 of every counter series the job exposes (histograms' too), one name at a time:
    resets() drops the metric's name, so one query over them all would mix up their series."""
    names = prometheus.api("label/__name__/values", **{"match[]": f'{{job="{JOB}"}}'})
    counters = [name for name in names if re.search(r"_(total|bucket|count|sum)$", name)]
    found = []
    for name in counters:
        found += [{"labels": dict(labels, metric=name), "value": value}
                  for labels, value in prometheus.query(f"resets({name}[{run}s]) > 0", now)]
    return {"expr": f"resets(X[{run}s]) > 0 for each of the {len(counters)} counters", "at": "end", "result": found}


def one(results, key):
    """The value of a single-series result; None if it is empty or several."""
    result = results[key]["result"]
    return result[0]["value"] if len(result) == 1 else None


def by_label(results, key):
    """{label value: value} of a result whose series differ by one label (sum by (reason), say)."""
    return {_label(r): r["value"] for r in results[key]["result"]}


def _label(series):
    """The value of a series' one label besides job and instance."""
    return next((v for k, v in series["labels"].items() if k not in ("job", "instance")), "")


def judge(results, load, operations, final, args):
    """[(check, passed, detail)] over what Prometheus saw and what the load generator counted."""
    v = {key: one(results, key) for key in results}          # the single-valued results
    n = {key: _number(value) for key, value in v.items()}    # the same, as text
    counted, answered = v["requests"], load["answered"]
    kills = sum(r["operation"].startswith("SIGKILL") and "seconds" in r for r in operations)
    exits, workers, reloads = by_label(results, "exits"), by_label(results, "workers"), by_label(results, "reloads")
    low, high = answered - kills, answered + args.clients + load["failed"]
    checks = [
        ("every operation settled", len(operations) == 2 and all("seconds" in r for r in operations),
         "; ".join(f"{r['operation']}: {r.get('detail') or r.get('error')}" for r in operations) or "none ran"),
        ("the load was answered", answered > 0, f"{answered:,} answered, {load['failed']} failed"),
        ("target up now", v["up"] == 1, f"up = {n['up']}"),
        ("target up at every scrape", v["up_every_scrape"] == 1, f"min_over_time(up) = {n['up_every_scrape']}"),
        ("prefork_requests_total never went down", v["resets"] == 0, f"resets = {n['resets']}"),
        ("no counter series reset", not results["counters_reset"]["result"],
         ", ".join(_series(r) for r in results["counters_reset"]["result"]) or "none did"),
        ("Prometheus's last sample is /metrics' final count", counted == final,
         f"{n['requests']} and {_number(final)}"),
        ("every answered request counted", counted is not None and low <= counted <= high,
         f"{n['requests']} counted, {answered:,} answered: expected {low:,} to {high:,}"),
        ("the same total by slot", v["by_slot"] == counted, n["by_slot"]),
        ("the same total in the histogram", v["histogram_count"] == counted, n["histogram_count"]),
        ("exits for the reload", exits.get("reload", 0) >= 1, f"reload = {_number(exits.get('reload'))}" + (
            "" if exits.get("reload") or not exits.get("recycle") else
            f"; recycle = {_number(exits['recycle'])}: a worker near --max-requests goes as a recycle, reload or not")),
        ("an exit by signal for the kill", kills >= 1 and exits.get("signal", 0) >= kills,
         f"signal = {_number(exits.get('signal'))}, workers killed: {kills}"),
        ("generation 1, one reload done, none failed",
         v["generation"] == 1 and reloads.get("done") == 1 and reloads.get("failed") == 0,
         f"generation = {n['generation']}, reloads {_labelled(reloads)}"),
        ("no boot failure", v["boot_failures"] == 0, n["boot_failures"]),
        ("the pool whole and ready at the end",
         workers.get("idle", 0) + workers.get("busy", 0) == args.workers and v["ready"] == 1,
         f"workers {_labelled(workers)}, ready = {n['ready']}"),
    ]
    if args.max_requests and answered > 2 * args.workers * args.max_requests:
        checks.append(("recycles (--max-requests)", exits.get("recycle", 0) >= 1,
                       f"recycle = {_number(exits.get('recycle'))}"))
    return checks


# -- the report ---------------------------------------------------------------------------------

def _number(value):
    """1,234 for whole numbers, 1,234.5 from 100 on, 3 significant digits below (seconds)."""
    if value is None or math.isnan(value):
        return "NaN" if value is not None else "-"
    if value == int(value) and abs(value) < 1e15:
        return f"{value:,.0f}"
    return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"


def _labelled(values):
    """{"reload": 2.0, "crash": 0.0} as "reload=2 (others 0)": only the non-zero ones by name."""
    shown = [f"{k}={_number(v)}" for k, v in sorted(values.items()) if v]
    zeros = len(values) - len(shown)
    return " ".join(shown) + (" (others 0)" if zeros and shown else "" if shown else "all 0")


def _series(series):
    labels = ",".join(f'{k}="{v}"' for k, v in sorted(series["labels"].items()) if k not in ("job", "instance"))
    return f"{{{labels}}} {_number(series['value'])}"


def show(result):
    """A query's result in one cell."""
    series = result["result"]
    if not series:
        return "none"
    if len(series) == 1 and not series[0]["labels"].keys() - {"job", "instance"}:
        return _number(series[0]["value"])
    keys = {k for s in series for k in s["labels"]} - {"job", "instance"}
    if len(keys) == 1:
        key = keys.pop()
        words = not all(_label(s).isdigit() for s in series)     # reason="reload": reload=2; slot="1": slot1=9
        return _labelled({(_label(s) if words else key + _label(s)): s["value"] for s in series})
    return ", ".join(_series(s) for s in series)


def print_report(report):
    load = report["load"]
    print()
    print(operations_table(report["operations"]))
    print()
    print(f"load: {load['tool']}: {load['answered']:,} answered, {load['failed']} failed "
          f"{load['error_kinds'] or ''}".rstrip() + f", {_number(load['rps'])} req/s")
    print(f"/metrics at the end: prefork_requests_total {_number(report['final_count'])}")
    print()
    print("at: end = now, after the final scrape; load = the load's last instant")
    rows = [("query", "at", "value")] + [(r["expr"], r["at"], show(r)) for r in report["queries"].values()]
    width = max(len(row[0]) for row in rows)
    for expr, at, value in rows:
        print(f"{expr.ljust(width)}  {at.ljust(4)}  {value}")
    print()
    for name, passed, detail in report["checks"]:
        print(f"{'ok  ' if passed else 'FAIL'}  {name}: {detail}")


# -- the run ---------------------------------------------------------------------------------------

def parse_args(argv=None):
    parser = Parser(prog="prometheus_scrape.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=positive(int), default=15, metavar="S", help="seconds of load (15)")
    parser.add_argument("-w", "--workers", type=positive(int), default=2, metavar="N", help="workers (2)")
    parser.add_argument("-c", "--clients", type=positive(int), default=50, metavar="N",
                        help="keep-alive connections (50)")
    parser.add_argument("--max-requests", type=at_least_zero, default=5000, metavar="N",
                        help="recycle each worker after N requests; 0: never (5000)")
    parser.add_argument("--no-wrk", action="store_true", help="load with prefork's own load generator, not wrk")
    parser.add_argument("--no-install", action="store_true", help="never run apt-get; exit 2 without prometheus")
    parser.add_argument("--json", metavar="FILE", help="also write every result to FILE")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (configs, logs, database)")
    args = parser.parse_args(argv)
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        parser.error(f"--json {args.json}: no such directory")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        binary, version = find_prometheus(install=not args.no_install)
    except Missing as exc:
        print(f"prometheus_scrape.py: {exc}", file=sys.stderr)
        return 2
    wrk = None if args.no_wrk else find_wrk(install=not args.no_install)
    terminate_on_sigterm()
    workdir = tempfile.mkdtemp(prefix="pf-prom-")
    report = {"machine": machine(), "prometheus": version, "workdir": workdir, "operations": [], "load": None}
    problems, pool, prometheus = [], None, None
    try:
        pool, metrics_url = start_pool(workdir, args)
        report["pool"] = pool.command()
        prometheus = Prometheus(binary, workdir, metrics_url.split("//")[1])
        prometheus.start()
        print(f"{version}: {prometheus.url}, scraping {metrics_url}/metrics every {SCRAPE_INTERVAL} s "
              f"({prometheus.conf})", flush=True)
        print(f"load: {args.clients} keep-alive connections for {args.seconds} s with "
              f"{'wrk' if wrk else 'prefork.tune.loadgen'}; a reload, then a killed worker", flush=True)
        during = disruptions(pool, args.seconds, args.max_requests, report["operations"],
                             lambda line: print(line, flush=True))
        report["load"] = run_load(wrk, pool.address, args.clients, args.seconds, during)
        report["final_count"] = scraped_final_count(prometheus, metrics_url)
        report["queries"] = ask(prometheus, report["load"])
        report["checks"] = judge(report["queries"], report["load"], report["operations"], report["final_count"], args)
    except OperationFailed as exc:
        problems.append(str(exc))
    except KeyboardInterrupt:
        problems.append("interrupted")
    finally:
        if prometheus is not None:
            prometheus.stop()
        if pool is not None:
            report["left_behind"] = pool.stop()
    if report.get("checks"):
        print_report(report)
        problems += [f"{name} ({detail})" for name, passed, detail in report["checks"] if not passed]
    if report.get("left_behind"):
        problems.append(f"processes still running after the stop, killed: {report['left_behind']}")
    return conclude(report, problems, args, workdir)


def conclude(report, problems, args, workdir):
    """The verdict in one line, the JSON, the working directory kept when asked or on failure."""
    report["ok"], report["problems"] = not problems, problems
    count = len(report.get("checks") or [])
    print("result: " + (f"all {count} checks passed" if not problems else "FAILED: " + "; ".join(problems)))
    if args.json:
        report["checks"] = [{"check": name, "passed": passed, "detail": detail}
                            for name, passed, detail in report.get("checks") or []]
        write_json(args.json, report)
    if args.keep or problems:
        print(f"configuration, logs and database: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
