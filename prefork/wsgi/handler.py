"""Runs in the serving process: a WSGI app behind a parking handler, one request per call.

A connection's bytes go to its RequestStream (httptools) as they arrive; a
request is ready once its head has. handle_request() then runs the app on
it: wsgi.input reads the body from what has arrived and, when that runs
out, from the socket (sending 100 Continue first if the client waits for
it), within the client timeout. Between requests the connection is parked
in the worker's epoll like any parking handler's, so keep-alive and
pipelined requests cost no thread. Bad input gets its 4xx and the
connection closed; an app that raises gets a 500 (or, once its response has
begun, the connection closed) and one logged traceback.
"""

import logging
import socket
import ssl

from prefork.handling import CLIENT_WENT_AWAY, end_tls
from prefork.parking import ParkingRequestHandler
from prefork.wsgi.environ import Errors, Input, connection_environ, request_environ
from prefork.wsgi.request import BadRequest, Limits, RequestStream
from prefork.wsgi.response import FileWrapper, Response, date_line

log = logging.getLogger("prefork")

DRAIN_MOST = 64 * 1024       # body bytes the app left unread, read and dropped to keep the connection


class WSGIRequestHandler(ParkingRequestHandler):
    """Serves the class attribute ``app`` (see handler_for()); one instance per connection."""

    app = None
    root_path = ""               # SCRIPT_NAME: where the app is mounted, stripped from PATH_INFO
    limits = Limits()
    multithread = False
    errors = Errors()

    def setup(self):
        super().setup()
        self.stream = RequestStream(self.limits)
        self.shared = connection_environ(self.server, self.client_address, self.root_path, self.multithread,
                                         self.errors)
        self.response = self.refused = None
        if self.connection.family != socket.AF_UNIX:
            # A head and its body go out in one send, but a chunked body's pieces must not wait for an ACK.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)

    @property
    def movable(self):
        """Between requests, with nothing of the next one received: it can go on in another worker."""
        return self.stream.idle()

    def request_ready(self):
        stream = self.stream
        if not stream.ready and stream.error is None:
            pending = self.rfile.pending
            if pending:
                stream.feed(pending)          # httptools copies what it keeps
                pending.clear()
        return bool(stream.ready) or stream.error is not None

    def handle_request(self):
        stream = self.stream
        self.response = self.refused = None
        if not stream.ready:
            self._refuse(stream.error.status, stream.error.reason)
            return False
        request = stream.ready.popleft()
        # While the server stops, the last request received gets Connection: close; those already here are served.
        keep = request.keep_alive and not request.upgrade and not (getattr(self.server, "stopping", False)
                                                                   and not stream.ready)
        self.response = response = Response(self.request, request, keep)
        body = Input(request, self._pull)
        try:
            environ = request_environ(self.shared, request, body, self.root_path, FileWrapper)
            result = self.app(environ, response.start_response)
            try:
                if type(result) in (list, tuple) and response.status is not None:
                    response.known_length = sum(map(len, result))
                if not (isinstance(result, FileWrapper) and response.send_file(result)):
                    for data in result:
                        if data:
                            response.write(data)
                keep = response.finish()
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
            if keep and not request.complete:
                keep = not (request.expects_continue and not response.continued) and self._drain(request)
            if request.broken or not keep and not request.complete:
                self._discard()
                return False
        except BadRequest as exc:             # a malformed body, found as the app read it
            if not response.sent_head:
                self._refuse(exc.status, exc.reason)
            return False
        except Exception as exc:
            self.server.handle_error(self.request, self.client_address)
            if not response.sent_head and not isinstance(exc, CLIENT_WENT_AWAY):
                self._refuse(500, "Internal Server Error")
            return False
        return keep

    def access_fields(self):
        """The request just served, for the access log: (method, path, status, body bytes sent)."""
        response = self.response
        if response is None:
            return (None, None, self.refused, None) if self.refused else None
        request = response.request
        if self.refused:                     # the app's response never went: ours did (a 500, a 400)
            return request.method, request.target.decode("latin-1"), self.refused, None
        status = int(response.status[:3]) if response.sent_head else None
        return request.method, request.target.decode("latin-1"), status, response.body_bytes

    def _pull(self):
        """More of the request body from the socket (what wsgi.input reads when what arrived is used up)."""
        response = self.response
        if response.request.expects_continue and not response.sent_head and not response.continued:
            response.continued = True
            self.connection.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        reader = self.rfile
        if reader.eof or not reader.fill(wait=True):
            raise ConnectionAbortedError("the client closed its connection in the middle of a request body")
        self.stream.feed(reader.pending)
        reader.pending.clear()

    def _drain(self, request):
        """Drop the rest of a body the app left unread, to keep the connection: what has arrived only
        (waiting for a slow client would stall every connection parked beside it), DRAIN_MOST bytes at most."""
        reader, stream = self.rfile, self.stream
        request.chunks.clear()
        dropped = 0
        while not request.complete and dropped <= DRAIN_MOST and reader.fill():
            dropped += len(reader.pending)
            stream.feed(reader.pending)
            reader.pending.clear()
            request.chunks.clear()
        return request.complete and not request.broken

    def _discard(self):
        """Before closing with bytes unread: shut our side, and read what the client has already sent.
        Closing with unread bytes would reset the connection, and the client could lose our answer."""
        try:
            if isinstance(self.connection, ssl.SSLSocket):
                end_tls(self.connection)           # TLS's own end first: shutdown() would drop the session
            self.connection.shutdown(socket.SHUT_WR)
            for _ in range(16):
                if not self.rfile.fill():
                    break
                self.rfile.pending.clear()
        except OSError:
            pass

    def _refuse(self, status, reason):
        """Answer status and close: the rest of what the client sent is not read."""
        self.refused = status
        body = f"{status} {reason}\n".encode()
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n{date_line()}\r\n")
        log.debug("answered %s %s to %s", status, reason, self.client_address)
        try:
            self.connection.sendall(head.encode() + body)
        except OSError:
            return
        self._discard()


def handler_for(app, root_path="", limits=Limits(), threads=1, base=WSGIRequestHandler):
    """A handler class serving the WSGI callable app (a parking handler: pass it to any prefork server)."""
    root_path = root_path.rstrip("/")
    if root_path and not root_path.startswith("/"):
        raise ValueError(f"a root path starts with '/': {root_path!r}")
    return type("WSGIHandler", (base,), {"app": staticmethod(app), "root_path": root_path, "limits": limits,
                                          "multithread": threads > 1})
