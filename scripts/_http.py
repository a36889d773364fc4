"""What scripts/bench.py, scripts/reload_under_load.py and scripts/slow_clients.py share: one HTTP GET."""

import socket


def http_get(port, timeout=5):
    """One GET / over a new connection to 127.0.0.1:port; the whole reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return data
            data += chunk
