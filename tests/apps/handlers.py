"""Request handlers the tests serve, in this process and through `prefork serve apps.handlers:...`."""

import os
import threading
import time

import prefork

IMPORTED_AS = (os.getuid(), os.getgid())     # who ran this module's import-time code


def _reply(handler, make_reply):
    """Answer one request on any socket kind: a line on streams, a datagram on datagrams."""
    if isinstance(handler.request, tuple):
        data, sock = handler.request
        sock.sendto(make_reply(data), handler.client_address)
        return
    data = b""
    while not data.endswith(b"\n"):
        chunk = handler.request.recv(65536)
        if not chunk:
            return
        data += chunk
    handler.request.sendall(make_reply(data))


class PidEcho(prefork.BaseRequestHandler):
    """Echo, prefixed with "pid thread|" so a test can tell who served it."""

    def handle(self):
        _reply(self, lambda data: f"{os.getpid()} {threading.get_ident()}|".encode() + data)


class Sleepy(prefork.BaseRequestHandler):
    """Sleep for the number of seconds the request names ("0.5\\n"), then answer "done"."""

    def handle(self):
        def sleep_then_answer(data):
            time.sleep(float(data))
            return f"done {os.getpid()}\n".encode()
        _reply(self, sleep_then_answer)


class Busy(prefork.BaseRequestHandler):
    """Answer "computing" at once, then compute, in bytecode, for the seconds a one-line request names.

    Nothing after the computation touches the socket: a socket call would
    run pending signal handlers, and the test of this handler is about
    what happens when none does.
    """

    def handle(self):
        seconds = float(self.request.recv(100))
        self.request.sendall(b"computing\n")
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            sum(range(1000))


class Raising(prefork.BaseRequestHandler):
    """Raise on every request."""

    def handle(self):
        raise RuntimeError("handler exploded on purpose")


class Leaky(prefork.BaseRequestHandler):
    """Keep MB of memory per request (the request says how many MB), answer the pid."""

    kept = []

    def handle(self):
        def leak(data):
            Leaky.kept.append(bytearray(int(float(data) * 2**20)))
            return f"{os.getpid()}\n".encode()
        _reply(self, leak)


NOT_A_HANDLER = 42


IMPORTED_BY = os.getpid()


class ImportReport(prefork.BaseRequestHandler):
    """Answer "<worker pid> <pid that imported this module> <gc freeze count>"."""

    def handle(self):
        import gc
        _reply(self, lambda data: f"{os.getpid()} {IMPORTED_BY} {gc.get_freeze_count()}\n".encode())


class Orphaner(prefork.BaseRequestHandler):
    """Leave an orphan behind: a shell that exits at once, its `sleep` child outliving it."""

    def handle(self):
        import subprocess
        subprocess.run(["sh", "-c", "sleep 0.3 &"], check=True)
        _reply(self, lambda data: b"orphaned\n")


class Crasher(prefork.BaseRequestHandler):
    """Kill the worker on every request: a crash right after becoming ready."""

    def handle(self):
        os._exit(7)


class ShutdownFromHandler(prefork.BaseRequestHandler):
    """Stop the whole server from inside a handler, socketserver style, then answer."""

    def handle(self):
        self.server.shutdown()
        _reply(self, lambda data: b"stopping\n")


class DatagramBlocking(prefork.DatagramRequestHandler):
    """Answer whether the shared socket the reply goes out on is blocking, as socketserver's is."""

    def handle(self):
        self.wfile.write(b"blocking" if self.socket.getblocking() else b"non-blocking")


class DeathSignal(prefork.BaseRequestHandler):
    """Answer the parent-death signal the kernel will send this worker (prctl PR_GET_PDEATHSIG)."""

    def handle(self):
        import ctypes
        value = ctypes.c_int()
        ctypes.CDLL(None).prctl(2, ctypes.byref(value), 0, 0, 0)
        _reply(self, lambda data: f"{value.value} {os.getuid()}\n".encode())


class SignalReport(prefork.BaseRequestHandler):
    """Answer the ignored and blocked signal masks a program started by the handler inherits."""

    def handle(self):
        import subprocess
        status = subprocess.run(["cat", "/proc/self/status"], capture_output=True, text=True).stdout
        masks = dict(line.split(":\t") for line in status.splitlines() if line.startswith(("SigIgn", "SigBlk")))
        _reply(self, lambda data: f"{masks['SigIgn']} {masks['SigBlk']}\n".encode())


class LineEcho(prefork.StreamRequestHandler):
    """The README's first example: echo lines, waiting on the client with a plain for-loop."""

    def handle(self):
        for line in self.rfile:
            self.wfile.write(line)


class CloseListener(prefork.BaseRequestHandler):
    """Close the worker's copy of the listening socket, then answer: its next accept() fails."""

    def handle(self):
        self.server.socket.close()
        _reply(self, lambda data: f"closed {os.getpid()}\n".encode())


class ShutdownWithFullDoorbell(prefork.BaseRequestHandler):
    """With the master paused, fill its wake-up socket until it refuses more, then ask for a
    stop of the pool, and let the master go on."""

    def handle(self):
        import signal
        doorbell = self.server.shutdown.__self__.setup.doorbell_fd
        os.kill(os.getppid(), signal.SIGSTOP)
        try:
            while True:
                os.write(doorbell, b"x")
        except BlockingIOError:
            pass
        self.server.shutdown()
        os.kill(os.getppid(), signal.SIGCONT)
        _reply(self, lambda data: b"stopping\n")


class StatsInWorker(prefork.BaseRequestHandler):
    """Answer, as JSON on one line, what server.stats() says inside a worker."""

    def handle(self):
        import json
        _reply(self, lambda data: json.dumps(self.server.stats()).encode() + b"\n")


class LogLine(prefork.BaseRequestHandler):
    """Log one line through the "prefork" logger (as a handler would), answer the pid and version."""

    VERSION = "one"

    def handle(self):
        import logging
        logging.getLogger("prefork").warning("worker %s logs a line", os.getpid())
        _reply(self, lambda data: f"{os.getpid()} {self.VERSION}\n".encode())


class AsyncioThenLogLine(LogLine):
    """Run an asyncio loop with a signal handler first, as a handler may: closing it clears the
    process's signal wakeup fd. Then as LogLine."""

    def handle(self):
        import asyncio
        import signal

        async def with_a_signal_handler():
            asyncio.get_running_loop().add_signal_handler(signal.SIGWINCH, lambda: None)
        asyncio.run(with_a_signal_handler())
        super().handle()


class Identity(prefork.BaseRequestHandler):
    """Answer the uid, gid and supplementary groups the worker runs with, and the uid and gid that imported
    this module."""

    def handle(self):
        _reply(self, lambda data: f"{os.getuid()} {os.getgid()} {sorted(os.getgroups())} "
                                  f"imported as {IMPORTED_AS[0]} {IMPORTED_AS[1]}\n".encode())


class ParkedPidEcho(prefork.ParkingLineHandler):
    """A parking line handler: each line comes back as b"pid|n|line", n counting this connection's lines
    (state that moves with the connection to another worker). "sleep" holds the worker 1 s; "boom" raises;
    "bye" closes."""

    def setup(self):
        super().setup()
        self.lines = 0

    def handle_line(self, line):
        if line.strip() == b"boom":
            raise RuntimeError("boom requested")
        if line.strip() == b"sleep":
            time.sleep(1)
        self.lines += 1
        self.request.sendall(b"%d|%d|%s" % (os.getpid(), self.lines, line))
        return line.strip() != b"bye"

    def parked_state(self):
        return self.lines

    def resume(self, state):
        self.lines = state


class PinnedEcho(ParkedPidEcho):
    """State that cannot travel: a retiring worker closes the connection instead of handing it over."""

    movable = False


SERVED = [0]


class Sequence(prefork.ParkingLineHandler):
    """Each line comes back as its number among all the lines this worker has served: the order of service."""

    def handle_line(self, line):
        SERVED[0] += 1
        self.request.sendall(b"%d\n" % SERVED[0])


class StatefulEcho(ParkedPidEcho):
    """A connection whose first line is "lock" keeps a lock as its state, which cannot move to another
    worker; finish() says goodbye, which a connection that moves must not hear."""

    def handle_line(self, line):
        if not self.lines and line.strip() == b"lock":
            self.lock = threading.Lock()
        return super().handle_line(line)

    def parked_state(self):
        return getattr(self, "lock", None) or self.lines

    def finish(self):
        try:
            self.request.sendall(b"bye\n")
        except OSError:
            pass
        super().finish()


class PeerEcho(prefork.BaseRequestHandler):
    """Answer with the client's address as the handler sees it: "host port\\n" (behind a PROXY header, the real one)."""

    def handle(self):
        self.request.recv(100)
        self.request.sendall(f"{self.client_address[0]} {self.client_address[1]}\n".encode())


class ParkedPeerEcho(prefork.ParkingLineHandler):
    """PeerEcho for every line, as a parking handler."""

    def handle_line(self, line):
        self.request.sendall(f"{self.client_address[0]} {self.client_address[1]}\n".encode())


def _tls_line(sock):
    """What a TLS test checks on the server's side: the socket's type, its TLS version and the client's
    certificate's common name ("-" without one)."""
    cert = sock.getpeercert() if hasattr(sock, "getpeercert") else None
    names = dict(pair for rdn in (cert or {}).get("subject", ()) for pair in rdn)
    return f"{type(sock).__name__} {getattr(sock, 'version', lambda: None)()} {names.get('commonName', '-')}\n"


class TLSEcho(prefork.StreamRequestHandler):
    """Answer every line with _tls_line(self.request), owning the connection (a classic handler)."""

    def handle(self):
        for _line in self.rfile:
            self.wfile.write(_tls_line(self.request).encode())


class ParkedTLSEcho(prefork.ParkingLineHandler):
    """TLSEcho, as a parking handler."""

    def handle_line(self, line):
        self.request.sendall(_tls_line(self.request).encode())
