#!/usr/bin/env python3
"""Many connections: what parking buys, one single-threaded worker holding thousands of idle clients.

    python scripts/many_connections.py              # the full run, under a minute
    python scripts/many_connections.py --quick      # fewer connections, 1 s runs: about 10 s (CI, via bench.py)
    python scripts/many_connections.py --json PATH  # also write the figures as JSON

Measurements (every server has 2 workers of one thread each; the goals in brackets):
  idle-third    2 idle keep-alive clients hold the 2 workers; a third client's
                request, on a new connection [< 10 ms; 5.1 s before parking]
  idle-10k      wrk -c50 without, then with 10,000 idle keep-alive connections
                parked [p99 < 10 ms, throughput within 10 %]; worker USS per
                parked connection [< 8 KB]; connections held by each worker
  echo-paced    1,000 connections, each a 64-byte line every 100 ms
                (scripts/echo_load.c) [every line answered, p99 < 10 ms]
  hup-1000      1,000 connections to scripts/pid_echo.py, a line on each, SIGHUP,
                a line on each again [none closed, all answered by new workers]
  spread-c1000  wrk -c1000; the connections each worker holds, mid-run

--quick: 2,000 idle connections, 200 paced ones, 100 through the HUP, 1 s
runs. scripts/bench.py runs this as its many-connections workload (measure()).
The connections opened here are driven by one epoll loop (exchange()): real
keep-alive connections that have each been served a request, then parked.
"""

import argparse
import collections
import concurrent.futures
import contextlib
import errno
import json
import os
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

from _http import http_get
from bench import PY, REPO, SCRIPTS, Server, _in_dir, build_echo_load, prefork_cmd, run_wrk

HELLO = "prefork_workers.hello:HelloHandler"
ECHO = "prefork_workers.echo:EchoHandler"
PID_ECHO = "pid_echo:PidEchoHandler"
HTTP_REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"     # keep-alive: HTTP/1.1's default
HELLO_BODY = b"Hello, World!"
LINE = b"x" * 63 + b"\n"
CONNECTING = 500             # connects in progress at once: well under the listen backlog (2048)
NO_WRK = "wrk is missing (apt-get install wrk)"

# Connections idle (idle-10k), paced (echo-paced) and through the HUP; seconds of each wrk run and of
# the paced clients; third-client requests timed (idle-third).
Plan = collections.namedtuple("Plan", "idle paced hup seconds paced_seconds repeats")
FULL = Plan(idle=10_000, paced=1000, hup=1000, seconds=5, paced_seconds=10, repeats=9)
QUICK = Plan(idle=2000, paced=200, hup=100, seconds=1, paced_seconds=1, repeats=3)


def measure(quick, wrk_path):
    """Every measurement, each printed as it ends; a dict of their figures by name.

    wrk_path None skips what needs wrk (a line says so). Servers and tools
    started here inherit the raised open-file limit, so that one worker can
    hold thousands of connections.
    """
    plan = QUICK if quick else FULL
    echo_load, missing = build_echo_load()
    no_echo_load = {"skipped": f"scripts/echo_load.c not built, missing {missing}"}
    results = {}
    with raised_fd_limit() as limit, tempfile.TemporaryDirectory(prefix="prefork-many-") as workdir:
        steps = [("idle-third", lambda: idle_third(plan)),
                 ("idle-10k", lambda: idle_many(plan, wrk_path, workdir, limit)),
                 ("echo-paced", lambda: echo_paced(plan, echo_load) if echo_load else no_echo_load),
                 ("hup-1000", lambda: hup(plan)),
                 ("spread-c1000", lambda: spread(plan, wrk_path, workdir) if wrk_path else {"skipped": NO_WRK})]
        for name, run in steps:
            results[name] = run()
            print(f"  {describe_one(name, results[name])}", flush=True)
    return results


# -- the measurements ---------------------------------------------------------------------

def idle_third(plan):
    """Two idle keep-alive clients must not keep a third client waiting.

    Before parking, each of them held one of the two workers until the keep-alive timeout.
    """
    with serving("hello -w 2", prefork_cmd(HELLO, "-w", "2")) as server, connections(2) as idle:
        first = exchange(server.port, idle, HTTP_REQUEST, http_complete)
        samples = [timed_get(server.port) for _ in range(plan.repeats)]
        again = exchange(server.port, idle, HTTP_REQUEST, http_complete)   # still there, still served
    return {"samples_ms": [round(s, 3) for s in samples], "median_ms": statistics.median(samples),
            "max_ms": max(samples), "idle_answered": answered(first) + answered(again),
            "idle_requests": len(first) + len(again)} | server_log(server)


def idle_many(plan, wrk, workdir, fd_limit):
    """wrk with and without thousands of parked connections; what each parked connection costs.

    USS, not RSS: the pages the worker itself has dirtied, which is what the
    connections add. The kernel's socket buffers are not in it.
    """
    count = min(plan.idle, fd_limit - 100)
    if count < plan.idle:
        print(f"  idle-10k: the open-file limit ({fd_limit}) allows {count} idle connections", flush=True)
    if not wrk:
        print(f"  idle-10k: {NO_WRK}; no throughput with and without", flush=True)
    control = os.path.join(workdir, "idle.ctl")
    command = prefork_cmd(HELLO, "-w", "2", "--max-connections", "6000", "--control", control)
    with serving("hello -w 2 --max-connections 6000", command) as server, connections(count) as socks:
        without = wrk and warm_wrk(wrk, server.port, plan.seconds)
        time.sleep(0.5)                          # let the wrk connections' teardown settle
        workers = worker_processes(server)
        before = uss(workers)
        started = time.monotonic()
        outcomes = exchange(server.port, socks, HTTP_REQUEST, http_complete, timeout=120)
        opened_seconds = time.monotonic() - started
        time.sleep(0.5)
        after = uss(workers)
        held = connections_held(control)
        loaded = wrk and run_wrk(wrk, server.port, plan.seconds, False)
        still_open = sum(is_open(sock) for sock, outcome in zip(socks, outcomes) if isinstance(outcome, bytes))
    opened = answered(outcomes)
    return {"idle": count, "opened": opened, "open_failures": failures(outcomes), "opened_seconds": opened_seconds,
            "still_open_after_wrk": still_open, "connections_per_worker": held,
            "uss_before": before, "uss_after": after,
            "uss_per_connection": (sum(after) - sum(before)) / opened if opened else None,
            "without": without or None, "with": loaded or None,
            "throughput_ratio": loaded["rps"] / without["rps"] if wrk else None} | server_log(server)


def echo_paced(plan, echo_load):
    """Paced long-lived line clients (scripts/echo_load.c, INTERVAL_MS 100): latency with many connections open."""
    command = prefork_cmd(ECHO, "-w", "2", "--max-connections", "2000")
    with serving("echo -w 2 --max-connections 2000", command) as server:
        done = subprocess.run([echo_load, "127.0.0.1", str(server.port), "long", str(plan.paced),
                               str(plan.paced_seconds), str(len(LINE)), "100"],
                              capture_output=True, text=True, timeout=plan.paced_seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"echo_load failed: {done.stderr.strip()[-300:]}")
    figures = json.loads(done.stdout)
    return {"connections": plan.paced, "seconds": plan.paced_seconds, "interval_ms": 100,
            "sent": figures["sent"], "answered": figures["answered"],
            "unanswered": figures["sent"] - figures["answered"], "errors": figures["errors"],
            "served": figures["served"], "p50_ms": figures["p50_ms"], "p99_ms": figures["p99_ms"],
            "max_ms": figures["max_ms"]} | server_log(server)


def hup(plan):
    """Parked connections through a reload: the retiring workers hand them over, none is closed.

    At --log-level info, for the retiring workers' line on how many they handed over and closed.
    """
    command = _in_dir(prefork_cmd(PID_ECHO, "-w", "2", "--max-connections", "2000", "--log-level", "info"),
                      SCRIPTS)
    with serving("pid_echo -w 2 --max-connections 2000", command) as server, connections(plan.hup) as socks:
        initial = set(worker_processes(server))
        first = exchange(server.port, socks, LINE, line_complete)
        kept = [sock for sock, outcome in zip(socks, first) if isinstance(outcome, bytes)]
        reload_seconds = reload_and_wait(server, initial)
        new = set(worker_processes(server))
        second = exchange(server.port, kept, LINE, line_complete, timeout=30)
    first_pids, second_pids = answering_pids(first), answering_pids(second)
    return {"connections": plan.hup, "opened": len(kept), "open_failures": failures(first),
            "first_by_initial": sum(pid in initial for pid in first_pids), "reload_seconds": reload_seconds,
            "closed": sum(outcome in ("closed", "ConnectionResetError") for outcome in second),
            "unanswered": sum(outcome == "timed out" for outcome in second),
            "by_new": sum(pid in new for pid in second_pids),
            "by_other": sum(pid not in new for pid in second_pids),
            "failures": failures(second), "handover_log": logged(server, "handed")} | server_log(server)


def spread(plan, wrk, workdir):
    """wrk -c1000: how evenly the two workers share 1000 connections (read mid-run from the control socket)."""
    control = os.path.join(workdir, "spread.ctl")
    command = prefork_cmd(HELLO, "-w", "2", "--max-connections", "2000", "--control", control)
    with serving("hello -w 2 --max-connections 2000", command) as server, \
            concurrent.futures.ThreadPoolExecutor(1) as pool:
        load = pool.submit(run_wrk, wrk, server.port, plan.seconds, False, 1000)
        time.sleep(plan.seconds / 2)
        held = connections_held(control)
        figures = load.result(timeout=plan.seconds + 60)
    return {"connections_per_worker": held, "min": min(held), "max": max(held), "rps": figures["rps"],
            "p99_ms": figures["p99_ms"], "errors": figures["errors"]} | server_log(server)


# -- servers ---------------------------------------------------------------------------------

@contextlib.contextmanager
def serving(name, command):
    """A started prefork server, stopped (SIGTERM to its process group) however the block ends."""
    server = Server(name, command, peer=False)
    try:
        yield server.start()
    finally:
        server.stop()


def server_log(server):
    """The server's last warnings and errors, when it logged any."""
    lines = logged(server, "] [WARNING] ", "] [ERROR] ", "] [CRITICAL] ", "Traceback", "Error")
    return {"server_log": lines[-10:]} if lines else {}


def logged(server, *words):
    """The lines of the server's stderr that hold any of words."""
    return [line for line in server.log_tail(200_000).splitlines() if any(word in line for word in words)]


def worker_processes(server):
    """The master's live workers by pid (its children titled "prefork: worker", not a zygote)."""
    found = {}
    for child in psutil.Process(server.proc.pid).children():
        try:
            if "prefork: worker" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                found[child.pid] = child
        except psutil.NoSuchProcess:
            pass
    return found


def uss(workers):
    """Each worker's unique memory in bytes, in pid order."""
    return [workers[pid].memory_full_info().uss for pid in sorted(workers)]


def connections_held(control):
    """The connections each worker holds, by slot, from `prefork ctl status --json`."""
    done = subprocess.run([PY, "-m", "prefork", "ctl", "--control", control, "status", "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"prefork ctl status failed: {done.stderr.strip()[-300:]}")
    workers = sorted(json.loads(done.stdout)["workers"], key=lambda worker: worker["slot"])
    return [worker["connections"] for worker in workers]


def reload_and_wait(server, initial, timeout=60):
    """SIGHUP to the master; seconds until as many workers serve, none of them initial, and those are gone."""
    started = time.monotonic()
    os.kill(server.proc.pid, signal.SIGHUP)
    deadline = started + timeout
    while True:
        now = set(worker_processes(server))
        if len(now) == len(initial) and not now & initial and not any(map(psutil.pid_exists, initial)):
            return time.monotonic() - started
        if time.monotonic() > deadline:
            raise RuntimeError(f"the reload did not end within {timeout} s: workers {sorted(now)}, "
                               f"initially {sorted(initial)}")
        time.sleep(0.01)


@contextlib.contextmanager
def raised_fd_limit():
    """This process's open-file soft limit raised to the hard one meanwhile; the limit it gives.

    Thousands of client sockets live here, and the servers and tools started
    meanwhile inherit the limit: a worker holding 5,000 connections needs it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- clients ----------------------------------------------------------------------------------

def warm_wrk(wrk, port, seconds):
    """wrk after a 1 s run to warm the workers up, as bench.py's throughput() does."""
    run_wrk(wrk, port, 1, False)
    return run_wrk(wrk, port, seconds, False)


def timed_get(port):
    """Milliseconds for one GET on a new connection (Connection: close), the reply read to its end."""
    started = time.perf_counter()
    reply = http_get(port, timeout=30)
    elapsed = (time.perf_counter() - started) * 1000
    if not reply.endswith(HELLO_BODY):
        raise RuntimeError(f"bad reply: {reply[-80:]!r}")
    return elapsed


def http_complete(reply):
    return reply.endswith(HELLO_BODY)


def line_complete(reply):
    return reply.endswith(b"\n")


@contextlib.contextmanager
def connections(count):
    """A list of count slots for sockets (None until exchange() opens them); every socket closed after."""
    socks = [None] * count
    try:
        yield socks
    finally:
        for sock in socks:
            if sock is not None:
                sock.close()


def exchange(port, socks, request, complete, timeout=60.0):
    """Send request on every socket of socks and read its reply until complete(reply); they stay open.

    A None in socks is a connection to open first (the socket replaces it),
    CONNECTING at a time so as not to overflow the listen queue. One thread
    and one epoll for all of them. Returns an outcome per socket: the reply,
    or why there is none: "closed" (by the server), "timed out", or the
    error's name. A failed socket is closed.
    """
    outcomes = [None] * len(socks)
    to_open = collections.deque(i for i, sock in enumerate(socks) if sock is None)
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        exchanger = _Exchanger(port, socks, request, complete, selector, outcomes)
        for index, sock in enumerate(socks):
            if sock is not None:
                exchanger.send(index)
        while (to_open or selector.get_map()) and time.monotonic() < deadline:
            while to_open and exchanger.connecting < CONNECTING:
                exchanger.connect(to_open.popleft())
            for key, _ in selector.select(0.1):
                exchanger.step(key.data)
        for key in list(selector.get_map().values()):
            exchanger.fail(key.data, "timed out")
    for index in to_open:
        outcomes[index] = "timed out"
    return outcomes


class _Exchanger:
    """exchange()'s per-socket steps: connect, send the request, receive the reply."""

    def __init__(self, port, socks, request, complete, selector, outcomes):
        self.port, self.socks, self.request, self.complete = port, socks, request, complete
        self.selector, self.outcomes = selector, outcomes
        self.received = {}                # index -> bytes of its reply so far
        self.connecting = 0

    def connect(self, index):
        sock = self.socks[index] = socket.socket()
        sock.setblocking(False)
        error = sock.connect_ex(("127.0.0.1", self.port))
        if error not in (0, errno.EINPROGRESS):
            self.outcomes[index] = errno.errorcode.get(error, str(error))
            sock.close()
            return
        self.connecting += 1
        self.selector.register(sock, selectors.EVENT_WRITE, index)

    def send(self, index):
        """Write the request (a few bytes: the socket's buffer takes them at once) and wait for the reply."""
        sock = self.socks[index]
        try:
            sock.sendall(self.request)
        except OSError as exc:
            self.outcomes[index] = type(exc).__name__
            sock.close()
            return
        self.received[index] = b""
        self.selector.register(sock, selectors.EVENT_READ, index)

    def step(self, index):
        sock = self.socks[index]
        if index not in self.received:                   # connected, or failed to
            self.connecting -= 1
            self.selector.unregister(sock)
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                self.outcomes[index] = errno.errorcode.get(error, str(error))
                sock.close()
            else:
                self.send(index)
            return
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            self.fail(index, type(exc).__name__)
            return
        if not data:
            self.fail(index, "closed")
            return
        reply = self.received[index] = self.received[index] + data
        if self.complete(reply):
            self.selector.unregister(sock)
            self.outcomes[index] = reply

    def fail(self, index, why):
        if index not in self.received:
            self.connecting -= 1
        self.selector.unregister(self.socks[index])
        self.outcomes[index] = why
        self.socks[index].close()


def is_open(sock):
    """Whether the server has left the connection open: nothing to read, and no end of file."""
    try:
        return sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def answered(outcomes):
    return sum(isinstance(outcome, bytes) for outcome in outcomes)


def failures(outcomes):
    """How many failed, by why."""
    return dict(collections.Counter(outcome for outcome in outcomes if not isinstance(outcome, bytes)))


def answering_pids(outcomes):
    """The worker pid each pid_echo reply starts with (b"1234|line")."""
    return [int(outcome.split(b"|", 1)[0]) for outcome in outcomes if isinstance(outcome, bytes)]


# -- report -----------------------------------------------------------------------------------

def describe(results):
    """One line per measurement, for people."""
    return [describe_one(name, figures) for name, figures in results.items()]


def describe_one(name, f):
    if "skipped" in f:
        return f"{name}: skipped, {f['skipped']}"
    text = DESCRIBERS[name](f)
    return f"{name}: {text}" + (f"\n    server log: {' | '.join(f['server_log'])}" if f.get("server_log") else "")


def _idle_third(f):
    return (f"a third client's request with 2 idle keep-alive clients: median {f['median_ms']:.2f} ms, max "
            f"{f['max_ms']:.2f} ms (goal < 10 ms); the idle clients' {f['idle_requests']} requests: "
            f"{f['idle_answered']} answered")


def _idle_many(f):
    per_worker = [round((a - b) / 2**20, 1) for a, b in zip(f["uss_after"], f["uss_before"])]
    text = (f"{f['opened']} of {f['idle']} idle connections opened in {f['opened_seconds']:.1f} s"
            f"{_failed(f['open_failures'])}; held per worker {f['connections_per_worker']}; worker USS +"
            f"{per_worker} MB, {_bytes(f['uss_per_connection'])} per parked connection (goal < 8 KB)")
    if f["with"]:
        text += (f"; wrk -c50 without {f['without']['rps']:.0f} req/s p99 {f['without']['p99_ms']:.2f} ms, "
                 f"with {f['with']['rps']:.0f} req/s p99 {f['with']['p99_ms']:.2f} ms (goal < 10 ms), "
                 f"{f['throughput_ratio']:.2f}x (goal >= 0.9), errors {f['without']['errors']}/"
                 f"{f['with']['errors']}")
    return text + f"; still open after: {f['still_open_after_wrk']}"


def _echo_paced(f):
    return (f"{f['connections']} connections, a line every {f['interval_ms']} ms for {f['seconds']} s: "
            f"{f['sent']} sent, {f['answered']} answered, {f['unanswered']} unanswered (goal 0), "
            f"{f['errors']} errors; latency p50 {f['p50_ms']:.2f} ms, p99 {f['p99_ms']:.2f} ms (goal < 10 ms), "
            f"max {f['max_ms']:.2f} ms")


def _hup(f):
    return (f"{f['opened']} of {f['connections']} connections opened{_failed(f['open_failures'])}, "
            f"{f['first_by_initial']} answered by the initial workers; reload took {f['reload_seconds']:.2f} s; "
            f"then {f['closed']} closed by the server (goal 0), {f['unanswered']} unanswered, {f['by_new']} "
            f"answered by a new worker (goal {f['opened']}), {f['by_other']} by another{_failed(f['failures'])}"
            + "".join(f"\n    {line}" for line in f["handover_log"]))


def _spread(f):
    return (f"wrk -c1000: connections per worker mid-run {f['connections_per_worker']} (min {f['min']}, max "
            f"{f['max']}); {f['rps']:.0f} req/s, p99 {f['p99_ms']:.2f} ms, {f['errors']} errors")


DESCRIBERS = {"idle-third": _idle_third, "idle-10k": _idle_many, "echo-paced": _echo_paced, "hup-1000": _hup,
              "spread-c1000": _spread}


def _failed(why):
    return f" (failed: {why})" if why else ""


def _bytes(value):
    return "-" if value is None else f"{value:.0f} B"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer connections and 1 s runs (under 30 s)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    started = time.monotonic()
    results = measure(args.quick, shutil.which("wrk"))
    print(f"many connections: {time.monotonic() - started:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
