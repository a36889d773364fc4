"""Stopping a pool loses nothing that can be served: the queued connections of a graceful stop, reported."""

import os
import re
import signal
import socket
import threading
import time

import psutil

from conftest import REPO, wait_for

TESTS = os.path.join(REPO, "tests")


def serve(serve_cli, *args):
    return serve_cli(*args, cwd=TESTS)


def busy_workers(server):
    """Workers holding a client connection."""
    count = 0
    for worker in server.workers():
        try:
            count += any(c.status == "ESTABLISHED" for c in worker.net_connections())
        except psutil.NoSuchProcess:
            pass
    return count


class Clients:
    """Clients that each send one request and record the answer (or how the connection ended)."""

    def __init__(self, address):
        self.address, self.answers, self.lock = address, [], threading.Lock()
        self.threads = []

    def send(self, payload, count=1):
        for _ in range(count):
            sock = socket.create_connection(self.address, timeout=30)
            sock.sendall(payload)
            thread = threading.Thread(target=self._read, args=(sock,))
            thread.start()
            self.threads.append(thread)

    def _read(self, sock):
        with sock:
            try:
                answer = sock.recv(100)
            except OSError:
                answer = b"reset"
        with self.lock:
            self.answers.append(answer or b"closed")

    def join(self):
        for thread in self.threads:
            thread.join(30)
        return self.answers


def served_and_left(log):
    """(requests served during the stop, connections left queued) from the master's report."""
    served = int(re.search(r"(\d+) request\(s\) served during the stop", log).group(1))
    left = re.search(r"(\d+) connection\(s\) left in the accept queues are dropped", log)
    return served, int(left.group(1)) if left else 0


def test_a_graceful_stop_serves_every_queued_connection_first(serve_cli):
    """Before: two workers busy, twelve connections queued, SIGTERM: 2 answered, 12 reset."""
    server = serve(serve_cli, "apps.handlers:Sleepy", "-w", "2", "-b", "127.0.0.1:0")
    address = server.addresses()[0]
    server.wait_workers(2)
    clients = Clients(address)
    clients.send(b"2\n", 2)
    wait_for(lambda: busy_workers(server) == 2, message="both workers busy")
    clients.send(b"0.1\n", 12)
    os.kill(server.pid, signal.SIGTERM)
    assert server.proc.wait(20) == 0
    answers = clients.join()
    assert len(answers) == 14 and all(a.startswith(b"done") for a in answers), answers
    log = server.log()
    queued = int(re.search(r"graceful stop of 2 worker\(s\) \(SIGTERM\), (\d+) connection\(s\) queued", log)[1])
    served, left = served_and_left(log)
    # Every queued connection, and the requests in hand, were served during the stop. (On a loaded
    # machine a worker may finish its first request, and take one of the twelve, before the SIGTERM.)
    assert 10 <= queued <= 12 and queued + 2 == served <= 14 and left == 0, log
    assert "the accept queues are empty" in log


def test_the_graceful_timeout_bounds_the_drain_and_the_report_counts_what_was_dropped(serve_cli):
    server = serve(serve_cli, "apps.handlers:Sleepy", "-w", "1", "-b", "127.0.0.1:0", "--graceful-timeout", "1")
    address = server.addresses()[0]
    server.wait_workers(1)
    clients = Clients(address)
    clients.send(b"0.6\n")
    # On a busy machine the request may be over before it is seen in hand: go on then too.
    wait_for(lambda: busy_workers(server) == 1 or clients.answers, message="the worker busy")
    clients.send(b"0.6\n", 5)
    stopped_at = time.monotonic()
    os.kill(server.pid, signal.SIGTERM)
    assert server.proc.wait(20) == 0
    assert time.monotonic() - stopped_at < 5
    answers = clients.join()
    answered = sum(1 for a in answers if a.startswith(b"done"))
    served, left = served_and_left(server.log())
    # The first request may end just before the SIGTERM on a loaded machine: answered, not during the stop.
    assert answered - 1 <= served <= answered and 1 <= answered <= 2, (answers, server.log())
    assert 3 <= left <= 4 and served + left <= 6, server.log()       # one more may die mid-request
    assert "still alive after its graceful timeout: SIGKILL" in server.log() or served + left == 6


def test_a_quick_stop_stays_quick_and_says_what_it_left(serve_cli):
    server = serve(serve_cli, "apps.handlers:Sleepy", "-w", "1", "-b", "127.0.0.1:0")
    address = server.addresses()[0]
    server.wait_workers(1)
    clients = Clients(address)
    clients.send(b"5\n")
    wait_for(lambda: busy_workers(server) == 1, message="the worker busy")
    clients.send(b"0.1\n", 3)
    stopped_at = time.monotonic()
    os.kill(server.pid, signal.SIGQUIT)
    assert server.proc.wait(20) == 0
    assert time.monotonic() - stopped_at < 3
    assert not any(a.startswith(b"done") for a in clients.join())
    assert served_and_left(server.log()) == (0, 3), server.log()


def test_the_built_in_echo_answers_the_first_line_of_a_connection_drained_in_a_stop(serve_cli):
    """A long-lived handler checks server.stopping only when nothing more waits: a connection the
    stop drains from the queue, with stopping already set, still gets its line answered."""
    server = serve(serve_cli, "echo", "-w", "1", "-b", "127.0.0.1:0")
    address = server.addresses()[0]
    server.wait_workers(1)
    holder = socket.create_connection(address, timeout=10)
    holder.sendall(b"first\n")
    assert holder.recv(100) == b"first\n"                   # the only worker holds this connection
    queued = [socket.create_connection(address, timeout=10) for _ in range(3)]
    for n, sock in enumerate(queued):
        sock.sendall(b"queued %d\n" % n)
    os.kill(server.pid, signal.SIGTERM)
    started = time.monotonic()
    assert holder.recv(100) == b""                          # closed once quiet, not at the graceful timeout
    assert time.monotonic() - started < 5
    for n, sock in enumerate(queued):
        with sock:
            assert sock.recv(100) == b"queued %d\n" % n
            assert sock.recv(100) == b""
    holder.close()
    assert server.proc.wait(10) == 0
