"""Runs in each worker: parked connections moved between workers over a Unix socket (SCM_RIGHTS).

One SOCK_SEQPACKET socket pair per pool, made by the master before the
first fork, so every worker (and every zygote's worker) holds both ends. A
retiring worker sends each idle parked connection as one message: the
socket's descriptor as SCM_RIGHTS, and what the new worker needs to go on
(the listener it came from, the client's address, the bytes received and
not yet read, the handler's parked_state()). Unread bytes still in the
kernel move with the socket itself. A live worker receives it and parks it
as if it had accepted it. docs/design.md, "Handing connections over".

Failing safe: a message that cannot be sent (the channel is full, the
kernel refuses) leaves the connection with the sender, which closes it as a
stop would; a message that cannot be read is dropped with its descriptors
closed. Nothing here blocks.
"""

import array
import logging
import os
import pickle
import socket

log = logging.getLogger("prefork")

MAX_MESSAGE = 256 * 1024


def channel():
    """The pool's hand-off channel: (the end workers receive on, the end they send on)."""
    receiver, sender = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for end in (receiver, sender):
        end.setblocking(False)
    return receiver, sender


def send(sender, sock, server_index, client_address, received, state):
    """Send one connection; True if it left (our copy may then be closed), False if it stays with us."""
    payload = pickle.dumps((server_index, client_address, bytes(received), state))
    if len(payload) > MAX_MESSAGE:
        return False
    fds = array.array("i", [sock.fileno()])
    try:
        sender.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)], socket.MSG_DONTWAIT)
    except OSError as exc:          # EAGAIN (full), ETOOMANYREFS, ENOBUFS: it stays with us
        log.debug("cannot hand over a connection from %s: %s", client_address, exc)
        return False
    return True


def receive(receiver):
    """One connection sent by send(): (sock, server_index, client_address, received, state), or None."""
    try:
        payload, ancillary, flags, _ = receiver.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(4), socket.MSG_CMSG_CLOEXEC)
    except (BlockingIOError, InterruptedError):
        return None                 # another worker took it
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    try:
        if len(fds) != 1 or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            raise ValueError(f"{len(fds)} descriptor(s), flags {flags:#x}")
        server_index, client_address, received, state = pickle.loads(payload)
        sock = socket.socket(fileno=fds[0])
    except Exception as exc:
        log.warning("dropped a connection handed over in a malformed message: %s", exc)
        for fd in fds:
            os.close(fd)
        return None
    return sock, server_index, client_address, received, state
