"""Runs in each load client process: an epoll loop over its share of the load generator's connections.

The loop is written for its own cost, since it shares the machine's cores with
the server it measures: epoll without the selectors layer, recv_into a reused
buffer without keep-alive, no objects per request but the socket and its
record, and no parsing of a keep-alive reply identical to the last one. The
rules it follows (when a reply is complete, what is an error) are in
prefork.tune.loadgen's docstring.
"""

import array
import errno
import os
import pickle
import re
import select
import signal
import socket
import sys
import time
from collections import Counter, namedtuple

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.I)
_BUFFER = 65536
_RETRY_TICK = 0.01         # seconds before a failed slot reconnects
_CHECK_TICK = 0.1          # seconds between scans for overdue requests
_EPOLLIN, _EPOLLOUT = select.EPOLLIN, select.EPOLLOUT
_now = time.monotonic

Plan = namedtuple("Plan", "address family request keepalive reply_bytes half_close timeout window_start end greeting")
LINE = "line"              # Plan.greeting: one line, through the first newline (else None, or exactly N bytes)
_GREETING = object()       # _Conn.unsent while the request waits for the server's greeting


def sleep_until(moment):
    while (left := moment - _now()) > 0:
        time.sleep(left)


def client_main(plan, connections, start_at, read_fd, write_fd):
    """The forked client: drive its connections, write a pickled report, and _exit."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)       # the parent handles Ctrl-C and reaps us
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.close(read_fd)
        sleep_until(start_at)
        report = Client(plan).run(connections)
        with open(write_fd, "wb") as pipe:
            pickle.dump(report, pipe)
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
        self.unsent = None       # the rest of a request the socket did not take at once, or _GREETING
        self.served = 0          # replies on this connection


class Client:
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
        # Decided once, so that the usual request pays nothing for greetings: send with the connect.
        self.send_at_once = not plan.half_close and plan.greeting is None

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
            for fd, _ in epoll.poll(max(wake - t, 0.0)):
                conn = conns.get(fd)
                if conn is None:
                    continue
                if conn.unsent is not None:
                    self._resume(conn)
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

    def _open(self, started, _stream=socket.SOCK_STREAM | socket.SOCK_NONBLOCK):
        plan = self.plan
        sock = socket.socket(plan.family, _stream)
        code = sock.connect_ex(plan.address)
        if code and code != errno.EINPROGRESS:
            sock.close()
            if code != errno.EAGAIN:             # a full Unix listen queue: not an error, try again
                self._count_error(_describe(code), started)
            self._retry_later(_now())
            return
        conn = _Conn(sock, started)
        self.conns[conn.fd] = conn
        if self.send_at_once:                    # the usual case: the socket takes the whole request
            try:
                if sock.send(plan.request) == len(plan.request):
                    self.epoll.register(conn.fd, _EPOLLIN)
                    return
            except OSError:
                pass                             # _send tells an error from a connection in progress
        elif plan.greeting is not None:          # the server speaks first; _resume reads it
            conn.unsent = _GREETING
            self.epoll.register(conn.fd, _EPOLLIN)
            return
        self._send(conn, plan.request, register=True)

    def _resume(self, conn):
        """An event on a connection that waits: for the server's greeting, or to send the rest of a request."""
        if conn.unsent is _GREETING:
            self._read_greeting(conn)
        else:
            self._send(conn, conn.unsent)

    def _read_greeting(self, conn):
        """Add to the greeting; once it is complete (and nothing follows it), send the first request."""
        try:
            data = conn.sock.recv(_BUFFER)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(conn, _describe(exc.errno), _now())
            return
        if not data:
            self._fail(conn, "closed before the greeting was complete", _now())
            return
        greeting = conn.head + data
        size = greeting_length(greeting, self.plan.greeting)
        if size is None:
            if len(greeting) > _BUFFER:
                self._fail(conn, "no newline in the first 64 KiB of the greeting", _now())
            else:
                conn.head = greeting
            return
        if len(greeting) > size:
            self._fail(conn, "more greeting bytes than expected", _now())
            return
        conn.head, conn.unsent = b"", None
        self._send(conn, self.plan.request)

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
        sock, buffer = conn.sock, self.buffer
        while True:
            try:
                n = sock.recv_into(buffer)
            except BlockingIOError:
                return
            except OSError as exc:
                self._fail(conn, _describe(exc.errno), _now())
                return
            if not n:
                break
            if not conn.got and n > 9 and buffer.startswith(b"HTTP/") and buffer[9] not in b"23":
                conn.bad_status = True           # an error, once the reply has ended
            conn.got += n
        t = _now()
        del self.conns[conn.fd]
        sock.close()
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
                self._fail(conn, _describe(data.errno), _now())
            return
        if not data:
            if conn.served and not conn.head:    # closed between replies: reconnect, same request
                self._drop(conn)
                self._open(conn.started)
            else:
                self._fail(conn, "closed before the reply was complete", _now())
            return
        reply = conn.head + data if conn.head else data
        need = self.plan.reply_bytes or http_length(reply)
        if need is None or len(reply) < need:
            if need is None and len(reply) > _BUFFER:
                self._fail(conn, "no end of the HTTP header in 64 KiB", _now())
            else:
                conn.head = reply
            return
        if need < 0:
            self._fail(conn, "an HTTP reply without Content-Length", _now())
            return
        t = _now()
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


def http_length(reply):
    """The full length of the HTTP response that reply begins: None while its header is
    incomplete, -1 when it has no Content-Length."""
    end = reply.find(b"\r\n\r\n")
    if end < 0:
        return None
    match = _CONTENT_LENGTH.search(reply, 0, end + 2)
    return end + 4 + int(match.group(1)) if match else -1


def greeting_length(data, greeting):
    """The length of the greeting that data begins (greeting: LINE or a number of bytes), None while
    it is incomplete."""
    if greeting == LINE:
        end = data.find(b"\n")
        return None if end < 0 else end + 1
    return greeting if len(data) >= greeting else None


def _describe(code):
    names = {errno.ECONNREFUSED: "refused", errno.ECONNRESET: "reset", errno.ENOTCONN: "reset",
             errno.EPIPE: "broken pipe", errno.ENOENT: "no such socket", errno.ETIMEDOUT: "timeout"}
    return names.get(code) or os.strerror(code or 0).lower()
