"""Slow, silent and non-reading clients: none of them may hold a worker (real sockets and processes)."""

import os
import socket
import threading
import time

import pytest

from conftest import REPO, exchange, wait_for

TESTS = os.path.join(REPO, "tests")
HELLO_REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def serve(serve_cli, *args):
    return serve_cli(*args, cwd=TESTS)


def http_get(address, timeout=20):
    started = time.monotonic()
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(HELLO_REQUEST)
        reply = b""
        while True:
            data = sock.recv(65536)
            if not data:
                break
            reply += data
    return reply, time.monotonic() - started


def test_clients_that_stall_mid_request_are_dropped_after_the_client_timeout(serve_cli):
    """Before: ten clients sending half a request line held -w 2 for 25.6 s before a real request."""
    server = serve(serve_cli, "hello", "-w", "2", "-b", "127.0.0.1:0", "--client-timeout", "1",
                   "--log-level", "debug")
    address = server.addresses()[0]
    server.wait_workers(2)
    stalled = [socket.create_connection(address, timeout=10) for _ in range(10)]
    for sock in stalled:
        sock.sendall(b"GET / HT")
    reply, elapsed = http_get(address)
    assert reply.endswith(b"Hello, World!")
    assert elapsed < 8, f"a real request waited {elapsed:.1f} s behind ten stalled clients"
    for sock in stalled:
        with sock:
            assert sock.recv(100) == b""             # dropped, not answered
    assert "Traceback" not in server.log() and "dumping its stacks" not in server.log()


def test_a_silent_client_is_dropped_no_sooner_and_not_much_later_than_the_client_timeout(serve_cli):
    server = serve(serve_cli, "apps.handlers:LineEcho", "-w", "1", "-b", "127.0.0.1:0", "--client-timeout", "1.5",
                   "--log-level", "debug")
    address = server.addresses()[0]
    server.wait_workers(1)
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"half a li")                   # data, so the kernel hands it to a worker
        started = time.monotonic()
        assert sock.recv(100) == b""
        elapsed = time.monotonic() - started
    assert 1.4 <= elapsed <= 4, elapsed
    log = server.wait_log(r"went away: timed out")    # one debug line, no traceback
    assert "Traceback" not in log and "ERROR" not in log


def test_a_client_that_connects_and_says_nothing_never_reaches_a_worker(serve_cli):
    server = serve(serve_cli, "apps.handlers:PidEcho", "-w", "1", "-b", "127.0.0.1:0", "--client-timeout", "1",
                   "--log-level", "debug", "--defer-accept")
    address = server.addresses()[0]
    server.wait_workers(1)
    silent = [socket.create_connection(address, timeout=20) for _ in range(5)]
    started = time.monotonic()
    assert exchange("tcp", address, b"x\n").endswith(b"|x\n")
    assert time.monotonic() - started < 0.9, "the only worker was free: the silent clients wait in the kernel"
    for sock in silent:                              # at the end of the deferral, dropped unread
        with sock:
            assert sock.recv(100) == b""
    wait_for(lambda: server.log().count("sent nothing within the client timeout") == 5)


def test_with_the_defaults_a_server_can_speak_first(serve_cli, tmp_path):
    """Before: TCP_DEFER_ACCEPT was on by default, and a greeting's client hung 16 s, then got EOF."""
    (tmp_path / "banner.py").write_text(
        "import prefork\n"
        "class Banner(prefork.BaseRequestHandler):\n"
        "    def handle(self):\n"
        "        self.request.sendall(b'220 ready\\n')\n")
    server = serve_cli("banner:Banner", "-w", "1", "-b", "127.0.0.1:0", cwd=str(tmp_path))
    address = server.addresses()[0]
    server.wait_workers(1)
    with socket.create_connection(address, timeout=5) as sock:
        assert sock.recv(100) == b"220 ready\n"


def test_with_the_defaults_a_quiet_client_is_dropped_before_its_worker_could_be_taken_for_hung():
    """The README's first example and defaults, in time scaled down (client timeout below worker timeout)."""
    import prefork
    from apps.handlers import LineEcho
    from conftest import serving

    config = prefork.Config(worker_timeout=3, client_timeout=1)
    server = prefork.TCPServer(("127.0.0.1", 0), LineEcho, policy=prefork.Prefork(workers=1), config=config)
    with serving(server, workers=1):
        (before,) = [w["pid"] for w in server.stats()["workers"]]
        with socket.create_connection(server.server_address, timeout=10) as sock:
            sock.sendall(b"one\n")
            assert sock.recv(100) == b"one\n"
            assert sock.recv(100) == b""                         # quiet: dropped by the client timeout
        time.sleep(3.5)                                          # past the worker timeout: nothing happens
        stats = server.stats()
        assert stats["restarts"]["timeout"] == 0 and [w["pid"] for w in stats["workers"]] == [before]


def test_a_graceful_stop_does_not_wait_for_an_idle_client_beyond_the_client_timeout(serve_cli):
    server = serve(serve_cli, "apps.handlers:LineEcho", "-w", "1", "-b", "127.0.0.1:0", "--client-timeout", "1",
                   "--graceful-timeout", "30")
    address = server.addresses()[0]
    server.wait_workers(1)
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"one\n")
        assert sock.recv(100) == b"one\n"
        started = time.monotonic()
        assert server.stop() == 0
        assert time.monotonic() - started < 5


# -- datagrams -------------------------------------------------------------------------

def test_a_unix_datagram_client_that_never_reads_cannot_stall_the_pool(serve_cli, tmp_path):
    """Before: the worker blocked in sendto() to the full client, was killed for it, and its
    replacement took the next datagram from the same client and blocked again."""
    path = str(tmp_path / "d.sock")
    server = serve_cli("-w", "1", "-b", f"unix-dgram:{path}", "--timeout", "3", "--log-level", "debug")
    server.wait_workers(1)
    hog = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    hog.bind(str(tmp_path / "hog.sock"))
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stop = threading.Event()

    def flood():
        while not stop.is_set():
            try:
                hog.sendto(b"x" * 512, path)
            except OSError:                  # the server's own queue is full for a moment
                time.sleep(0.001)

    flooder = threading.Thread(target=flood)
    flooder.start()
    try:
        wait_for(lambda: queued(hog) > 0, message="the hog being answered")
        for _ in range(5):
            assert exchange("unix-dgram", path, b"ping", timeout=2) == b"ping"
        wait_for(lambda: "dropped: its receive queue is full" in server.log(), message="replies dropped")
    finally:
        stop.set()
        flooder.join(5)
        hog.close()
    assert "dumping its stacks" not in server.log() and "unexpectedly" not in server.log()


def queued(sock):
    """Bytes waiting in a socket's receive queue (SIOCINQ)."""
    import array
    import fcntl
    import termios
    count = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, count)
    return count[0]


def test_udp_replies_go_out_without_waiting(serve_cli):
    server = serve_cli("-w", "1", "-b", "udp://127.0.0.1:0")
    address = server.addresses()[0]
    server.wait_workers(1)
    assert exchange("udp", address, b"ping") == b"ping"


@pytest.mark.parametrize("kind", ["udp", "unix-dgram"])
def test_the_reply_socket_is_a_blocking_socket_like_socketservers(serve_cli, tmp_path, kind):
    bind = "udp://127.0.0.1:0" if kind == "udp" else f"unix-dgram:{tmp_path / 'd.sock'}"
    server = serve(serve_cli, "apps.handlers:DatagramBlocking", "-w", "1", "-b", bind)
    address = server.addresses()[0]
    server.wait_workers(1)
    assert exchange(kind, address, b"?") == b"blocking"


@pytest.mark.timeout(120)
@pytest.mark.xdist_group("load")        # never beside another test that loads the machine on purpose
def test_a_burst_past_the_backlog_loses_no_client_to_the_deferred_accept(serve_cli):
    """Connections the kernel completes with SYN cookies (a burst past the backlog) are handed over
    before their request arrives; they must be served, not taken for silent and closed."""
    server = serve_cli("-w", "2", "-b", "127.0.0.1:0", "--backlog", "1", "--defer-accept")
    address = server.addresses()[0]
    server.wait_workers(2)
    outcomes, lock = {"ok": 0, "closed": 0, "timed out": 0}, threading.Lock()

    def client():
        try:
            with socket.create_connection(address, timeout=55) as sock:
                sock.sendall(b"hello\n")
                outcome = "ok" if sock.recv(100) == b"hello\n" else "closed"
        except TimeoutError:
            outcome = "timed out"
        except OSError:            # reset
            outcome = "closed"
        with lock:
            outcomes[outcome] += 1

    threads = [threading.Thread(target=client) for _ in range(300)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(75)
    # What prefork must not do is close a connection that reached a worker before its bytes. A
    # client whose packets the kernel dropped at the full queue waits on TCP's retransmission
    # backoff (about 12, 25, 51 s in): on a machine this busy a few wait past 30 s, with or
    # without a deferred accept (measured: 3 in 1,800 without, about 25 with; 19 in 300 with three
    # test suites running at once; 33 in 300 in a CI run beside three other test processes), so
    # each client waits 55 s, past the third retransmission.
    assert outcomes["closed"] == 0, outcomes
    assert outcomes["ok"] >= 270 and sum(outcomes.values()) == 300, outcomes
