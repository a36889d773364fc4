"""Runs in the serving process: request-at-a-time handlers, parked between requests.

A socketserver handler owns its connection: handle() returns when the
connection is done, so a worker (or thread) is taken for as long as the
client stays connected. A *parking* handler serves one request per call
instead: handle_request() serves exactly one and says whether to keep the
connection. In a prefork pool the worker calls it when a whole request has
arrived, and between requests the connection waits (is parked) in the
worker's own epoll, with no thread and no stack. Under any other server
(socketserver's, a thread or a fork per request) handle() calls
handle_request() in a loop, so the same class serves there too.

- ParkingRequestHandler: the protocol (request_ready, handle_request,
  parked_state/resume for per-connection state that moves with the
  connection between workers).
- ParkingLineHandler: one call per line, for the many text protocols.
- ParkingHTTPMixIn / ParkingHTTPRequestHandler: http.server's handlers
  (do_GET, do_POST, ...) unchanged; keep-alive, pipelining, HEAD, bodies.

docs/design.md, "Parking", says how the worker drives them.
"""

import http.server
import io
import socket
import socketserver
import ssl
import struct

RECEIVE_SIZE = 65536


class PendingReads:
    """Binary reads over ``self.pending`` (what has come and not been read), which _more() adds to.

    The one reading logic of a parking handler's rfile and of a WSGI request
    body (prefork/wsgi/environ.py), which differ only in where more comes
    from. A mixin, not an io class: a request body is made per request, and
    an io object costs six times a plain one to make and free.
    """

    def _more(self):
        """Add to pending, waiting if need be; False at the end."""
        raise NotImplementedError

    def _take(self, size):
        pending = self.pending
        data = bytes(pending[:size])
        del pending[:size]
        return data

    def read(self, size=-1):
        if size is None or size < 0:
            while self._more():
                pass
            return self._take(len(self.pending))
        while len(self.pending) < size and self._more():
            pass
        return self._take(size)

    def read1(self, size=-1):
        if not self.pending:
            self._more()
        return self._take(len(self.pending) if size is None or size < 0 else size)

    def readinto(self, buffer):
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def readline(self, size=-1):
        size = -1 if size is None else size
        start = 0
        while True:
            end = self.pending.find(b"\n", start)
            if end >= 0:
                end += 1
                break
            start = len(self.pending)
            if 0 <= size <= start or not self._more():
                end = start
                break
        return self._take(end if size < 0 else min(end, size))

    def readlines(self, hint=-1):
        lines, total = [], 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self):
        while line := self.readline():
            yield line

    def peek(self, size=0):
        """What has arrived, without waiting."""
        return bytes(self.pending)


class ConnectionReader(PendingReads, io.BufferedIOBase):
    """A parking handler's rfile: the bytes received and not yet read (``pending``), then the socket.

    The worker fills it without blocking when the connection is readable,
    and asks the handler whether ``pending`` holds a whole request. Reads
    that need more than has arrived (a request body on its way) wait on the
    socket: in a pool, for the client timeout at most (the kernel's
    SO_RCVTIMEO), then TimeoutError.
    """

    def __init__(self, sock, received=b""):
        super().__init__()
        self.pending = bytearray(received)
        self._sock = sock
        self.eof = False                    # the client shut its side: no more bytes will come
        self._tls = isinstance(sock, ssl.SSLSocket)

    def readable(self):
        return True

    def fill(self, wait=False):
        """Receive what the socket holds: the number of bytes, 0 at EOF, None when nothing was there."""
        if self._tls:
            return self._fill_tls(wait)
        try:
            data = self._sock.recv(RECEIVE_SIZE, 0 if wait else socket.MSG_DONTWAIT)
        except BlockingIOError:
            if wait:                        # SO_RCVTIMEO ran out on a blocking socket
                raise TimeoutError("the client sent nothing for the client timeout") from None
            return None
        if data:
            self.pending += data
        else:
            self.eof = True
        return len(data)

    def _fill_tls(self, wait):
        """fill() on an ssl.SSLSocket, which takes no MSG_DONTWAIT: the parking loop keeps it non-blocking
        while parked and gives it the client timeout while it serves. What OpenSSL has decrypted and
        holds (pending()) is read too, as epoll cannot see it."""
        sock, total = self._sock, 0
        timeout = sock.gettimeout()
        peek = not wait and timeout != 0.0       # a handler's look without waiting, while it serves
        if peek:
            sock.settimeout(0.0)
        try:
            while True:
                try:
                    data = sock.recv(RECEIVE_SIZE)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    break
                if not data:
                    self.eof = True
                    break
                self.pending += data
                total += len(data)
                if wait or (total >= RECEIVE_SIZE and not sock.pending()):
                    break
        finally:
            if peek:
                sock.settimeout(timeout)
        return total if total or self.eof else None

    def _more(self):
        """Wait for more bytes; False at EOF."""
        return not self.eof and bool(self.fill(wait=True))


class ParkingRequestHandler(socketserver.BaseRequestHandler):
    """A stream handler that serves one request per call and is parked in between.

    Override handle_request(); override request_ready() when a request can
    arrive in pieces (the default takes any received bytes as a request).
    self.rfile (a ConnectionReader) holds what has arrived; self.wfile writes
    to the connection. One instance lives as long as its connection, so its
    attributes are per-connection state; setup() runs once when it opens,
    finish() once when it closes.

    movable: a retiring worker (recycle, reload, scale-down) hands the idle
    connection to a live worker, where a new instance is made with park()
    (so setup() runs there again) and given resume(parked_state()); finish()
    runs once, in the worker where the connection ends. Set it False if the
    state cannot travel: the retiring worker then serves what has arrived and
    closes the connection.
    """

    parks = True             # read by the pool worker: serve me one request at a time (see parks())
    movable = True

    @classmethod
    def park(cls, request, client_address, server, received=b""):
        """Make the handler for a connection without serving it (socketserver's __init__ would)."""
        self = cls.__new__(cls)
        self.request, self.client_address, self.server = request, client_address, server
        self._received = received
        self.setup()
        return self

    def setup(self):
        if isinstance(self.request, tuple):          # a datagram server's (data, socket)
            return
        self.connection = self.request
        self.rfile = ConnectionReader(self.request, getattr(self, "_received", b""))
        self.wfile = socketserver._SocketWriter(self.request)

    def request_ready(self):
        """Whether self.rfile.pending holds a whole request (or the client closed after sending some)."""
        return bool(self.rfile.pending)

    def handle_request(self):
        """Serve exactly one request; True to keep the connection open for the next."""
        raise NotImplementedError(f"{type(self).__name__} must define handle_request()")

    def handle(self):
        """Own the connection (a server that does not park): one request after another until it closes.

        A subclass that overrides handle() is served this way in a pool too.
        """
        if isinstance(self.request, tuple):
            return self.handle_datagram(*self.request)
        reader = self.rfile
        while True:
            while not self.request_ready():
                if not reader._more() and not self.request_ready():
                    return
            if not self.handle_request():
                return

    def handle_datagram(self, data, sock):
        """One datagram, on a datagram server (reply with sock.sendto(..., self.client_address))."""
        raise NotImplementedError(f"{type(self).__name__} serves no datagrams: define handle_datagram()")

    def finish(self):
        if isinstance(self.request, tuple):
            return
        for stream in (self.wfile, self.rfile):
            try:
                stream.close()               # flushes a buffered wfile
            except OSError:
                pass

    def parked_state(self):
        """What moves with the connection to another worker (picklable); None for nothing."""
        return None

    def resume(self, state):
        """In the worker the connection moved to, after setup(): take parked_state()'s value."""


def parks(handler_class):
    """Whether a pool worker serves handler_class one request at a time: a parking handler whose
    handle() is still ParkingRequestHandler's (one that overrides it owns its connection)."""
    return bool(getattr(handler_class, "parks", False)) and getattr(handler_class, "handle", None) is \
        ParkingRequestHandler.handle


class ParkingLineHandler(ParkingRequestHandler):
    """One call of handle_line(line) per line received (the line keeps its b"\\n").

    handle_line returns False to close the connection; anything else keeps
    it. A last line without its newline is passed when the client closes; a
    line longer than max_line is passed in pieces of max_line bytes.
    """

    max_line = 65536

    def request_ready(self):
        pending = self.rfile.pending
        return b"\n" in pending or len(pending) >= self.max_line or (self.rfile.eof and bool(pending))

    def handle_request(self):
        return self.handle_line(self.rfile.readline(self.max_line)) is not False

    def handle_line(self, line):
        raise NotImplementedError(f"{type(self).__name__} must define handle_line()")


class ParkingHTTPMixIn(ParkingRequestHandler):
    """Put in front of an http.server handler class to park it: do_GET, do_POST, ... unchanged.

    ``class Handler(prefork.ParkingHTTPMixIn, http.server.SimpleHTTPRequestHandler)``.
    A request is ready once its header block has arrived; its body is read
    by the handler as before. Set protocol_version = "HTTP/1.1" (as
    ParkingHTTPRequestHandler does) for keep-alive.
    """

    max_header_bytes = 128 * 1024     # past this, the head is handed to http.server, which answers 414/431

    def setup(self):
        super().setup()
        if self.timeout is not None:
            # The kernel's timeouts, not settimeout(): Python would wait for that long before every
            # read, even the worker's non-blocking ones, and stall every connection parked beside.
            value = struct.pack("ll", int(self.timeout), int(self.timeout % 1 * 1e6))
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
        if self.disable_nagle_algorithm:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        if self.wbufsize:
            self.wfile = self.connection.makefile("wb", self.wbufsize)

    def request_ready(self):
        pending = self.rfile.pending
        return (b"\r\n\r\n" in pending or b"\n\n" in pending or len(pending) > self.max_header_bytes
                or (self.rfile.eof and bool(pending)))

    def handle_request(self):
        self.close_connection, self.status_sent = True, 0
        self.handle_one_request()
        return not self.close_connection and not getattr(self.server, "stopping", False)

    def send_response_only(self, code, message=None):
        self.status_sent = code
        super().send_response_only(code, message)

    def access_fields(self):
        """The request just served, for the access log: (method, path, status, bytes unknown)."""
        return getattr(self, "command", None), getattr(self, "path", None), self.status_sent or None, None

    def end_headers(self):
        """While the pool stops, say so: the client opens a new connection for its next request.
        (Not on an interim 1xx response, such as 100 Continue: on the final one.)"""
        interim = getattr(self, "_headers_buffer", None) and self._headers_buffer[0][9:10] == b"1"
        if getattr(self.server, "stopping", False) and not self.close_connection and not interim:
            self.send_header("Connection", "close")
        super().end_headers()


class ParkingHTTPRequestHandler(ParkingHTTPMixIn, http.server.BaseHTTPRequestHandler):
    """http.server.BaseHTTPRequestHandler that parks between requests, speaking HTTP/1.1 (keep-alive)."""

    protocol_version = "HTTP/1.1"
