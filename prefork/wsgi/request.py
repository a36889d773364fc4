"""Runs in the serving process: HTTP/1.x requests parsed off one connection by httptools (llhttp).

httptools is the parser uvicorn uses: llhttp, Node.js's parser, in C. It
reads a stream, not a request: fed the bytes that arrived, it calls back for
every request they hold (pipelining), its head, its body (Content-Length or
chunked, decoded) and its end. RequestStream collects those into Request
objects, in order, and enforces the limits llhttp leaves to its user: the
request target's length, the number and size of header fields, and the size
of a head still arriving. llhttp itself rejects malformed input, including
what request smuggling relies on (Content-Length with Transfer-Encoding,
two differing Content-Lengths, a Transfer-Encoding not ending in chunked).
docs/design.md, "WSGI", says why httptools and not h11.
"""

import collections
from typing import NamedTuple

import httptools


class Limits(NamedTuple):
    """gunicorn's defaults and meanings (0: no limit), for requests' heads."""

    request_line: int = 4094          #: bytes in the request target (the URL)
    fields: int = 100                 #: header fields
    field_size: int = 8190            #: bytes in one header field, name and value

    def head_bytes(self):
        """The most a head may hold before it is refused: what the three limits allow together."""
        line = self.request_line or 65536
        return line + 16 + (self.fields or 1000) * ((self.field_size or 65536) + 4)


class BadRequest(Exception):
    """Input the server answers with status (400, 414, 431) and closes the connection on."""

    def __init__(self, status, reason):
        super().__init__(f"{status} {reason}")
        self.status, self.reason = status, reason


class Request:
    """One request: its head once it has arrived, its body's pieces as they arrive."""

    __slots__ = ("method", "target", "version", "headers", "keep_alive", "upgrade", "chunks", "complete",
                 "broken", "expects_continue")

    def __init__(self):
        self.target = b""
        self.headers = []                 # (name, value) bytes, in order, as received
        self.chunks = collections.deque() # body bytes received and not yet read by the app
        self.complete = False             # the whole body has arrived (or broke off: broken)
        self.broken = False               # the body was malformed (a bad chunk): the app's read fails
        self.expects_continue = False


class RequestStream:
    """The requests of one connection: feed() what arrives, take heads from ready."""

    def __init__(self, limits):
        self.parser = httptools.HttpRequestParser(self)
        self.ready = collections.deque()  # requests whose head has arrived, in order
        self.error = None                 # a BadRequest: answered after the requests before it
        self.upgraded = False             # the client switched protocols: nothing after is HTTP
        self.current = None               # the request being received (its head, or its body)
        self.in_head = False
        self.head_bytes = 0
        self.max_head = limits.head_bytes()
        self.request_line = limits.request_line or 1 << 62  # 0: no limit
        self.most_fields = limits.fields or 1 << 62
        self.field_size = limits.field_size or 1 << 62
        self.fields = 0
        self.gap = 0                      # bytes fed since the body's last bytes

    def idle(self):
        """Nothing received and not yet served: the connection can move to another worker as it is."""
        return not self.ready and self.current is None and self.error is None and not self.upgraded

    def feed(self, data):
        """Parse data; requests land in ready, bad input in error. Never raises for the client's bytes."""
        if self.error is not None or self.upgraded:
            return
        if self.in_head or self.current is None:
            self.head_bytes += len(data)      # bounds what httptools gathers of a head still arriving
            if self.head_bytes > self.max_head:
                self.error = BadRequest(431, "Request Header Fields Too Large")
                return
        else:
            self.gap += len(data)             # and, in a body, what is not body: chunk sizes, extensions, trailers
            if self.gap > self.max_head:
                self.current.complete = self.current.broken = True
                self.current, self.error = None, BadRequest(400, "Bad Request")
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.upgraded = True              # answered as plain HTTP, then closed
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            self.error = cause if isinstance(cause, BadRequest) else BadRequest(400, "Bad Request")
            if self.current is not None and not self.in_head:
                self.current.complete = self.current.broken = True    # the app's next read fails
            self.current = None

    # httptools' callbacks --------------------------------------------------

    def on_message_begin(self):
        self.current = Request()
        self.in_head, self.fields, self.gap = True, 0, 0

    def on_url(self, url):
        request = self.current
        request.target += url
        if len(request.target) > self.request_line:
            raise BadRequest(414, "URI Too Long")

    def on_header(self, name, value):
        self.fields += 1
        if self.fields > self.most_fields or len(name) + len(value) > self.field_size:
            raise BadRequest(431, "Request Header Fields Too Large")
        if self.in_head:                  # not a chunked body's trailer fields: those are dropped
            self.current.headers.append((name, value))

    def on_headers_complete(self):
        request, parser = self.current, self.parser
        request.method = parser.get_method().decode("ascii")
        request.version = parser.get_http_version()
        request.keep_alive = parser.should_keep_alive()
        request.upgrade = parser.should_upgrade()
        hosts, body = 0, False
        for name, value in request.headers:
            folded = name.lower()
            if folded == b"host":
                hosts += 1
            elif folded == b"expect" and value.lower() == b"100-continue" and request.version == "1.1":
                request.expects_continue = True
            elif folded == b"transfer-encoding":
                # RFC 9112 6.3: unless chunked comes last, a request's body length cannot be known (llhttp
                # would read none, and take the body for the next request); HTTP/1.0 with it: close after.
                if value.rsplit(b",", 1)[-1].strip(b" \t").lower() != b"chunked":
                    raise BadRequest(400, "Bad Request")
                request.keep_alive = request.keep_alive and request.version != "1.0"
                body = True
            elif folded == b"content-length":
                body = body or value.strip(b" \t") != b"0"
        if hosts > 1 or (hosts == 0 and request.version == "1.1"):
            raise BadRequest(400, "Bad Request")          # RFC 9112 3.2: exactly one Host in HTTP/1.1
        if request.upgrade and body:
            # httptools tells llhttp that an upgrade has no body: it would be lost, or read as a request.
            raise BadRequest(400, "Bad Request")
        self.in_head, self.head_bytes = False, 0
        self.ready.append(request)

    def on_body(self, body):
        self.gap = 0
        self.current.chunks.append(body)

    def on_message_complete(self):
        self.current.complete = True
        self.current = None
