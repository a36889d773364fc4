"""A closed-loop load generator for stream servers, for `prefork tune`.

Each client process drives many non-blocking connections from one epoll loop;
every connection sends a request, waits for the whole reply, and sends the
next one at once (closed loop: concurrency is the number of connections).

Why this shape: Python spends far more CPU per request than wrk does, and on a
small machine the load generator shares the cores with the server it
measures, so its own cost lowers what it measures. So there are as few client
processes as the machine has cores, and the per-request path is a handful of
system calls with as little Python around them as we could manage: epoll
directly (no selectors layer), recv_into a reused buffer, no per-request
objects but the socket.

When is a reply complete:

- without keep-alive (a new connection per request): the client sends the
  request, half-closes its side (shutdown SHUT_WR), and the reply is every
  byte until the server closes. That fits a server that answers and closes
  as well as one that answers until its client is done (a line echo). An
  HTTP request with ``Connection: close`` needs no half-close (``half_close=False``,
  as prefork tune's built-in request does, and as wrk does): the server
  closes first, so the TIME_WAIT state stays on its side.
- with keep-alive: the reply is exactly ``reply_bytes`` bytes when that is
  given, else an HTTP response framed by its Content-Length; the next request
  goes out on the same connection. A server that closes an idle keep-alive
  connection between replies is reconnected to, without an error.

Errors: a refused or reset connection, a connection closed before any reply
byte (or mid-reply with keep-alive), a reply beginning ``HTTP/`` whose status
is not 2xx or 3xx, and a request unanswered after ``timeout`` seconds. A slot
whose request failed opens its next connection a tick later (10 ms), so a
dead server is not hammered in a tight loop.
"""

import array
import contextlib
import errno
import math
import os
import pickle
import re
import select
import signal
import socket
import sys
import time
from collections import Counter, namedtuple
from dataclasses import dataclass, field

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.I)
_BUFFER = 65536
_RETRY_TICK = 0.01         # seconds before a failed slot reconnects
_CHECK_TICK = 0.1          # seconds between scans for overdue requests
_START_DELAY = 0.05        # seconds between forking the clients and the common start
_EPOLLIN, _EPOLLOUT = select.EPOLLIN, select.EPOLLOUT


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


def default_processes(concurrency):
    """One client process per usable CPU, never more than connections."""
    return max(1, min(concurrency, len(os.sched_getaffinity(0))))


def run_load(address, request, concurrency, duration, *, keepalive=False, processes=None, warmup=0.0,
             timeout=2.0, reply_bytes=None, half_close=True, during=None):
    """Drive ``address`` ((host, port) or a Unix socket path) with ``concurrency`` connections
    for ``warmup`` + ``duration`` seconds; count only the last ``duration`` seconds.

    A request unanswered for ``timeout`` seconds, or for the whole window, is an error.
    ``during``, if given, is a context manager factory entered when the measured window
    opens and exited when it closes (prefork tune samples the server's CPU time with it).
    Uses fork(): call it from a single-threaded program.
    """
    if concurrency < 1 or duration <= 0:
        raise ValueError("concurrency must be at least 1 and duration positive")
    processes = min(processes or default_processes(concurrency), concurrency)
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    family = socket.AF_UNIX if isinstance(address, (str, bytes)) else (
        socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
    start_at = time.monotonic() + _START_DELAY
    window_start = start_at + warmup
    end = window_start + duration
    plan = _Plan(address, family, bytes(request), keepalive, reply_bytes, half_close and not keepalive, timeout,
                 window_start, end)
    children = {}
    try:
        for share in shares:
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(read_end)
                _client_main(plan, share, start_at, write_end)     # never returns
            os.close(write_end)
            children[pid] = read_end
        _sleep_until(window_start)
        if during is not None:
            with during():
                _sleep_until(end)
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


_Plan = namedtuple("_Plan", "address family request keepalive reply_bytes half_close timeout window_start end")


def _sleep_until(moment):
    while (left := moment - time.monotonic()) > 0:
        time.sleep(left)


def _read_report(fd):
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    if not chunks:
        raise RuntimeError("a load generator process died without a report")
    return pickle.loads(b"".join(chunks))


def _kill_and_reap(pid):
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _client_main(plan, connections, start_at, write_fd):
    """The forked client: drive its connections, write a pickled report, and _exit."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)       # the parent handles Ctrl-C and reaps us
        _sleep_until(start_at)
        report = _Client(plan).run(connections)
        data = memoryview(pickle.dumps(report))
        while data:
            data = data[os.write(write_fd, data):]
        code = 0
    except BaseException as exc:                            # reported by the parent as a missing report
        print(f"prefork loadgen: client process failed: {exc!r}", file=sys.stderr)
    finally:
        os._exit(code)


class _Conn:
    __slots__ = ("sock", "fd", "started", "got", "bad_status", "head", "unsent", "served")

    def __init__(self, sock, started):
        self.sock, self.fd, self.started = sock, sock.fileno(), started
        self.got = 0             # reply bytes so far (without keep-alive)
        self.bad_status = False  # the reply began with an HTTP status other than 2xx or 3xx
        self.head = b""          # the partial reply so far (with keep-alive)
        self.unsent = None       # the rest of a request the socket did not take at once
        self.served = 0          # replies on this connection


class _Client:
    """One process's epoll loop over its connections."""

    def __init__(self, plan):
        self.plan = plan
        self.epoll = select.epoll()
        self.conns = {}                          # fd -> _Conn
        self.retry = 0                           # slots waiting to reconnect
        self.retry_at = 0.0
        self.latencies = array.array("d")
        self.completed = 0
        self.errors = Counter()
        self.buffer = bytearray(_BUFFER)         # replies without keep-alive are only counted
        self.known_reply = None                  # the last complete keep-alive reply, for a fast match

    def run(self, connections):
        plan, conns, epoll = self.plan, self.conns, self.epoll
        window_start, end, timeout = plan.window_start, plan.end, plan.timeout
        request, request_size, keepalive = plan.request, len(plan.request), plan.keepalive
        record, now = self.latencies.append, time.monotonic
        fast = 0                                 # keep-alive replies identical to the last one
        for _ in range(connections):
            self._open(now())
        first_wave = max(now(), window_start)   # requests sent by then, unanswered at the end, starved
        next_check = now() + _CHECK_TICK
        while True:
            t = now()
            if t >= end:
                break
            if t >= next_check:
                next_check = t + _CHECK_TICK
                for conn in [c for c in conns.values() if t - c.started > timeout]:
                    self._fail(conn, "timeout", t)
            if self.retry and t >= self.retry_at:
                waiting, self.retry = self.retry, 0
                for _ in range(waiting):
                    self._open(t)
            wake = min(next_check, end, self.retry_at) if self.retry else min(next_check, end)
            for fd, mask in epoll.poll(max(wake - t, 0.0)):
                conn = conns.get(fd)
                if conn is None:
                    continue
                if conn.unsent is not None:
                    self._send(conn, conn.unsent)
                    continue
                if not keepalive:
                    self._read_to_eof(conn, window_start)
                    continue
                sock = conn.sock
                try:
                    data = sock.recv(_BUFFER)
                except OSError as exc:
                    data = exc
                if data != self.known_reply or conn.head:
                    self._keepalive_data(conn, data, window_start)
                    continue
                # The fast path, the same reply as last time: no parsing, and the next request at once.
                t = now()
                if t >= window_start:
                    record(t - conn.started)
                    fast += 1
                conn.started = t
                conn.served += 1
                try:
                    sent = sock.send(request)
                except OSError:
                    sent = 0                         # _send tells an error from a full buffer
                if sent != request_size:
                    self._send(conn, request[sent:])
        for conn in conns.values():
            if conn.started <= first_wave:       # waited through the whole window
                self.errors["unanswered for the whole window"] += 1
            conn.sock.close()
        self.epoll.close()
        return {"completed": self.completed + fast, "errors": dict(self.errors), "latencies": self.latencies}

    # -- one request ------------------------------------------------------------------

    def _open(self, started):
        sock = socket.socket(self.plan.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        code = sock.connect_ex(self.plan.address)
        if code and code != errno.EINPROGRESS:
            sock.close()
            if code != errno.EAGAIN:             # a full Unix listen queue: not an error, try again
                self._count_error(_describe(code), started)
            self._retry_later(time.monotonic())
            return
        conn = _Conn(sock, started)
        self.conns[sock.fileno()] = conn
        self._send(conn, self.plan.request, register=True)

    def _send(self, conn, data, register=False):
        """Send what the socket takes; wait for EPOLLOUT for the rest, else for the reply."""
        sock, waiting = conn.sock, conn.unsent is not None
        try:
            sent = sock.send(data)
        except BlockingIOError:                  # still connecting
            sent = 0
        except OSError as exc:
            self._fail(conn, _describe(exc.errno), conn.started)
            return
        if sent < len(data):
            conn.unsent = memoryview(data)[sent:]
            if register:
                self.epoll.register(conn.fd, _EPOLLOUT)
            elif not waiting:
                self.epoll.modify(conn.fd, _EPOLLOUT)
            return
        conn.unsent = None
        if self.plan.half_close:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError as exc:               # the server closed already
                self._fail(conn, _describe(exc.errno), conn.started)
                return
        if register:
            self.epoll.register(conn.fd, _EPOLLIN)
        elif waiting:
            self.epoll.modify(conn.fd, _EPOLLIN)

    def _read_to_eof(self, conn, window_start):
        recv_into, buffer = conn.sock.recv_into, self.buffer
        while True:
            try:
                n = recv_into(buffer)
            except BlockingIOError:
                return
            except OSError as exc:
                self._fail(conn, _describe(exc.errno), time.monotonic())
                return
            if not n:
                break
            if not conn.got and n > 9 and buffer.startswith(b"HTTP/") and buffer[9] not in b"23":
                conn.bad_status = True           # an error, once the reply has ended
            conn.got += n
        t = time.monotonic()
        self._drop(conn)
        if not conn.got:
            self._count_error("closed without a reply", t)
        elif conn.bad_status:
            self._count_error("HTTP error status", t)
        elif t >= window_start:
            self.latencies.append(t - conn.started)
            self.completed += 1
        self._open(t)

    def _keepalive_data(self, conn, data, window_start):
        """Add what recv returned (bytes or an OSError) to the reply; on a complete reply, send the next request."""
        if isinstance(data, OSError):
            if not isinstance(data, BlockingIOError):
                self._fail(conn, _describe(data.errno), time.monotonic())
            return
        if not data:
            if conn.served and not conn.head:    # closed between replies: reconnect, same request
                self._drop(conn)
                self._open(conn.started)
            else:
                self._fail(conn, "closed before the reply was complete", time.monotonic())
            return
        reply = conn.head + data if conn.head else data
        need = self.plan.reply_bytes or _http_length(reply)
        if need is None or len(reply) < need:
            if need is None and len(reply) > _BUFFER:
                self._fail(conn, "no end of the HTTP header in 64 KiB", time.monotonic())
            else:
                conn.head = reply
            return
        if need < 0:
            self._fail(conn, "an HTTP reply without Content-Length", time.monotonic())
            return
        t = time.monotonic()
        if len(reply) > need:
            self._fail(conn, "more reply bytes than expected", t)
            return
        conn.head = b""
        conn.served += 1
        if reply.startswith(b"HTTP/") and reply[9] not in b"23":
            self._count_error("HTTP error status", t)
        else:
            self.known_reply = reply
            if t >= window_start:
                self.latencies.append(t - conn.started)
                self.completed += 1
        conn.started = t
        self._send(conn, self.plan.request)

    # -- failures ------------------------------------------------------------------------

    def _fail(self, conn, kind, t):
        self._drop(conn)
        self._count_error(kind, t)
        self._retry_later(t)

    def _retry_later(self, t):
        if not self.retry:
            self.retry_at = t + _RETRY_TICK
        self.retry += 1

    def _drop(self, conn):
        self.conns.pop(conn.fd, None)
        conn.sock.close()

    def _count_error(self, kind, t):
        if t >= self.plan.window_start:
            self.errors[kind] += 1


def _http_length(reply):
    """The full length of the HTTP response that reply begins: None while its header is
    incomplete, -1 when it has no Content-Length."""
    end = reply.find(b"\r\n\r\n")
    if end < 0:
        return None
    match = _CONTENT_LENGTH.search(reply, 0, end + 2)
    return end + 4 + int(match.group(1)) if match else -1


def _describe(code):
    names = {errno.ECONNREFUSED: "refused", errno.ECONNRESET: "reset", errno.ENOTCONN: "reset",
             errno.EPIPE: "broken pipe", errno.ENOENT: "no such socket", errno.ETIMEDOUT: "timeout"}
    return names.get(code) or os.strerror(code or 0).lower()
