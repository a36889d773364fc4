"""The Prefork policy through the Python API: stats(), shutdown(), hooks as methods, signals."""

import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

import prefork
from apps.handlers import PidEcho, Sleepy
from conftest import REPO, exchange, process_gone, ready_workers, serving, stream_exchange, title, wait_for

FAST_MONITOR = prefork.Config(monitor_interval=0.05)


def test_stats_reports_each_worker_with_psutil_figures():
    server = prefork.TCPServer(("127.0.0.1", 0), PidEcho, policy=prefork.Prefork(workers=2), config=FAST_MONITOR)
    with serving(server, workers=2):
        for _ in range(10):
            exchange("tcp", server.server_address)
        def settled(s):      # a reply reaches the client a moment before the worker records it
            workers = s["workers"]
            done = all(w["uss"] and w["state"] == "idle" for w in workers)
            return s if done and sum(w["requests"] for w in workers) == 10 else None

        stats = wait_for(lambda: settled(server.stats()))
        assert stats["master"]["pid"] == os.getpid() and stats["master"]["state"] == "running"
        assert stats["master"]["target_workers"] == 2
        workers = stats["workers"]
        assert [w["slot"] for w in workers] == [1, 2]
        assert sum(w["requests"] for w in workers) == 10
        for w in workers:
            assert w["state"] == "idle" and w["request_seconds"] is None and psutil.pid_exists(w["pid"])
            assert 0 < w["uss"] <= w["rss"] and w["cpu_percent"] >= 0 and w["num_fds"] > 0
            assert abs(w["started_at"] - time.time()) < 60
            assert w["restarts"] == 0 and w["last_exit_reason"] is None
        assert stats["restarts"] == dict.fromkeys(prefork.pool.states.RESTART_REASONS, 0)
        assert {type(reason) for reason in stats["restarts"]} == {str}    # text, not the master's enum
        assert stats["boot_failures"] == 0


def test_stats_count_restarts_by_reason_and_per_slot():
    server = prefork.TCPServer(("127.0.0.1", 0), PidEcho, policy=prefork.Prefork(workers=2), config=FAST_MONITOR)
    with serving(server, workers=2):
        victim = server.stats()["workers"][0]
        os.kill(victim["pid"], signal.SIGKILL)
        stats = wait_for(lambda: (lambda s: s if s["restarts"]["signal"] == 1 and ready_workers(server) == 2
                                  else None)(server.stats()))
        slot = next(w for w in stats["workers"] if w["slot"] == victim["slot"])
        assert slot["pid"] != victim["pid"]
        assert (slot["restarts"], slot["last_exit_reason"]) == (1, "signal")
        assert type(slot["last_exit_reason"]) is str and repr(stats).count("Reason") == 0


def test_stats_is_safe_from_another_thread_while_the_pool_churns():
    config = prefork.Config(max_requests=1, monitor_interval=0.05)
    server = prefork.TCPServer(("127.0.0.1", 0), PidEcho, policy=prefork.Prefork(workers=2), config=config)
    with serving(server, workers=2):
        errors, done = [], threading.Event()

        def read_stats():
            while not done.is_set():
                try:
                    assert isinstance(server.stats()["workers"], list)
                except Exception as exc:
                    errors.append(exc)

        reader = threading.Thread(target=read_stats)
        reader.start()
        for _ in range(60):
            exchange("tcp", server.server_address)
        done.set()
        reader.join(5)
        assert errors == []
        assert server.stats()["restarts"]["recycle"] >= 1


def test_shutdown_from_another_thread_lets_the_request_in_flight_finish():
    server = prefork.TCPServer(("127.0.0.1", 0), Sleepy, policy=prefork.Prefork(workers=1))
    with serving(server, workers=1):
        result = []
        client = threading.Thread(target=lambda: result.append(
            stream_exchange(socket.AF_INET, server.server_address, b"0.5\n")))
        client.start()
        wait_for(lambda: server.stats()["workers"][0]["state"] == "busy")
        busy = wait_for(lambda: (lambda w: w if w["request_seconds"] else None)(server.stats()["workers"][0]))
        assert 0 < busy["request_seconds"] < 5
        worker = busy["pid"]
    client.join(5)
    assert result and result[0] == f"done {worker}\n".encode()
    assert process_gone(worker)


def test_the_listening_socket_is_blocking_again_after_serve_forever():
    server = prefork.TCPServer(("127.0.0.1", 0), PidEcho, policy=prefork.Prefork(workers=1))
    with serving(server, workers=1):
        assert server.socket.gettimeout() == 0.0
    assert server.socket.fileno() == -1 or server.socket.gettimeout() is None


class HookedServer(prefork.TCPServer):
    """Records the hooks that run in this process (the master)."""

    def __init__(self, *args, **kwargs):
        self.events = []
        super().__init__(*args, **kwargs)

    def on_starting(self):
        self.events.append(("on_starting",))

    def pre_fork(self, worker):
        self.events.append(("pre_fork", worker.slot))

    def worker_exit(self, worker, status, reason):
        self.events.append(("worker_exit", worker.slot, status, reason))

    def on_exit(self):
        self.events.append(("on_exit",))


def test_hooks_are_overridable_methods():
    server = HookedServer(("127.0.0.1", 0), PidEcho, policy=prefork.Prefork(workers=2))
    with serving(server, workers=2):
        pass
    events = sorted(server.events[1:3])
    assert server.events[0] == ("on_starting",) and events == [("pre_fork", 1), ("pre_fork", 2)]
    assert sorted(server.events[3:5]) == [("worker_exit", 1, 0, "stop"), ("worker_exit", 2, 0, "stop")]
    assert type(server.events[3][3]) is str
    assert server.events[-1] == ("on_exit",)


def test_master_that_cannot_boot_raises_halt_server():
    class Broken(prefork.TCPServer):
        def post_fork(self, worker):
            raise RuntimeError("no database")

    config = prefork.Config(max_boot_failures=2)
    with Broken(("127.0.0.1", 0), PidEcho, policy=prefork.Prefork(workers=1), config=config) as server:
        with pytest.raises(prefork.HaltServer, match="post_fork hook raised RuntimeError: no database"):
            server.serve_forever()
        assert server.stats()["workers"] == []


API_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import prefork
    from apps.handlers import Sleepy

    with prefork.TCPServer(("127.0.0.1", 0), Sleepy, policy=prefork.Prefork(workers=2)) as server:
        print(server.server_address[1], flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("KeyboardInterrupt, workers left:", server.stats()["workers"], flush=True)
            raise SystemExit(0)
    print("serve_forever returned", flush=True)
""")


@pytest.mark.parametrize("signum, finishes", [(signal.SIGTERM, True), (signal.SIGINT, False)])
def test_signals_reach_a_master_run_from_the_api(signum, finishes):
    """SIGTERM: a graceful stop, serve_forever() returns. SIGINT (Ctrl-C): a quick stop, then
    KeyboardInterrupt, as socketserver's serve_forever() raises it, with no worker left."""
    script = API_SCRIPT.format(tests=os.path.join(REPO, "tests"))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        port = int(proc.stdout.readline())
        # A new worker names itself a moment after fork: wait for the titles too.
        workers = wait_for(lambda: (lambda titled: titled if len(titled) == 2 else None)(
            [c.pid for c in psutil.Process(proc.pid).children() if "prefork: worker" in title(c)]))
        assert len(psutil.Process(proc.pid).children()) == 2
        result = []
        client = threading.Thread(target=lambda: result.append(
            stream_exchange(socket.AF_INET, ("127.0.0.1", port), b"1\n")))
        client.start()
        wait_for(lambda: any(c.status == "ESTABLISHED" for pid in workers
                             for c in psutil.Process(pid).net_connections()))
        os.kill(proc.pid, signum)
        assert proc.wait(10) == 0
        expected = "serve_forever returned\n" if finishes else "KeyboardInterrupt, workers left: []\n"
        assert proc.stdout.read() == expected
        client.join(5)
        assert result[0].startswith(b"done") if finishes else result[0] == b""
        assert all(process_gone(pid) for pid in workers)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def test_stats_show_the_spare_and_a_stop_takes_it_down():
    config = prefork.Config(spare_workers=1)
    server = prefork.TCPServer(("127.0.0.1", 0), PidEcho, policy=prefork.Prefork(workers=2), config=config)
    with serving(server, workers=2):
        states = wait_for(lambda: (lambda s: s if sorted(s) == ["idle", "idle", "spare"] else None)(
            [w["state"] for w in server.stats()["workers"]]))
        assert server.stats()["master"]["target_workers"] == 2 and states


def test_a_failed_fork_is_retried_not_fatal(monkeypatch, caplog):
    real_fork, failures = os.fork, [BlockingIOError(11, "Resource temporarily unavailable")] * 2

    def flaky_fork():
        if failures:
            raise failures.pop()
        return real_fork()

    monkeypatch.setattr(os, "fork", flaky_fork)
    server = prefork.TCPServer(("127.0.0.1", 0), PidEcho, policy=prefork.Prefork(workers=2))
    with serving(server, workers=2):
        assert exchange("tcp", server.server_address).endswith(b"|hello\n")
    assert "cannot fork a worker: Resource temporarily unavailable" in caplog.text


def test_a_subclass_overriding_process_request_still_builds_and_forks():
    calls = []

    class Counting(prefork.ForkingTCPServer):
        def process_request(self, request, client_address):
            calls.append(client_address)
            super().process_request(request, client_address)

    with Counting(("127.0.0.1", 0), PidEcho) as server:
        with serving(server):
            pid = int(exchange("tcp", server.server_address).split()[0])
        assert calls and pid != os.getpid()

    class Threaded(prefork.ThreadingMixIn, prefork.TCPServer):
        def process_request(self, request, client_address):
            super().process_request(request, client_address)

    with Threaded(("127.0.0.1", 0), PidEcho) as server:
        assert isinstance(server.policy, prefork.ThreadPerRequest)


def test_datagram_handlers_reply_on_a_blocking_socket_in_a_pool(tmp_path):
    import tempfile
    from apps.handlers import DatagramBlocking
    from conftest import datagram_exchange
    path = tempfile.mktemp(prefix="pf-dgram-", suffix=".sock")
    server = prefork.UnixDatagramServer(path, DatagramBlocking, policy=prefork.Prefork(workers=2))
    with serving(server, workers=2):
        assert datagram_exchange(socket.AF_UNIX, path, b"?") == b"blocking"


def test_from_socket_accepts_an_abstract_unix_socket():
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(f"\0prefork-test-{os.getpid()}")
    sock.listen()
    server = prefork.UnixStreamServer.from_socket(sock, PidEcho)
    with serving(server):
        assert exchange("unix", server.server_address).endswith(b"|hello\n")


# -- what the hardening review found ----------------------------------------------------

def test_a_poll_interval_longer_than_the_worker_timeout_does_not_make_idle_workers_look_hung():
    """Before: serve_forever(poll_interval=P) with P >= worker_timeout killed every idle worker."""
    config = prefork.Config(worker_timeout=1, client_timeout=0.5)
    server = prefork.TCPServer(("127.0.0.1", 0), PidEcho, policy=prefork.Prefork(workers=2), config=config)
    with serving(server, workers=2, poll_interval=2):
        before = {w["pid"] for w in server.stats()["workers"]}
        time.sleep(2.5)                              # idle past the timeout: the condition is time itself
        stats = server.stats()
        assert stats["restarts"]["timeout"] == 0 and {w["pid"] for w in stats["workers"]} == before


def test_a_poll_interval_of_none_serves_with_a_spare():
    """Before: poll_interval=None crashed spares (sigtimedwait(None))."""
    server = prefork.TCPServer(("127.0.0.1", 0), PidEcho, policy=prefork.Prefork(workers=1),
                               config=prefork.Config(spare_workers=1))
    with serving(server, workers=1, poll_interval=None):
        wait_for(lambda: sorted(w["state"] for w in server.stats()["workers"]) == ["idle", "spare"])
        assert exchange("tcp", server.server_address).endswith(b"|hello\n")
        assert server.stats()["restarts"] == dict.fromkeys(prefork.pool.states.RESTART_REASONS, 0)


def test_stats_never_raises_from_another_thread_while_the_server_closes():
    errors, stop = [], threading.Event()

    def hammer(server):
        while not stop.is_set():
            try:
                server.stats()
            except Exception as exc:             # surfaced below
                errors.append(exc)

    for _ in range(8):
        server = prefork.TCPServer(("127.0.0.1", 0), PidEcho, policy=prefork.Prefork(workers=4))
        threads = [threading.Thread(target=hammer, args=(server,)) for _ in range(2)]
        with serving(server, workers=4):
            for thread in threads:
                thread.start()
        stop.set()
        for thread in threads:
            thread.join(5)
        stop.clear()
    assert errors == []


def test_with_accept_threads_stats_say_how_many_are_busy_and_count_every_request():
    server = prefork.TCPServer(("127.0.0.1", 0), Sleepy, policy=prefork.Prefork(workers=1, threads=4),
                               config=FAST_MONITOR)
    with serving(server, workers=1):
        clients = [threading.Thread(target=exchange, args=("tcp", server.server_address, b"1\n")) for _ in range(3)]
        for client in clients:
            client.start()
        (busy,) = wait_for(lambda: [w for w in server.stats()["workers"] if w["busy_threads"] == 3])
        assert busy["state"] == "busy" and 0 < busy["request_seconds"] < 2
        for client in clients:
            client.join(10)
        (idle,) = wait_for(lambda: [w for w in server.stats()["workers"] if w["requests"] == 3])
        assert idle["busy_threads"] == 0 and idle["state"] == "idle" and idle["request_seconds"] is None


def test_scale_and_reload_from_another_thread():
    server = prefork.TCPServer(("127.0.0.1", 0), PidEcho, policy=prefork.Prefork(workers=1))
    with serving(server, workers=1):
        (first,) = [w["pid"] for w in server.stats()["workers"]]
        server.scale("+2")
        wait_for(lambda: ready_workers(server) == 3)
        server.scale(2)
        wait_for(lambda: len(server.stats()["workers"]) == 2 and ready_workers(server) == 2)
        assert server.stats()["master"]["target_workers"] == 2
        server.reload()
        wait_for(lambda: (lambda s: s["master"]["generation"] == 1 and ready_workers(server) == 2 and
                          all(w["generation"] == 1 for w in s["workers"]))(server.stats()))
        assert first not in [w["pid"] for w in server.stats()["workers"]]
        assert sorted(w["slot"] for w in server.stats()["workers"]) == [1, 2]
        with pytest.raises(prefork.ConfigError, match="scale wants N, \\+N or -N"):
            server.scale("lots")
    with pytest.raises(RuntimeError, match="no server is running"):
        server.scale(3)


def test_the_python_api_serves_an_app_in_a_pool_and_under_the_standard_librarys_servers():
    from apps.wsgi_apps import app
    from http_client import Client, request
    from prefork import wsgi

    server = prefork.TCPServer(("127.0.0.1", 0), wsgi.handler_for(app, root_path="/api"),
                               policy=prefork.Prefork(workers=1))
    with serving(server, workers=1):
        environ = json.loads(request(server.server_address, b"GET /api/e/environ HTTP/1.1\r\nHost: t\r\n\r\n")[2])
        assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("/api", "/e/environ")
    # Not parked: the handler owns its connection (handle() loops), keep-alive and pipelining included.
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), wsgi.handler_for(app, threads=2)) as stdlib:
        thread = threading.Thread(target=stdlib.serve_forever, daemon=True)
        thread.start()
        connection = Client(stdlib.server_address)
        try:
            connection.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhiGET /environ HTTP/1.1\r\nHost: t\r\n\r\n")
            assert connection.response()[2] == b"hi"
            assert json.loads(connection.response()[2])["wsgi.multithread"] is True
        finally:
            connection.close()
            stdlib.shutdown()
