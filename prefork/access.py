"""Runs in the workers: the access log, one line per request (--access-log FILE|-, --access-log-format).

The master opens the file before forking (as the error log: O_NOFOLLOW,
given to --user only if it created it), so every worker inherits it; each
worker writes its own lines and reopens the file on SIGUSR1. Lines go out
through a LineOutput (output.py): a full pipe on stdout drops and counts
lines, it never stops a worker. Each accept thread buffers its lines and
writes them once per pass of its loop, not one system call per request.

Text lines are logfmt (key=value; a value with spaces, quotes, control or
non-ASCII characters quoted and escaped as a JSON string); JSON lines are
one object each. Both carry the same keys:

    time peer listener worker pid outcome duration_ms [method path status bytes]

A handler tells the last four through access_fields(), which returns
(method, path, status, bytes), None where it does not know one.
"""

import re
from json.encoder import encode_basestring_ascii as quoted   # C: a JSON string, every non-ASCII escaped
import ssl
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
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, ssl.SSLZeroReturnError,
                        ssl.SSLEOFError)):
        return CLIENT_WENT_AWAY
    return HANDLER_ERROR


class AccessLog:
    """The access log of one pool: a file (or stdout) and a line format, shared by every thread."""

    def __init__(self, path, line_format="text", owner=None):
        self.path, self.owner = path, owner
        self.format = JSON if line_format == "json" else TEXT
        self._lock = threading.Lock()
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
    """The time of a line: strftime once per second, the text once per millisecond (many lines share it)."""

    def __init__(self):
        self.second, self.prefix = -1, ""
        self.millisecond, self.last = -1, ""

    def text(self, now):
        millisecond = int(now * 1000)
        if millisecond != self.millisecond:
            second = millisecond // 1000
            if second != self.second:
                self.second, self.prefix = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self.millisecond, self.last = millisecond, f"{self.prefix}.{millisecond % 1000:03d}Z"
        return self.last


class TextFormat:
    """logfmt: key=value; what a client sent (method, path) quoted and escaped when it must be.

    A line is one %-format of a fixed template: a few microseconds of Python per
    request is what a fast handler takes in all, so nothing here loops or builds a dict."""

    BASE = "time=%s peer=%s%s outcome=%s duration_ms=%.3f"
    HTTP = BASE + " method=%s path=%s status=%s bytes=%s\n"
    BASE += "\n"

    @staticmethod
    def fixed(listener, worker, pid):
        """The part of a line that is the same for every request of one listener in one worker."""
        return f" listener={_logfmt(listener)} worker={worker} pid={pid}"

    def line(self, when, peer, fixed, outcome, duration, http):
        if http is None:
            return (self.BASE % (when, _logfmt(peer), fixed, outcome, duration * 1000)).encode("utf-8", "replace")
        method, path, status, size = http
        return (self.HTTP % (when, _logfmt(peer), fixed, outcome, duration * 1000, _logfmt(method or "-"),
                             _logfmt(path or "-"), "-" if status is None else int(status),
                             "-" if size is None else int(size))).encode("utf-8", "replace")


class JsonFormat:
    """One JSON object per line, with the same keys; what is not ours (a path, a method, a Unix peer's
    path) is escaped as a JSON string. A key whose value is unknown is null."""

    BASE = '{"time":"%s","peer":%s%s,"outcome":"%s","duration_ms":%.3f'
    HTTP = BASE + ',"method":%s,"path":%s,"status":%s,"bytes":%s}\n'
    BASE += "}\n"

    @staticmethod
    def fixed(listener, worker, pid):
        return f',"listener":{quoted(listener)},"worker":{worker},"pid":{pid}'

    def line(self, when, peer, fixed, outcome, duration, http):
        if http is None:
            return (self.BASE % (when, quoted(peer), fixed, outcome, duration * 1000)).encode()
        method, path, status, size = http
        return (self.HTTP % (when, quoted(peer), fixed, outcome, duration * 1000, _json(method), _json(path),
                             _json(status), _json(size))).encode()


def _json(value):
    return "null" if value is None else quoted(value) if type(value) is str else int(value)


TEXT, JSON = TextFormat(), JsonFormat()
_NEEDS_QUOTES = re.compile(r'[^!#-<>-\[\]-~]').search    # anything but printable ASCII other than " = \\


def _logfmt(value):
    if type(value) is not str:
        return value
    if value and _NEEDS_QUOTES(value) is None:
        return value
    return quoted(value)                           # with every quote, control and non-ASCII character escaped


def peer_text(client_address):
    """A client address as text: host:port, [v6]:port, or a Unix socket's path (often empty: "unix")."""
    if type(client_address) is tuple and len(client_address) >= 2:
        host = client_address[0]
        return f"[{host}]:{client_address[1]}" if ":" in host else f"{host}:{client_address[1]}"
    if isinstance(client_address, bytes):
        client_address = client_address.decode(errors="replace")
    return client_address or "unix"
