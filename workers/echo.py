"""Echo: lines back on stream sockets, datagrams back on datagram sockets.

One handler class for every socket kind, so `prefork serve` can bind TCP,
Unix, UDP and Unix-datagram addresses at once with the same handler.

It follows prefork's protocol for long-lived handlers: while a connection is
quiet it calls self.server.heartbeat() every second, so the master does not
take a quiet client for a hung worker. Once self.server.stopping says a
graceful stop began, it still answers every line that has arrived, and
closes the connection when no more is waiting: the first read of a
connection waits for its first line (it may be on its way), later ones only
take what is there. It also closes once the client has been quiet for the
pool's client timeout (which arrives as the socket's timeout). The quiet
second is the kernel's SO_RCVTIMEO, which costs nothing per recv()
(settimeout() would add a poll() to each).
"""

import socket
import struct

import prefork

_ONE_SECOND = struct.pack("ll", 1, 0)


class EchoHandler(prefork.BaseRequestHandler):
    def handle(self):
        if isinstance(self.request, tuple):        # datagram servers hand us (data, socket)
            data, sock = self.request
            if self.client_address:                # an unbound Unix client cannot be answered
                sock.sendto(data, self.client_address)
            return
        sock, pending, server = self.request, b"", self.server
        heartbeat = getattr(server, "heartbeat", _nothing)     # also runs on socketserver's servers
        client_timeout = sock.gettimeout()                    # the pool's, or None: no limit
        if client_timeout is not None:
            sock.setblocking(True)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _ONE_SECOND)
        quiet, waited = 0, False
        while True:
            # Stopping: take only what has arrived, after the first read.
            flags = socket.MSG_DONTWAIT if waited and getattr(server, "stopping", False) else 0
            try:
                data = sock.recv(65536, flags)
            except BlockingIOError:                # a quiet second, or nothing waiting while stopping
                if getattr(server, "stopping", False):
                    break
                quiet += 1
                if client_timeout is not None and quiet >= client_timeout:
                    break
                heartbeat()
                continue
            waited = True
            if not data:
                break
            quiet = 0
            pending += data
            end = pending.rfind(b"\n") + 1
            if end:
                sock.sendall(pending[:end])
                pending = pending[end:]
        if pending:
            sock.sendall(pending)                  # a last line without its newline


def _nothing():
    pass
