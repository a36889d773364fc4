"""Serve a handler class with the standard library's socketserver, for side-by-side benchmarks.

    python scripts/stdlib_server.py forking|threading PORT MODULE:CLASS

The same handler class prefork serves, on socketserver.ForkingTCPServer or
ThreadingTCPServer. Like `prefork serve` it allows address reuse and listens
with a backlog of 2048; ForkingTCPServer's max_children is raised from 40 to
128 so that 50 keep-alive connections do not block it (the strongest fair
setting for the stdlib, not its default).
"""

import importlib
import signal
import socketserver
import sys


def main():
    kind, port, spec = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    module, _, name = spec.partition(":")
    handler = getattr(importlib.import_module(module), name)
    base = {"forking": socketserver.ForkingTCPServer, "threading": socketserver.ThreadingTCPServer}[kind]

    class Server(base):
        allow_reuse_address = True
        request_queue_size = 2048
        max_children = 128
        daemon_threads = True
        block_on_close = False

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with Server(("127.0.0.1", port), handler) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
