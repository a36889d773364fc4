import os
import socket

import pytest

from prefork.errors import BindError
from prefork.listeners import (
    UnixPathOwner, accept_queue, open_listener, parse_bind, queued_connections, remove_stale_unix_socket,
    repeated_bind,
)

from conftest import wait_for


@pytest.mark.parametrize("text, kind, address", [
    ("127.0.0.1:8000", "tcp", ("127.0.0.1", 8000)),
    ("localhost:0", "tcp", ("localhost", 0)),
    (":9000", "tcp", ("", 9000)),
    ("tcp://0.0.0.0:65535", "tcp", ("0.0.0.0", 65535)),
    ("[::1]:8000", "tcp", ("::1", 8000)),
    ("tcp://[::]:80", "tcp", ("::", 80)),
    ("udp://127.0.0.1:9001", "udp", ("127.0.0.1", 9001)),
    ("udp://[::1]:9001", "udp", ("::1", 9001)),
    ("unix:/run/app.sock", "unix", "/run/app.sock"),
    ("unix:///run/app.sock", "unix", "/run/app.sock"),
    ("unix:relative.sock", "unix", "relative.sock"),
    ("unix-dgram:/run/app.dgram", "unix-dgram", "/run/app.dgram"),
])
def test_parse_bind_accepts_every_documented_form(text, kind, address):
    bind = parse_bind(text)
    assert (bind.kind, bind.address, bind.text) == (kind, address, text)


@pytest.mark.parametrize("text, problem", [
    ("localhost", "expected HOST:PORT"),
    ("8000", "expected HOST:PORT"),
    ("127.0.0.1:http", "is not a number"),
    ("127.0.0.1:65536", "out of range"),
    ("127.0.0.1:-1", "port -1 is out of range 0-65535"),
    ("udp:127.0.0.1:9000", "write udp://127.0.0.1:9000"),
    ("tcp:[::1]:9000", "write tcp://[::1]:9000"),
    ("127.0.0.1:\u00b2", "is not a number"),
    ("::1:8000", "in brackets"),
    ("[::1]8000", "[ADDRESS]:PORT"),
    ("[]:8000", "[ADDRESS]:PORT"),
    ("http://127.0.0.1:80", "unknown scheme"),
    ("unix:", "needs a socket path"),
    ("unix-dgram:", "needs a socket path"),
])
def test_parse_bind_rejects_malformed_with_a_reason(text, problem):
    with pytest.raises(BindError) as info:
        parse_bind(text)
    assert problem in str(info.value) and text in str(info.value)


@pytest.mark.parametrize("texts, repeated", [
    (["127.0.0.1:8000", "127.0.0.1:8000"], ("127.0.0.1:8000", "127.0.0.1:8000")),
    (["127.0.0.1:8000", "tcp://127.0.0.1:8000"], ("127.0.0.1:8000", "tcp://127.0.0.1:8000")),
    (["[::1]:80", "udp://[::1]:80", "tcp://[0:0::1]:80"], ("[::1]:80", "tcp://[0:0::1]:80")),
    ([":8000", "0.0.0.0:8000"], (":8000", "0.0.0.0:8000")),
    (["LOCALHOST:9", "localhost:9"], ("LOCALHOST:9", "localhost:9")),
    (["udp://127.0.0.1:53", "udp://127.0.0.1:53"], ("udp://127.0.0.1:53", "udp://127.0.0.1:53")),
    (["unix:/run/a.sock", "unix:///run/a.sock"], ("unix:/run/a.sock", "unix:///run/a.sock")),
    (["unix:/run/a.sock", "unix-dgram:/run/./a.sock"], ("unix:/run/a.sock", "unix-dgram:/run/./a.sock")),
    (["unix:a.sock", f"unix:{os.getcwd()}/a.sock"], ("unix:a.sock", f"unix:{os.getcwd()}/a.sock")),
    (["127.0.0.1:0", "127.0.0.1:0"], None),                 # two sockets, each on a port of its own
    (["127.0.0.1:8000", "udp://127.0.0.1:8000"], None),     # TCP and UDP ports are apart
    (["127.0.0.1:8000", "127.0.0.2:8000", "[::1]:8000"], None),
    (["unix:/run/a.sock", "unix:/run/b.sock"], None),
])
def test_repeated_bind_finds_the_same_address_written_twice(texts, repeated):
    found = repeated_bind([parse_bind(text) for text in texts])
    assert (found and tuple(bind.text for bind in found)) == repeated


def test_open_listener_binds_tcp_with_reuseaddr_and_listens():
    sock = open_listener(parse_bind("127.0.0.1:0"))
    with sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        socket.create_connection(sock.getsockname(), timeout=2).close()


def test_open_listener_ipv6_and_udp():
    with open_listener(parse_bind("[::1]:0")) as sock:
        assert sock.family == socket.AF_INET6
    with open_listener(parse_bind("udp://127.0.0.1:0")) as sock:
        assert sock.type == socket.SOCK_DGRAM


def test_port_in_use_is_a_clear_error():
    with open_listener(parse_bind("127.0.0.1:0")) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(BindError, match="address already in use"):
            open_listener(parse_bind(f"127.0.0.1:{port}"))


def test_unknown_host_is_a_clear_error():
    with pytest.raises(BindError, match="unknown host 'no-such-host.invalid'"):
        open_listener(parse_bind("no-such-host.invalid:8000"))


def test_stale_unix_socket_is_replaced_but_live_one_is_refused(tmp_path):
    path = str(tmp_path / "s.sock")
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(path)
    dead.close()                                # leaves the file, nobody listening
    with open_listener(parse_bind(f"unix:{path}")) as live:
        with pytest.raises(BindError, match="address already in use"):
            open_listener(parse_bind(f"unix:{path}"))
        assert live.getsockname() == path


def test_unix_path_that_is_not_a_socket_is_left_alone(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("precious")
    with pytest.raises(BindError, match="not a socket"):
        remove_stale_unix_socket(str(path))
    assert path.read_text() == "precious"


def test_unix_path_owner_removes_only_its_own_file(tmp_path):
    path = str(tmp_path / "s.sock")
    with open_listener(parse_bind(f"unix:{path}")):
        owner = UnixPathOwner(path)
    os.unlink(path)
    with open_listener(parse_bind(f"unix:{path}")):   # someone else's socket now
        owner.remove()
        assert os.path.exists(path)
    UnixPathOwner(path).remove()
    assert not os.path.exists(path)


def test_invalid_host_name_is_a_clear_error():
    with pytest.raises(BindError, match="'a..b' is not a valid host name"):
        open_listener(parse_bind("a..b:8000"))


def test_unix_path_owner_survives_chmod(tmp_path):
    path = str(tmp_path / "s.sock")
    with open_listener(parse_bind(f"unix:{path}")):
        owner = UnixPathOwner(path)
        os.chmod(path, 0o666)          # what a deployment often does after bind
    owner.remove()
    assert not os.path.exists(path)


# -- accept queues ------------------------------------------------------------------

@pytest.mark.parametrize("text", ["127.0.0.1:0", "[::1]:0"])
def test_accept_queue_counts_connections_nobody_accepted_yet(text):
    """The TCP_INFO offsets, checked against a queue we fill and drain."""
    listener = open_listener(parse_bind(text), backlog=7)
    clients = []
    try:
        assert accept_queue(listener) == (0, 7)
        for _ in range(5):
            clients.append(socket.create_connection(listener.getsockname()[:2], timeout=5))
        wait_for(lambda: accept_queue(listener) == (5, 7), message="5 queued connections")
        listener.accept()[0].close()
        assert accept_queue(listener) == (4, 7)
        assert queued_connections([listener, listener]) == 8
    finally:
        for client in clients:
            client.close()
        listener.close()


def test_accept_queue_leaves_out_silent_clients_held_back_by_defer_accept():
    listener = open_listener(parse_bind("127.0.0.1:0"), backlog=7)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 5)
    with listener, socket.create_connection(listener.getsockname(), timeout=5), \
            socket.create_connection(listener.getsockname(), timeout=5) as speaking:
        speaking.sendall(b"hello\n")
        wait_for(lambda: accept_queue(listener) == (1, 7), message="only the client that spoke queued")


def test_accept_queue_is_unknown_for_other_sockets(short_tmp):
    udp = open_listener(parse_bind("udp://127.0.0.1:0"))
    unix = open_listener(parse_bind(f"unix:{os.path.join(short_tmp, 's.sock')}"))
    unconnected = socket.socket()
    closed = open_listener(parse_bind("127.0.0.1:0"))
    closed.close()
    with udp, unix, unconnected:
        for sock in (udp, unix, unconnected, closed):
            assert accept_queue(sock) is None
        assert queued_connections([udp, unix]) is None


def test_held_connections_names_the_connected_sockets_and_nothing_of_our_own(tmp_path):
    from prefork.listeners import held_connections
    listener = socket.create_server(("127.0.0.1", 0))
    tcp = socket.create_connection(listener.getsockname())
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.connect(("127.0.0.1", 9))
    unix_listener = socket.socket(socket.AF_UNIX)
    unix_listener.bind(str(tmp_path / "db.sock"))
    unix_listener.listen()
    unix = socket.socket(socket.AF_UNIX)
    unix.connect(str(tmp_path / "db.sock"))
    pair = socket.socketpair()
    accepted, _ = listener.accept()
    def only(*socks):                   # held_connections() of these sockets alone
        return held_connections(skip={int(fd) for fd in os.listdir("/proc/self/fd")} - {s.fileno() for s in socks})
    try:
        assert only(tcp) == [f"tcp 127.0.0.1:{listener.getsockname()[1]}"]
        assert only(udp) == ["udp 127.0.0.1:9"]
        assert only(unix) == [f"unix {tmp_path / 'db.sock'}"]
        assert only(listener, unix_listener, *pair) == [], "listeners and socket pairs name no peer"
        assert len(only(tcp, udp, unix, accepted)) == 4
    finally:
        for sock in (listener, tcp, udp, unix_listener, unix, *pair, accepted):
            sock.close()
