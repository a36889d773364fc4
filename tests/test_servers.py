"""The socketserver drop-in: names, classes, hooks, and each policy on each socket kind."""

import os
import socket
import socketserver
import tempfile
import threading
import time

import pytest

import prefork
from apps.handlers import PidEcho, Raising, Sleepy
from conftest import exchange, serving, wait_for


# -- names and classes ----------------------------------------------------------

def test_every_socketserver_name_is_exported_and_compatible():
    for name in socketserver.__all__:
        ours, theirs = getattr(prefork, name), getattr(socketserver, name)
        assert name in prefork.__all__
        assert issubclass(ours, theirs), name


def test_request_handlers_are_socketservers_own():
    assert prefork.BaseRequestHandler is socketserver.BaseRequestHandler
    assert prefork.StreamRequestHandler is socketserver.StreamRequestHandler
    assert prefork.DatagramRequestHandler is socketserver.DatagramRequestHandler


def test_class_attributes_keep_socketservers_defaults():
    assert prefork.TCPServer.request_queue_size == 5
    assert prefork.TCPServer.allow_reuse_address is False
    assert prefork.ForkingTCPServer.max_children == 40 and prefork.ForkingTCPServer.timeout == 300
    assert prefork.ForkingTCPServer.block_on_close and prefork.ThreadingTCPServer.block_on_close
    assert prefork.ThreadingTCPServer.daemon_threads is False
    assert prefork.UDPServer.max_packet_size == 8192


def test_policy_keyword_is_shorthand_for_the_mixin():
    with prefork.TCPServer(("127.0.0.1", 0), PidEcho, policy=prefork.ForkPerRequest()) as server:
        assert isinstance(server, socketserver.ForkingMixIn) and isinstance(server, prefork.TCPServer)
        assert server.max_children == 40
    with prefork.TCPServer(("127.0.0.1", 0), PidEcho, policy=prefork.ThreadPerRequest()) as server:
        assert isinstance(server, socketserver.ThreadingMixIn)
    with prefork.ForkingTCPServer(("127.0.0.1", 0), PidEcho, policy=prefork.Serial()) as server:
        assert server.process_request.__func__ is socketserver.BaseServer.process_request
    with prefork.TCPServer(("127.0.0.1", 0), PidEcho) as server:
        assert type(server) is prefork.TCPServer and server.policy == prefork.Serial()


def test_policy_as_class_attribute():
    class PooledServer(prefork.TCPServer):
        policy = prefork.Prefork(workers=3)

    with PooledServer(("127.0.0.1", 0), PidEcho) as server:
        assert server.policy.workers == 3 and isinstance(server, PooledServer)


def test_policy_must_be_a_policy():
    with pytest.raises(TypeError, match="prefork policy"):
        prefork.TCPServer(("127.0.0.1", 0), PidEcho, policy="prefork")


def test_context_manager_closes_the_socket():
    with prefork.TCPServer(("127.0.0.1", 0), PidEcho) as server:
        sock = server.socket
    assert sock.fileno() == -1


# -- socketserver's hooks, called as socketserver calls them --------------------

class RecordingServer(prefork.TCPServer):
    allow_reuse_address = True

    def __init__(self, *args, **kwargs):
        self.calls = []
        super().__init__(*args, **kwargs)

    def _record(name):
        def hook(self, *args):
            self.calls.append(name)
            return getattr(prefork.TCPServer, name)(self, *args)
        return hook

    server_bind = _record("server_bind")
    server_activate = _record("server_activate")
    get_request = _record("get_request")
    process_request = _record("process_request")
    finish_request = _record("finish_request")
    shutdown_request = _record("shutdown_request")
    close_request = _record("close_request")

    def verify_request(self, request, client_address):
        self.calls.append("verify_request")
        return not getattr(self, "refuse", False)

    def service_actions(self):
        if not self.calls or self.calls[-1] != "service_actions":
            self.calls.append("service_actions")


def test_hooks_are_called_in_socketservers_order():
    server = RecordingServer(("127.0.0.1", 0), PidEcho)
    assert server.calls == ["server_bind", "server_activate"]
    with serving(server):
        assert exchange("tcp", server.server_address).endswith(b"|hello\n")
        wait_for(lambda: "service_actions" in server.calls[2:])
    assert server.calls[2:8] == ["get_request", "verify_request", "process_request", "finish_request",
                                 "shutdown_request", "close_request"]


def test_refused_request_is_shut_down_without_the_handler():
    server = RecordingServer(("127.0.0.1", 0), PidEcho)
    server.refuse = True
    with serving(server):
        assert exchange("tcp", server.server_address) == b""
        wait_for(lambda: "close_request" in server.calls)
    assert "finish_request" not in server.calls


def test_handler_error_goes_to_handle_error_and_serving_continues(caplog):
    server = prefork.TCPServer(("127.0.0.1", 0), Raising)
    with serving(server):
        for _ in range(3):
            assert exchange("tcp", server.server_address, b"x\n") == b""
    errors = [r for r in caplog.records if "exception while handling a request" in r.getMessage()]
    assert len(errors) == 3 and "handler exploded on purpose" in caplog.text


def test_overridden_handle_error_is_used():
    seen = []

    class Server(prefork.TCPServer):
        def handle_error(self, request, client_address):
            seen.append(client_address)

    server = Server(("127.0.0.1", 0), Raising)
    with serving(server):
        exchange("tcp", server.server_address, b"x\n")
        wait_for(lambda: seen)


def test_handle_request_serves_one_and_honours_timeout():
    timeouts = []

    class Server(prefork.TCPServer):
        timeout = 0.05

        def handle_timeout(self):
            timeouts.append(True)

    with Server(("127.0.0.1", 0), PidEcho) as server:
        server.handle_request()
        assert timeouts == [True]
        result = []
        client = threading.Thread(target=lambda: result.append(exchange("tcp", server.server_address)))
        client.start()
        server.handle_request()
        client.join(5)
        assert result[0] == f"{os.getpid()} {threading.get_ident()}|hello\n".encode()


def test_shutdown_returns_without_waiting_for_the_poll_interval():
    server = prefork.TCPServer(("127.0.0.1", 0), PidEcho)
    thread = threading.Thread(target=server.serve_forever, args=(3600,))
    thread.start()
    wait_for(lambda: server._runner is not None)
    server.shutdown()          # with socketserver this would wait out the hour
    thread.join(5)
    assert not thread.is_alive()
    server.server_close()


def test_shutdown_before_serve_forever_makes_it_return_at_once():
    server = prefork.TCPServer(("127.0.0.1", 0), PidEcho)
    done = threading.Event()
    waiter = threading.Thread(target=lambda: (server.shutdown(), done.set()))
    waiter.start()
    wait_for(lambda: server._shutdown_requested)
    server.serve_forever()
    waiter.join(5)
    assert done.is_set()
    server.server_close()


def test_service_actions_runs_every_poll_interval():
    ticks = []

    class Server(prefork.TCPServer):
        def service_actions(self):
            ticks.append(time.monotonic())

    server = Server(("127.0.0.1", 0), PidEcho)
    with serving(server, poll_interval=0.01):
        wait_for(lambda: len(ticks) >= 5)


# -- the per-request mixins keep socketserver's attributes -----------------------

def test_forking_server_tracks_and_reaps_children():
    with prefork.ForkingTCPServer(("127.0.0.1", 0), Sleepy) as server:
        with serving(server):
            pids = {exchange("tcp", server.server_address, b"0\n").split()[1] for _ in range(3)}
            assert len(pids) == 3 and str(os.getpid()).encode() not in pids
            wait_for(lambda: server.active_children is not None)
        assert not server.active_children     # block_on_close reaped them all


def test_threading_server_serves_concurrently_and_joins_on_close():
    server = prefork.ThreadingTCPServer(("127.0.0.1", 0), Sleepy)
    with serving(server):
        results = []
        clients = [threading.Thread(target=lambda: results.append(exchange("tcp", server.server_address, b"0.3\n")))
                   for _ in range(4)]
        started = time.monotonic()
        for client in clients:
            client.start()
        for client in clients:
            client.join(10)
        assert len(results) == 4 and all(r.startswith(b"done") for r in results)
        assert time.monotonic() - started < 1.2, "four 0.3 s requests should overlap"
    assert not server._threads


# -- each policy on each socket kind ---------------------------------------------

class TCP6Server(prefork.TCPServer):
    address_family = socket.AF_INET6


KINDS = {
    "tcp": (prefork.TCPServer, lambda tmp: ("127.0.0.1", 0)),
    "tcp6": (TCP6Server, lambda tmp: ("::1", 0)),
    "udp": (prefork.UDPServer, lambda tmp: ("127.0.0.1", 0)),
    "unix": (prefork.UnixStreamServer, lambda tmp: str(tmp / "stream.sock")),
    "unix-dgram": (prefork.UnixDatagramServer, lambda tmp: str(tmp / "dgram.sock")),
}
POLICIES = {
    "serial": prefork.Serial(),
    "fork": prefork.ForkPerRequest(),
    "thread": prefork.ThreadPerRequest(),
    "prefork": prefork.Prefork(workers=2),
    "prefork-threads": prefork.Prefork(workers=2, threads=3),
}


@pytest.fixture
def short_tmp():
    """Unix socket paths must be short (108 bytes): pytest's tmp_path can be too long."""
    with tempfile.TemporaryDirectory(prefix="pf-") as path:
        import pathlib
        yield pathlib.Path(path)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("policy_name", POLICIES)
def test_each_policy_serves_each_socket_kind(policy_name, kind, short_tmp):
    server_class, make_address = KINDS[kind]
    policy = POLICIES[policy_name]
    server = server_class(make_address(short_tmp), PidEcho, policy=policy)
    address = server.server_address
    workers = policy.workers if policy.pooled else None
    with serving(server, workers=workers):
        replies = [exchange(kind.replace("tcp6", "tcp"), address, b"ping %d\n" % n) for n in range(8)]
        served_by = {int(r.split()[0]) for r in replies}
        for n, reply in enumerate(replies):
            assert reply.endswith(b"|ping %d\n" % n)
        if policy_name in ("serial", "thread"):
            assert served_by == {os.getpid()}
        elif policy_name == "fork":
            assert os.getpid() not in served_by and len(served_by) == 8
        else:
            worker_pids = {w["pid"] for w in server.stats()["workers"]}
            assert served_by <= worker_pids and os.getpid() not in served_by
    if kind.startswith("unix"):
        assert not os.path.exists(address), "server_close() removes the socket file it created"


def test_a_client_that_resets_is_not_an_error(caplog):
    class Resetting(prefork.BaseRequestHandler):
        def handle(self):
            raise ConnectionResetError(104, "Connection reset by peer")

    server = prefork.TCPServer(("127.0.0.1", 0), Resetting)
    with caplog.at_level("DEBUG", logger="prefork"):
        with serving(server):
            exchange("tcp", server.server_address, b"x\n")
            wait_for(lambda: "went away" in caplog.text)
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
