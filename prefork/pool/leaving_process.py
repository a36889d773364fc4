"""Runs in each worker: how a parking loop leaves, once its worker stops accepting.

Serve what has arrived; then a worker retiring while the pool goes on hands
its idle connections to live workers (handoff_process.py), and a stop (or
what could not move) lingers a moment, serving the requests that come, then
closes the rest. A mixin of parking_process.ParkingLoop, whose state it uses.
"""

import logging
import time

from prefork.handling import handle_one
from prefork.pool import handoff_process, scoreboard

log = logging.getLogger("prefork")

STOP_LINGER = 1.0            # seconds a stopping worker still serves parked connections before closing them
HANDOFF_WAIT = 5.0           # seconds a retiring worker waits for room on a full hand-off channel


class Leaving:
    """ParkingLoop's leaving: _leave() runs once its loop ends."""

    def _leave(self):
        """Stopped accepting: serve what has arrived; then hand the rest over, or close it."""
        process = self.process
        self.intake.take(False)
        self.poller.unregister(process.stop_r)             # written once, readable for ever
        for fd in (*self.others, *([process.notice_r] if self.setup.threads == 1 else [])):
            self.poller.unregister(fd)                     # level-triggered: would spin the loops below
        moving = process.exhausted or bool(process.header.get(scoreboard.ALONE))
        if process.stopping and not moving:
            self._accept_queued()
        self._serve_arrived()
        if moving:
            self._hand_over()
        if self.connections or self.handshakes:            # a stop, or what could not move
            self.past_cap = True                           # served past --max-requests, rather than dropped
            for server in self.servers:
                server.stopping = True                     # HTTP handlers answer with Connection: close
            self._linger(time.monotonic() + min(STOP_LINGER, self.setup.config.graceful_timeout))

    def _accept_queued(self):
        """A stop of the whole pool: take the connections (and datagrams) already queued, to serve them."""
        for index, server in self.listeners.values():
            while len(self.connections) + len(self.handshakes) < self.cap and self._accept(index, server):
                pass
        for server in self.others.values():
            while not self.process.exhausted and handle_one(server, self.request):
                pass

    def _serve_arrived(self):
        """Serve the requests that have arrived as leaving begins: one round, what is buffered and what
        the kernel holds. Later ones wait for the new owner (their bytes move with the socket) or the linger."""
        for fd, _ in self.poller.poll(0):
            self._ready(fd)
        self.now = time.monotonic()
        self._serve_pipelined()

    def _linger(self, until):
        """A stop: serve requests that arrive for a moment before closing the rest. A keep-alive client
        sends its next request right after the last reply: closing at that instant would fail it. It is
        served as the last (an HTTP handler says Connection: close); a quiet connection is closed."""
        while (self.connections or self.handshakes) and self._may_serve() and (now := time.monotonic()) < until:
            events = self.poller.poll(0 if self.ready else min(0.05, until - now))
            self.now = time.monotonic()
            for fd, _ in events:
                self._ready(fd)
            self._serve_pipelined()

    def _ready(self, fd):
        connection = self.connections.get(fd)
        if connection is not None:
            self._readable(connection)
        elif fd in self.handshakes.pending:
            self._handshaken(self.handshakes.step(fd))

    def _hand_over(self):
        """Send every idle connection whose handler is movable to the live workers, if there is one."""
        slot = self.process.worker.slot
        deadline = time.monotonic() + min(HANDOFF_WAIT, self.setup.config.graceful_timeout / 2)
        if not handoff_process.adopter_appears(self.setup.board, self.process.worker.index, deadline):
            log.warning("worker %s: no other worker takes connections over; serving what arrives on its "
                        "%s connection(s) for a moment, then closing them", slot, len(self.connections))
            return                                         # _leave lingers, serving past --max-requests
        # A TLS connection's session lives in this process's OpenSSL: it cannot move.
        movable = [c for c in self.connections.values() if getattr(c.handler, "movable", False) and not c.tls]
        sent = handoff_process.hand_over(self.sender, movable, deadline)
        for connection in sent:
            self._close(connection, handed_over=True)
        if sent:
            log.info("worker %s handed %s connection(s) over to other workers", slot, len(sent))
        if len(sent) < len(movable):
            log.warning("worker %s could not hand %s connection(s) over (the channel stayed full for %.1f s, "
                        "or they were too large): closing them", slot, len(movable) - len(sent), HANDOFF_WAIT)
