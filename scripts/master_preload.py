"""Serve a handler imported by this process, which becomes the master: `prefork serve --preload` as it
was before the zygote, for side-by-side benchmarks (scripts/bench.py).

    python scripts/master_preload.py PORT MODULE:CLASS WORKERS [SPARE_WORKERS]

It is what a program using the API does: the handler class is imported
here, the master's heap is frozen (Config(preload=True)), and workers are
forked from the master. Binding and settings as `prefork serve` has them
(backlog 2048, address reuse, warnings only in the log).
"""

import importlib
import logging
import os
import sys

import prefork
from prefork.listeners import open_listener, parse_bind


def main():
    port, spec, workers = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    spare = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    sys.path.insert(0, os.getcwd())
    module, _, name = spec.partition(":")
    handler = getattr(importlib.import_module(module), name)
    config = prefork.Config(preload=True, name=spec, spare_workers=spare)
    sock = open_listener(parse_bind(f"127.0.0.1:{port}"), 2048)
    server = prefork.TCPServer.from_socket(sock, handler, policy=prefork.Prefork(workers=workers), config=config)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
