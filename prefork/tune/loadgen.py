"""Runs in the `prefork tune` process: a closed-loop load generator for stream servers.

Client processes (client_process.py, no more than the CPUs) each drive their
share of the connections from one epoll loop; each connection sends a request,
waits for the whole reply and sends the next at once (concurrency is the
number of connections). This module forks them and merges what they measured.
Why it is built this way: docs/design.md, "Measuring with a Python load generator".

When a reply is complete:

- without keep-alive (a new connection per request): the client sends the
  request and half-closes (shutdown SHUT_WR); the reply is everything until
  the server closes. ``half_close=False`` skips the half-close for an HTTP
  request with ``Connection: close``, as wrk does.
- with keep-alive: the reply is ``reply_bytes`` bytes if given, else an HTTP
  response framed by its Content-Length. A server that closes a keep-alive
  connection between replies is reconnected to, without an error.

A server that speaks first (SMTP, FTP, POP3): with ``greeting`` the client
reads one line (``greeting=LINE``) or exactly N bytes on each new connection
before its first request; more than that, or a close before it is complete,
is an error. Waiting for it counts in the first request's latency.

Errors: a refused or reset connection, one closed before the reply was
complete, a reply beginning ``HTTP/`` whose status is not 2xx or 3xx, a
request unanswered after ``timeout`` seconds or for the whole measured window.
A slot whose request failed reconnects a tick (10 ms) later.
"""

import array
import contextlib
import math
import os
import pickle
import signal
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from prefork.tune.client_process import LINE, Plan, client_main, sleep_until  # noqa: F401 (LINE: for callers)

_START_DELAY = 0.05        # seconds between forking the clients and the common start


@dataclass
class LoadResult:
    """What one run measured: completed requests and errors inside the window, latencies in seconds."""

    completed: int
    errors: int
    seconds: float
    latencies: array.array = field(repr=False)          # sorted, seconds
    error_kinds: dict = field(default_factory=dict)     # {"refused": 3, "timeout": 1, ...}

    @property
    def throughput(self):
        return self.completed / self.seconds if self.seconds > 0 else 0.0

    @property
    def p50_ms(self):
        return self.percentile_ms(50)

    @property
    def p99_ms(self):
        return self.percentile_ms(99)

    def percentile_ms(self, percent):
        value = percentile(self.latencies, percent)
        return None if value is None else value * 1000


def percentile(sorted_values, percent):
    """The nearest-rank percentile of sorted values: the smallest value that at least
    percent % of the values do not exceed. None for no values."""
    if not len(sorted_values):
        return None
    rank = math.ceil(percent / 100 * len(sorted_values))
    return sorted_values[min(max(rank, 1), len(sorted_values)) - 1]


def http_get(address, keepalive):
    """The default request: ``GET / HTTP/1.1`` with Host, and ``Connection: close`` without keep-alive."""
    if isinstance(address, tuple):
        host = f"[{address[0]}]:{address[1]}" if ":" in address[0] else f"{address[0]}:{address[1]}"
    else:
        host = "localhost"
    close = "" if keepalive else "Connection: close\r\n"
    return f"GET / HTTP/1.1\r\nHost: {host}\r\n{close}\r\n".encode("ascii")


def run_load(address, request, concurrency, duration, *, keepalive=False, processes=None, warmup=0.0,
             timeout=2.0, reply_bytes=None, half_close=True, greeting=None, during=None):
    """Drive ``address`` ((host, port) or a Unix socket path) with ``concurrency`` connections
    for ``warmup`` + ``duration`` seconds; count only the last ``duration`` seconds.

    A request unanswered for ``timeout`` seconds, or for the whole window, is an error.
    ``greeting`` (client_process.LINE or a number of bytes) is what the server sends first on
    each connection, read and checked before the first request is sent.
    ``during``, if given, is a context manager factory entered when the measured window
    opens and exited when it closes (prefork tune samples the server's CPU time with it).
    ``processes`` client processes share the connections (default: one per usable CPU).
    Uses fork(): call it from a single-threaded program.
    """
    if concurrency < 1 or duration <= 0:
        raise ValueError("concurrency must be at least 1 and duration positive")
    processes = min(processes or len(os.sched_getaffinity(0)), concurrency)
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    family = socket.AF_UNIX if isinstance(address, (str, bytes)) else (
        socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
    start_at = time.monotonic() + _START_DELAY
    window_start = start_at + warmup
    end = window_start + duration
    plan = Plan(address, family, bytes(request), keepalive, reply_bytes, half_close and not keepalive, timeout,
                 window_start, end, greeting)
    children = {}
    try:
        with deferred_signals():                 # every client forked is recorded, to be reaped
            for share in shares:
                read_end, write_end = os.pipe()
                pid = os.fork()
                if pid == 0:
                    client_main(plan, share, start_at, read_end, write_end)     # never returns
                os.close(write_end)
                children[pid] = read_end
        sleep_until(window_start)
        if during is not None:
            with during():
                sleep_until(end)
        reports = [_read_report(fd) for fd in children.values()]
        for pid in list(children):
            os.waitpid(pid, 0)
            os.close(children.pop(pid))
    finally:
        for pid, fd in children.items():            # interrupted: stop and reap every client
            _kill_and_reap(pid)
            os.close(fd)
    latencies, kinds = array.array("d"), Counter()
    for report in reports:
        latencies.extend(report["latencies"])
        kinds.update(report["errors"])
    return LoadResult(completed=sum(r["completed"] for r in reports), errors=sum(kinds.values()),
                      seconds=duration, latencies=array.array("d", sorted(latencies)), error_kinds=dict(kinds))


@contextlib.contextmanager
def deferred_signals(signums=(signal.SIGINT, signal.SIGTERM)):
    """Hold Ctrl-C and SIGTERM until the block ends, then deliver them: a block that starts
    a process and records it must not be cut in between, or the process would be lost.
    (Not a blocked signal mask: a child would inherit it, and exec would keep it.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = {signum: signal.signal(signum, lambda signum, frame: caught.append(signum)) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in caught:
            os.kill(os.getpid(), signum)


def _read_report(fd):
    with open(fd, "rb", closefd=False) as pipe:
        data = pipe.read()
    if not data:
        raise RuntimeError("a load generator process died without a report")
    return pickle.loads(data)


def _kill_and_reap(pid):
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
