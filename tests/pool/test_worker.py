"""One worker process, forked from the test as the master forks it: no master loop around it.

The test plays the master: it owns the listener and the scoreboard, forks the
worker with the pool's own fork_here, talks to it over real sockets and reads
its exit status. The whole pool is tested in tests/integration.
"""

import os
import random
import signal
import socket

import pytest

import prefork
from conftest import wait_for
from prefork.pool import scoreboard
from prefork.supervision import Config
from prefork.errors import WorkerExit
from prefork.listeners import prepare_for_pool
from prefork.pool.worker_table import fork_here
from prefork.pool.worker import PoolSetup, Worker
from prefork.pool.worker_process import _jittered, successor_threshold


class PidLine(prefork.StreamRequestHandler):
    """Answer a line with "<worker pid> <line>"; the line "raise" raises instead."""

    def handle(self):
        line = self.rfile.readline().strip()
        if line == b"raise":
            raise RuntimeError("the handler failed on purpose")
        self.wfile.write(b"%d %s\n" % (os.getpid(), line))


class ForkedWorker:
    """A worker for slot 1 of a one-slot scoreboard, forked from this process."""

    def __init__(self, **settings):
        self.server = prefork.TCPServer(("127.0.0.1", 0), PidLine)
        self.config = Config(**settings)
        prepare_for_pool(self.server, self.config)
        self.board = scoreboard.Scoreboard(1, 1)
        self.doorbell_r, doorbell_w = os.pipe()
        setup = PoolSetup([self.server], self.config, 1, self.board, doorbell_w, self.server, None,
                          tick_interval=0.1, master_pid=os.getpid(), name="test_worker")
        self.worker = Worker(1, setup, index=1)
        self.board.reset(1, 0.0)
        self.pid = fork_here(self.worker, close_master_fds=lambda: None)
        os.close(doorbell_w)
        self.status = None
        wait_for(lambda: self.view().ready or self.exited())

    def view(self):
        return self.board.view(1)

    def exited(self):
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = status
        return self.status is not None

    def ask(self, line):
        with socket.create_connection(self.server.server_address, timeout=10) as conn:
            conn.sendall(line + b"\n")
            return conn.makefile("rb").readline()

    def stop(self):
        if not self.exited():
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.doorbell_r)
        self.server.server_close()


@pytest.fixture
def forked():
    started = []

    def start(**settings):
        started.append(ForkedWorker(**settings))
        return started[-1]
    yield start
    for worker in started:
        worker.stop()


def test_a_worker_boots_serves_and_counts_its_requests_on_the_scoreboard(forked):
    worker = forked()
    assert worker.view().pid == worker.pid and worker.view().state_name == "idle"
    answers = [worker.ask(b"hello %d" % n) for n in range(3)]
    assert answers == [b"%d hello %d\n" % (worker.pid, n) for n in range(3)]
    wait_for(lambda: worker.view().requests == 3)
    assert worker.view().retire == scoreboard.KEEP and not worker.exited()


def test_a_handler_that_raises_does_not_take_its_worker_down(forked):
    worker = forked()
    assert worker.ask(b"raise") == b""                   # that connection is closed unanswered
    assert worker.ask(b"after") == b"%d after\n" % worker.pid
    assert not worker.exited()


def test_at_its_cap_a_worker_takes_no_more_connections_and_exits_as_recycled(forked):
    worker = forked(max_requests=2)
    assert [worker.ask(b"a"), worker.ask(b"b")] == [b"%d a\n" % worker.pid, b"%d b\n" % worker.pid]
    third = socket.create_connection(worker.server.server_address, timeout=10)
    wait_for(worker.exited)
    assert os.waitstatus_to_exitcode(worker.status) == WorkerExit.RECYCLE
    assert worker.view().retire == scoreboard.EXHAUSTED and worker.view().requests == 2
    # The connection that came after its last one is still in the accept queue, for the worker's
    # successor: here, the test takes it.
    worker.server.socket.settimeout(10)
    taken, _ = worker.server.socket.accept()
    third.sendall(b"still here\n")
    assert taken.recv(100) == b"still here\n"
    taken.close()
    third.close()


def test_a_graceful_stop_of_an_idle_worker_exits_ok_and_a_quick_one_too(forked):
    for signum in (signal.SIGTERM, signal.SIGQUIT):
        worker = forked()
        os.kill(worker.pid, signum)
        wait_for(worker.exited)
        assert os.waitstatus_to_exitcode(worker.status) == WorkerExit.OK, signum


def test_max_requests_jitter_adds_zero_to_j():
    random.seed(7)
    limits = {_jittered(100, 10) for _ in range(500)}
    assert limits == set(range(100, 111))


def test_no_limit_stays_no_limit():
    assert _jittered(0, 10) == 0
    assert successor_threshold(0) == 0


@pytest.mark.parametrize("cap, threshold", [
    (1, 1), (2, 1), (3, 2), (5, 4), (10, 9), (20, 18), (100, 90), (1000, 900), (5000, 4900), (10**6, 10**6 - 100),
])
def test_a_successor_is_asked_for_ahead_of_the_cap_but_never_before_a_first_request(cap, threshold):
    assert successor_threshold(cap) == threshold
    assert 1 <= successor_threshold(cap) <= cap
