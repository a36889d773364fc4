#!/usr/bin/env python3
"""Is prefork's load generator (prefork/tune/loadgen.py, used by `prefork tune`) the bottleneck?

Runs it side by side with wrk against the same `prefork serve workers.hello:HelloHandler`
pool, same concurrency, same duration, in interleaved rounds (the order alternates),
and prints the medians and the ratio loadgen / wrk. The goal: at least 0.8.

    python scripts/loadgen_vs_wrk.py                # 3 rounds of 5 s per case, about 2 minutes
    python scripts/loadgen_vs_wrk.py --rounds 1 --duration 1

Cases (pool, connections):
  close             -w 2, 50 connections, a new connection per request (wrk: -H 'Connection: close')
  keep-alive        -w 2, 2 connections (a 2x1 pool serves 2 keep-alive connections at a time;
                    more would only queue behind them, for either tool)
  keep-alive 2x25   -w 2 --threads 25, 50 keep-alive connections (as scripts/bench.py runs it)

wrk comes from Debian's package (installed with apt-get when missing and running as
root). Both tools share the machine's cores with the server, as they would in use.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from prefork.tune import loadgen  # noqa: E402
from prefork.tune.server_under_test import ServerUnderTest, machine  # noqa: E402

HANDLER = "hello"
CASES = [  # name, workers, threads, connections, keepalive
    ("close", 2, 1, 50, False),
    ("keep-alive", 2, 1, 2, True),
    ("keep-alive 2x25", 2, 25, 50, True),
]


def find_wrk():
    found = shutil.which("wrk")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    print("installing wrk with apt-get ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], env=env, capture_output=True).returncode:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], env=env, capture_output=True)
    return shutil.which("wrk")


def run_wrk(wrk, address, connections, seconds, keepalive):
    argv = [wrk, f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "2s"]
    if not keepalive:
        argv += ["-H", "Connection: close"]
    out = subprocess.run(argv + [f"http://{address[0]}:{address[1]}/"], capture_output=True, text=True,
                         timeout=seconds + 30).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not rps:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return {"rps": float(rps.group(1)), "errors": errors,
            "p99_ms": p99 and float(p99.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]}


def run_ours(address, connections, seconds, keepalive):
    result = loadgen.run_load(address, loadgen.http_get(address, keepalive), connections, seconds,
                              keepalive=keepalive, half_close=False)
    return {"rps": result.throughput, "errors": result.errors, "p99_ms": result.p99_ms}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement (whole seconds, for wrk)")
    parser.add_argument("--only", help="comma-separated case names: " + ", ".join(c[0] for c in CASES))
    parser.add_argument("--json", help="also write every figure to this file")
    args = parser.parse_args()
    wrk = find_wrk()
    if not wrk:
        print("wrk is missing: apt-get install wrk", file=sys.stderr)
        return 1
    cases = [c for c in CASES if not args.only or c[0] in args.only.split(",")]
    report = {"machine": machine(), "wrk": subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout.strip()
              .splitlines()[0], "rounds": args.rounds, "duration": args.duration, "cases": {}}
    print(f"machine: {report['machine']}", flush=True)
    for name, workers, threads, connections, keepalive in cases:
        runs = {"wrk": [], "loadgen": []}
        with ServerUnderTest(HANDLER, "127.0.0.1:0", workers, threads) as server:
            tools = {"wrk": lambda s: run_wrk(wrk, server.address, connections, s, keepalive),
                     "loadgen": lambda s: run_ours(server.address, connections, s, keepalive)}
            for tool in tools.values():      # warm up the server and the page cache
                tool(1)
            for round_number in range(args.rounds):
                order = ["wrk", "loadgen"] if round_number % 2 == 0 else ["loadgen", "wrk"]
                for tool in order:
                    runs[tool].append(tools[tool](args.duration))
                print(f"  {name}: round {round_number + 1}: " + ", ".join(
                    f"{tool} {runs[tool][-1]['rps']:,.0f} req/s" for tool in order), flush=True)
        medians = {tool: statistics.median(r["rps"] for r in runs[tool]) for tool in runs}
        report["cases"][name] = {"workers": workers, "threads": threads, "connections": connections,
                                 "keepalive": keepalive, "runs": runs, "median_rps": medians,
                                 "ratio": medians["loadgen"] / medians["wrk"]}
    print(f"\n{'case':<18}{'pool':>6}{'conns':>7}{'wrk req/s':>12}{'loadgen req/s':>15}{'ratio':>7}"
          f"{'wrk p99':>9}{'ours p99':>10}")
    for name, case in report["cases"].items():
        p99 = {tool: statistics.median(r["p99_ms"] for r in case["runs"][tool]) for tool in case["runs"]}
        print(f"{name:<18}{case['workers']}x{case['threads']:<4}{case['connections']:>7}"
              f"{case['median_rps']['wrk']:>12,.0f}{case['median_rps']['loadgen']:>15,.0f}{case['ratio']:>7.2f}"
              f"{p99['wrk']:>7.2f}ms{p99['loadgen']:>8.2f}ms")
    print(f"\nmedians of {args.rounds} interleaved rounds of {args.duration} s; goal: ratio at least 0.80")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0 if all(c["ratio"] >= 0.8 for c in report["cases"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
