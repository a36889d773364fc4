"""Echo: lines back on stream sockets, datagrams back on datagram sockets.

One handler class for every socket kind, so `prefork serve` can bind TCP,
Unix, UDP and Unix-datagram addresses at once with the same handler.

It follows prefork's protocol for long-lived handlers: while a connection is
quiet it calls self.server.heartbeat() every second, so the master does not
take a quiet client for a hung worker, and it closes the connection between
lines once self.server.stopping says a graceful stop began.
"""

import prefork

QUIET_CHECK = 1.0      # seconds between heartbeats while the client says nothing


class EchoHandler(prefork.BaseRequestHandler):
    def handle(self):
        if isinstance(self.request, tuple):        # datagram servers hand us (data, socket)
            data, sock = self.request
            if self.client_address:                # an unbound Unix client cannot be answered
                sock.sendto(data, self.client_address)
            return
        sock, pending = self.request, b""
        sock.settimeout(QUIET_CHECK)
        while not self.server.stopping:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                self.server.heartbeat()
                continue
            if not data:
                break
            pending += data
            end = pending.rfind(b"\n") + 1
            if end:
                sock.sendall(pending[:end])
                pending = pending[end:]
        if pending:
            sock.sendall(pending)                  # a last line without its newline
