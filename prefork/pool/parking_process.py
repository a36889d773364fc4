"""Runs in each worker: the parking loop, for handlers that serve one request at a time.

One loop per accept thread, on its own epoll: the listeners (EPOLLEXCLUSIVE,
as in the classic loop), every connection it holds (level-triggered, so a
parked connection costs no system call between requests) and the pool's
hand-off channel. A readable connection is filled without blocking and
served one request if a whole one has arrived; bytes already buffered for
the next request (pipelining) are served in the next round, after the other
ready connections, so a chatty client cannot starve quiet ones. See
docs/design.md, "Parking".

Leaving: a worker retiring while the pool goes on (recycle, reload,
scale-down) serves the requests that have arrived and hands its other
connections to live workers (handoff_process.py); a stop of the whole pool
serves what has arrived, then closes them.
"""

import collections
import errno
import logging
import select
import socket
import struct
import time

from prefork import parking
from prefork.handling import PoolRequest, handle_one
from prefork.pool import handoff_process, scoreboard

log = logging.getLogger("prefork")

_ACCEPT_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.ECONNABORTED, errno.EPROTO)
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
PAUSED_POLL = 0.02           # how often a worker that stopped accepting looks at the pool's load again
FREE_CONNECTIONS = 4         # below this many, a thread accepts without looking at the others
FD_PAUSE = 0.1               # seconds without accepting after EMFILE
STOP_LINGER = 1.0            # seconds a stopping worker still serves parked connections before closing them
MAX_PENDING = 1 << 20        # bytes buffered without a whole request before the connection is closed


def parks(server):
    """Whether server's connections are served one request at a time (a stream server, a parking handler)."""
    return server.socket.type == socket.SOCK_STREAM and parking.parks(server.RequestHandlerClass)


def fair_share(total, threads):
    """The most connections one accept thread should hold: the pool's average, plus a little slack.

    Some thread always holds no more than the average, so some thread always accepts.
    """
    if threads <= 0:
        return total + 1
    return -(-total // threads) + max(1, total // (10 * threads))


class Connection:
    __slots__ = ("sock", "fd", "server", "index", "handler", "closed")

    def __init__(self, sock, server, index, handler):
        self.sock, self.fd, self.server, self.index, self.handler = sock, sock.fileno(), server, index, handler
        self.closed = False


class ParkingLoop:
    """One accept thread's loop over its listeners and its parked connections."""

    def __init__(self, process, thread, record):
        self.process = process
        self.setup = setup = process.setup
        config = setup.config
        self.servers = setup.servers
        self.record = record
        self.request = PoolRequest(record, config.client_timeout, process._accepted)
        self.cap = max(1, -(-config.max_connections // setup.threads))
        self.keepalive, self.client_timeout = config.keepalive_timeout, config.client_timeout
        self.listeners = {s.fileno(): (i, s) for i, s in enumerate(self.servers) if parks(s)}
        self.others = {s.fileno(): s for s in self.servers if not parks(s)}
        self.receiver, self.sender = setup.handoff
        self.connections = {}                          # fd -> Connection
        self.idle = collections.OrderedDict()          # fd -> since when parked with nothing pending; oldest first
        self.partial = collections.OrderedDict()       # fd -> since when part of a request is pending
        self.ready = collections.deque()               # connections with a whole request buffered
        self.poller = None
        self.taking = self.adopting = False            # listeners / hand-off channel registered
        self.balanced_for, self.recheck_at = -1, 0.0
        self.fd_pause_until = 0.0
        self.said_full = False
        timeout = config.client_timeout
        self.io_timeout = struct.pack("ll", int(timeout), int(timeout % 1 * 1e6)) if timeout else None

    def run(self):
        process = self.process
        with select.epoll() as poller:
            self.poller = poller
            for fd in self.others:
                poller.register(fd, select.EPOLLIN | select.EPOLLEXCLUSIVE)
            poller.register(process.stop_r, select.EPOLLIN)
            if self.setup.threads == 1:
                poller.register(process.notice_r, select.EPOLLIN)
            self._take(True)
            try:
                self._loop()
                self._leave()
            finally:
                for connection in list(self.connections.values()):
                    self._close(connection)

    def _loop(self):
        process, poller, connections = self.process, self.poller, self.connections
        tick_interval = self.setup.tick_interval
        monotonic = time.monotonic
        next_tick = 0.0
        while process.accepting:
            timeout = 0 if self.ready else PAUSED_POLL if not self.taking else tick_interval
            events = poller.poll(timeout)
            for fd, _ in events:
                connection = connections.get(fd)
                if connection is not None:
                    self._readable(connection)
                elif fd in self.listeners:
                    self._accept(*self.listeners[fd])
                elif fd == self.receiver.fileno():
                    self._adopt()
                elif fd == process.notice_r:
                    process._take_notices()
                elif fd in self.others and not process.exhausted:
                    handle_one(self.others[fd], self.request)
            self._serve_pipelined()
            now = monotonic()
            if now >= next_tick:
                next_tick = now + min(tick_interval, 1.0)
                self.record.tick(now)
                process._check_master()
                self._close_idle(now)
            self._balance(now)
            for server in self.servers:
                server.service_actions()

    # -- taking connections ------------------------------------------------

    def _take(self, on):
        """Register (or not) the listeners and the hand-off channel: accept and adopt, or stop for now.

        An outdated worker (a newer generation serves) accepts but adopts nothing: what a retiring
        worker hands over goes to the newest generation.
        """
        adopt = on and not self.process.header.get(scoreboard.OUTDATED)
        for fd in self.listeners:
            self._register(fd, select.EPOLLIN | select.EPOLLEXCLUSIVE, on != self.taking, on)
        self._register(self.receiver.fileno(), select.EPOLLIN, adopt != self.adopting, adopt)
        self.taking, self.adopting = on, adopt

    def _register(self, fd, flags, change, on):
        if change and on:
            self.poller.register(fd, flags)
        elif change:
            self.poller.unregister(fd)

    def _balance(self, now):
        """Accept while under this thread's cap and fair share, and while fds last; adopt likewise.

        Decided again when the number of connections held changes, and every
        PAUSED_POLL while not accepting; the scoreboard is read only then.
        """
        held = len(self.connections)
        if held == self.balanced_for and now < self.recheck_at:
            return
        self.balanced_for, self.recheck_at = held, now + PAUSED_POLL
        if held >= self.cap:
            if not self.said_full:
                self.said_full = True
                log.warning("worker %s holds %s connections (--max-connections %s): it accepts no more "
                            "until some close; new ones wait for other workers", self.process.worker.slot,
                            held, self.setup.config.max_connections)
            want = False
        elif now < self.fd_pause_until:
            want = False
        elif held < FREE_CONNECTIONS:
            want = True
        else:
            want = held <= fair_share(*self.setup.board.connection_load())
        if held < self.cap * 0.9:
            self.said_full = False
        self._take(want)

    def _accept(self, index, server):
        """Take one connection from server's queue; False when the queue was empty (or fds ran out)."""
        try:
            sock, client_address = server.get_request()
        except OSError as exc:
            if exc.errno in _ACCEPT_AGAIN or isinstance(exc, TimeoutError):
                return False
            if exc.errno in _OUT_OF_FDS:
                log.warning("cannot accept on %s: %s; holding %s connections, accepting again in %.1f s",
                            server.server_address, exc.strerror, len(self.connections), FD_PAUSE)
                self.fd_pause_until = time.monotonic() + FD_PAUSE
                self.balanced_for = -1
                self._take(False)
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
        connection = self._open(sock, index, server, client_address, b"", None)
        if connection is not None:
            self._readable(connection)        # its first request is often here already: no epoll round
        return True

    def _adopt(self):
        """A connection handed over by a retiring worker: park it as if we had accepted it."""
        moved = handoff_process.receive(self.receiver)
        if moved is None:
            return
        sock, index, client_address, received, state = moved
        if not 0 <= index < len(self.servers) or not parks(self.servers[index]):
            log.warning("dropped a connection handed over for listener %s, which does not park here", index)
            sock.close()
            return
        connection = self._open(sock, index, self.servers[index], client_address, received, state)
        if connection is not None and connection.handler.request_ready():
            self.ready.append(connection)

    def _open(self, sock, index, server, client_address, received, state):
        try:
            handler = server.RequestHandlerClass.park(sock, client_address, server, received)
            if state is not None:
                handler.resume(state)
        except Exception:
            server.handle_error(sock, client_address)
            server.shutdown_request(sock)
            return None
        connection = Connection(sock, server, index, handler)
        self.connections[connection.fd] = connection
        self._park(connection.fd, partial=bool(received))
        self.poller.register(connection.fd, select.EPOLLIN)
        self.record.set_connections(len(self.connections))
        return connection

    # -- serving -----------------------------------------------------------

    def _readable(self, connection):
        if self.process.exhausted:           # at the request cap: what arrived moves with the connection
            return
        handler = connection.handler
        reader = handler.rfile
        try:
            received = reader.fill()
        except OSError:                      # reset while parked
            self._close(connection)
            return
        if handler.request_ready():
            self._serve(connection)
        elif reader.eof:                     # the client left with no request, or half of one
            self._close(connection)
        elif len(reader.pending) > getattr(handler, "max_pending", MAX_PENDING):
            log.debug("closing connection from %s: %s bytes and no whole request", handler.client_address,
                      len(reader.pending))
            self._close(connection)
        elif received:
            self._park(connection.fd, partial=True)

    def _serve_pipelined(self):
        if self.process.exhausted:
            return
        for _ in range(len(self.ready)):
            connection = self.ready.popleft()
            if not connection.closed:
                self._serve(connection)

    def _serve(self, connection):
        """One request: counted against --max-requests, the thread busy on the scoreboard meanwhile."""
        handler, server = connection.handler, connection.server
        request = self.request
        request.accepted()
        request.record.begin_request(time.monotonic())
        try:
            keep = handler.handle_request()
        except Exception:
            server.handle_error(connection.sock, handler.client_address)
            keep = False
        except BaseException:                # a quick stop, or sys.exit() in the handler
            request.abandon()
            raise
        request.done()
        if not keep or connection.closed:
            self._close(connection)
        elif handler.request_ready():
            self.ready.append(connection)
            self._park(connection.fd, partial=False)
        elif handler.rfile.eof:
            self._close(connection)
        else:
            self._park(connection.fd, partial=bool(handler.rfile.pending))

    def _park(self, fd, partial):
        """Note when a connection began waiting: for its next request (idle), or for the rest of one."""
        if partial:
            self.idle.pop(fd, None)
            self.partial.setdefault(fd, time.monotonic())
        else:
            self.partial.pop(fd, None)
            self.idle[fd] = time.monotonic()
            self.idle.move_to_end(fd)

    def _close_idle(self, now):
        """Close connections parked with nothing to do for the keep-alive timeout, and those whose
        request has not all arrived within the client timeout of its first bytes; oldest first."""
        for waiting, limit, what in ((self.idle, self.keepalive, "idle"),
                                     (self.partial, self.client_timeout, "part of a request pending")):
            while limit and waiting:
                fd, since = next(iter(waiting.items()))
                if now - since < limit:
                    break
                connection = self.connections[fd]
                log.debug("closing connection from %s: %s for %.1f s", connection.handler.client_address,
                          what, now - since)
                self._close(connection)

    def _close(self, connection, handed_over=False):
        if connection.closed:
            return
        connection.closed = True
        fd = connection.fd
        try:
            self.poller.unregister(fd)
        except OSError:                        # the handler closed its socket itself
            pass
        del self.connections[fd]
        self.idle.pop(fd, None)
        self.partial.pop(fd, None)
        self.record.set_connections(len(self.connections))
        try:
            connection.handler.finish()
        except Exception:
            connection.server.handle_error(connection.sock, connection.handler.client_address)
        if handed_over:
            connection.sock.close()                # the other worker's copy lives on: no shutdown()
        else:
            connection.server.shutdown_request(connection.sock)

    # -- leaving -----------------------------------------------------------

    def _leave(self):
        """Stopped accepting: serve what has arrived; then hand the rest over, or close it."""
        self._take(False)
        self.poller.unregister(self.process.stop_r)        # written once, readable for ever
        process = self.process
        moving = process.exhausted or bool(process.header.get(scoreboard.ALONE))
        if process.stopping and not moving:
            self._accept_queued()
        if not process.exhausted:
            self._serve_arrived()
        if moving:
            self._hand_over()
        else:
            self._linger(time.monotonic() + min(STOP_LINGER, self.setup.config.graceful_timeout))

    def _accept_queued(self):
        """A stop of the whole pool: take the connections already queued, to serve their first request."""
        for index, server in self.listeners.values():
            while len(self.connections) < self.cap and self._accept(index, server):
                pass

    def _serve_arrived(self):
        """Serve every request that has arrived (read or still in the kernel), until none is left."""
        while True:
            ready = [c for c in (self.connections.get(fd) for fd, _ in self.poller.poll(0)) if c is not None]
            if not ready and not self.ready:
                return
            for connection in ready:
                self._readable(connection)
            self._serve_pipelined()

    def _linger(self, until):
        """A stop: serve requests that arrive for a moment before closing the rest.

        A keep-alive client sends its next request right after the last reply;
        closing its connection at that instant would fail that request. A
        request that arrives now is served as the last (an HTTP handler says
        Connection: close: the server is stopping); a connection quiet for the
        whole moment is closed.
        """
        while self.connections and (now := time.monotonic()) < until:
            for fd, _ in self.poller.poll(min(0.05, until - now)):
                connection = self.connections.get(fd)
                if connection is not None:
                    self._readable(connection)
            self._serve_pipelined()

    def _hand_over(self):
        movable = [c for c in self.connections.values() if getattr(c.handler, "movable", False)]
        moved = 0
        for connection in movable:
            handler = connection.handler
            try:
                state = handler.parked_state()
            except Exception:
                connection.server.handle_error(connection.sock, handler.client_address)
                continue
            if handoff_process.send(self.sender, connection.sock, connection.index, handler.client_address,
                                    handler.rfile.pending, state):
                self._close(connection, handed_over=True)
                moved += 1
        if moved or self.connections:
            kept = f"; closing {len(self.connections)} that cannot move" if self.connections else ""
            log.info("worker %s handed %s connection(s) over to other workers%s", self.process.worker.slot,
                     moved, kept)
