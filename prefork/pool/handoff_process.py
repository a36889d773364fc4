"""Runs in each worker: parked connections moved between workers over a Unix socket (SCM_RIGHTS).

One SOCK_SEQPACKET socket pair per pool, made by the master before the
first fork, so every worker (and every zygote's worker) holds both ends. A
retiring worker sends its idle parked connections in batches of up to
BATCH: their descriptors as SCM_RIGHTS, and what the new worker needs to go
on with each (the listener it came from, the client's address, the bytes
received and not yet read, the handler's parked_state()). Unread bytes
still in the kernel move with the socket itself. A live worker receives a
batch and parks each connection as if it had accepted it.
docs/design.md, "Handing connections over".

The kernel holds only so many messages on such a socket (its send buffer,
about 200 KB: a few hundred messages), hence batches, and a sender that
finds it full waits for the receivers, up to a deadline. Failing safe: what
cannot be sent by then stays with the sender, which closes it as a stop
would; a message that cannot be read is dropped with its descriptors closed.
"""

import array
import logging
import os
import pickle
import select
import socket
import time
from typing import NamedTuple

log = logging.getLogger("prefork")

BATCH = 32                   # connections per message (the kernel takes up to 253 descriptors in one)
BATCH_BYTES = 64 * 1024      # a message must fit the socket's send buffer (about 200 KB)
MAX_MESSAGE = 256 * 1024     # recvmsg's buffer: no message fits a send buffer larger than this


def channel():
    """The pool's hand-off channel: (the end workers receive on, the end they send on)."""
    receiver, sender = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for end in (receiver, sender):
        end.setblocking(False)
    return receiver, sender


class Moving:
    """One connection on its way: its socket and what the next worker needs to go on with it.

    The handler's state is pickled here, so that a state that cannot be
    pickled fails for its own connection (which then stays), not for a batch.
    """

    __slots__ = ("sock", "about")

    def __init__(self, sock, server_index, client_address, received, state):
        self.sock = sock
        self.about = pickle.dumps((server_index, client_address, bytes(received), pickle.dumps(state)))


def adopter_appears(board, index, deadline, interval=0.005):
    """Whether a worker other than index will take connections over, waiting for one until deadline.

    The master forks a successor as soon as a worker reaches its request cap:
    when every worker reaches it at once, their successors are a fork away,
    and waiting for them keeps recycling exact (no request served past the cap).
    """
    while not board.adopters(index):
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def hand_over(sender, connections, deadline):
    """Send parked connections (the loop's, with .sock, .index and .handler); the list of those that left.

    One whose handler's parked_state() raises or cannot be pickled stays, with its traceback logged.
    """
    moving = {}
    for connection in connections:
        handler = connection.handler
        try:
            moving[Moving(connection.sock, connection.index, handler.client_address, handler.rfile.pending,
                          handler.parked_state())] = connection
        except Exception:
            connection.server.handle_error(connection.sock, handler.client_address)
    sent = send(sender, list(moving), deadline)
    return [connection for item, connection in moving.items() if item in sent]


def send(sender, moving, deadline):
    """Send connections in batches (at most BATCH, at most BATCH_BYTES but one), waiting for room until
    deadline (monotonic). Returns the set of those that left; the caller still owns the others.

    A batch the kernel refuses (too large, too many descriptors in flight) is skipped, not the rest.
    """
    sent, start = set(), 0
    while start < len(moving):
        end, size = start + 1, len(moving[start].about)
        while end < len(moving) and end - start < BATCH and size + len(moving[end].about) <= BATCH_BYTES:
            size += len(moving[end].about)
            end += 1
        batch = moving[start:end]
        payload = pickle.dumps([m.about for m in batch])
        fds = array.array("i", [m.sock.fileno() for m in batch])
        try:
            sender.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)], socket.MSG_DONTWAIT)
        except BlockingIOError:
            if _wait_writable(sender, deadline):
                continue
            break
        except OSError as exc:      # EMSGSIZE, ETOOMANYREFS, ENOBUFS: these stay with us
            log.warning("cannot hand %s connection(s) over: %s", len(batch), exc)
        else:
            sent.update(batch)
        start = end
    return sent


def _wait_writable(sock, deadline):
    left = deadline - time.monotonic()
    if left <= 0:
        return False
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    return bool(poller.poll(left * 1000))


class Arrived(NamedTuple):
    """A connection received from another worker."""

    sock: socket.socket
    server_index: int
    client_address: object
    received: bytes
    state: object


def receive(receiver):
    """One batch sent by send(): a list of Arrived (empty when another worker took the message)."""
    try:
        payload, ancillary, flags, _ = receiver.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(4 * BATCH),
                                                        socket.MSG_CMSG_CLOEXEC)
    except (BlockingIOError, InterruptedError):
        return []
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    try:
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            raise ValueError(f"truncated (flags {flags:#x})")
        described = [pickle.loads(about) for about in pickle.loads(payload)]
        if len(described) != len(fds):
            raise ValueError(f"{len(fds)} descriptor(s) for {len(described)} connection(s)")
        return [Arrived(socket.socket(fileno=fd), index, address, received, pickle.loads(state))
                for fd, (index, address, received, state) in zip(fds, described)]
    except Exception as exc:
        log.warning("dropped %s connection(s) handed over in a malformed message: %s", len(fds), exc)
        for fd in fds:
            os.close(fd)
        return []
