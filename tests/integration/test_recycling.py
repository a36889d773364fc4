"""--max-requests is a cap, and recycles never queue behind each other (real processes)."""

import collections
import os
import socket
import threading
import time

import psutil
import pytest

from conftest import REPO, exchange, stream_exchange, wait_for

TESTS = os.path.join(REPO, "tests")


def serve(serve_cli, *args):
    return serve_cli(*args, cwd=TESTS)


def served_by(reply):
    return int(reply.split()[0].split(b"|")[0])


def test_no_worker_serves_more_than_max_requests(serve_cli):
    """Before: with -w 2 --max-requests 5, 60 quick sequential requests, one worker served 46."""
    server = serve(serve_cli, "apps.handlers:PidEcho", "-w", "2", "-b", "127.0.0.1:0", "--max-requests", "5")
    address = server.addresses()[0]
    server.wait_workers(2)
    counts = collections.Counter(served_by(exchange("tcp", address, b"x\n")) for _ in range(60))
    assert sum(counts.values()) == 60
    assert max(counts.values()) <= 5, counts                    # the cap, never passed
    alive = {w.pid for w in server.workers()}
    retired = [n for pid, n in counts.items() if pid not in alive]
    assert len(retired) >= 10 and min(retired) >= 4, counts     # at least the successor threshold (4 of 5)


def test_a_recycle_never_waits_behind_a_worker_finishing_a_slow_request(serve_cli):
    """Before: with --max-requests 1 beside one 3-second request, one worker served 8,463
    requests in 2 s, its recycle queued behind the slow worker's."""
    server = serve(serve_cli, "apps.handlers:Sleepy", "-w", "2", "-b", "127.0.0.1:0", "--max-requests", "1")
    address = server.addresses()[0]
    server.wait_workers(2)
    slow = threading.Thread(target=exchange, args=("tcp", address, b"3\n"), kwargs={"timeout": 10})
    slow.start()
    wait_for(lambda: _holding_a_connection(server), message="the slow request in a worker's hands")
    counts, deadline = collections.Counter(), time.monotonic() + 2
    while time.monotonic() < deadline:
        counts[int(exchange("tcp", address, b"0\n").split()[1])] += 1
    slow.join(10)
    assert max(counts.values()) == 1, counts                    # each worker served one request, no more
    assert len(counts) >= 10, f"only {len(counts)} quick requests in 2 s: recycles queued up"


def _holding_a_connection(server):
    for worker in server.workers():
        try:
            if any(c.status == "ESTABLISHED" for c in worker.net_connections()):
                return True
        except psutil.NoSuchProcess:          # a worker that served its one request and left
            pass
    return False


@pytest.mark.timeout(90)
def test_with_accept_threads_the_cap_is_n_plus_threads_minus_one(serve_cli):
    server = serve(serve_cli, "apps.handlers:Sleepy", "-w", "1", "--threads", "4", "-b", "127.0.0.1:0",
                   "--max-requests", "6")
    address = server.addresses()[0]
    server.wait_workers(1)
    counts, lock, failures = collections.Counter(), threading.Lock(), []

    def client():
        for _ in range(12):
            try:
                pid = int(stream_exchange(socket.AF_INET, address, b"0.05\n", timeout=10).split()[1])
            except (OSError, ValueError, IndexError) as exc:
                failures.append(exc)
                continue
            with lock:
                counts[pid] += 1

    clients = [threading.Thread(target=client) for _ in range(6)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(60)
    assert not failures, failures
    assert sum(counts.values()) == 72
    assert max(counts.values()) <= 6 + 4 - 1, counts
    alive = {w.pid for w in server.workers()}
    assert min(n for pid, n in counts.items() if pid not in alive) >= 5, counts   # threshold of 6: 5


def test_the_exit_of_a_worker_at_its_cap_reads_as_a_recycle(serve_cli):
    server = serve(serve_cli, "apps.handlers:PidEcho", "-w", "1", "-b", "127.0.0.1:0", "--max-requests", "1")
    address = server.addresses()[0]
    (first,) = server.wait_workers(1)
    assert served_by(exchange("tcp", address, b"x\n")) == first
    server.wait_log(rf"worker 1 \(pid {first}\) exited \(recycle, exit code 5\)")
    assert "unexpectedly" not in server.log()


@pytest.mark.parametrize("max_requests, requests", [(1, 30), (10, 200)])
def test_the_built_in_echo_answers_every_request_across_recycles(serve_cli, max_requests, requests):
    """Before: the echo handler checked server.stopping before its first read, and the worker set
    it on accepting its last connection: with --max-requests 1 every client got b'' unanswered."""
    server = serve(serve_cli, "echo", "-w", "2", "-b", "127.0.0.1:0", "--max-requests", str(max_requests))
    address = server.addresses()[0]
    server.wait_workers(2)
    replies = [stream_exchange(socket.AF_INET, address, b"x%d\n" % n, timeout=10) for n in range(requests)]
    assert replies == [b"x%d\n" % n for n in range(requests)]
    wait_for(lambda: server.log().count("exited (recycle") >= requests // max_requests - 2,
             message=server.log)
    assert "unexpectedly" not in server.log()


@pytest.mark.timeout(60)
def test_a_worker_is_replaced_at_its_max_worker_age_successor_first_with_no_request_lost(serve_cli):
    started = time.time()                          # the worker is born after this...
    server = serve_cli("hello", "-w", "1", "-b", "127.0.0.1:0", "--max-worker-age", "1",
                       "--max-worker-age-jitter", "0.5")
    (address,) = server.addresses()
    (first,) = server.wait_workers(1)
    born_by = time.time()                          # ...and before this
    stop, failures, served = threading.Event(), [], [0]

    def client():                                 # requests all along: the successor is ready before the old one goes
        while not stop.is_set():
            try:
                with socket.create_connection(address, timeout=5) as sock:
                    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                    reply = b""
                    while chunk := sock.recv(4096):
                        reply += chunk
                assert reply.endswith(b"Hello, World!"), reply
                served[0] += 1
            except (OSError, AssertionError) as exc:
                failures.append(exc)
    thread = threading.Thread(target=client)
    thread.start()
    try:
        server.wait_log(rf"worker 1 \(pid {first}\) replaced by pid \d+ \(age: lived 1\.[0-5] s", timeout=10)
        retired_at = time.time()
        (second,) = server.wait_replaced([first], 1)
    finally:
        stop.set()
        thread.join(10)
    assert retired_at - started >= 1.0 and retired_at - born_by <= 1.5 + 1.0   # its age plus jitter, noticed
    assert not failures and served[0] > 0
