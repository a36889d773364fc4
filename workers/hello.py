"""A minimal HTTP/1.1 server answering "Hello, World!" (13 bytes) to every request.

It is the benchmark handler (scripts/bench.py) and a worked example of a
long-lived handler on prefork: keep-alive and pipelining, a request body
skipped by Content-Length, HEAD answered without a body, and a connection
closed after IDLE_TIMEOUT quiet seconds or once the worker is stopping.

While a client is quiet the handler heartbeats once a second. The wait uses
the kernel's SO_RCVTIMEO on a blocking socket rather than socket.settimeout(),
which would add a poll() before every recv(). In a pool the socket arrives
with the client timeout set (a socket timeout); the handler takes it as its
limit for a quiet client, and makes the socket blocking again.
"""

import socket
import struct

import prefork

BODY = b"Hello, World!"
_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n"
KEEP_ALIVE_RESPONSE = _HEAD + b"\r\n" + BODY
CLOSE_RESPONSE = _HEAD + b"Connection: close\r\n\r\n" + BODY
TOO_LARGE_RESPONSE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n"
                      b"Connection: close\r\n\r\n")
IDLE_TIMEOUT = 5          # quiet seconds before a connection is closed (fewer if the client timeout is)
MAX_HEADER_BYTES = 65536
_ONE_SECOND = struct.pack("ll", 1, 0)


class HelloHandler(prefork.BaseRequestHandler):
    def setup(self):
        sock = self.request
        client_timeout = sock.gettimeout()            # the pool's client timeout, or None
        if client_timeout is not None:
            sock.setblocking(True)
        self._quiet_seconds = min(IDLE_TIMEOUT, max(1, round(client_timeout or IDLE_TIMEOUT)))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _ONE_SECOND)
        self._heartbeat = getattr(self.server, "heartbeat", _nothing)   # also runs on socketserver's

    def handle(self):
        sock, server, buffer = self.request, self.server, b""
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEADER_BYTES:
                    sock.sendall(TOO_LARGE_RESPONSE)
                    return
                data = self._receive(waiting_for_request=not buffer)
                if not data:
                    return
                buffer += data
                continue
            head, buffer = buffer[:end], buffer[end + 4:]
            keep_alive, body_length, is_head = _parse(head)
            while len(buffer) < body_length:           # skip the request body
                data = self._receive(waiting_for_request=False)
                if not data:
                    return
                buffer += data
            buffer = buffer[body_length:]
            keep_alive = keep_alive and not getattr(server, "stopping", False)
            response = KEEP_ALIVE_RESPONSE if keep_alive else CLOSE_RESPONSE
            sock.sendall(response[:-len(BODY)] if is_head else response)
            if not keep_alive:
                return

    def _receive(self, waiting_for_request):
        """The next bytes from the client, or b"" to close: EOF, idle timeout, or stopping."""
        for _ in range(self._quiet_seconds):
            try:
                return self.request.recv(65536)
            except BlockingIOError:                    # a quiet second (SO_RCVTIMEO)
                self._heartbeat()
                if waiting_for_request and getattr(self.server, "stopping", False):
                    return b""
        return b""


def _parse(head):
    """(keep_alive, body_length, is_head) from a request's header block."""
    request_line, _, headers = head.partition(b"\r\n")
    headers = b"\r\n" + headers.lower()
    connection = _header(headers, b"connection")
    if request_line.endswith(b"HTTP/1.1"):
        keep_alive = connection != b"close"
    else:
        keep_alive = connection == b"keep-alive"
    length = _header(headers, b"content-length")
    return keep_alive, int(length) if length.isdigit() else 0, request_line.startswith(b"HEAD ")


def _header(headers, name):
    start = headers.find(b"\r\n" + name + b":")
    if start < 0:
        return b""
    start += len(name) + 3
    end = headers.find(b"\r\n", start)
    return headers[start:end if end >= 0 else len(headers)].strip()


def _nothing():
    pass
