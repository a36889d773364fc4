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
otherwise: TLS 1.2 and 1.3, and whichever suite OpenSSL prefers (both link
the same OpenSSL). prefork without TLS runs beside them (plain http), to
show what TLS costs prefork itself. The figures are medians of the rounds;
within a round every server runs once, one after another, so drift touches
them alike. Compare ratios, not absolute numbers: wrk shares the 2 cores.

What it needs: wrk and nginx (Debian's packages; installed with apt-get when
running as root, as scripts/bench.py does) and trustme (the test extra).
"""

import argparse
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import time

import trustme

from bench import PY, Server, Tools, _wrk_latency, machine, throughput

CONNECTIONS = 50

NGINX_TLS_CONF = """
worker_processes 2;
daemon off;
pid {tmp}/nginx-{port}.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl backlog=2048;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{ default_type text/plain; return 200 "Hello, World!"; }}
    }}
}}
"""


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


def run_wrk(wrk, port, seconds, close, scheme="https"):
    argv = [wrk, "-t2", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    if close:
        argv += ["-H", "Connection: close"]
    out = subprocess.run(argv + [f"{scheme}://127.0.0.1:{port}/"], capture_output=True, text=True,
                         timeout=seconds + 30).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not rps:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(rps.group(1)), "p50_ms": _wrk_latency(out, "50%"), "p99_ms": _wrk_latency(out, "99%"),
            "errors": errors + (int(non_2xx.group(1)) if non_2xx else 0)}


def check_tls(paths, scheme):
    """Each server answers over TLS with the run's certificate (else RuntimeError): the TLS version, as a note."""
    def check(port):
        if scheme == "http":
            return None
        context = ssl.create_default_context(cafile=paths["ca"])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
            if not reply.startswith(b"HTTP/1.1 200") or b"Hello, World!" not in reply:
                raise RuntimeError(f"unexpected reply {reply[:200]!r}")
            return f"{sock.version()} {sock.cipher()[0]}"
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
    plain = Server("prefork 2x1 plain", lambda port: [PY, "-m", "prefork", "serve", "hello", "-b",
                                                       f"127.0.0.1:{port}", "-w", "2", "--preload", "--log-level",
                                                       "warning"], peer=False)
    for name, close in (("tls-handshake", True), ("tls-keepalive", False)):
        tls_servers = servers(tools, workdir, paths)
        results = throughput(name, tls_servers, lambda port, s, close=close: run_wrk(tools.wrk, port, s, close),
                             rounds, seconds, check=check_tls(paths, "https"))
        results |= throughput(name + " (plain reference)", [plain],
                              lambda port, s, close=close: run_wrk(tools.wrk, port, s, close, "http"), rounds, seconds)
        report["workloads"][name] = results
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
