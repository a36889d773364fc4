"""Runs in the serving process: one WSGI response, framed for HTTP/1.1.

The head goes out with the first body bytes (PEP 3333: not before), in one
send with them. The body is framed by the app's Content-Length if it gave
one (bytes past it are dropped; fewer close the connection), else by a
length we know (a list body's total, a file's size), else chunked for an
HTTP/1.1 client, else by closing the connection (HTTP/1.0). Headers that
frame the connection (Connection, Transfer-Encoding) are ours to write;
an app's Connection: close is honoured. A file from wsgi.file_wrapper goes
out with os.sendfile() when it is a regular file.
"""

import email.utils
import io
import os
import re
import ssl
import stat
import time

_NOT_TOKEN = re.compile(r"[^-!#$%&'*+.^_`|~0-9A-Za-z]").search   # what a header name cannot hold (RFC 9110 5.1)
_LINE_BREAK = re.compile(r"[\r\n\0]").search                     # what splits a response


class FileWrapper:
    """wsgi.file_wrapper: iterates a file in blocks; the server sends a regular file with sendfile()."""

    def __init__(self, filelike, blksize=65536):
        self.filelike, self.blksize = filelike, blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self):
        while data := self.filelike.read(self.blksize):
            yield data


_date = [0, ""]


def date_line():
    """The Date header field, formatted once a second."""
    now = int(time.time())
    if now != _date[0]:
        _date[:] = [now, "Date: " + email.utils.formatdate(now, usegmt=True) + "\r\n"]
    return _date[1]


class Response:
    """What the app says through start_response() and write(), and its body, on one socket."""

    def __init__(self, sock, request, keep_alive):
        self.sock, self.request = sock, request
        self.keep_alive = keep_alive      # the request and the server allow another request after this
        self.continued = False            # a 100 Continue went out (wsgi.input's first wait for the body)
        self.status = self.headers = None
        self.sent_head = False
        self.no_body = request.method == "HEAD"
        self.chunked = False
        self.remaining = None             # bytes Content-Length still allows; None: not declared
        self.known_length = None          # the body's length when the server knows it (a list, a file)
        self.body_bytes = 0               # body bytes sent (the access log's bytes)

    def start_response(self, status, headers, exc_info=None):
        if exc_info is not None:
            try:
                if self.sent_head:         # too late to change the response: the app's error goes on
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response() called again without exc_info")
        if (type(status) is not str or len(status) < 4 or not status[:3].isdigit() or status[3] != " "
                or _LINE_BREAK(status)):
            raise ValueError(f"WSGI status must be a str such as '200 OK', not {status!r}")
        self.status, self.headers = status, headers
        return self.write

    def write(self, data):
        """The write() callable start_response returns, and how the body's pieces go out."""
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"a WSGI body is bytes, not {type(data).__name__}: {data!r:.60}")
        if not self.sent_head:
            if self.status is None:
                raise AssertionError("the app sent body bytes before calling start_response()")
            self._send(self._head().encode("latin-1") + self._frame(data))
        elif data:
            self._send(self._frame(data))

    def finish(self):
        """After the body: the head if nothing was sent, the last chunk; whether the connection may stay."""
        if not self.sent_head:
            self.write(b"")
        if self.chunked:
            self._send(b"0\r\n\r\n")
        if self.remaining and not self.no_body:     # fewer bytes than the app's Content-Length said
            self.keep_alive = False
        return self.keep_alive

    def send_file(self, wrapper):
        """Send a FileWrapper's regular file with os.sendfile(); False if it is not one (then iterate it)."""
        file = wrapper.filelike
        try:
            fd = file.fileno()
            size = os.fstat(fd).st_size
            offset = file.tell()
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
        except (AttributeError, OSError, io.UnsupportedOperation):
            return False
        if not regular or self.sent_head or self.status is None or isinstance(self.sock, ssl.SSLSocket):
            return False                  # sendfile() would bypass TLS
        self.known_length = max(0, size - offset)
        self._send(self._head().encode("latin-1"))
        count = 0 if self.no_body else self.known_length if self.remaining is None else self.remaining
        while count > 0:
            try:
                sent = os.sendfile(self.sock.fileno(), fd, offset, count)
            except BlockingIOError:
                raise TimeoutError("the client read nothing for the client timeout") from None
            if not sent:                  # the file shrank
                break
            offset, count = offset + sent, count - sent
            self.body_bytes += sent
            if self.remaining is not None:
                self.remaining -= sent
        file.seek(offset)
        return True

    def _head(self):
        status, headers, request = self.status, self.headers, self.request
        code = int(status[:3])
        keep = self.keep_alive
        lines = ["HTTP/1.1 ", status, "\r\n"]
        names = []
        length = None
        for name, value in headers:
            names.append(name)
            folded = name.lower()
            if folded == "content-length":
                if not value.strip().isdigit():
                    raise ValueError(f"the app's Content-Length is not a length: {value!r}")
                length = value
            elif folded == "connection":
                keep = keep and "close" not in value.lower()
                continue
            elif folded == "transfer-encoding":
                continue
            lines += (name, ": ", value, "\r\n")
        ours = []                         # our lines, each one line
        if code < 200 or code in (204, 304):
            self.no_body = True
        elif length is not None:
            self.remaining = int(length)
        elif self.known_length is not None:
            self.remaining = self.known_length
            ours.append(f"Content-Length: {self.known_length}\r\n")
        elif request.version == "1.1":
            self.chunked = not self.no_body
            ours.append("Transfer-Encoding: chunked\r\n")
        else:
            keep = False
        if request.broken or (not request.complete and request.expects_continue and not self.continued):
            keep = False                  # a malformed body, or one the client holds back: what follows is unknown
        if not keep:
            ours.append("Connection: close\r\n")
        elif request.version == "1.0":
            ours.append("Connection: keep-alive\r\n")
        ours += (date_line(), "\r\n")
        app = "".join(lines)              # a TypeError if a name or value is not a str
        # The app's part holds a line end per line and no other CR, LF or NUL (response splitting), and its
        # names are tokens: checked over the whole at once, as a check per header costs more than the rest.
        ends = len(lines) // 4 + 1
        if (app.count("\n") != ends or app.count("\r") != ends or "\0" in app
                or _NOT_TOKEN("".join(names)) or not all(names)):
            raise ValueError(f"a WSGI status or header holds a line break, or a header name is not a token:"
                             f" {status!r}, {headers!r:.200} (response splitting?)")
        self.keep_alive = keep
        self.sent_head = True
        return app + "".join(ours)

    def _frame(self, data):
        if self.no_body or not data:
            return b""
        if self.remaining is not None:
            if len(data) > self.remaining:
                data = data[:self.remaining]
            self.remaining -= len(data)
            self.body_bytes += len(data)
            return data
        self.body_bytes += len(data)
        if self.chunked:
            return b"%x\r\n%s\r\n" % (len(data), data)
        return data

    def _send(self, data):
        if data:
            try:
                self.sock.sendall(data)
            except BlockingIOError:       # SO_SNDTIMEO ran out: the client reads nothing
                raise TimeoutError("the client read nothing for the client timeout") from None
