"""Helpers shared by the tests: waiting on conditions, clients for every socket kind,
running servers in a thread of this process or as a `prefork serve` subprocess."""

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import psutil
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wait_for(predicate, timeout=10.0, interval=0.01, message="condition"):
    """Poll predicate until it returns something truthy; fail the test after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout} s waiting for {text}")
        time.sleep(interval)


# -- clients -------------------------------------------------------------------

def stream_exchange(family, address, payload=b"hello\n", timeout=5.0):
    """Connect, send payload, read until the peer has echoed as many bytes (or closes)."""
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(address)
        sock.sendall(payload)
        received = b""
        while len(received) < len(payload):
            data = sock.recv(65536)
            if not data:
                break
            received += data
        return received


def datagram_exchange(family, address, payload=b"hello", timeout=5.0):
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        if family == socket.AF_UNIX:      # a Unix datagram client needs an address to be answered
            sock.bind(tempfile.mktemp(prefix="pf-client-", suffix=".sock"))
        try:
            sock.sendto(payload, address)
            return sock.recvfrom(65536)[0]
        finally:
            if family == socket.AF_UNIX:
                os.unlink(sock.getsockname())


def exchange(kind, address, payload=b"hello\n", timeout=5.0):
    family = socket.AF_UNIX if kind.startswith("unix") else (
        socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
    if kind in ("tcp", "unix"):
        return stream_exchange(family, address, payload, timeout)
    return datagram_exchange(family, address, payload, timeout)


# -- servers running in a thread of this process ------------------------------

def children_of_this_process():
    return [p for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]


@contextlib.contextmanager
def serving(server, workers=None, poll_interval=0.5):
    """Run server.serve_forever() in a thread; on exit shutdown(), server_close(), and
    check that no child process is left."""
    errors = []

    def run():
        try:
            server.serve_forever(poll_interval)
        except BaseException as exc:   # surfaced in the test
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        if workers:
            wait_for(lambda: ready_workers(server) >= workers or errors, message=f"{workers} ready workers")
        yield server
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()
    assert not thread.is_alive(), "serve_forever did not return after shutdown()"
    assert not errors, errors
    wait_for(lambda: not children_of_this_process(), message="no child processes left")


def title(process):
    """A process's title (setproctitle's, in its cmdline); "" once it has exited, zombie or gone: the
    tests look at children that a pool replaces while they look."""
    try:
        return " ".join(process.cmdline()).strip()
    except psutil.NoSuchProcess:                  # ZombieProcess included
        return ""


def ready_workers(server):
    return sum(1 for w in server.stats()["workers"] if w["state"] in ("idle", "busy"))


# -- servers run as `prefork serve` subprocesses -------------------------------

def parse_logged_address(text):
    """127.0.0.1:8000, [::1]:8000, udp://..., unix:PATH or unix-dgram:PATH as the test clients want it."""
    for prefix in ("unix-dgram:", "unix:"):
        if text.startswith(prefix):
            return text[len(prefix):]
    text = text[len("udp://"):] if text.startswith("udp://") else text
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


class ServerProcess:
    """`python -m prefork serve ...` in its own session, with its log in a file.

    prefix runs it under another command (such as `unshare --pid --fork`); the
    master is then that command's child, found by master_pid.
    """

    ADDRESS_LINE = re.compile(r"listening on (.*)$", re.M)

    def __init__(self, args, tmp_path, env=None, cwd=REPO, prefix=()):
        self.log_path = tmp_path / f"server-{time.monotonic_ns()}.log"
        self._log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "prefork", "serve", *args], cwd=cwd, stdout=self._log_file,
            stderr=subprocess.STDOUT, start_new_session=True, env=dict(os.environ, **(env or {})))
        self.pid = self.proc.pid
        self._prefixed = bool(prefix)

    @property
    def master_pid(self):
        if not self._prefixed:
            return self.pid
        return wait_for(lambda: next((c.pid for c in psutil.Process(self.pid).children()), None))

    def log(self):
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern, timeout=10.0, count=1):
        regex = re.compile(pattern)
        return wait_for(lambda: len(regex.findall(self.log())) >= count or self._died(),
                        timeout, message=lambda: f"{pattern!r} in the log:\n{self.log()}") and self.log()

    def _died(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
        return False

    def addresses(self):
        """The bound addresses, as the master logged them: a path, or (host, port), for each."""
        line = self.wait_log(r"listening on") and self.ADDRESS_LINE.search(self.log()).group(1)
        return [parse_logged_address(text) for text in line.split(", ")]

    def workers(self):
        try:
            children = psutil.Process(self.master_pid).children()
        except psutil.NoSuchProcess:
            return []
        return [child for child in children if "prefork: worker" in title(child)]

    def wait_workers(self, count, timeout=10.0):
        """Wait for exactly count live workers that all logged ready; return their pids."""
        def ready():
            pids = {w.pid for w in self.workers()}
            logged = set(int(p) for p in re.findall(r"ready \(pid (\d+)", self.log()))
            self._died()
            return len(pids) == count and pids <= logged and pids
        return wait_for(ready, timeout, message=lambda: f"{count} ready workers; log:\n{self.log()}")

    def wait_replaced(self, old, count, timeout=10.0):
        """Wait for count ready workers, none of them in old; return their pids."""
        def replaced():
            pids = {w.pid for w in self.workers()}
            logged = set(int(p) for p in re.findall(r"ready \(pid (\d+)", self.log()))
            self._died()
            return len(pids) == count and not pids & set(old) and pids <= logged and pids
        return wait_for(replaced, timeout, message=lambda: f"{count} workers not in {old}; log:\n{self.log()}")

    def stop(self, signum=signal.SIGTERM, timeout=15.0):
        if self.proc.poll() is None:
            os.kill(self.pid, signum)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"server did not exit after {signal.Signals(signum).name}:\n{self.log()}")

    def kill_all(self):
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(5)
        self._log_file.close()


@pytest.fixture
def short_tmp():
    """A short temporary directory, removed afterwards: Unix socket paths must fit in 108 bytes,
    which pytest's tmp_path, named after the test, does not always."""
    import shutil
    directory = tempfile.mkdtemp(prefix="pf-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def serve_cli(tmp_path):
    """Start `prefork serve` subprocesses; everything they started is killed afterwards."""
    started = []

    def start(*args, env=None, cwd=REPO, prefix=()):
        server = ServerProcess(list(args), tmp_path, env, cwd, prefix)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill_all()


def run_cli(*args, timeout=20, cwd=REPO):
    """Run `python -m prefork ...` to completion: (returncode, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "prefork", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def process_gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
