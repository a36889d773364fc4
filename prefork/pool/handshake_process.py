"""Runs in each worker: the TLS handshakes of a parking loop's new connections, without blocking it.

A blocking handshake would hold every connection parked in the worker for a
client's round trip, or for the whole client timeout if the client stalls on
purpose. Here a connection is wrapped non-blocking and its handshake is
advanced each time epoll says the socket is ready for it; once done, the
loop parks it as any other connection. One still unfinished after the
client timeout is closed, as a request that never arrives whole is.
"""

import logging
import select
import ssl

log = logging.getLogger("prefork")


class Handshake:
    """A connection whose TLS handshake is under way (or, returned by Handshakes, done)."""

    __slots__ = ("sock", "index", "server", "client_address", "since", "events")

    def __init__(self, sock, index, server, client_address, since):
        self.sock, self.index, self.server, self.client_address = sock, index, server, client_address
        self.since = since
        self.events = 0                     # what the poller waits for on it; 0: not registered yet


class Handshakes:
    """One parking loop's handshakes under way, by fd, in that loop's poller."""

    def __init__(self):
        self.poller = None
        self.pending = {}                   # fd -> Handshake

    def __len__(self):
        return len(self.pending)

    def begin(self, sock, index, server, client_address, now):
        """Wrap an accepted socket in server.tls and start; the Handshake if it is done already, else None."""
        try:
            sock.settimeout(0.0)
            wrapped = server.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError) as exc:
            log.debug("closed a connection from %s: %s", client_address, exc)
            server.shutdown_request(sock)
            return None
        return self._advance(Handshake(wrapped, index, server, client_address, now))

    def step(self, fd):
        """The socket is ready: the Handshake if it is done now, else None."""
        return self._advance(self.pending[fd])

    def _advance(self, shake):
        try:
            shake.sock.do_handshake()
        except ssl.SSLWantReadError:
            return self._wait(shake, select.EPOLLIN)
        except ssl.SSLWantWriteError:
            return self._wait(shake, select.EPOLLOUT)
        except (OSError, ValueError) as exc:      # a client speaking plain text to a TLS port, a reset, ...
            self._close(shake, f"TLS handshake failed: {exc}")
            return None
        self._forget(shake)
        return shake

    def _wait(self, shake, events):
        fd = shake.sock.fileno()
        if not shake.events:
            self.poller.register(fd, events)
            self.pending[fd] = shake
        elif shake.events != events:
            self.poller.modify(fd, events)
        shake.events = events
        return None

    def expire(self, now, limit):
        """Close the handshakes begun limit seconds ago or more (the client timeout; 0: never)."""
        if limit:
            for shake in [s for s in self.pending.values() if now - s.since >= limit]:
                self._close(shake, f"no TLS handshake within {limit:g} s")

    def close_all(self):
        for shake in list(self.pending.values()):
            self._close(shake, "the worker is leaving")

    def _forget(self, shake):
        if shake.events:
            fd = shake.sock.fileno()
            self.poller.unregister(fd)
            del self.pending[fd]
            shake.events = 0

    def _close(self, shake, why):
        log.debug("closed a connection from %s: %s", shake.client_address, why)
        self._forget(shake)
        shake.server.shutdown_request(shake.sock)
