#!/usr/bin/env python3
"""prefork's TLS beside nginx's, with the same certificate, in one run on one machine.

    python scripts/tls_bench.py              # the full run: 3 interleaved rounds of 5 s, about 2 minutes
    python scripts/tls_bench.py --quick      # proves the harness works: 1 round of 1 s
    python scripts/tls_bench.py --json PATH  # where the figures go (full run: docs/bench/tls-results.json)

Workloads, on `Hello, World!` (prefork's built-in hello, a parking handler,
`-w 2 --preload`; nginx with 2 worker processes and `return 200`), loaded by
wrk -t2 -c50 over https:

  tls-handshake   Connection: close, so a new connection and a full TLS
                  handshake per request (wrk keeps no session to resume):
                  handshakes per second.
  tls-keepalive   50 keep-alive connections: requests per second once the
                  handshakes are done, what the encryption itself costs.

Both servers get the same certificate and key, made by trustme for this run
(an ECDSA P-256 key, as trustme makes by default), and their defaults
otherwise, but for nginx's protocols: TLS 1.2 and 1.3 as Python's default
(Debian's nginx 1.22 would offer TLS 1.2 at most), so both negotiate TLS 1.3
with wrk, and whichever suite OpenSSL prefers (both link the same OpenSSL).
prefork without TLS runs beside them (plain http, interleaved with them as
a third server), to show what TLS costs prefork itself. The figures are
medians of the rounds; within a round every server runs once, one after
another, so drift touches them alike. Compare ratios, not absolute numbers: wrk shares the 2 cores.

What it needs: wrk and nginx (Debian's packages; installed with apt-get when
running as root, as scripts/bench.py does) and trustme (the test extra).
"""

import argparse
import json
import os
import socket
import ssl
import sys
import tempfile
import time

import trustme

from bench import NGINX_CONF, PY, Server, Tools, machine, run_wrk, throughput

CONNECTIONS = 50

# bench.py's nginx, its listener speaking TLS with the run's certificate.
NGINX_TLS_CONF = NGINX_CONF.replace("listen 127.0.0.1:{port} backlog=2048;", """\
listen 127.0.0.1:{port} ssl backlog=2048;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;""")


def certificate(workdir):
    """cert.pem, key.pem and ca.pem in workdir, for 127.0.0.1."""
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    paths = {name: os.path.join(workdir, f"{name}.pem") for name in ("cert", "key", "ca")}
    issued.cert_chain_pems[0].write_to_path(paths["cert"])
    issued.private_key_pem.write_to_path(paths["key"])
    ca.cert_pem.write_to_path(paths["ca"])
    return paths


def servers(tools, workdir, paths):
    def prefork(*flags):
        return lambda port: [PY, "-m", "prefork", "serve", "hello", "-b", f"127.0.0.1:{port}", "-w", "2",
                             "--preload", "--log-level", "warning", *flags]

    def nginx(port):
        conf = os.path.join(workdir, f"nginx-{port}.conf")
        with open(conf, "w") as file:
            file.write(NGINX_TLS_CONF.format(port=port, tmp=workdir, cert=paths["cert"], key=paths["key"]))
        return [tools.nginx, "-c", conf, "-p", workdir]

    found = [Server("prefork 2x1 TLS", prefork("--certfile", paths["cert"], "--keyfile", paths["key"]), peer=False)]
    if tools.nginx:
        found.append(Server("nginx TLS", nginx, peer=True))
    return found


def check_tls(paths):
    """Each server answers over TLS with the run's certificate (else RuntimeError): the TLS version, as a note."""
    def check(port):
        context = ssl.create_default_context(cafile=paths["ca"])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            note = f"{sock.version()} {sock.cipher()[0]}"
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
            if not reply.startswith(b"HTTP/1.1 200") or b"Hello, World!" not in reply:
                raise RuntimeError(f"unexpected reply {reply[:200]!r}")
            return note
    return check


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s: proves the harness works")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3, quick 1)")
    parser.add_argument("--seconds", type=int, help="length of each measurement (default 5, quick 1)")
    parser.add_argument("--no-install", action="store_true", help="use only what is already installed")
    parser.add_argument("--json", help="where to write the JSON results")
    args = parser.parse_args()
    seconds, rounds = args.seconds or (1 if args.quick else 5), args.rounds or (1 if args.quick else 3)
    tools = Tools(install=not args.no_install)
    if not tools.wrk:
        sys.exit("tls_bench: wrk is missing (apt-get install wrk)")
    workdir = tempfile.mkdtemp(prefix="prefork-tls-bench-")
    paths = certificate(workdir)
    report = {"machine": machine(), "tools": tools.versions(), "seconds": seconds, "rounds": rounds,
              "connections": CONNECTIONS, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "workloads": {}}
    for name, close in (("tls-handshake", True), ("tls-keepalive", False)):
        plain = Server("prefork 2x1 plain", lambda port: [PY, "-m", "prefork", "serve", "hello", "-b",
                                                           f"127.0.0.1:{port}", "-w", "2", "--preload",
                                                           "--log-level", "warning"], peer=False)
        check = check_tls(paths)

        def scheme(port, plain=plain):
            return "http" if port == getattr(plain, "port", None) else "https"

        report["workloads"][name] = throughput(
            name, [*servers(tools, workdir, paths), plain],
            lambda port, s, close=close: run_wrk(tools.wrk, port, s, close, CONNECTIONS, scheme(port)), rounds, seconds,
            check=lambda port: None if scheme(port) == "http" else check(port))
    print_report(report)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(report, file, indent=1)
        print(f"\nresults: {args.json}")


def print_report(report):
    for name, results in report["workloads"].items():
        print(f"\n{name}  (median of {report['rounds']} rounds of {report['seconds']} s; wrk -c{CONNECTIONS})")
        print(f"  {'server':<22}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}   note")
        for server, r in results.items():
            p50, p99 = (f"{v:>9.2f}" if v is not None else f"{'-':>9}" for v in (r["p50_ms"], r["p99_ms"]))
            print(f"  {server:<22}{r['rps']:>10.0f}{p50}{p99}{r['errors']:>8}   {r.get('note') or ''}")
        ours, nginx, plain = (results.get(k) for k in ("prefork 2x1 TLS", "nginx TLS", "prefork 2x1 plain"))
        if ours and nginx:
            print(f"  prefork TLS / nginx TLS: {ours['rps'] / nginx['rps']:.2f}")
        if ours and plain:
            print(f"  prefork TLS / prefork plain: {ours['rps'] / plain['rps']:.2f}")


if __name__ == "__main__":
    main()
