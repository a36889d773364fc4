"""Runs in the serving process: a request as a PEP 3333 environ, with its wsgi.input and wsgi.errors.

Strings are what PEP 3333 calls native strings: the request's bytes decoded
as latin-1, the path percent-decoded first. Header fields whose names hold
an underscore are dropped (as nginx and gunicorn do): HTTP_X_USER from
"X-User" and from "X_User" would be indistinguishable, and a proxy that
checks one spelling can be bypassed with the other.
"""

import logging
import socket
from urllib.parse import unquote_to_bytes

import httptools

from prefork.parking import PendingReads
from prefork.wsgi.request import BadRequest

_KEYS = {}                                       # a header name as received (bytes) -> its key, or "" to drop
_MAX_KEYS = 512                                  # names remembered: hostile unique names cost nothing


def header_key(name):
    """The environ key of a header field's name (bytes, any case): HTTP_X_FORWARDED_FOR; "" for one to drop."""
    key = _KEYS.get(name)
    if key is None:
        text = name.decode("latin-1").upper()
        key = ("" if "_" in text else {"CONTENT-TYPE": "CONTENT_TYPE", "CONTENT-LENGTH": "CONTENT_LENGTH"}.get(
            text, "HTTP_" + text.replace("-", "_")))
        if len(_KEYS) < _MAX_KEYS:
            _KEYS[name] = key
    return key


def connection_environ(server, client_address, root_path, multithread, errors):
    """What every request of one connection shares: the server's and the client's addresses, wsgi.*."""
    address, tls = server.server_address, getattr(server, "tls", None) is not None
    if server.address_family in (socket.AF_INET, socket.AF_INET6):
        server_name, server_port = str(address[0]), str(address[1])
        remote_addr, remote_port = str(client_address[0]), str(client_address[1])
    else:                                        # a Unix socket: no ports, no client address
        server_name, server_port = "localhost", "443" if tls else "80"
        remote_addr, remote_port = "", ""
    return {
        "SERVER_NAME": server_name, "SERVER_PORT": server_port, "REMOTE_ADDR": remote_addr,
        "REMOTE_PORT": remote_port, "SCRIPT_NAME": root_path, "SERVER_SOFTWARE": "prefork",
        "wsgi.version": (1, 0), "wsgi.url_scheme": "https" if tls else "http",
        "wsgi.errors": errors,
        "wsgi.multithread": multithread, "wsgi.multiprocess": True, "wsgi.run_once": False,
        "wsgi.input_terminated": True,           # a chunked body ends where read() says: werkzeug reads it
    }


def request_environ(shared, request, body, root_path, file_wrapper):
    """The environ of one request: the connection's, then the request line's and the header fields'."""
    environ = shared.copy()
    target = request.target
    if target[:1] == b"/":
        path, _, query = target.partition(b"?")
    elif target == b"*":                          # OPTIONS *
        path, query = b"*", b""
    else:                                         # absolute form: GET http://host/path?query
        try:
            url = httptools.parse_url(target)
        except httptools.HttpParserInvalidURLError:
            raise BadRequest(400, "Bad Request") from None
        path, query = url.path or b"/", url.query or b""
    path = (unquote_to_bytes(path) if b"%" in path else path).decode("latin-1")
    if root_path and (path == root_path or path.startswith(root_path + "/")):
        path = path[len(root_path):]
    environ["REQUEST_METHOD"] = request.method
    environ["PATH_INFO"] = path
    environ["QUERY_STRING"] = query.decode("latin-1")
    environ["RAW_URI"] = environ["REQUEST_URI"] = target.decode("latin-1")
    environ["SERVER_PROTOCOL"] = "HTTP/" + request.version
    environ["wsgi.input"] = body
    environ["wsgi.file_wrapper"] = file_wrapper
    keys = _KEYS
    for name, value in request.headers:
        key = keys.get(name) or header_key(name)
        if not key:
            continue
        value = value.decode("latin-1")
        if key in environ and key.startswith("HTTP_"):
            environ[key] += ("; " if key == "HTTP_COOKIE" else ",") + value
        else:
            environ[key] = value
    return environ


class Input(PendingReads):
    """wsgi.input: the request's body, as the app reads it (Content-Length or chunked, decoded).

    pull() receives more of it from the connection when what has arrived is
    used up (waiting for the client timeout at most); reads past the body's
    end return b"", as PEP 3333 asks, so an app may read() it all.
    """

    __slots__ = ("pending", "_request", "_pull")

    def __init__(self, request, pull):
        self.pending = bytearray()
        self._request, self._pull = request, pull

    def _more(self):
        """One more piece of the body into pending; False at its end."""
        request = self._request
        while not request.chunks:
            if request.complete:
                if request.broken:
                    raise BadRequest(400, "Bad Request")
                return False
            self._pull()
        self.pending += request.chunks.popleft()
        return True


class Errors:
    """wsgi.errors: what the app writes goes to the log (logger prefork.wsgi), a line at a time."""

    def __init__(self):
        self._log = logging.getLogger("prefork.wsgi")
        self._partial = ""

    def write(self, text):
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._log.error("%s", line)
        return len(text)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        if self._partial:
            self._log.error("%s", self._partial)
            self._partial = ""

