"""Runs in any process of `prefork serve`: logging to stderr, or to a file reopened after logrotate moved it.

The master opens the file before forking, so every worker inherits the
handler. SIGUSR1 (or `prefork ctl reopen-logs`) makes the master reopen it and
pass SIGUSR1 on to its workers, which reopen their own copy at the next pass
of their loop, never inside the signal handler.

The master may be root while the log's directory belongs to the workers'
user (--user), who could then plant a symbolic link where the file is about
to be reopened. So the file is opened with O_NOFOLLOW, and given to that user
(fchown on the open descriptor) only when the master has just created it: a
root master never writes through a link, nor hands over a file it did not
create. A reopen that fails keeps the old file, and says why.

Logging to stderr never waits for a reader (OutputHandler, output.py): a
master blocked in write() would stop reaping and forking.

Only a regular file will do (open_regular): a FIFO at the path would block
open() until someone read it, freezing the master, which then answers neither
`prefork ctl` nor SIGTERM.
"""

import errno
import logging
import os
import stat
import sys

from prefork.output import LineOutput

FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S %z"


class OutputHandler(logging.Handler):
    """Log lines to stderr (or any fd) through a LineOutput: never blocks, drops and counts when full.

    Once the output drains, the first line written says how many were dropped.
    """

    def __init__(self, fd):
        super().__init__()
        self.output = LineOutput(fd)

    def emit(self, record):
        try:
            line = self.format(record)
            self._summarize()
            self.output.write(line.encode("utf-8", "replace") + b"\n")
        except Exception:
            self.handleError(record)

    def close(self):
        self.output.close()
        super().close()

    def drain(self):
        """Write what waits, and the summary of what was dropped once it has all gone; True when drained."""
        with self.lock:
            drained = self.output.flush()
            self._summarize()
        return drained

    def _summarize(self):
        dropped = self.output.take_dropped()
        if dropped:
            summary = logging.LogRecord("prefork", logging.WARNING, __file__, 0,
                                        "%s log line(s) dropped: the output (%s) was not being read",
                                        (dropped, _describe(self.output.fd)), None)
            self.output.write(self.format(summary).encode() + b"\n")


def _describe(fd):
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return "closed"
    return "a pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a terminal or device"


RETRY = 0.2                  # seconds between tries to write log lines waiting for a full output


def drain(now):
    """The master's loop, each pass: write what waits; when to try again (None: nothing waits)."""
    drained = all(handler.drain() for handler in logging.getLogger().handlers if isinstance(handler, OutputHandler))
    return None if drained else now + RETRY


class LogFile(logging.FileHandler):
    """A FileHandler that opens without following links and gives a new file to the workers' user."""

    def __init__(self, path, owner=None):
        self.owner = owner
        super().__init__(path, encoding="utf-8")

    def _open(self):
        return open_log(self.baseFilename, self.owner)


def open_log(path, owner=None):
    """Open path for appending, never through a symbolic link; chown it to owner only if we created it."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o640)
        if owner is not None and os.geteuid() == 0:
            os.fchown(fd, *owner)
    except FileExistsError:
        fd = open_regular(path, flags)
    return os.fdopen(fd, "a", encoding="utf-8")


def open_regular(path, flags):
    """os.open(path, flags), refusing at once what is no regular file: a FIFO or a device would block
    the open or a read, or never end a read. Used for the pid file too."""
    try:
        fd = os.open(path, flags | os.O_NONBLOCK | os.O_NOCTTY)     # a tty never becomes our terminal
    except OSError as exc:
        if exc.errno == errno.ENXIO:     # only what is no regular file: a FIFO nobody reads, a socket
            raise _not_regular(path) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _not_regular(path)
    os.set_blocking(fd, True)
    return fd


def _not_regular(path):
    return OSError(errno.EINVAL, "not a regular file", path)


def configure(level, path="", owner=None):
    """Log at level to path (appending) or stderr; owner (uid, gid) gets a file we create. Raises OSError."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        if isinstance(handler, OutputHandler):
            handler.close()
    handler = LogFile(path, owner) if path else OutputHandler(sys.stderr.fileno())
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    root.addHandler(handler)
    root.setLevel(level.upper())


_ALSO_REOPENED = []           # other files reopen() reopens: the access log (access.py)


def reopen_also(item, add=True):
    """Have reopen() call item.reopen() too (which returns the path it reopened, or None); or no more."""
    if add:
        _ALSO_REOPENED.append(item)
    elif item in _ALSO_REOPENED:
        _ALSO_REOPENED.remove(item)


def reopen():
    """Reopen every log file of this process (after a rotation); the paths. OSError if one cannot be:
    that one keeps writing to its old file."""
    reopened = []
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            stream = handler._open()              # first: on failure the old stream stays
            handler.acquire()
            try:
                old, handler.stream = handler.stream, stream
            finally:
                handler.release()
            if old is not None:
                old.close()
            reopened.append(handler.baseFilename)
    return reopened + [path for path in (item.reopen() for item in _ALSO_REOPENED) if path]


def stream():
    """Where a crashing or hung process should write its stack dumps: the log file, or stderr."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and handler.stream is not None:
            return handler.stream
    return sys.stderr
