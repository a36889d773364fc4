"""A handler module that connects at import time, as an app opening its database connection would:
to the TCP address in $PREFORK_TEST_CONNECT_TO (host:port), when set."""

import os
import socket

import prefork

_target = os.environ.get("PREFORK_TEST_CONNECT_TO")
if _target:
    _host, _port = _target.rsplit(":", 1)
    DATABASE = socket.create_connection((_host, int(_port)))


class Handler(prefork.BaseRequestHandler):
    def handle(self):
        self.request.sendall(b"ok\n")
