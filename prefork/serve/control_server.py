"""Runs in the master of `prefork serve`: the control socket `prefork ctl` talks to.

The protocol is one JSON object per line, each way: a request such as
{"command": "scale", "size": "+1"}, then a reply {"ok": true, "result": ...}
or {"ok": false, "error": "..."}, then the master closes the connection.
The commands are commands.COMMANDS, the same objects signals and the API use;
each declares the keys its request may carry and their JSON types ("quick":
a boolean, "size": text or a whole number). An unknown key, a key given
twice or a value of the wrong type is refused with an error naming the key,
and nothing is done.

Who may talk to it: the socket file is created with mode 0600 from the first
instant (a umask around bind(), never a chmod after, which would leave a
moment when anyone could connect), and the master checks every peer's
credentials (SO_PEERCRED): only root and the master's own user are served.

The master's loop is single-threaded, so a client must never block it: every
connection is non-blocking, read and written from the loop's selector, with
a request size limit and a deadline.
"""

import json
import logging
import os
import selectors
import socket
import struct
import time

from prefork import commands
from prefork.errors import BindError, ConfigError, PreforkError
from prefork.listeners import UnixPathOwner, remove_stale_unix_socket
from prefork.pool.service import Service

log = logging.getLogger("prefork")

MAX_REQUEST = 64 * 1024      # bytes: a request line longer than this is refused
CLIENT_DEADLINE = 5.0        # seconds a client has to send its request
_UCRED = struct.Struct("3i")     # pid, uid, gid


def open_control_socket(path):
    """Bind and listen on path with mode 0600 from the start; BindError if it cannot."""
    remove_stale_unix_socket(path, socket.SOCK_STREAM, f"cannot open the control socket {path}",
                             in_use="another master (or process) listens on it")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
        sock.listen(16)
    except OSError as exc:
        sock.close()
        raise BindError(f"cannot open the control socket {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(old_umask)
    sock.setblocking(False)
    return sock


class ControlServer(Service):
    """A master service (see Master.services): accepts control connections and answers them."""

    def __init__(self, sock, owned=True, active=True):
        self.sock = sock
        self.path = sock.getsockname()
        self.owner = UnixPathOwner(self.path) if owned else None
        self.active = active             # False while the other master of an upgrade answers instead
        self._clients = {}               # socket -> _Client
        self._selector = None

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
            self._accept()
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
            if not in_child and client.outbox:      # a reply not sent yet ("stop" of an empty pool): send it
                try:
                    client.sock.settimeout(1.0)
                    client.sock.sendall(client.outbox)
                except OSError:
                    pass
            self._drop(client, unregister=not in_child)
        self.sock.close()
        if not in_child and self.owner is not None:
            self.owner.remove()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:           # EMFILE and the like: try again on the next event
                log.warning("control socket: cannot accept: %s", exc.strerror)
                return
            conn.setblocking(False)
            client = _Client(conn)
            if not client.allowed():
                # Answered once its request has arrived: closing on unread bytes, or before the client
                # has sent them, would reach it as a reset or a broken pipe instead of this reason.
                client.refusal = {"ok": False, "error": "permission denied: only root and the master's "
                                                        "user may control it"}
                log.warning("control socket: refused a client of uid %s", client.uid)
            self._clients[conn] = client
            self._selector.register(conn, selectors.EVENT_WRITE if client.outbox else selectors.EVENT_READ, self)

    def _drop(self, client, unregister=True):
        self._clients.pop(client.sock, None)
        if unregister:
            try:
                self._selector.unregister(client.sock)
            except (KeyError, ValueError):
                pass
        client.sock.close()


class _Client:
    """One control connection: read one request line, run it, write the reply, close."""

    def __init__(self, sock):
        self.sock = sock
        self.inbox = b""
        self.outbox = b""
        self.replied = False
        self.refusal = None            # the reply to whatever it asks, for a peer not allowed
        self.deadline = time.monotonic() + CLIENT_DEADLINE
        pid, self.uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))

    def allowed(self):
        return self.uid in (0, os.geteuid())

    def reply_and_close(self, reply):
        self.outbox = json.dumps(reply, default=str).encode() + b"\n"
        self.replied = True

    def on_event(self, mask, master):
        """Handle readiness; True when the connection is done."""
        try:
            if mask & selectors.EVENT_READ and not self.replied:
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.inbox += data
                if b"\n" in self.inbox:
                    self.reply_and_close(self.refusal or self._answer(self.inbox.split(b"\n", 1)[0], master))
                elif len(self.inbox) > MAX_REQUEST:
                    self.reply_and_close(self.refusal or {"ok": False, "error": f"request over {MAX_REQUEST} bytes"})
            if mask & selectors.EVENT_WRITE and self.outbox:
                sent = self.sock.send(self.outbox)
                self.outbox = self.outbox[sent:]
                return not self.outbox
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        return False

    def _answer(self, line, master):
        """The reply to one request line. Nothing a client sends, and nothing a command meets, may
        take the master down: what was not foreseen is logged with its traceback and refused."""
        try:
            request = json.loads(line, object_pairs_hook=_without_repeated_keys)
            command = commands.from_request(request, origin="prefork ctl")
        except PreforkError as exc:
            return {"ok": False, "error": str(exc)}
        except (ValueError, RecursionError) as exc:
            return {"ok": False, "error": f"not a JSON request object: {str(exc)[:200]}"}
        try:
            return {"ok": True, "result": command.run(master)}
        except PreforkError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:
            log.exception("control socket: %s failed", command.name)
            return {"ok": False, "error": f"{command.name} failed: {type(exc).__name__}: {exc}"}


def _without_repeated_keys(pairs):
    """A JSON object as a dict, refusing a key given twice (json.loads would quietly keep the last)."""
    found = {}
    for key, value in pairs:
        if key in found:
            raise ConfigError(f"the key {json.dumps(key)} is given twice")
        found[key] = value
    return found
