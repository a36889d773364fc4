"""Servers that misbehave, or split their replies, for the load generator's tests
(served with `prefork serve apps.loadgen_peers:...`)."""

import socket
import struct
import time

import prefork
from prefork_workers.echo import EchoHandler

_TENTH = struct.pack("ll", 0, 100_000)


def _read_head(sock):
    """The bytes up to the end of an HTTP request header, or b"" at EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return b""
        data += chunk
    return data


class ServerError(prefork.BaseRequestHandler):
    """Every request gets a 500, and the connection is closed."""

    def handle(self):
        if _read_head(self.request):
            self.request.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\n"
                                 b"Connection: close\r\n\r\noops\n")


class SplitReply(prefork.BaseRequestHandler):
    """HTTP keep-alive whose every reply arrives in three pieces: a client must reassemble them."""

    def handle(self):
        sock = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while _read_head(sock):
            for piece in (b"HTTP/1.1 200 OK\r\nConte", b"nt-Length: 10\r\n\r\n01234", b"56789"):
                sock.sendall(piece)
                time.sleep(0.001)


class CloseAtOnce(prefork.BaseRequestHandler):
    """Accept, and close without a word."""

    def handle(self):
        pass


class ReadThenClose(prefork.StreamRequestHandler):
    """Read the request line, and close without a word: a clean end of the stream, never a reset."""

    def handle(self):
        self.rfile.readline()


class Silent(prefork.BaseRequestHandler):
    """Read the request, never answer; leave when the client does or the worker stops."""

    def handle(self):
        self.request.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _TENTH)
        while not self.server.stopping:
            try:
                if not self.request.recv(65536):
                    return
            except BlockingIOError:
                self.server.heartbeat()


class Greeting(EchoHandler):
    """Speak first, as SMTP, FTP and POP3 servers do: a greeting line, then echo lines."""

    def handle(self):
        self.request.sendall(b"220 ready\r\n")
        super().handle()
