"""Runs in the master of `prefork serve --metrics ADDR`: /metrics, /healthz and /readyz over HTTP.

The master answers from its own loop, so an answer from /healthz means the
loop is alive (a master stuck in a system call answers nothing, which is
what a liveness probe is for). /readyz is 200 while at least one worker of
the current generation is ready and the pool is neither stopping nor
handing over to an upgrade's new master, else 503 (pool/metrics.health).

A scraper must never delay the loop: every connection is non-blocking,
read and written from the loop's selector, one request each (HTTP/1.0
style: the answer closes the connection), with a size limit on the request,
a deadline on the whole exchange and a cap on connections at once.
"""

import logging
import selectors
import socket
import time

from prefork.errors import BindError
from prefork.exposition import OPENMETRICS_TYPE, TEXT_TYPE, render, wants_openmetrics
from prefork.listeners import UnixPathOwner, describe_socket, open_listener, parse_bind
from prefork.pool import metrics
from prefork.pool.service import Service

log = logging.getLogger("prefork")

MAX_HEAD = 8192              # bytes of request head, at most
CLIENT_DEADLINE = 5.0        # seconds a scraper has for its whole exchange
MAX_CLIENTS = 64             # connections at once; more are closed at once
STATUS_TEXT = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


def open_metrics_socket(address, backlog=64):
    """Listen on a TCP HOST:PORT, or on a Unix socket path (one with a '/', or unix:PATH); BindError if not."""
    text = f"unix:{address}" if address.startswith(("/", "./", "../")) else address
    try:
        bind = parse_bind(text)
    except BindError as exc:
        raise BindError(f"--metrics: {exc}") from None
    if not bind.stream:
        raise BindError(f"--metrics {address}: metrics are served over a stream socket, not {bind.kind}")
    try:
        sock = open_listener(bind, backlog)
    except BindError as exc:
        raise BindError(f"--metrics: {exc}") from None
    sock.setblocking(False)
    return sock


class MetricsServer(Service):
    """A master service (see Master.services): answers /metrics, /healthz and /readyz."""

    INHERIT_VARIABLE = "PREFORK_METRICS_FD"       # how an upgrade passes the socket to the new master

    def __init__(self, sock, owned=True, active=True):
        self.sock = sock
        self.address = describe_socket(sock)
        address = sock.getsockname()
        self.owner = UnixPathOwner(address) if owned and sock.family == socket.AF_UNIX and address else None
        self.active = active             # False while the other master of an upgrade answers instead
        self._clients = {}               # socket -> _Exchange
        self._selector = None

    def start(self, selector):
        self._selector = selector
        if self.active:
            selector.register(self.sock, selectors.EVENT_READ, self)
        log.info("metrics on %s: /metrics, /healthz, /readyz%s", self.address,
                 "" if self.active else " (once this master serves)")

    def pause(self):
        if self.active:
            self._selector.unregister(self.sock)
            self.active = False

    def resume(self):
        if not self.active:
            self._selector.register(self.sock, selectors.EVENT_READ, self)
            self.active = True

    def on_event(self, master, fileobj, mask):
        if fileobj is self.sock:
            self._accept()
            return
        exchange = self._clients.get(fileobj)
        if exchange is not None and exchange.on_event(mask, master):
            self._drop(exchange)
        elif exchange is not None and exchange.outbox:
            self._selector.modify(exchange.sock, selectors.EVENT_WRITE, self)

    def on_pass(self, master, now):
        for exchange in list(self._clients.values()):
            if now > exchange.deadline:
                self._drop(exchange)
        return min((e.deadline for e in self._clients.values()), default=None)

    def close(self, in_child=False):
        for exchange in list(self._clients.values()):
            self._drop(exchange, unregister=not in_child)
        self.sock.close()
        if not in_child and self.owner is not None:
            self.owner.remove()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:           # EMFILE and the like: try again on the next event
                log.warning("metrics: cannot accept: %s", exc.strerror)
                return
            if len(self._clients) >= MAX_CLIENTS:
                conn.close()
                continue
            conn.setblocking(False)
            exchange = _Exchange(conn)
            self._clients[conn] = exchange
            self._selector.register(conn, selectors.EVENT_READ, self)

    def _drop(self, exchange, unregister=True):
        self._clients.pop(exchange.sock, None)
        if unregister:
            try:
                self._selector.unregister(exchange.sock)
            except (KeyError, ValueError):
                pass
        exchange.sock.close()


class _Exchange:
    """One HTTP request on one connection: read its head, answer, close."""

    def __init__(self, sock):
        self.sock = sock
        self.inbox = b""
        self.outbox = b""
        self.answered = False
        self.deadline = time.monotonic() + CLIENT_DEADLINE

    def on_event(self, mask, master):
        """Handle readiness; True when the exchange is over."""
        try:
            if mask & selectors.EVENT_READ and not self.answered:
                data = self.sock.recv(MAX_HEAD)
                if not data:
                    return True
                self.inbox += data
                if b"\r\n\r\n" in self.inbox or b"\n\n" in self.inbox:
                    self.outbox, self.answered = answer(self.inbox, master), True
                elif len(self.inbox) > MAX_HEAD:
                    self.outbox, self.answered = response(400, b"request head too large\n"), True
            if self.outbox:
                sent = self.sock.send(self.outbox)
                self.outbox = self.outbox[sent:]
                return not self.outbox
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        return False


def answer(head, master):
    """The whole HTTP response to a request head (bytes)."""
    lines = head.decode("latin-1").split("\n")
    parts = lines[0].split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return response(400, b"bad request line\n")
    method, target = parts[0], parts[1].split("?", 1)[0]
    headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    if method not in ("GET", "HEAD"):
        return response(405, b"GET or HEAD only\n", extra="Allow: GET, HEAD\r\n")
    if target == "/metrics":
        openmetrics = wants_openmetrics(headers.get("accept"))
        body = render(metrics.gather(master), openmetrics)
        reply = response(200, body, OPENMETRICS_TYPE if openmetrics else TEXT_TYPE)
    elif target == "/healthz":
        reply = response(200, b"ok: the master's loop answers\n")
    elif target == "/readyz":
        ready, why = metrics.health(master)
        reply = response(200 if ready else 503, f"{'ready' if ready else 'not ready'}: {why}\n".encode())
    else:
        reply = response(404, b"not found: /metrics, /healthz or /readyz\n")
    if method == "HEAD":
        reply = reply.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    return reply


def response(status, body, content_type="text/plain; charset=utf-8", extra=""):
    return (f"HTTP/1.1 {status} {STATUS_TEXT[status]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n").encode() + body
