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
import os

from prefork.errors import BindError
from prefork.exposition import OPENMETRICS_TYPE, TEXT_TYPE, render, wants_openmetrics
from prefork.listeners import describe_socket, open_listener, parse_bind
from prefork.pool import metrics
from prefork.serve.answering import AnsweringService, Exchange

log = logging.getLogger("prefork")

MAX_HEAD = 8192              # bytes of request head, at most
CLIENT_DEADLINE = 2.0        # seconds a scraper has for its whole exchange
MAX_CLIENTS = 64             # connections at once; past it, the one waiting longest is dropped
STATUS_TEXT = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
               500: "Internal Server Error", 503: "Service Unavailable"}


def open_metrics_socket(address, backlog=64):
    """Listen on a TCP HOST:PORT, or on a Unix socket path (one with a '/', or unix:PATH); BindError if not."""
    text = f"unix:{address}" if address.startswith(("/", "./", "../")) else address
    try:
        bind = parse_bind(text)
    except BindError as exc:
        raise BindError(f"--metrics: {exc}") from None
    if not bind.stream:
        raise BindError(f"--metrics {address}: metrics are served over a stream socket, not {bind.kind}")
    old_umask = os.umask(0o117)          # a Unix socket file: mode 0660, for the scraper's group
    try:
        sock = open_listener(bind, backlog)
    except BindError as exc:
        raise BindError(f"--metrics: {exc}") from None
    finally:
        os.umask(old_umask)
    sock.setblocking(False)
    return sock


class MetricsServer(AnsweringService):
    """A master service (see Master.services): answers /metrics, /healthz and /readyz."""

    name = "metrics"
    max_clients = MAX_CLIENTS

    def __init__(self, sock, owned=True, active=True):
        super().__init__(sock, owned, active)
        self.address = describe_socket(sock)

    def start(self, selector):
        super().start(selector)
        log.info("metrics on %s: /metrics, /healthz, /readyz%s", self.address,
                 "" if self.active else " (once this master serves)")

    def client(self, conn):
        return _Exchange(conn)


class _Exchange(Exchange):
    """One HTTP request on one connection: read its head, answer, close."""

    limit = MAX_HEAD

    def __init__(self, sock):
        super().__init__(sock, CLIENT_DEADLINE)

    def request_end(self, inbox):
        end = inbox.find(b"\r\n\r\n")
        return end if end >= 0 else inbox.find(b"\n\n")

    def reply(self, request, master):
        try:
            return answer(request, master)
        except Exception:               # a bug here must cost one scrape, never the master
            log.exception("metrics: answering %r failed", request[:100])
            return response(500, b"internal error: see the master's log\n")

    def too_large(self):
        return response(400, b"request head too large\n")


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
