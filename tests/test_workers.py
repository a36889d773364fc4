"""The ready-made handlers in workers/, on prefork's servers and on socketserver's."""

import socket
import socketserver
import threading

import pytest

import prefork
from conftest import serving
from prefork_workers.echo import EchoHandler
from prefork_workers.hello import BODY, HelloHandler


def http(address, raw, timeout=5):
    """Send raw bytes and end our side, return everything the server sends until it closes."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


@pytest.fixture(scope="module")
def hello():
    server = prefork.ThreadingTCPServer(("127.0.0.1", 0), HelloHandler)
    with serving(server):
        yield server.server_address


def test_hello_answers_and_closes_on_request(hello):
    reply = http(hello, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.endswith(b"\r\n\r\n" + BODY)
    assert b"Content-Length: 13\r\n" in reply and b"Connection: close\r\n" in reply


def test_hello_keeps_alive_and_answers_pipelined_requests_in_order(hello):
    with socket.create_connection(hello, timeout=5) as sock:
        sock.sendall(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while received.count(BODY) < 2:
            received += sock.recv(65536)
        assert received.count(b"HTTP/1.1 200 OK") == 2 and b"Connection: close" not in received
        sock.sendall(b"HEAD / HTTP/1.1\r\nconnection:   Close\r\n\r\n")
        tail = sock.recv(65536)
        assert tail.endswith(b"Connection: close\r\n\r\n"), "HEAD gets headers only, then the close"


def test_hello_http_1_0_closes_unless_asked_and_skips_bodies(hello):
    assert http(hello, b"GET / HTTP/1.0\r\n\r\n").endswith(BODY)
    reply = http(hello, b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
                        b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert reply.count(BODY) == 2, "the body was skipped, the next request understood"


def test_hello_refuses_endless_headers(hello):
    reply = http(hello, b"GET / HTTP/1.1\r\n" + b"X-Filler: " + b"a" * 70000)
    assert reply.startswith(b"HTTP/1.1 431 ")


def test_echo_lines_and_a_last_partial_line():
    server = prefork.TCPServer(("127.0.0.1", 0), EchoHandler)
    with serving(server):
        assert http(server.server_address, b"one\ntwo\nthree") == b"one\ntwo\nthree"


@pytest.mark.parametrize("handler, request_bytes, expected", [
    (EchoHandler, b"ping\n", b"ping\n"),
    (HelloHandler, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", BODY),
])
def test_workers_run_on_socketservers_own_servers(handler, request_bytes, expected):
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, args=(0.05,))
        thread.start()
        try:
            assert http(server.server_address, request_bytes).endswith(expected)
        finally:
            server.shutdown()
            thread.join(5)


@pytest.mark.parametrize("handler", [EchoHandler, HelloHandler])
def test_in_a_pool_a_quiet_client_is_closed_after_the_keepalive_timeout(handler):
    import time
    config = prefork.Config(keepalive_timeout=2)
    server = prefork.TCPServer(("127.0.0.1", 0), handler, policy=prefork.Prefork(workers=1), config=config)
    with serving(server, workers=1):
        with socket.create_connection(server.server_address, timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" if handler is HelloHandler else b"a\n")
            assert sock.recv(100)
            started = time.monotonic()
            assert sock.recv(100) == b""
            assert 1.5 <= time.monotonic() - started <= 4
        assert server.stats()["restarts"]["timeout"] == 0
