"""Runs in the `prefork tune` process: a `prefork serve` subprocess under measurement.

Start it, wait until every worker is ready, sample its CPU time and memory, and stop it,
leaving nothing behind.

Used by `prefork tune` and scripts/loadgen_vs_wrk.py. The server runs in its own
session with its log in a temporary file; readiness comes from that log (the
master's `listening on ADDRESS` line and one `worker N ready (pid P, ...)` line per
worker), so a server that fails is reported with its own `prefork: error:` line.
"""

import contextlib
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time

import psutil

from prefork.errors import Exit
from prefork.tune.loadgen import deferred_signals

READY_TIMEOUT = 30.0       # seconds for a server to log every worker ready
STOP_TIMEOUT = 10.0        # seconds for a server to stop after SIGTERM before it is killed


class ServerFailed(Exception):
    """The server could not start, or died; ``code`` is the exit status to report it with."""

    def __init__(self, message, code=Exit.ERROR):
        super().__init__(message)
        self.code = code


def describe_pool(workers, threads):
    """'2 workers x 1 thread'."""
    return f"{plural(workers, 'worker')} x {plural(threads, 'thread')}"


def plural(number, noun):
    """'3 workers', '1 worker'."""
    return f"{number:,} {noun}{'s' * (number != 1)}"


class ServerUnderTest:
    """`python -m prefork serve` in its own session, its log in a temporary file; stopped with SIGTERM."""

    LISTENING = re.compile(r"listening on (\S+)")
    READY = re.compile(r"worker \d+ ready \(pid (\d+)")
    ERROR = re.compile(r"^prefork: error: (.*)$", re.M)

    def __init__(self, handler, bind, workers, threads, options=()):
        self.argv = [sys.executable, "-m", "prefork", "serve", handler, "-b", bind, "-w", str(workers),
                     "--threads", str(threads), *options]
        self.workers, self.label = workers, describe_pool(workers, threads)
        self.proc = None

    def __enter__(self):
        self._log = tempfile.TemporaryFile()
        try:
            with deferred_signals():             # a Ctrl-C here must not lose the server it starts
                self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT,
                                             start_new_session=True)
            self.pid = self.proc.pid
            self.address = self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def log(self):
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def _wait_ready(self):
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            log = self.log()
            if self.proc.poll() is not None:
                raise self._failure(log)
            listening = self.LISTENING.search(log)
            if listening and len(set(self.READY.findall(log))) >= self.workers:
                return connect_address(listening.group(1).rstrip(","))
            if time.monotonic() > deadline:
                raise ServerFailed(f"the server ({self.label}) was not ready after {READY_TIMEOUT:.0f} s; "
                                   f"its log ends: {log.strip()[-300:]!r}")
            time.sleep(0.02)

    def check_alive(self):
        """Raise ServerFailed if the server has exited (a crash between two runs)."""
        if self.proc.poll() is not None:
            raise ServerFailed(f"the server ({self.label}) exited during the runs, with status "
                               f"{self.proc.returncode}; its log ends: {self.log().strip()[-300:]!r}")

    def _failure(self, log):
        found = self.ERROR.search(log)
        reason = found.group(1) if found else (f"exit status {self.proc.returncode}; "
                                               f"its log ends: {log.strip()[-300:]!r}")
        code = Exit.USAGE if self.proc.returncode == Exit.USAGE else Exit.ERROR
        return ServerFailed(f"the server ({self.label}) failed to start: {reason}", code)

    def stop(self):
        """SIGTERM, wait; SIGKILL the whole session if it lingers, and anything it left."""
        if self.proc is None:
            self._log.close()
            return
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    print(f"prefork: the server ({self.label}) did not stop within {STOP_TIMEOUT:.0f} s; "
                          f"killing it", file=sys.stderr)
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self._log.close()
            self.proc = None


def held_connections(process):
    """How many established client connections a worker holds (its listeners are not connected)."""
    with contextlib.suppress(psutil.Error):
        return sum(1 for c in process.net_connections(kind="inet") + process.net_connections(kind="unix")
                   if c.raddr and c.status in (psutil.CONN_ESTABLISHED, psutil.CONN_NONE))
    return 0


def connect_address(logged):
    """Where to connect for an address the master logged ('0.0.0.0:8000', '[::]:8000', 'unix:/p')."""
    if logged.startswith("unix:"):
        return logged[5:]
    host, _, port = logged.rpartition(":")
    host = host.strip("[]")
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return host, int(port)


class ServerUsage:
    """CPU time of the master and its workers over the measured window, the workers' mean USS, and
    the client connections each worker holds as the window opens (parked or in service)."""

    def __init__(self, master_pid):
        self.master_pid = master_pid
        self.cpu_percent = self.uss_mb = None
        self.connections = []

    @contextlib.contextmanager
    def window(self):
        started, before = time.monotonic(), self._cpu_seconds()
        self.connections = [held_connections(worker) for worker in self._processes()[1:]]
        yield
        elapsed, after = time.monotonic() - started, self._cpu_seconds()
        used = sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())
        self.cpu_percent = round(used / elapsed * 100, 1) if elapsed > 0 else None
        uss = []
        for worker in self._processes()[1:]:
            with contextlib.suppress(psutil.Error):
                uss.append(worker.memory_full_info().uss)
        self.uss_mb = round(sum(uss) / len(uss) / 2**20, 2) if uss else None

    def _processes(self):
        try:
            master = psutil.Process(self.master_pid)
            return [master] + master.children()
        except psutil.Error:
            return []

    def _cpu_seconds(self):
        seconds = {}
        for process in self._processes():
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                seconds[process.pid] = times.user + times.system
        return seconds


def machine():
    """The description of this machine that goes with every figure."""
    model = ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    return {"cpus": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)), "cpu_model": model,
            "kernel": platform.release(), "python": platform.python_version(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)}
