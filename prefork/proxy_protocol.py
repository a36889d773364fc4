"""Runs in each worker: read the PROXY protocol header (v1 text, v2 binary) a load balancer sends first.

A proxy in front of the server (HAProxy, a cloud load balancer) opens the
connection itself, so the socket's peer is the proxy. With the PROXY protocol
it first sends one header naming the real client; parse() reads it from the
bytes received so far, and the caller keeps data[header.length:] as the start
of the request. parse_datagram() does the same for a datagram (v2 only).
Allowed says which peers may send a header at all: a header from anyone else
would let any client claim any address.

Everything here is pure: bytes in, a Header or ProxyProtocolError out.
The format is HAProxy's proxy-protocol.txt (version 2.9).
"""

import ipaddress
import socket
import struct
from typing import NamedTuple

from prefork.errors import ConfigError

V1_PREFIX = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
MAX_V1 = 107                 # the longest v1 line, CRLF included
V2_FIXED = 16                # signature, version/command, family, length
MAX_HEADER = V2_FIXED + 0xFFFF

LOCAL, PROXY = 0x20, 0x21    # v2 version (high nibble) and command (low nibble)
UNSPEC, UNIX_LENGTH = 0x00, 216
# v2 family/transport byte -> (address family, bytes of the address block); UNIX carries two 108-byte paths.
V2_FAMILIES = {
    0x11: (socket.AF_INET, 12), 0x12: (socket.AF_INET, 12),      # TCP4, UDP4
    0x21: (socket.AF_INET6, 36), 0x22: (socket.AF_INET6, 36),    # TCP6, UDP6
    0x31: (None, UNIX_LENGTH), 0x32: (None, UNIX_LENGTH),        # UNIX stream, datagram
}
V1_FAMILIES = {"TCP4": socket.AF_INET, "TCP6": socket.AF_INET6}


class ProxyProtocolError(ValueError):
    """The bytes are not a well-formed PROXY protocol header: the connection should be closed."""


class Header(NamedTuple):
    """One parsed header. source and destination are None when the connection's own addresses stand."""

    version: int          #: 1 or 2
    source: tuple         #: the real client, (host, port), or None
    destination: tuple    #: the address the client connected to, (host, port), or None
    length: int           #: bytes the header took: the request starts at data[length:]


def parse(data):
    """The Header that data starts with, or None while data is a prefix of one.

    Raises ProxyProtocolError as soon as data cannot become a header, so that
    a client speaking to the server directly ("GET / ...") is refused from its
    first bytes rather than waited for.
    """
    data = bytes(data)
    if data[:1] == V2_SIGNATURE[:1]:
        return _parse_v2(data)
    if _starts(data, V1_PREFIX):
        return _parse_v1(data)
    raise ProxyProtocolError("not a PROXY protocol header")


def parse_datagram(data):
    """(Header, payload) of a datagram that a proxy prefixed with a v2 header."""
    data = bytes(data)
    if not data.startswith(V2_SIGNATURE):
        raise ProxyProtocolError("datagram does not start with a PROXY v2 header")
    header = _parse_v2(data)
    if header is None:
        raise ProxyProtocolError("datagram ends inside its PROXY v2 header")
    return header, data[header.length:]


def _starts(data, prefix):
    """data starts with prefix, or is a prefix of it (more bytes may still make it)."""
    return data[:len(prefix)] == prefix[:len(data)]


# -- version 1: "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n" ----------------------------------

def _parse_v1(data):
    end = data.find(b"\n", 0, MAX_V1)
    if end < 0:
        if len(data) >= MAX_V1:
            raise ProxyProtocolError(f"v1 header has no CRLF within {MAX_V1} bytes")
        return None
    if data[end - 1:end] != b"\r":
        raise ProxyProtocolError("v1 header does not end with CRLF")
    try:
        fields = data[:end - 1].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyProtocolError("v1 header is not ASCII") from None
    if fields[1] == "UNKNOWN":         # whatever follows is to be ignored
        return Header(1, None, None, end + 1)
    if fields[1] not in V1_FAMILIES:
        raise ProxyProtocolError(f"v1 protocol {fields[1]!r} is not TCP4, TCP6 or UNKNOWN")
    if len(fields) != 6:
        raise ProxyProtocolError("v1 header needs 2 addresses and 2 ports")
    family = V1_FAMILIES[fields[1]]
    source = (_v1_host(family, fields[2]), _v1_port(fields[4]))
    destination = (_v1_host(family, fields[3]), _v1_port(fields[5]))
    return Header(1, source, destination, end + 1)


def _v1_host(family, text):
    """The address in socket's own spelling (IPv6 compressed, as getpeername gives it)."""
    try:
        return socket.inet_ntop(family, socket.inet_pton(family, text))
    except (OSError, ValueError):      # ValueError: an embedded NUL
        name = "IPv4" if family == socket.AF_INET else "IPv6"
        raise ProxyProtocolError(f"bad {name} address {text!r}") from None


def _v1_port(text):
    if not (text.isdigit() and len(text) <= 5 and int(text) <= 0xFFFF):
        raise ProxyProtocolError(f"bad port {text!r}")
    return int(text)


# -- version 2: signature, version/command, family/transport, length, addresses, TLVs -------------

def _parse_v2(data):
    if not _starts(data, V2_SIGNATURE):
        raise ProxyProtocolError("not a PROXY protocol header")
    if len(data) > 12 and data[12] not in (LOCAL, PROXY):
        raise ProxyProtocolError(f"unknown v2 version/command 0x{data[12]:02x}")
    if len(data) > 13 and data[12] == PROXY and data[13] != UNSPEC and data[13] not in V2_FAMILIES:
        raise ProxyProtocolError(f"unknown v2 family/transport 0x{data[13]:02x}")
    if len(data) < V2_FIXED:
        return None
    command, family, size = struct.unpack_from("!BBH", data, 12)
    length = V2_FIXED + size
    if command == PROXY and family != UNSPEC and size < V2_FAMILIES[family][1]:
        raise ProxyProtocolError(f"v2 length {size} is too short for family 0x{family:02x}")
    if len(data) < length:
        return None
    # LOCAL (the proxy's own health check), UNSPEC and UNIX: the connection's own addresses stand.
    # The TLVs after the addresses (SSL details, unique ids, CRC) are skipped.
    address_family = V2_FAMILIES.get(family, (None,))[0]
    if command == LOCAL or address_family is None:
        return Header(2, None, None, length)
    size = 4 if address_family == socket.AF_INET else 16
    source, destination, source_port, destination_port = struct.unpack_from(f"!{size}s{size}sHH", data, V2_FIXED)
    return Header(2, (socket.inet_ntop(address_family, source), source_port),
                  (socket.inet_ntop(address_family, destination), destination_port), length)


# -- who may send a header ----------------------------------------------------------------------

class Allowed:
    """The peers trusted to send a PROXY header: "10.0.0.0/8,192.168.1.5,::1/128", or "*" for any.

    A Unix socket peer is always trusted: only a local process (a proxy on
    the same host) can connect to it.
    """

    def __init__(self, text):
        self.text = text
        self.networks = []
        self.anyone = False
        for entry in (entry.strip() for entry in text.split(",")):
            if entry == "*":
                self.anyone = True
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry))
            except ValueError:
                why = _why_bad(entry)
                raise ConfigError(f"bad proxy address {entry!r} in {text!r}: {why}",
                                  problem=f"has a bad entry {entry!r}: {why}", value=text) from None

    def __contains__(self, client_address):
        if not client_address or isinstance(client_address, (str, bytes)):
            return True                 # a Unix socket peer: "", a path, or None
        if self.anyone:
            return True
        try:
            address = ipaddress.ip_address(client_address[0])
        except ValueError:
            return False
        mapped = getattr(address, "ipv4_mapped", None)     # ::ffff:10.0.0.1 on a dual-stack socket
        return any(address in network or (mapped and mapped in network) for network in self.networks)

    def __repr__(self):
        return f"Allowed({self.text!r})"


def _why_bad(entry):
    if not entry:
        return "an empty entry (a stray comma?)"
    try:
        return f"host bits are set; the network is {ipaddress.ip_network(entry, strict=False)}"
    except ValueError:
        return "not an IP address, a network (ADDRESS/BITS) or *"
