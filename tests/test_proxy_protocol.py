"""The PROXY protocol parser: v1 and v2 headers, incrementally; datagrams; who may send one; real HAProxy."""

import contextlib
import shutil
import socket
import struct
import subprocess

import psutil
import pytest

from prefork.proxy_protocol import (
    MAX_HEADER, MAX_V1, V2_SIGNATURE, Allowed, Header, ProxyProtocolError, parse, parse_datagram,
)

from conftest import wait_for

pytestmark = pytest.mark.timeout(30)

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
TCP4, UDP4, TCP6, UDP6, UNIX_STREAM, UNSPEC = 0x11, 0x12, 0x21, 0x22, 0x31, 0x00
PROXY, LOCAL = 0x21, 0x20


def v2(command=PROXY, family=TCP4, source=None, destination=None, tlvs=b"", length=None, addresses=None):
    """A v2 header as a proxy would send it: source and destination are (host, port)."""
    if addresses is None:
        addresses = b""
        if family in (TCP4, UDP4, TCP6, UDP6):
            kind = socket.AF_INET if family in (TCP4, UDP4) else socket.AF_INET6
            addresses = (socket.inet_pton(kind, source[0]) + socket.inet_pton(kind, destination[0])
                         + struct.pack("!HH", source[1], destination[1]))
        elif family == UNIX_STREAM:
            addresses = b"/run/client".ljust(108, b"\0") + b"/run/app.sock".ljust(108, b"\0")
    body = addresses + tlvs
    return V2_SIGNATURE + bytes([command, family]) + struct.pack("!H", len(body) if length is None else length) + body


def tlv(kind, value):
    return struct.pack("!BH", kind, len(value)) + value


TLVS = tlv(0x01, b"h2") + tlv(0x02, b"example.com") + tlv(0x04, b"\0" * 7)     # ALPN, authority, NOOP
UNKNOWN_107 = b"PROXY UNKNOWN ".ljust(MAX_V1 - 2, b"x") + b"\r\n"
LONGEST_TCP6 = b"PROXY TCP6 " + b"ffff:" * 7 + b"ffff " + b"ffff:" * 7 + b"ffff 65535 65535\r\n"
A4, B4, A6, B6 = ("192.0.2.1", 56324), ("198.51.100.2", 443), ("2001:db8::1", 1), ("2001:db8::2", 65535)

VALID = [   # (header, source, destination)
    (b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n", A4, B4),
    (b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n", ("0.0.0.0", 0), ("255.255.255.255", 65535)),
    (b"PROXY TCP6 2001:db8::1 2001:db8:0:0:0:0:0:2 1 65535\r\n", A6, B6),     # hosts as socket spells them
    (b"PROXY TCP6 ::1 ::ffff:10.0.0.1 8000 80\r\n", ("::1", 8000), ("::ffff:10.0.0.1", 80)),
    (LONGEST_TCP6, ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
     ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535)),
    (b"PROXY UNKNOWN\r\n", None, None),
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", None, None),        # the rest of an UNKNOWN line is ignored
    (UNKNOWN_107, None, None),
    (v2(source=A4, destination=B4), A4, B4),
    (v2(source=A4, destination=B4, tlvs=TLVS), A4, B4),
    (v2(family=UDP4, source=A4, destination=B4), A4, B4),
    (v2(family=TCP6, source=A6, destination=B6), A6, B6),
    (v2(family=TCP6, source=("::ffff:1.2.3.4", 1), destination=("::", 2), tlvs=TLVS),
     ("::ffff:1.2.3.4", 1), ("::", 2)),
    (v2(family=UDP6, source=A6, destination=B6), A6, B6),
    (v2(family=UNIX_STREAM), None, None),                         # a Unix peer: the connection's own address
    (v2(family=UNIX_STREAM, tlvs=TLVS), None, None),
    (v2(family=UNSPEC), None, None),
    (v2(family=UNSPEC, addresses=b"ignored"), None, None),
    (v2(command=LOCAL, family=UNSPEC), None, None),               # the proxy's own health check
    (v2(command=LOCAL, source=A4, destination=B4, tlvs=TLVS), None, None),
    (v2(command=LOCAL, family=0xFF, addresses=b"xyz"), None, None),    # LOCAL's family is ignored
    (v2(family=UNSPEC, addresses=b"\0" * 0xFFFF), None, None),        # the longest there is
]


@pytest.mark.parametrize("header, source, destination", VALID)
def test_a_complete_header_gives_the_addresses_and_its_length(header, source, destination):
    version = 1 if header.startswith(b"PROXY") else 2
    assert parse(header + REQUEST) == Header(version, source, destination, len(header))
    assert parse(header) == Header(version, source, destination, len(header))
    assert parse(bytearray(header)) == parse(memoryview(header)) == parse(header)


@pytest.mark.parametrize("header", [header for header, _, _ in VALID if len(header) < 1000])
def test_every_prefix_of_a_header_asks_for_more(header):
    for end in range(len(header)):
        assert parse(header[:end]) is None, header[:end]


def test_the_bounds():
    assert len(LONGEST_TCP6) == 104 and len(UNKNOWN_107) == MAX_V1
    assert parse(v2(family=UNSPEC, addresses=b"\0" * 0xFFFF)).length == MAX_HEADER


@pytest.mark.parametrize("data, reason", [
    # not a PROXY header at all, told from the first bytes
    (b"GET / HTTP/1.1\r\n", "not a PROXY protocol header"),
    (b"G", "not a PROXY protocol header"),
    (b"PROXX", "not a PROXY protocol header"),
    (b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "not a PROXY protocol header"),
    (b"\r\n\r\n\x00\r\nQUIX\n", "not a PROXY protocol header"),
    (b"\r\nGET", "not a PROXY protocol header"),
    (b"PROXY\r\n", "not a PROXY protocol header"),
    # v1
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "does not end with CRLF"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", "bad port '2\\\\r'"),
    (b"PROXY UNKNOWN ".ljust(MAX_V1 - 1, b"x") + b"\r\n", "no CRLF within 107 bytes"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2" + b" " * 100, "no CRLF within 107 bytes"),
    (b"PROXY \r\n", "v1 protocol '' is not TCP4, TCP6 or UNKNOWN"),
    (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "v1 protocol 'UDP4'"),
    (b"PROXY UNKNOWNX\r\n", "v1 protocol 'UNKNOWNX'"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "needs 2 addresses and 2 ports"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "needs 2 addresses and 2 ports"),
    (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "needs 2 addresses and 2 ports"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "needs 2 addresses and 2 ports"),
    (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "bad IPv4 address '1.2.3'"),
    (b"PROXY TCP4 1.2.3.4 256.6.7.8 1 2\r\n", "bad IPv4 address '256.6.7.8'"),
    (b"PROXY TCP4 ::1 ::1 1 2\r\n", "bad IPv4 address '::1'"),
    (b"PROXY TCP4 example.com 1.2.3.4 1 2\r\n", "bad IPv4 address 'example.com'"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "bad IPv6 address '1.2.3.4'"),
    (b"PROXY TCP6 ::1 ::1::2 1 2\r\n", "bad IPv6 address '::1::2'"),
    (b"PROXY TCP6 ::1\0 ::1 1 2\r\n", "bad IPv6 address"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "bad port '65536'"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 -1\r\n", "bad port '-1'"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 http 2\r\n", "bad port 'http'"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "bad port '\\+1'"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 0000080\r\n", "bad port '0000080'"),
    (b"PROXY TCP4 1.2.3.\xff 5.6.7.8 1 2\r\n", "not ASCII"),
    # v2
    (v2(command=0x11, source=A4, destination=B4), "unknown v2 version/command 0x11"),
    (v2(command=0x22, source=A4, destination=B4), "unknown v2 version/command 0x22"),
    (v2(command=0x31, source=A4, destination=B4), "unknown v2 version/command 0x31"),
    (v2(family=0x13, addresses=b"\0" * 12), "unknown v2 family/transport 0x13"),
    (v2(family=0x10, addresses=b"\0" * 12), "unknown v2 family/transport 0x10"),
    (v2(family=0x41, addresses=b"\0" * 12), "unknown v2 family/transport 0x41"),
    (v2(family=TCP4, addresses=b"\0" * 11), "v2 length 11 is too short for family 0x11"),
    (v2(family=UDP6, addresses=b"\0" * 35), "v2 length 35 is too short for family 0x22"),
    (v2(family=TCP6, addresses=b"\0" * 12), "v2 length 12 is too short for family 0x21"),
    (v2(family=UNIX_STREAM, addresses=b"\0" * 108), "v2 length 108 is too short for family 0x31"),
])
def test_a_malformed_header_is_refused_with_the_reason(data, reason):
    with pytest.raises(ProxyProtocolError, match=reason):
        parse(data)


@pytest.mark.parametrize("data, enough", [
    (REQUEST, 1),
    (b"\x16\x03\x01\x02\x00\x01", 1),                 # a TLS ClientHello
    (b"PUT /x HTTP/1.1\r\n", 2),
    (b"PROXY\t", 6),
    (b"\r\n\r\n\x00\r\nQUIT\n\x11", 13),              # v2 signature, then a v1 version byte
    (v2(family=0x13, addresses=b"\0" * 12), 14),     # a family that does not exist
])
def test_a_header_that_cannot_be_is_refused_without_waiting(data, enough):
    """The caller can close the connection at once instead of waiting for a header that will not come."""
    assert parse(data[:enough - 1]) is None
    with pytest.raises(ProxyProtocolError):
        parse(data[:enough])


def test_the_errors_are_value_errors():
    assert issubclass(ProxyProtocolError, ValueError)


# -- datagrams ------------------------------------------------------------------------------------

@pytest.mark.parametrize("header, source, destination", [
    (v2(family=UDP4, source=A4, destination=B4), A4, B4),
    (v2(family=UDP4, source=A4, destination=B4, tlvs=TLVS), A4, B4),
    (v2(family=UDP6, source=A6, destination=B6), A6, B6),
    (v2(command=LOCAL, family=UNSPEC), None, None),
    (v2(family=0x32, addresses=b"\0" * 216), None, None),          # Unix datagram
])
@pytest.mark.parametrize("payload", [b"", b"hello", b"\r\n\r\n\x00\r\nQUIT\n"])
def test_a_datagram_splits_into_header_and_payload(header, source, destination, payload):
    assert parse_datagram(header + payload) == (Header(2, source, destination, len(header)), payload)


@pytest.mark.parametrize("data, reason", [
    (b"", "does not start with a PROXY v2 header"),
    (b"hello", "does not start with a PROXY v2 header"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "does not start with a PROXY v2 header"),    # v1 has no UDP
    (V2_SIGNATURE[:8], "does not start with a PROXY v2 header"),
    (v2(family=UDP4, source=A4, destination=B4)[:-1], "ends inside its PROXY v2 header"),
    (v2(family=UDP4, source=A4, destination=B4)[:15], "ends inside its PROXY v2 header"),
    (v2(family=UDP4, addresses=b"\0" * 4), "v2 length 4 is too short"),
    (v2(command=0x12, family=UDP4, source=A4, destination=B4), "unknown v2 version/command"),
])
def test_a_datagram_without_a_whole_v2_header_is_refused(data, reason):
    with pytest.raises(ProxyProtocolError, match=reason):
        parse_datagram(data)


# -- who may send a header ------------------------------------------------------------------------

@pytest.mark.parametrize("text, client_address, allowed", [
    ("10.0.0.0/8", ("10.1.2.3", 5000), True),
    ("10.0.0.0/8", ("11.0.0.1", 5000), False),
    ("192.168.1.5", ("192.168.1.5", 1), True),
    ("192.168.1.5", ("192.168.1.6", 1), False),
    ("10.0.0.0/8, 192.168.1.5 ,::1/128", ("192.168.1.5", 1), True),
    ("10.0.0.0/8,192.168.1.5", ("127.0.0.1", 1), False),
    ("::1/128", ("::1", 1, 0, 0), True),
    ("::1", ("::2", 1, 0, 0), False),
    ("2001:db8::/32", ("2001:db8::5", 1, 0, 0), True),
    ("2001:db8::/32", ("2001:db9::5", 1, 0, 0), False),
    ("fe80::/10", ("fe80::1%lo", 1, 0, 1), True),
    ("10.0.0.0/8", ("::ffff:10.0.0.1", 1, 0, 0), True),      # an IPv4 client on a dual-stack socket
    ("::1", ("127.0.0.1", 1), False),
    ("127.0.0.1", ("localhost", 1), False),                  # a name is not an address
    ("*", ("203.0.113.9", 1), True),
    ("*", ("2001:db8::5", 1, 0, 0), True),
    ("10.0.0.0/8,*", ("203.0.113.9", 1), True),
    ("10.0.0.0/8", "", True),                                # Unix socket peers: a local proxy
    ("10.0.0.0/8", b"", True),
    ("10.0.0.0/8", "/run/client.sock", True),
    ("10.0.0.0/8", None, True),
])
def test_allowed_says_who_may_send_a_header(text, client_address, allowed):
    assert (client_address in Allowed(text)) is allowed


@pytest.mark.parametrize("text, message", [
    ("", "bad proxy address '' in '': an empty entry"),
    ("10.0.0.0/8,", "bad proxy address '' in '10.0.0.0/8,': an empty entry"),
    ("10.0.0.1/8", "'10.0.0.1/8' .*host bits are set; the network is 10.0.0.0/8"),
    ("10.0.0.0/33", "'10.0.0.0/33' .*not an IP address, a network"),
    ("10.0.0.0/8,example.com", "'example.com' .*not an IP address"),
    ("1.2.3.4:80", "'1.2.3.4:80'"),
    ("**", "'\\*\\*'"),
])
def test_a_bad_allowed_entry_is_named(text, message):
    with pytest.raises(ValueError, match=message):
        Allowed(text)


# -- against HAProxy ------------------------------------------------------------------------------

HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
SENDS = {        # listen section -> (frontend host, server options)
    "v1_tcp4": ("127.0.0.1", "send-proxy"),
    "v2_tcp4": ("127.0.0.1", "send-proxy-v2 proxy-v2-options crc32c,authority"),    # with TLVs
    "v1_tcp6": ("::1", "send-proxy"),
    "v2_tcp6": ("::1", "send-proxy-v2"),
}
CHECKS = {       # listen section -> server options: a health check sends v2 LOCAL, or v1 its own addresses
    "v1_check": "send-proxy check check-send-proxy inter 200ms",
    "v2_check": "send-proxy-v2 check check-send-proxy inter 200ms",
}


def _free_port(host):
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _listening_ports(pid):
    return {c.laddr[1] for c in psutil.Process(pid).net_connections("inet") if c.status == psutil.CONN_LISTEN}


@pytest.fixture(scope="module")
def haproxy(tmp_path_factory):
    """One HAProxy, each listen section forwarding to a listener of its own: name -> (frontend, listener)."""
    with contextlib.ExitStack() as stack:
        sections, routes = [], {}
        for name in [*SENDS, *CHECKS]:
            host, options = SENDS.get(name, ("127.0.0.1", CHECKS.get(name)))
            listener = stack.enter_context(socket.socket())
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            listener.settimeout(10)
            frontend = (host, _free_port(host))
            routes[name] = frontend, listener
            sections.append(f"listen {name}\n    bind {'[::1]' if ':' in host else host}:{frontend[1]}\n"
                            f"    server s 127.0.0.1:{listener.getsockname()[1]} {options}\n")
        config = tmp_path_factory.mktemp("haproxy") / "haproxy.cfg"
        config.write_text("global\n    maxconn 100\n\ndefaults\n    mode tcp\n    timeout connect 5s\n"
                          "    timeout client 10s\n    timeout server 10s\n\n" + "\n".join(sections))
        log = config.with_name("haproxy.log").open("w+")
        process = subprocess.Popen([HAPROXY, "-f", str(config), "-db"], stdout=log, stderr=subprocess.STDOUT)
        stack.callback(log.close)
        stack.callback(process.wait, 5)
        stack.callback(process.kill)

        def ready():
            assert process.poll() is None, config.with_name("haproxy.log").read_text()
            return {port for (_, port), _ in routes.values()} <= _listening_ports(process.pid)
        wait_for(ready, message="haproxy to listen")
        yield routes


def _read_header(connection):
    """What the proxy sent first: (Header, the bytes after it)."""
    data = b""
    while (header := parse(data)) is None:
        chunk = connection.recv(4096)
        assert chunk, f"the connection closed after {data!r}"
        data += chunk
    return header, data[header.length:]


@pytest.mark.skipif(not HAPROXY, reason="haproxy is not installed")
@pytest.mark.parametrize("name", list(SENDS))
def test_a_header_from_haproxy_names_the_real_client(haproxy, name):
    frontend, listener = haproxy[name]
    with socket.create_connection(frontend, timeout=10) as client:
        client.sendall(REQUEST)
        connection, _ = listener.accept()
        with connection:
            connection.settimeout(10)
            header, rest = _read_header(connection)
            while len(rest) < len(REQUEST):
                rest += connection.recv(4096)
            assert header == Header(int(name[1]), client.getsockname()[:2], frontend, header.length)
            assert rest == REQUEST
            if "crc32c" in SENDS[name][1]:
                assert header.length > 16 + 12, "HAProxy sent no TLV to skip"


@pytest.mark.skipif(not HAPROXY, reason="haproxy is not installed")
@pytest.mark.parametrize("name", list(CHECKS))
def test_a_health_check_from_haproxy_names_no_other_client(haproxy, name):
    _, listener = haproxy[name]
    connection, peer = listener.accept()
    with connection:
        connection.settimeout(10)
        header, rest = _read_header(connection)
        if name.startswith("v1"):       # HAProxy 2.6 names the check's own connection, as seen here
            assert header[:3] == (1, peer, listener.getsockname())
        else:
            assert header[:3] == (2, None, None)        # LOCAL
        assert rest == b""
