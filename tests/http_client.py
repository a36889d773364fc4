"""A raw HTTP/1.1 client for the tests: requests sent as bytes, responses parsed by http.client, in order."""

import http.client
import socket


class _Unclosable:
    """The connection's one buffered reader, shared by successive responses (pipelining)."""

    def __init__(self, file):
        self._file = file

    def __getattr__(self, name):
        return getattr(self._file, name)

    def close(self):
        pass


class Client:
    """One HTTP connection: raw requests out, responses parsed by http.client in."""

    def __init__(self, address, timeout=10):
        self.sock = socket.create_connection(address, timeout=timeout)
        self._file = self.sock.makefile("rb")

    def makefile(self, *args, **kwargs):
        return _Unclosable(self._file)

    def send(self, data):
        self.sock.sendall(data)

    def response(self, method="GET"):
        reply = http.client.HTTPResponse(self, method=method)
        reply.begin()
        return reply.status, reply.headers, reply.read()

    def get(self, path, headers=""):
        self.send(f"GET {path} HTTP/1.1\r\nHost: test\r\n{headers}\r\n".encode())
        return self.response()

    def closed(self):
        """Whether the server has closed its side (after what was read)."""
        return self._file.read() == b""

    def close(self):
        self._file.close()
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def request(address, raw, method="GET"):
    connection = Client(address)
    try:
        connection.send(raw)
        return connection.response(method)
    finally:
        connection.close()
