"""Runs in the workers: the access log, one line per request (--access-log FILE|-, --access-log-format).

The master opens the file before forking (as the error log: O_NOFOLLOW,
given to --user only if it created it), so every worker inherits it; each
worker writes its own lines and reopens the file on SIGUSR1. Lines go out
through a LineOutput (output.py): a full pipe on stdout drops and counts
lines, it never stops a worker. Each accept thread buffers its lines and
writes them once per pass of its loop, not one system call per request.

Text lines are logfmt (key=value, values with spaces or quotes quoted,
control characters escaped); JSON lines are one object each, escaped by
json.dumps. Both carry the same keys:

    time peer listener worker pid outcome duration_ms [method path status bytes]
"""

import json
import sys
import threading
import time

from prefork import logs
from prefork.output import LineOutput

OK, CLIENT_WENT_AWAY, CLIENT_TIMEOUT, HANDLER_ERROR = "ok", "client_went_away", "client_timeout", "handler_error"
FLUSH_LINES = 64             # a thread's buffered lines written at once, at most


def outcome_of(exc):
    """How a request that raised exc ended, for the access log and post_request."""
    if isinstance(exc, TimeoutError):
        return CLIENT_TIMEOUT
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return CLIENT_WENT_AWAY
    return HANDLER_ERROR


class AccessLog:
    """The access log of one pool: a file (or stdout) and a line format, shared by every thread."""

    def __init__(self, path, line_format="text", owner=None):
        self.path, self.owner = path, owner
        self.format_line = _json_line if line_format == "json" else _text_line
        self._lock = threading.Lock()
        self._file = None
        self.output = self._open()
        logs.reopen_also(self)

    def _open(self):
        if self.path == "-":
            return LineOutput(sys.stdout.fileno())
        new = logs.open_log(self.path, self.owner)
        output = LineOutput(new.fileno())
        new.close()                                # the output holds its own descriptor
        return output

    def write(self, lines):
        """Write a thread's buffered lines (bytes, each ending in a newline), then forget them."""
        data = b"".join(lines)
        lines.clear()
        with self._lock:
            self.output.write(data)

    def reopen(self):
        """After a rotation: the new file from now on (the old stays if the new cannot be opened)."""
        if self.path == "-":
            return None
        output = self._open()
        with self._lock:
            old, self.output = self.output, output
        old.close()
        return self.path

    def close(self):
        logs.reopen_also(self, False)
        self.output.close()


class Clock:
    """The time of a line, formatted once per second (strftime costs more than the rest of a line)."""

    def __init__(self):
        self.second, self.prefix = -1, ""

    def text(self, now):
        second = int(now)
        if second != self.second:
            self.second, self.prefix = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self.prefix}.{int((now - second) * 1000):03d}Z"


def _text_line(fields):
    return " ".join(f"{key}={_logfmt(value)}" for key, value in fields.items()).encode("utf-8", "replace") + b"\n"


def _logfmt(value):
    if isinstance(value, (int, float)):
        return str(value)
    text = str(value)
    if text and text.isprintable() and not any(c in text for c in ' "=\\'):
        return text
    return json.dumps(text)                        # quoted, with every quote and control character escaped


def _json_line(fields):
    return json.dumps(fields, separators=(",", ":")).encode() + b"\n"


def peer_text(client_address):
    """A client address as text: host:port, [v6]:port, or a Unix socket's path (often empty: "unix")."""
    if isinstance(client_address, tuple) and len(client_address) >= 2:
        host, port = client_address[0], client_address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    if isinstance(client_address, bytes):
        client_address = client_address.decode(errors="replace")
    return client_address or "unix"

