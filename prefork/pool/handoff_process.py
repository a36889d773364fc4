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

The kernel queues few messages on such a socket (net.unix.max_dgram_qlen,
10 by default), hence batches, and a sender that finds the queue full waits
for the receivers, up to a deadline. Failing safe: what cannot be sent by
then stays with the sender, which closes it as a stop would; a message that
cannot be read is dropped with its descriptors closed.
"""

import array
import logging
import os
import pickle
import select
import socket
import time

log = logging.getLogger("prefork")

BATCH = 32                   # connections per message (the kernel takes up to 253 descriptors in one)
MAX_MESSAGE = 4 * 1024 * 1024


def channel():
    """The pool's hand-off channel: (the end workers receive on, the end they send on)."""
    receiver, sender = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for end in (receiver, sender):
        end.setblocking(False)
    return receiver, sender


class Moving:
    """One connection on its way: its socket and what the next worker needs to go on with it."""

    __slots__ = ("sock", "server_index", "client_address", "received", "state")

    def __init__(self, sock, server_index, client_address, received, state):
        self.sock, self.server_index, self.client_address = sock, server_index, client_address
        self.received, self.state = bytes(received), state


def send(sender, moving, deadline):
    """Send connections, BATCH per message, waiting for room until deadline (monotonic).

    Returns how many left (the first ones of the list); the caller still owns the rest.
    """
    sent = 0
    while sent < len(moving):
        batch = moving[sent:sent + BATCH]
        payload = pickle.dumps([(m.server_index, m.client_address, m.received, m.state) for m in batch])
        fds = array.array("i", [m.sock.fileno() for m in batch])
        try:
            sender.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)], socket.MSG_DONTWAIT)
        except BlockingIOError:
            if not _wait_writable(sender, deadline):
                break
            continue
        except OSError as exc:      # ETOOMANYREFS, ENOBUFS, EMSGSIZE: they stay with us
            log.warning("cannot hand %s connection(s) over: %s", len(moving) - sent, exc)
            break
        sent += len(batch)
    return sent


def _wait_writable(sock, deadline):
    left = deadline - time.monotonic()
    if left <= 0:
        return False
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    return bool(poller.poll(left * 1000))


def receive(receiver):
    """One batch sent by send(): a list of Moving (empty when another worker took the message)."""
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
        described = pickle.loads(payload)
        if len(described) != len(fds):
            raise ValueError(f"{len(fds)} descriptor(s) for {len(described)} connection(s)")
        return [Moving(socket.socket(fileno=fd), *about) for fd, about in zip(fds, described)]
    except Exception as exc:
        log.warning("dropped %s connection(s) handed over in a malformed message: %s", len(fds), exc)
        for fd in fds:
            os.close(fd)
        return []
