#!/usr/bin/env python3
"""How long do stalled clients delay a real request? One figure, for the README and the changelog.

    python scripts/slow_clients.py                  # this checkout, default settings
    python scripts/slow_clients.py -- --client-timeout 1
    python scripts/slow_clients.py --repo /path/to/an/older/checkout

Starts `prefork serve HANDLER -w 2` (hello by default; plus any flags after --),
opens --stalled connections that each send half an HTTP request line and go
quiet, then times one complete request. Prints the delay and exits.
"""

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

from _http import http_get

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=REPO, help="the checkout to run (default: this one)")
    parser.add_argument("--stalled", type=int, default=10, help="stalled clients (default: 10)")
    parser.add_argument("--handler", default="hello",
                        help="an HTTP handler (default: workers.hello:HelloHandler)")
    parser.add_argument("flags", nargs="*", help="more flags for prefork serve, after --")
    args = parser.parse_args()
    log = tempfile.NamedTemporaryFile(prefix="slow-clients-", suffix=".log", delete=False)
    env = dict(os.environ, PYTHONPATH=args.repo)
    server = subprocess.Popen([sys.executable, "-m", "prefork", "serve", args.handler, "-w", "2",
                               "-b", "127.0.0.1:0", *args.flags], cwd=args.repo, env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        address = _address(log.name, server)
        stalled = [socket.create_connection(address) for _ in range(args.stalled)]
        for sock in stalled:
            sock.sendall(b"GET / HT")
        time.sleep(0.2)                       # let the workers take the stalled ones first
        started = time.monotonic()
        reply = http_get(address[1], timeout=120)
        delay = time.monotonic() - started
        print(f"{args.stalled} stalled clients delayed a real request by {delay:.2f} s "
              f"({'answered' if reply.startswith(b'HTTP/') else 'NOT answered'}), {args.handler} -w 2; "
              f"flags: {' '.join(args.flags) or '(defaults)'}")
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        os.unlink(log.name)


def _address(log_path, server):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(log_path) as f:
            text = f.read()
        ready = len(re.findall(r"worker \d+ ready", text))
        found = re.search(r"listening on (\S+):(\d+)", text)
        if found and ready >= 2:
            return found.group(1), int(found.group(2))
        if server.poll() is not None:
            sys.exit(f"the server exited: {text}")
        time.sleep(0.05)
    sys.exit("the server did not start within 10 s")


if __name__ == "__main__":
    main()
