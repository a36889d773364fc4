"""Parking handlers on their own: the reader, the line and HTTP bases, and on servers that do not park."""

import http.server
import io
import socket
import socketserver
import threading

import pytest

import prefork
from conftest import serving
from prefork.parking import ConnectionReader, parks
from prefork.pool.intake_process import fair_share
from prefork_workers.echo import EchoHandler
from prefork_workers.hello import HelloHandler


class Hello(prefork.ParkingHTTPRequestHandler):
    def do_GET(self):
        body = f"{self.path} {self.headers.get('X-N', '-')}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[::-1])

    def log_message(self, *args):
        pass


class Upper(prefork.ParkingLineHandler):
    def handle_line(self, line):
        self.request.sendall(line.upper())
        return line.strip().upper() != b"QUIT"


def read_until_closed(sock):
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    return b"".join(chunks)


def test_the_reader_serves_what_arrived_then_waits_on_the_socket():
    a, b = socket.socketpair()
    with a, b:
        reader = ConnectionReader(a, b"first line\nsec")
        assert reader.fill() is None                      # nothing more arrived: no wait
        assert reader.readline() == b"first line\n"
        b.sendall(b"ond line\nrest")
        assert reader.readline() == b"second line\n"      # waits for the rest of the line
        assert reader.read(2) == b"re" and reader.peek() == b"st"
        b.shutdown(socket.SHUT_WR)
        assert reader.read() == b"st" and reader.eof and reader.read(5) == b""
        buffer = bytearray(4)
        assert reader.readinto(buffer) == 0


def test_the_reader_times_out_instead_of_waiting_for_ever():
    a, b = socket.socketpair()
    with a, b:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, b"\0" * 8 + (200_000).to_bytes(8, "little"))
        with pytest.raises(TimeoutError):
            ConnectionReader(a).read(1)


def test_a_line_longer_than_max_line_comes_in_pieces():
    a, b = socket.socketpair()
    with a, b:
        reader = ConnectionReader(a, b"x" * 10 + b"\n")
        assert reader.readline(4) == b"xxxx"


@pytest.mark.parametrize("handler, expected", [
    (HelloHandler, True), (EchoHandler, True), (Upper, True), (Hello, True),
    (prefork.StreamRequestHandler, False), (http.server.SimpleHTTPRequestHandler, False),
])
def test_which_handlers_park(handler, expected):
    assert parks(handler) is expected


def test_a_parking_handler_that_overrides_handle_owns_its_connection():
    class Greeting(EchoHandler):
        def handle(self):
            self.request.sendall(b"220 ready\r\n")
            super().handle()
    assert not parks(Greeting)


@pytest.mark.parametrize("total, threads, share", [
    (0, 2, 1), (1, 2, 2), (50, 2, 27), (1000, 2, 550), (10, 0, 11), (7, 7, 2),
])
def test_fair_share_is_the_average_plus_a_little(total, threads, share):
    assert fair_share(total, threads) == share


@pytest.mark.parametrize("server_class", [prefork.TCPServer, prefork.ThreadingTCPServer, socketserver.ThreadingTCPServer])
def test_line_handlers_work_on_servers_that_do_not_park(server_class):
    """Owned mode: handle() loops over handle_request(); a last line without newline comes at the close."""
    server = server_class(("127.0.0.1", 0), Upper)
    if isinstance(server, prefork.BaseServer):
        context = serving(server)
    else:
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        context = _stopping(server, thread)
    with context:
        with socket.create_connection(server.server_address, timeout=5) as sock:
            sock.sendall(b"ab\ncd\nquit\nnot read\n")
            assert read_until_closed(sock) == b"AB\nCD\nQUIT\n"
        with socket.create_connection(server.server_address, timeout=5) as sock:
            sock.sendall(b"x\ntail")
            sock.shutdown(socket.SHUT_WR)
            assert read_until_closed(sock) == b"X\nTAIL"


class _stopping:
    def __init__(self, server, thread):
        self.server, self.thread = server, thread

    def __enter__(self):
        return self.server

    def __exit__(self, *exc):
        self.server.shutdown()
        self.thread.join(5)
        self.server.server_close()


def test_http_handlers_keep_alive_pipeline_and_read_bodies_when_they_own_the_connection():
    server = prefork.ThreadingTCPServer(("127.0.0.1", 0), Hello)
    with serving(server):
        with socket.create_connection(server.server_address, timeout=5) as sock:
            sock.sendall(b"GET /a HTTP/1.1\r\nX-N: 1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
                         b"GET /c HTTP/1.1\r\nConnection: close\r\n\r\n")
            reply = read_until_closed(sock)
    assert reply.count(b"HTTP/1.1 200") == 3
    assert reply.index(b"/a 1") < reply.index(b"cba") < reply.index(b"/c -")


def test_http_handlers_say_connection_close_while_the_server_stops():
    server = prefork.ThreadingTCPServer(("127.0.0.1", 0), Hello)
    with serving(server):
        with socket.create_connection(server.server_address, timeout=5) as sock:     # serving by now
            sock.sendall(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            read_until_closed(sock)
        server.stopping = True                       # what a graceful stop sets in a pool worker
        with socket.create_connection(server.server_address, timeout=5) as sock:
            sock.sendall(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n")
            reply = read_until_closed(sock)
    assert reply.count(b"HTTP/1.1 200") == 1 and b"Connection: close\r\n" in reply


def test_the_mixin_parks_an_existing_http_server_handler():
    class Files(prefork.ParkingHTTPMixIn, http.server.SimpleHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
    assert parks(Files)
    assert Files.__mro__.index(prefork.ParkingRequestHandler) < Files.__mro__.index(socketserver.StreamRequestHandler)


def test_datagrams_go_to_handle_datagram():
    server = prefork.UDPServer(("127.0.0.1", 0), EchoHandler)
    with serving(server):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            sock.sendto(b"dgram", server.server_address)
            assert sock.recv(100) == b"dgram"


def test_a_handler_without_handle_request_says_so():
    a, b = socket.socketpair()
    with a, b:
        handler = prefork.ParkingRequestHandler.park(a, "peer", None, b"x")
        assert handler.rfile.pending == b"x" and isinstance(handler.rfile, io.BufferedIOBase)
        with pytest.raises(NotImplementedError, match="handle_request"):
            handler.handle_request()


class SlowTimeoutHTTP(Hello):
    timeout = 5                                    # http.server's per-handler timeout


def test_a_handler_timeout_does_not_stall_the_connections_parked_beside_it():
    """settimeout() made every non-blocking read of the worker wait up to the timeout: a client that
    connected and said nothing held everyone else for 5 s."""
    import time
    server = prefork.TCPServer(("127.0.0.1", 0), SlowTimeoutHTTP, policy=prefork.Prefork(workers=1))
    with serving(server, workers=1):
        with socket.create_connection(server.server_address, timeout=10) as silent:
            with socket.create_connection(server.server_address, timeout=10) as sock:
                started = time.monotonic()
                sock.sendall(b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n")
                assert read_until_closed(sock).endswith(b"/x -")
                assert time.monotonic() - started < 2
            silent.sendall(b"GET /late HTTP/1.1\r\nConnection: close\r\n\r\n")
            assert read_until_closed(silent).endswith(b"/late -")
