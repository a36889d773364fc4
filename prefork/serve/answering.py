"""Runs in the master of `prefork serve`: what the control and metrics sockets share, a listening
socket answered from the master's loop.

The master's loop is single-threaded, so a client must never block it:
every connection is non-blocking, read and written from the loop's
selector, and dropped at its deadline. An upgrade's new master gets the
socket passed on (serve/upgrade.py): it answers only once its pool serves
(pause and resume), and the socket file is left to it.
"""

import logging
import selectors
import socket
import time

from prefork.listeners import UnixPathOwner
from prefork.pool.service import Service

log = logging.getLogger("prefork")

ACCEPT_BATCH = 64            # connections accepted per pass of the master's loop, at most


class AnsweringService(Service):
    """A master service that accepts connections on sock and lets a client object per connection
    answer (see Master.services). A subclass defines client(conn) -> an object with sock, deadline,
    outbox (bytes still to send) and on_event(mask, master) -> True when it is done."""

    name = "a service"         # for log lines
    max_clients = None         # connections at once; past it, the longest waiting is dropped

    def __init__(self, sock, owned=True, active=True):
        self.sock = sock
        address = sock.getsockname()
        self.owner = UnixPathOwner(address) if owned and sock.family == socket.AF_UNIX and address else None
        self.active = active             # False while the other master of an upgrade answers instead
        self._clients = {}               # socket -> client
        self._selector = None

    def client(self, conn):
        raise NotImplementedError

    def start(self, selector):
        self._selector = selector
        if self.active:
            selector.register(self.sock, selectors.EVENT_READ, self)

    def pause(self):
        """Stop answering (an upgraded master has taken over); the socket stays open for a roll-back."""
        if self.active:
            self._selector.unregister(self.sock)
            self.active = False

    def resume(self):
        if not self.active:
            self._selector.register(self.sock, selectors.EVENT_READ, self)
            self.active = True

    def on_event(self, master, fileobj, mask):
        if fileobj is self.sock:
            self._accept(master)
            return
        client = self._clients.get(fileobj)
        if client is None:
            return
        if client.on_event(mask, master):
            self._drop(client)
        elif client.outbox:
            self._selector.modify(client.sock, selectors.EVENT_WRITE, self)

    def on_pass(self, master, now):
        """Drop clients past their deadline; the next deadline."""
        for client in list(self._clients.values()):
            if now > client.deadline:
                self._drop(client)
        return min((c.deadline for c in self._clients.values()), default=None)

    def close(self, in_child=False):
        for client in list(self._clients.values()):
            self._drop(client, unregister=not in_child)
        self.sock.close()
        if not in_child and self.owner is not None:
            self.owner.remove()

    def _accept(self, master):
        for _ in range(ACCEPT_BATCH):        # then the loop's other work: clients cannot hold it here
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:           # EMFILE and the like: try again on the next event
                log.warning("%s: cannot accept: %s", self.name, exc.strerror)
                return
            if self.max_clients is not None and len(self._clients) >= self.max_clients:
                # Full: the client that has waited longest goes, not the new one (a liveness probe).
                self._drop(min(self._clients.values(), key=lambda client: client.deadline))
            conn.setblocking(False)
            client = self.client(conn)
            self._clients[conn] = client
            self._selector.register(conn, selectors.EVENT_READ, self)
            # Its request has often arrived with it: answering now saves the loop a pass per client.
            self.on_event(master, conn, selectors.EVENT_READ)

    def _drop(self, client, unregister=True):
        self._clients.pop(client.sock, None)
        if unregister:
            try:
                self._selector.unregister(client.sock)
            except (KeyError, ValueError):
                pass
        client.sock.close()


class Exchange:
    """One connection of an AnsweringService: read one request, send the reply, close.

    A subclass defines request_end(inbox) (where the request ends, or -1 while it has not all
    arrived), reply(request, master) and too_large() (both bytes), and sets limit (bytes)."""

    limit = 64 * 1024

    def __init__(self, sock, seconds):
        self.sock = sock
        self.inbox = b""
        self.outbox = b""
        self.replied = False
        self.deadline = time.monotonic() + seconds

    def on_event(self, mask, master):
        """Handle readiness; True when the exchange is over."""
        try:
            if mask & selectors.EVENT_READ and not self.replied:
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.inbox += data
                end = self.request_end(self.inbox)
                if end >= 0:
                    self.outbox, self.replied = self.reply(self.inbox[:end], master), True
                elif len(self.inbox) > self.limit:
                    self.outbox, self.replied = self.too_large(), True
            if self.outbox:
                sent = self.sock.send(self.outbox)
                self.outbox = self.outbox[sent:]
                return not self.outbox
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        return False

    def request_end(self, inbox):
        raise NotImplementedError

    def reply(self, request, master):
        raise NotImplementedError

    def too_large(self):
        raise NotImplementedError
