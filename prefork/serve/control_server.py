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
import socket
import struct

from prefork import commands
from prefork.errors import BindError, ConfigError, PreforkError
from prefork.listeners import remove_stale_unix_socket
from prefork.serve.answering import AnsweringService, Exchange

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


class ControlServer(AnsweringService):
    """A master service (see Master.services): accepts control connections and answers them."""

    name = "control socket"

    def __init__(self, sock, owned=True, active=True):
        super().__init__(sock, owned, active)
        self.path = sock.getsockname()

    def client(self, conn):
        client = _Client(conn)
        if not client.allowed():
            # Answered once its request has arrived: closing on unread bytes, or before the client
            # has sent them, would reach it as a reset or a broken pipe instead of this reason.
            client.refusal = {"ok": False, "error": "permission denied: only root and the master's "
                                                    "user may control it"}
            log.warning("control socket: refused a client of uid %s", client.uid)
        return client

    def close(self, in_child=False):
        if not in_child:
            for client in list(self._clients.values()):
                if client.outbox:                # a reply not sent yet ("stop" of an empty pool): send it
                    try:
                        client.sock.settimeout(1.0)
                        client.sock.sendall(client.outbox)
                    except OSError:
                        pass
        super().close(in_child)


class _Client(Exchange):
    """One control connection: read one request line, run it, write the reply, close."""

    limit = MAX_REQUEST

    def __init__(self, sock):
        super().__init__(sock, CLIENT_DEADLINE)
        self.refusal = None            # the reply to whatever it asks, for a peer not allowed
        pid, self.uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))

    def allowed(self):
        return self.uid in (0, os.geteuid())

    def request_end(self, inbox):
        return inbox.find(b"\n")

    def reply(self, request, master):
        return _line(self.refusal or self._answer(request, master))

    def too_large(self):
        return _line(self.refusal or {"ok": False, "error": f"request over {MAX_REQUEST} bytes"})

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


def _line(reply):
    return json.dumps(reply, default=str).encode() + b"\n"


def _without_repeated_keys(pairs):
    """A JSON object as a dict, refusing a key given twice (json.loads would quietly keep the last)."""
    found = {}
    for key, value in pairs:
        if key in found:
            raise ConfigError(f"the key {json.dumps(key)} is given twice")
        found[key] = value
    return found
