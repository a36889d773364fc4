"""Runs in each worker: the parking loop, for handlers that serve one request at a time.

One loop per accept thread, on its own epoll: the listeners (EPOLLEXCLUSIVE,
as in the classic loop), every connection it holds (level-triggered, so a
parked connection costs no system call between requests) and the pool's
hand-off channel. A readable connection is filled without blocking and
served one request if a whole one has arrived; bytes already buffered for
the next request (pipelining) are served in the next round, after the other
ready connections, so a chatty client cannot starve quiet ones. See
docs/design.md, "Parking".

Leaving (leaving_process.py): serve what has arrived; then a worker retiring
while the pool goes on hands its connections to live workers, a stop closes them.
"""

import collections
import logging
import select
import socket
import struct
import time

from prefork import parking
from prefork.access import OK, outcome_of
from prefork.handling import ACCEPT_AGAIN, ACCEPT_PAUSE, PoolRequest, handle_one
from prefork.pool import handoff_process
from prefork.pool.intake_process import RECHECK, Intake
from prefork.pool.handshake_process import Handshakes
from prefork.pool.leaving_process import Leaving
from prefork.pool.observer_process import observer_for

log = logging.getLogger("prefork")

ACCEPT_BATCH = 16            # connections accepted per wake-up, at most
MAX_PENDING = 256 * 1024     # bytes buffered without a whole request before the connection is closed


def parks(server):
    """Whether server's connections are served one request at a time (a stream server, a parking handler)."""
    return server.socket.type == socket.SOCK_STREAM and parking.parks(server.RequestHandlerClass)


class Connection:
    """One connection the loop holds; since and partial_since say how long it has been waiting."""

    __slots__ = ("sock", "fd", "server", "index", "handler", "closed", "since", "partial_since", "queued", "tls")

    def __init__(self, sock, server, index, handler, now):
        self.sock, self.fd, self.server, self.index, self.handler = sock, sock.fileno(), server, index, handler
        self.closed = False
        self.since = now              # its last request (or its accept): the keep-alive timeout runs from here
        self.partial_since = 0.0      # when part of a request arrived; 0.0 when none is pending
        self.queued = False           # in the loop's ready queue: a whole request is buffered
        self.tls = server.tls is not None     # an ssl.SSLSocket: non-blocking while parked, never handed over


class ParkingLoop(Leaving):
    """One accept thread's loop over its listeners and its parked connections."""

    def __init__(self, process, thread, record):
        self.process = process
        self.setup = setup = process.setup
        config = setup.config
        self.servers = setup.servers
        self.record = record
        self.request = PoolRequest(record, config.client_timeout, process._accepted, observer_for(setup, process.worker))
        self.observer = self.request.observer
        self.cap = max(1, -(-config.max_connections // setup.threads))
        self.counting = bool(process.max_requests)         # requests are counted for --max-requests only
        self.keepalive, self.client_timeout = config.keepalive_timeout, config.client_timeout
        self.listeners = {s.fileno(): (i, s) for i, s in enumerate(self.servers) if parks(s)}
        self.others = {s.fileno(): s for s in self.servers if not parks(s)}
        self.receiver, self.sender = setup.handoff
        self.connections = {}                          # fd -> Connection
        self.handshakes = Handshakes()                 # TLS connections not parked yet
        self.now = time.monotonic()                    # read once per pass of the loop
        self.ready = collections.deque()               # connections with a whole request buffered
        self.poller = self.intake = None
        self.past_cap = False                          # serve past --max-requests: nobody can take them over
        timeout = config.client_timeout
        self.io_timeout = struct.pack("ll", int(timeout), int(timeout % 1 * 1e6)) if timeout else None

    def run(self):
        process = self.process
        with select.epoll() as poller:
            self.poller = self.handshakes.poller = poller
            for fd in self.others:
                poller.register(fd, select.EPOLLIN | select.EPOLLEXCLUSIVE)
            poller.register(process.stop_r, select.EPOLLIN)
            if self.setup.threads == 1:
                poller.register(process.notice_r, select.EPOLLIN)
            self.intake = Intake(poller, self.listeners, self.receiver.fileno(), self.cap, process)
            self.intake.take(True)
            try:
                self._loop()
                self._leave()
            finally:
                for connection in list(self.connections.values()):
                    self._close(connection)
                self.handshakes.close_all()

    def _loop(self):
        process, poller, connections = self.process, self.poller, self.connections
        tick_interval = self.setup.tick_interval
        monotonic = time.monotonic
        next_tick = 0.0
        while process.accepting:
            timeout = 0 if self.ready else RECHECK if not self.intake.taking else tick_interval
            events = poller.poll(timeout)
            self.now = monotonic()
            for fd, _ in events:
                connection = connections.get(fd)
                if connection is not None:
                    self._readable(connection)
                elif fd in self.listeners:
                    self._accept_some(*self.listeners[fd])
                elif fd in self.handshakes.pending:
                    self._handshaken(self.handshakes.step(fd))
                elif fd == self.receiver.fileno():
                    self._adopt()
                elif fd == self.intake.bell:
                    continue                     # the intake decides again after this pass
                elif fd == process.notice_r:
                    process._take_notices()
                elif fd in self.others and not process.exhausted:
                    handle_one(self.others[fd], self.request)
            self._serve_pipelined()
            if self.observer is not None:
                self.observer.flush()
            now = self.now
            if now >= next_tick:
                next_tick = now + min(tick_interval, 1.0)
                self.record.tick(now)
                process._check_master()
                self._close_idle(now)
            self.intake.decide(len(connections) + len(self.handshakes), now)
            for server in self.servers:
                server.service_actions()

    # -- taking connections ------------------------------------------------

    def _accept_some(self, index, server):
        """Up to ACCEPT_BATCH connections per wake-up, not one per pass behind every ready request."""
        for _ in range(ACCEPT_BATCH):
            if not self._accept(index, server):
                return
            held = len(self.connections) + len(self.handshakes)
            if held >= self.cap or not self.intake.within_share(held):
                return

    def _accept(self, index, server):
        """Take one connection from server's queue; False when the queue was empty (or fds ran out)."""
        try:
            sock, client_address = server.get_request()
        except OSError as exc:
            if exc.errno in ACCEPT_AGAIN or isinstance(exc, TimeoutError):
                return False
            if exc.errno in ACCEPT_PAUSE:
                log.warning("cannot accept on %s: %s; holding %s connections, pausing accepting",
                            server.server_address, exc.strerror, len(self.connections))
                self.intake.out_of_fds(time.monotonic())
                return False
            raise RuntimeError(f"cannot accept on {server.server_address}: {exc}") from exc
        try:
            if not server.verify_request(sock, client_address):
                server.shutdown_request(sock)
                return True
        except Exception:
            server.handle_error(sock, client_address)
            server.shutdown_request(sock)
            return True
        if self.io_timeout is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, self.io_timeout)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, self.io_timeout)
        if server.tls is not None:
            self._handshaken(self.handshakes.begin(sock, index, server, client_address, self.now))
            return True
        connection = self._open(sock, index, server, client_address, b"", None)
        if connection is not None:
            self._readable(connection)        # its first request is often here already: no epoll round
        return True

    def _handshaken(self, shake):
        """A TLS connection whose handshake is done (None: not yet, or failed): parked as any other. Not read
        now: a request that came with the handshake is in the kernel, and epoll says so; and every read of a
        TLS connection is then one epoll asked for, so that one that decrypts nothing means half a record."""
        if shake is not None:
            self._open(shake.sock, shake.index, shake.server, shake.client_address, b"", None)

    def _adopt(self):
        """Connections handed over by a retiring worker (one batch): park them as if we had accepted them.
        A batch may take a worker past --max-connections by less than a batch: better than closing them."""
        for moving in handoff_process.receive(self.receiver):
            index = moving.server_index
            if not 0 <= index < len(self.servers) or not parks(self.servers[index]):
                log.warning("dropped a connection handed over for listener %s, which does not park here", index)
                moving.sock.close()
                continue
            connection = self._open(moving.sock, index, self.servers[index], moving.client_address,
                                    moving.received, moving.state)
            if connection is not None and connection.handler.rfile.pending:
                self._queue_if_ready(connection)

    def _open(self, sock, index, server, client_address, received, state):
        try:
            handler = server.RequestHandlerClass.park(sock, client_address, server, received)
            if state is not None:
                handler.resume(state)
        except Exception:
            server.handle_error(sock, client_address)
            server.shutdown_request(sock)
            return None
        connection = Connection(sock, server, index, handler, self.now)
        if received:
            connection.partial_since = self.now
        self.connections[connection.fd] = connection
        self.poller.register(connection.fd, select.EPOLLIN)
        self.record.set_connections(len(self.connections))
        return connection

    # -- serving -----------------------------------------------------------

    def _readable(self, connection):
        # At the request cap, what arrived moves with the connection. A connection with a whole request
        # queued is not read further: one request per round, and no unbounded buffering of a pipeline.
        if connection.queued or not self._may_serve():
            return
        handler = connection.handler
        reader = handler.rfile
        try:
            received = reader.fill()
            ready = handler.request_ready()
        except OSError:                      # reset while parked
            self._close(connection)
            return
        except Exception:                    # the handler's request_ready() raised
            connection.server.handle_error(connection.sock, handler.client_address)
            self._close(connection)
            return
        if ready:
            self._serve(connection)
        elif reader.eof:                     # the client left with no request, or half of one
            self._close(connection)
        elif len(reader.pending) > getattr(handler, "max_pending", MAX_PENDING):
            log.debug("closing connection from %s: %s bytes and no whole request", handler.client_address,
                      len(reader.pending))
            self._close(connection)
        elif not connection.partial_since and (received or (connection.tls and received is None)):
            connection.partial_since = self.now      # (TLS: epoll saw bytes, but not a whole record yet)

    def _may_serve(self):          # not at the request cap, or past it on purpose (nobody else can take them)
        return not self.process.exhausted or self.past_cap

    def _serve_pipelined(self):
        if not self._may_serve():
            return
        for _ in range(len(self.ready)):
            connection = self.ready.popleft()
            connection.queued = False
            if not connection.closed:
                self._serve(connection)

    def _queue_if_ready(self, connection):
        """Queue a connection whose buffered bytes hold a whole request, for the next round."""
        try:
            ready = connection.handler.request_ready()
        except Exception:                    # the handler's request_ready() raised
            connection.server.handle_error(connection.sock, connection.handler.client_address)
            self._close(connection)
            return False
        if ready:
            connection.queued = True
            self.ready.append(connection)
        return ready

    def _serve(self, connection):
        """One request: counted against --max-requests, the thread busy on the scoreboard meanwhile."""
        handler, request = connection.handler, self.request
        record = request.record
        if self.counting:
            self.process._accepted()
        record.begin_request(self.now)
        if (observer := self.observer) is not None:
            observer.begin(connection.server, handler.client_address)
        if connection.tls:         # the handler's reads and writes wait (the kernel's timeouts bind no SSL read)
            connection.sock.settimeout(self.client_timeout or getattr(handler, "timeout", None))
        try:
            keep, outcome = handler.handle_request(), OK
            if connection.tls and keep:
                keep = self._parked_again(connection)
        except Exception as exc:
            connection.server.handle_error(connection.sock, handler.client_address)
            keep, outcome = False, outcome_of(exc)
        except BaseException:                # a quick stop, or sys.exit() in the handler
            request.abandon()
            raise
        self.now = now = time.monotonic()
        request.finished += 1
        record.end_request(now, request.finished)
        if observer is not None:
            observer.end(connection.server, handler.client_address, outcome, handler)
        connection.since, connection.partial_since = now, 0.0
        if not keep or connection.closed or connection.sock.fileno() < 0:     # or it closed the socket itself
            self._close(connection)
        elif self._queue_if_ready(connection):   # buffered: by rfile, or by the handler (a parser's queue)
            pass
        elif connection.closed:
            return
        elif handler.rfile.eof:
            self._close(connection)
        elif handler.rfile.pending:
            connection.partial_since = now

    def _parked_again(self, connection):
        """A TLS connection back to non-blocking after its request, and what OpenSSL holds decrypted read
        into its reader (epoll cannot see it); False if it failed meanwhile."""
        sock = connection.sock
        if sock.fileno() < 0:
            return False
        try:
            sock.settimeout(0.0)
            if sock.pending():
                connection.handler.rfile.fill()
        except OSError:
            return False
        return True

    def _close_idle(self, now):
        """Close connections idle for the keep-alive timeout, and those whose request has not all arrived
        within the client timeout of its first bytes (a pass once per tick: cheaper than keeping them sorted)."""
        keepalive, client_timeout = self.keepalive, self.client_timeout
        for connection in list(self.connections.values()):
            if connection.partial_since:
                waited, limit, what = now - connection.partial_since, client_timeout, "part of a request pending"
            else:
                waited, limit, what = now - connection.since, keepalive, "idle"
            if limit and waited >= limit:
                log.debug("closing connection from %s: %s for %.1f s", connection.handler.client_address,
                          what, waited)
                self._close(connection)
        self.handshakes.expire(now, client_timeout or keepalive)   # a connection that never says hello

    def _close(self, connection, handed_over=False):
        if connection.closed:
            return
        connection.closed = True
        fd = connection.fd
        if self.connections.get(fd) is connection:
            del self.connections[fd]
            try:
                self.poller.unregister(fd)
            except OSError:                    # the handler closed its socket itself
                pass
        self.record.set_connections(len(self.connections))
        if handed_over:
            connection.sock.close()                # it goes on in another worker: no finish(), no shutdown()
            return
        try:
            connection.handler.finish()
        except Exception:
            connection.server.handle_error(connection.sock, connection.handler.client_address)
        connection.server.shutdown_request(connection.sock)
