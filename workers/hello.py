"""A minimal HTTP/1.1 server answering "Hello, World!" (13 bytes) to every request.

It is the benchmark handler (scripts/bench.py) and a worked example of a
parking handler (prefork.ParkingRequestHandler): the pool worker calls
handle_request() once per request, when a whole request has arrived, and
parks the connection in its epoll in between, so one worker holds any
number of keep-alive clients. Keep-alive and pipelining, a request body
skipped by Content-Length, HEAD answered without a body, Connection: close
once the pool is stopping. The request head is parsed by hand, in a few
lines, to keep the benchmark about the server; prefork.ParkingHTTPRequestHandler
serves http.server handlers the same way.
"""

import prefork

BODY = b"Hello, World!"
_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n"
KEEP_ALIVE_RESPONSE = _HEAD + b"\r\n" + BODY
CLOSE_RESPONSE = _HEAD + b"Connection: close\r\n\r\n" + BODY
TOO_LARGE_RESPONSE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n"
                      b"Connection: close\r\n\r\n")
MAX_HEADER_BYTES = 65536


class HelloHandler(prefork.ParkingRequestHandler):
    def request_ready(self):
        pending = self.rfile.pending
        return b"\r\n\r\n" in pending or len(pending) > MAX_HEADER_BYTES or (self.rfile.eof and bool(pending))

    def handle_request(self):
        pending = self.rfile.pending
        end = pending.find(b"\r\n\r\n")
        if end < 0:                                    # too large, or the client left half way
            self.head = b""
            if len(pending) > MAX_HEADER_BYTES:
                self.request.sendall(TOO_LARGE_RESPONSE)
            return False
        self.head = head = bytes(pending[:end])
        del pending[:end + 4]
        keep_alive, body_length, is_head = _parse(head)
        while body_length > 0:                         # skip the body, waiting for what is on its way
            skipped = len(self.rfile.read(min(body_length, 65536)))
            if not skipped:
                return False
            body_length -= skipped
        keep_alive = keep_alive and not getattr(self.server, "stopping", False)
        response = KEEP_ALIVE_RESPONSE if keep_alive else CLOSE_RESPONSE
        self.request.sendall(response[:-len(BODY)] if is_head else response)
        return keep_alive

    def access_fields(self):
        """The request just served, for the access log (--access-log): parsed only when it is asked for."""
        if not self.head:                              # none whole: too large, or the client left
            return None
        method, _, rest = self.head.partition(b"\r\n")[0].partition(b" ")
        return (method.decode("latin-1"), rest.rpartition(b" ")[0].decode("latin-1"), 200,
                0 if method == b"HEAD" else len(BODY))


def _parse(head):
    """(keep_alive, body_length, is_head) from a request's header block."""
    request_line, _, headers = head.partition(b"\r\n")
    headers = b"\r\n" + headers.lower()
    if b"\r\nconnection:" not in headers and b"\r\ncontent-length:" not in headers:    # the usual request
        return request_line.endswith(b"HTTP/1.1"), 0, request_line.startswith(b"HEAD ")
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
