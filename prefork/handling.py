"""Runs in each worker (and an in-process server): one request, socketserver's steps plus the bookkeeping.

handle_one() is the body of every accept loop, in pool workers (worker_process.py)
and in the in-process request loop (inprocess.py). ReplySocket is what a
datagram handler replies through, so that a reply never blocks a worker.
"""

import errno
import logging
import os
import socket
import ssl
import time

from prefork.access import OK, outcome_of
from prefork.proxy_protocol import MAX_HEADER, ProxyProtocolError, parse
from prefork.signals import wait_readable

log = logging.getLogger("prefork")

ACCEPT_AGAIN = (   # a lost race or an aborted handshake: wait for the next
    errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.ECONNABORTED, errno.EPROTO)
ACCEPT_PAUSE = (   # out of descriptors or memory: pause accepting
    errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
# A client that resets, abandons or stalls its connection (past the client timeout), or closes its TLS session
# (with close_notify or without): routine, one debug line.
CLIENT_WENT_AWAY = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, TimeoutError,
                    ssl.SSLZeroReturnError, ssl.SSLEOFError)
DEFERRED_GRACE = 1.0         # seconds an empty deferred connection gets for its first bytes
# Seconds at most a proxy has for its PROXY header (less if the client timeout is shorter). A proxy sends
# it with the connection; while a worker waits for it, its other parked connections wait too.
PROXY_HEADER_WAIT = 1.0
PROXY_PEEK = 4096            # bytes looked at first for a PROXY header (a v2 header with big TLVs takes more)


class PoolRequest:
    """What handle_one needs from one accept thread of a pool worker."""

    __slots__ = ("record", "client_timeout", "accepted", "finished", "observer")

    def __init__(self, record, client_timeout, accepted, observer=None):
        self.record = record
        self.client_timeout = client_timeout or None
        self.accepted = accepted        # counts the request against --max-requests
        self.finished = 0               # requests this thread has finished
        self.observer = observer        # hooks and access log around each request (pool/observer_process.py), or None

    def done(self):
        self.finished += 1
        self.record.end_request(time.monotonic(), self.finished)

    def abandon(self):
        """A quick stop (SIGQUIT) left the request unserved: not busy any more, and not counted."""
        self.record.end_request(time.monotonic(), self.finished, observe=False)


def handle_one(server, pool=None):
    """Take one request from server's socket and handle it, as socketserver does.

    The same steps and hooks as socketserver's _handle_request_noblock. In a
    pool worker (pool is its PoolRequest) also: count the request, mark the
    thread busy on the scoreboard, give a stream request the client timeout,
    and drop a connection that a deferred accept let through with no data
    (its client stayed silent for the whole client timeout). Returns False
    when there was nothing to take (another worker won the race).
    """
    try:
        request, client_address = server.get_request()
    except OSError as exc:
        _accept_failed(server, exc, fatal=pool is not None)
        return False
    if pool is not None:
        pool.accepted()
        if isinstance(request, socket.socket):
            if getattr(server, "defers_accept", False) and not _has_data(request, pool.client_timeout):
                log.debug("client %s sent nothing within the client timeout; closing", client_address)
                server.shutdown_request(request)
                pool.done()
                return True
            if pool.client_timeout:
                request.settimeout(pool.client_timeout)
        pool.record.begin_request(time.monotonic())
    observer, outcome = pool and pool.observer, OK
    if observer:
        observer.begin(server, client_address)
    try:
        if server.verify_request(request, client_address):
            try:
                server.process_request(request, client_address)
            except Exception as exc:
                outcome = outcome_of(exc)
                server.handle_error(request, client_address)
                server.shutdown_request(request)
        else:
            server.shutdown_request(request)
    except BaseException:             # a quick stop, or the handler's sys.exit(): the request is abandoned
        server.shutdown_request(request)
        if pool is not None:
            pool.abandon()
        raise
    if pool is not None:
        pool.done()
    if observer:
        observer.end(server, client_address, outcome)
        observer.flush()
    return True


def _accept_failed(server, exc, fatal):
    """A failed accept: a lost race is routine, running out of fds is a pause, anything else is
    fatal to a pool worker (an in-process loop returns, as socketserver's does)."""
    if exc.errno in ACCEPT_AGAIN or isinstance(exc, TimeoutError):
        return
    if exc.errno in ACCEPT_PAUSE:
        log.warning("cannot accept on %s: %s; pausing 0.1 s", server.server_address, exc.strerror)
        time.sleep(0.1)
        return
    if not fatal:
        return
    # EBADF, EINVAL, ENOTSOCK: the listener itself is broken (closed by a handler, say). Looping
    # on it would spin silently; stop this worker instead, so that the master replaces it with
    # one holding a good copy of the socket.
    raise RuntimeError(f"cannot accept on {server.server_address}: {exc}") from exc


def _has_data(sock, client_timeout):
    """Whether a client the kernel handed over despite TCP_DEFER_ACCEPT has sent anything.

    Usually it has (that is why it was handed over), or it stayed silent for
    the whole deferral. But a connection completed through a SYN cookie (a
    flood, or a burst past the backlog) is handed over on its bare ACK, its
    request a moment behind: so an empty queue gets a short grace before the
    client is taken for silent.
    """
    try:
        if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
            return True
    except BlockingIOError:
        pass
    except OSError:            # reset
        return False
    if not wait_readable(sock, min(DEFERRED_GRACE, client_timeout or DEFERRED_GRACE)):
        return False
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:
        return False


class ReplySocket(socket.socket):
    """A datagram server's socket as its handlers see it: a reply never blocks the worker.

    A client that sends but never reads fills its receive queue; a plain
    sendto() would then wait for it forever, and so would every client
    behind it. Here every send goes out with MSG_DONTWAIT, and a reply that
    finds the queue full is dropped with a debug line, as a datagram may be.
    It is a dup of the server's socket, made once per process.
    """

    owner = None

    @classmethod
    def for_socket(cls, sock):
        replies = cls(sock.family, sock.type, sock.proto, fileno=os.dup(sock.fileno()))
        replies.owner = os.getpid()
        return replies

    def sendto(self, data, flags_or_address, address=None):
        flags, address = (0, flags_or_address) if address is None else (flags_or_address, address)
        try:
            return super().sendto(data, flags | socket.MSG_DONTWAIT, address)
        except BlockingIOError:
            log.debug("reply to %s dropped: its receive queue is full", address)
            return 0

    def sendmsg(self, buffers, ancdata=(), flags=0, address=None):
        try:
            return super().sendmsg(buffers, ancdata, flags | socket.MSG_DONTWAIT, address)
        except BlockingIOError:
            log.debug("reply to %s dropped: its receive queue is full", address)
            return 0


def proxied(server, sock, client_address):
    """(sock, the real client) of a connection that starts with a PROXY protocol header.

    Called by a server's get_request() when server.proxy_protocol (an
    Allowed) is set. A peer not allowed to send one is refused at once (it
    could claim any address); a header that is malformed or does not arrive
    within the client timeout closes the connection, with a debug line. Both
    raise ConnectionAbortedError, which every accept loop takes for a
    connection that went away before it was served. The wait is bounded by
    PROXY_HEADER_WAIT, since a parking worker's other connections wait too.
    """
    if client_address not in server.proxy_protocol:
        log.debug("refused a connection from %s: not among the proxies allowed to send a PROXY header",
                  client_address)
        server.shutdown_request(sock)
        raise ConnectionAbortedError(errno.ECONNABORTED, "not an allowed proxy")
    try:
        header = read_proxy_header(sock, min(server.config.client_timeout or PROXY_HEADER_WAIT, PROXY_HEADER_WAIT))
    except (ProxyProtocolError, OSError) as exc:
        log.debug("closed a connection from %s: %s", client_address, exc)
        server.shutdown_request(sock)
        raise ConnectionAbortedError(errno.ECONNABORTED, f"bad PROXY header: {exc}") from None
    return sock, header.source or client_address


def read_proxy_header(sock, timeout):
    """Read the PROXY header that starts sock's stream, and nothing after it; ProxyProtocolError if it is
    malformed, cut short or late. Peeked at first, so that the client's own bytes stay in the socket."""
    deadline = time.monotonic() + timeout
    size = PROXY_PEEK
    while True:
        try:
            data = sock.recv(size, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            data = None
        if data == b"":
            raise ProxyProtocolError("the connection closed before its PROXY header ended")
        header = parse(data) if data else None
        if header is not None:
            sock.recv(header.length, socket.MSG_WAITALL)
            return header
        if data and len(data) == size and size < MAX_HEADER:
            size = MAX_HEADER                    # a v2 header longer than the first look
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            raise ProxyProtocolError(f"no whole PROXY header within {timeout:g} s")
        if data:
            time.sleep(min(0.005, left))         # part of it is here: the rest is on its way
        else:
            wait_readable(sock, left)


def tls_handshake(server, sock, client_address):
    """sock wrapped in server.tls, its handshake done within the client timeout: an ssl.SSLSocket.

    For a handler that owns its connection (the parking loop does its own
    handshakes without blocking: pool/handshake_process.py). A failed or late
    handshake (a client speaking plain text to a TLS port, say) raises
    ConnectionAbortedError: one debug line, as for a client that went away.
    """
    timeout, wrapped = sock.gettimeout(), None
    try:
        wrapped = server.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        wrapped.settimeout(server.config.client_timeout or None)
        wrapped.do_handshake()
        wrapped.settimeout(timeout)
    except (OSError, ValueError) as exc:          # ssl.SSLError and TimeoutError are OSErrors
        server.shutdown_request(wrapped if wrapped is not None else sock)
        raise ConnectionAbortedError(errno.ECONNABORTED, f"TLS handshake failed: {exc or 'timed out'}") from None
    return wrapped


def end_tls(sock):
    """Send a TLS connection's close_notify, without waiting for the client's: a response that ends with the
    connection (HTTP/1.0, no Content-Length) is then known to be whole. Nothing happens if it cannot be sent."""
    try:
        sock.settimeout(0.0)
        sock.unwrap()
    except (OSError, ValueError):          # SSLWantReadError: the client's close_notify has not come, as expected
        pass
