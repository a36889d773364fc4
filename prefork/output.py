"""Runs in any process: writing lines to stderr, stdout or a file without ever waiting for a reader.

A master that blocks in write() stops reaping and forking: a pipe nobody
reads (a stuck log shipper, a paused `docker logs`) would then stop the
whole service. So every line goes out through a LineOutput, which never
waits: a pipe, FIFO or terminal is reopened through /proc/self/fd as a new,
non-blocking open file description (the original, shared with other
processes, keeps its flags); a socket (journald's stdout) is written with
MSG_DONTWAIT; a regular file is written as it is (a disk does not wait on
a reader).

What cannot be written at once waits in a bounded buffer (BUFFER bytes);
past that, lines are dropped and counted. Once the output drains, the owner
says how many were dropped (take_dropped). dropped_total() counts every
line this process dropped, for the metrics.
"""

import os
import socket
import stat

BUFFER = 64 * 1024           # bytes waiting for a full output before lines are dropped (a pipe holds 64 KB more)
PIPE_BUF = 4096              # a write to a pipe this size or less is all or nothing (POSIX; Linux's is 4096)

_dropped = [0]               # lines dropped by every output of this process
_outputs = []                # every output of this process, to reset in a forked child


class LineOutput:
    """Whole lines to one file descriptor, without blocking; lines that do not fit are counted, not written."""

    def __init__(self, fd, limit=BUFFER):
        self.limit = limit
        self.pending = bytearray()     # written later, in order
        self.dropped = 0               # since the last take_dropped()
        self._sock = None
        self.fd = -1
        self._open(fd)
        _outputs.append(self)

    def _open(self, fd):
        mode = os.fstat(fd).st_mode
        if stat.S_ISSOCK(mode):
            self._sock = socket.socket(fileno=os.dup(fd))
            self.fd = self._sock.fileno()
            return
        if not stat.S_ISREG(mode):
            try:                   # a new open file description: O_NONBLOCK here changes nobody else's
                self.fd = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
                return
            except OSError:
                pass               # no /proc, or a pipe whose reader is gone: write as it is
        self.fd = os.dup(fd)
        os.set_inheritable(self.fd, False)

    def write(self, lines: bytes) -> None:
        """Write whole lines (bytes ending in a newline) now, or buffer them, or drop and count them.

        To a pipe, at most PIPE_BUF bytes of whole lines go in one write(): such
        a write is all or nothing, so another process's lines never land in the
        middle of ours."""
        if self.pending and not self.flush():
            if len(self.pending) + len(lines) <= self.limit:
                self.pending += lines
            else:
                self._drop(lines.count(b"\n"))
            return
        start = 0
        while start < len(lines):
            end = len(lines) if len(lines) - start <= PIPE_BUF else lines.rfind(b"\n", start, start + PIPE_BUF) + 1
            if end <= start:                        # one line longer than PIPE_BUF: whole, if not at once
                end = lines.find(b"\n", start) + 1 or len(lines)
            written = self._send(lines[start:end])
            if written < end - start:
                self.pending += lines[start + written:]   # a line begun must follow, whatever the limit
                return
            start = end

    def flush(self) -> bool:
        """Write what waits, as far as the output takes it; True when nothing waits any more."""
        while self.pending:
            written = self._send(self.pending[:PIPE_BUF])
            if not written:
                return False
            del self.pending[:written]
        return True

    def take_dropped(self) -> int:
        """Lines dropped since the last call, once the output has drained (else 0): for the summary line."""
        if not self.dropped or self.pending:
            return 0
        dropped, self.dropped = self.dropped, 0
        return dropped

    def _drop(self, count):
        self.dropped += count
        _dropped[0] += count

    def _send(self, data) -> int:
        """Bytes of data written now: 0 when the output is full. An output that fails (a full disk, a
        hung-up terminal, a reader gone) takes the lines as dropped: logging must never raise."""
        try:
            if self._sock is not None:
                return self._sock.send(data, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            return os.write(self.fd, data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            self._drop(bytes(data).count(b"\n"))
            return len(data)

    def close(self) -> None:
        if self in _outputs:
            _outputs.remove(self)
        if self._sock is not None:
            self._sock.close()
        elif self.fd >= 0:
            os.close(self.fd)
        self.fd = -1


def dropped_total() -> int:
    """Lines this process dropped because an output was full."""
    return _dropped[0]


def _forget_parents_lines():
    """In a forked child: the parent's waiting lines and counts are the parent's to write and report."""
    _dropped[0] = 0
    for output in _outputs:
        output.pending.clear()
        output.dropped = 0


os.register_at_fork(after_in_child=_forget_parents_lines)
