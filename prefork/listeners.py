"""Runs in the serving process (the master): parse bind strings, open and bind sockets, clean up Unix paths.

Accepted forms (``prefork serve -b``):

    HOST:PORT  tcp://HOST:PORT  [IPV6]:PORT  tcp://[IPV6]:PORT    TCP
    udp://HOST:PORT  udp://[IPV6]:PORT                              UDP
    unix:PATH                                                       Unix stream
    unix-dgram:PATH                                                 Unix datagram

An empty HOST (``:8000``) means every IPv4 interface, as ``("", 8000)`` does
for socketserver. Everything here raises BindError with a message fit for a
user; nothing prints or exits.
"""

import errno
import ipaddress
import math
import os
import socket
import stat
import struct
from dataclasses import dataclass

from prefork.errors import BindError

STREAM_KINDS = ("tcp", "unix")
_FORMS = "HOST:PORT, [IPV6]:PORT, tcp://HOST:PORT, udp://HOST:PORT, unix:PATH or unix-dgram:PATH"


@dataclass(frozen=True)
class Bind:
    """One parsed listening address."""

    kind: str        #: "tcp", "udp", "unix" or "unix-dgram"
    address: object  #: (host, port) for IP kinds, a path for Unix kinds
    text: str        #: as the user wrote it, for messages

    @property
    def stream(self):
        return self.kind in STREAM_KINDS

    @property
    def unix(self):
        return self.kind.startswith("unix")


def parse_bind(text):
    """Parse one bind string into a Bind, or raise BindError naming what is wrong."""
    for prefix, kind in (("unix-dgram:", "unix-dgram"), ("unix:", "unix")):
        if text.startswith(prefix):
            path = text[len(prefix):]
            if path.startswith("//"):       # unix://PATH, as gunicorn writes it
                path = path[2:]
            if not path:
                raise BindError(f"bad bind {text!r}: {prefix} needs a socket path")
            return Bind(kind, path, text)
    kind, rest = "tcp", text
    for prefix in ("tcp://", "udp://"):
        if text.startswith(prefix):
            kind, rest = prefix[:3], text[len(prefix):]
            break
    if "://" in rest:
        raise BindError(f"bad bind {text!r}: unknown scheme; use {_FORMS}")
    scheme, _, after = rest.partition(":")
    if scheme.lower() in ("udp", "tcp") and ":" in after:      # udp:HOST:PORT, a slip for udp://HOST:PORT
        raise BindError(f"bad bind {text!r}: write {scheme.lower()}://{after}")
    return Bind(kind, _parse_host_port(text, rest), text)


def _parse_host_port(text, rest):
    if rest.startswith("["):
        host, sep, port = rest[1:].partition("]:")
        if not sep or not host:
            raise BindError(f"bad bind {text!r}: write an IPv6 address as [ADDRESS]:PORT")
    else:
        host, sep, port = rest.rpartition(":")
        if not sep:
            raise BindError(f"bad bind {text!r}: expected {_FORMS}")
        if ":" in host:
            raise BindError(f"bad bind {text!r}: put an IPv6 address in brackets, as [{host}]:{port}")
    if port.startswith("-") and port[1:].isascii() and port[1:].isdigit():
        raise BindError(f"bad bind {text!r}: port {port} is out of range 0-65535")
    if not (port.isascii() and port.isdigit()):
        raise BindError(f"bad bind {text!r}: port {port!r} is not a number")
    number = int(port)
    if not 0 <= number <= 65535:
        raise BindError(f"bad bind {text!r}: port {number} is out of range 0-65535")
    return host, number


def repeated_bind(binds):
    """The first two binds that name the same address, as (earlier, later); or None.

    Compared as written, without resolving a name: 127.0.0.1:8000 and
    tcp://127.0.0.1:8000, :8000 and 0.0.0.0:8000, [::1] and [0::1], unix:a.sock
    and unix:./a.sock (a stream and a datagram socket cannot share a file
    either). Port 0 asks for a port of its own each time, so it never repeats.
    """
    seen = {}
    for bind in binds:
        key = _address_key(bind)
        if key is None:
            continue
        if key in seen:
            return seen[key], bind
        seen[key] = bind
    return None


def _address_key(bind):
    if bind.unix:
        return "unix", os.path.abspath(bind.address)
    host, port = bind.address
    if port == 0:
        return None
    host = host.lower() or "0.0.0.0"
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        pass                    # a name, compared as written
    return bind.kind, host, port


def open_listener(bind, backlog=2048):
    """Create, bind and (for streams) listen on a socket for ``bind``.

    TCP sockets get SO_REUSEADDR, so a restarted server does not wait out
    TIME_WAIT. A Unix path left behind by a dead server (nobody answers on
    it) is removed first; a live one is "address already in use".
    """
    sock_type = socket.SOCK_STREAM if bind.stream else socket.SOCK_DGRAM
    if bind.unix:
        family, address = socket.AF_UNIX, bind.address
        remove_stale_unix_socket(address, sock_type, f"cannot bind {bind.kind}:{address}")
    else:
        family, address = _resolve(bind, sock_type)
    sock = socket.socket(family, sock_type)
    try:
        if family in (socket.AF_INET, socket.AF_INET6) and bind.stream:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        if bind.stream:
            sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise BindError(f"cannot bind {bind.text}: {_describe(exc)}") from None
    return sock


def describe_socket(sock):
    """A listening socket as a bind string: 127.0.0.1:8000, [::1]:8000, udp://..., unix:..., unix-dgram:..."""
    address = sock.getsockname()
    datagram = sock.type == socket.SOCK_DGRAM
    if sock.family == socket.AF_UNIX:
        path = address.decode(errors="replace") if isinstance(address, bytes) else address
        path = "@" + path[1:] if path.startswith("\0") else path
        return f"{'unix-dgram' if datagram else 'unix'}:{path}"
    host, port = address[0], address[1]
    text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"udp://{text}" if datagram else text


def socket_kind(sock):
    """"tcp", "udp", "unix" or "unix-dgram": what kind of listener an inherited socket is."""
    datagram = sock.type == socket.SOCK_DGRAM
    if sock.family == socket.AF_UNIX:
        return "unix-dgram" if datagram else "unix"
    return "udp" if datagram else "tcp"


def take_inherited(bind, sockets):
    """The socket in sockets (removed from it) that serves bind, if any: same kind and address.

    A bind on port 0 takes an inherited socket of the same host on any port:
    an upgraded master keeps the port its predecessor was given.
    """
    for sock in sockets:
        if socket_kind(sock) != bind.kind:
            continue
        address = sock.getsockname()
        if bind.unix:
            path = address.decode(errors="replace") if isinstance(address, bytes) else address
            found = path == bind.address
        else:
            try:
                _, wanted = _resolve(bind, sock.type)
            except BindError:
                continue
            found = address[0] == wanted[0] and (bind.address[1] == 0 or address[1] == wanted[1])
        if found:
            sockets.remove(sock)
            return sock
    return None


# struct tcp_info (linux/tcp.h): on a listening socket, tcpi_unacked (offset 24) is the number of
# connections waiting in the accept queue and tcpi_sacked (offset 28) its limit. Checked on Linux 6.18 by
# tests/test_listeners.py, which fills a queue.
_TCP_LISTEN = 10
_TCP_INFO_QUEUE = struct.Struct("=II")
_TCP_INFO_LENGTH = 32


def accept_queue(sock):
    """(queued, limit) of a listening TCP socket's accept queue, or None for other sockets.

    One getsockopt(TCP_INFO), cheap enough for every pass of the master. A
    connection held back by TCP_DEFER_ACCEPT (it has sent nothing yet) is not
    in the queue: only clients a worker could serve now are counted.
    """
    if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LENGTH)
    except OSError:           # closed, or a kernel without TCP_INFO
        return None
    if len(info) < _TCP_INFO_LENGTH or info[0] != _TCP_LISTEN:
        return None
    return _TCP_INFO_QUEUE.unpack_from(info, 24)


def queued_connections(socks):
    """Connections waiting in the accept queues of every TCP listener among socks; None if there is none."""
    queues = [queue for queue in map(accept_queue, socks) if queue is not None]
    return sum(queued for queued, _ in queues) if queues else None


class PoolSocketState:
    """What prepare_for_pool changed on a listening socket, to put back when the pool stops."""

    def __init__(self, timeout, deferred):
        self.timeout, self.deferred = timeout, deferred

    def restore(self, server):
        sock = server.socket
        if sock.fileno() < 0:
            return
        sock.settimeout(self.timeout)
        if self.deferred:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 0)
            server.defers_accept = False


def prepare_for_pool(server, config):
    """Ready a server's listening socket to be shared by pool workers.

    Stream sockets become non-blocking: a worker that loses the race for a
    connection gets EAGAIN instead of blocking in accept(). Datagram sockets
    stay blocking, as handlers reply on them (reads use MSG_DONTWAIT). With
    config.defer_accept (off by default: it breaks protocols where the server
    speaks first), a TCP socket gets TCP_DEFER_ACCEPT for the client timeout,
    so a client that connects and says nothing waits in the kernel, not in a
    worker; the worker drops such a connection if the kernel hands it over
    empty at the end of the period.
    """
    sock = server.socket
    timeout = sock.gettimeout()
    deferred = False
    if sock.type == socket.SOCK_STREAM:
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6) and config.client_timeout and config.defer_accept:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, max(1, math.ceil(config.client_timeout)))
            server.defers_accept = deferred = True
    return PoolSocketState(timeout, deferred)


def _resolve(bind, sock_type):
    host, port = bind.address
    try:
        infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, sock_type, 0, socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BindError(f"cannot bind {bind.text}: unknown host {host!r} ({exc.strerror})") from None
    except UnicodeError:       # the IDNA codec refuses it: an empty label, one over 63 characters
        raise BindError(f"bad bind {bind.text}: {host!r} is not a valid host name") from None
    if not host:   # "" means every IPv4 interface, as in socketserver
        infos = [info for info in infos if info[0] == socket.AF_INET] or infos
    family, _, _, _, address = infos[0]
    return family, address


def _describe(exc):
    if exc.errno == errno.EADDRINUSE:
        return "address already in use"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "address not available on this machine"
    return exc.strerror or str(exc)


def remove_stale_unix_socket(path, sock_type=socket.SOCK_STREAM, cannot=None, in_use="address already in use"):
    """Remove a socket file at ``path`` that no process answers on.

    Refuses (BindError) when the path is not a socket or a server still
    listens on it, so we never delete a user's file or steal a live address.
    The message is ``cannot`` (by default "cannot bind unix:PATH"), a colon
    and the reason, ``in_use`` when a server listens there.
    """
    cannot = cannot or f"cannot bind unix:{path}"
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise BindError(f"{cannot}: {_describe(exc)}") from None
    if not stat.S_ISSOCK(mode):
        raise BindError(f"{cannot}: the path exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, sock_type)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        try:
            os.unlink(path)      # nobody listens: left by a dead server
        except OSError as exc:
            raise BindError(f"{cannot}: cannot remove the stale socket file there: "
                            f"{_describe(exc)}") from None
        return
    except OSError:
        return                   # let bind() report what is wrong with the path
    finally:
        probe.close()
    raise BindError(f"{cannot}: {in_use}")


class UnixPathOwner:
    """Remembers the socket file a process created, to remove exactly that file later.

    The identity check (device, inode and modification time: inode numbers
    are recycled, but a new socket file gets a new time, and chmod or chown
    leave it alone) keeps us from deleting a path another server has since bound; the pid check keeps forked children (workers) from removing the
    master's socket when they exit.
    """

    def __init__(self, path):
        self.path, self._identity, self._pid = path, _identity(path), os.getpid()

    def release(self):
        """Never remove it: another process (an upgraded master) serves on it now."""
        self._pid = None

    def remove(self):
        if os.getpid() != self._pid:
            return
        try:
            if _identity(self.path) == self._identity:
                os.unlink(self.path)
        except OSError:
            pass


def _identity(path):
    info = os.stat(path)
    return info.st_dev, info.st_ino, info.st_mtime_ns


def held_connections(skip=()):
    """["tcp 10.0.0.5:5432", ...]: the connected sockets this process holds, but the fds in skip.

    What a zygote checks after importing the handler: a database or cache
    connection opened at import time would be shared by every worker forked
    from it, their bytes interleaved on one stream. Listeners, unconnected
    sockets and unnamed socket pairs (our own channels) have no peer to name.
    """
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if fd in skip or not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:                 # the directory's own fd, gone once listed
            continue
        with sock:
            family, kind = sock.family, sock.type
            try:
                peer = sock.getpeername()
            except OSError:             # not connected
                continue
        if not peer:
            continue
        if family == socket.AF_UNIX:
            path = peer.decode(errors="replace") if isinstance(peer, bytes) else peer
            found.append(f"unix {'@' + path[1:] if path.startswith(chr(0)) else path}")
        else:
            host = f"[{peer[0]}]" if family == socket.AF_INET6 else peer[0]
            found.append(f"{'udp' if kind == socket.SOCK_DGRAM else 'tcp'} {host}:{peer[1]}")
    return found
