#!/usr/bin/env python3
"""Two prefork instances behind nginx's stream module, upgraded and reloaded under load, without a failed request.

    python scripts/nginx_lb.py            # 2 rounds: upgrade one instance, reload the other; about 25 s
    python scripts/nginx_lb.py --quick    # 1 round; about 13 s (the test suite runs this)
    python scripts/nginx_lb.py --json FILE --keep

This is docs/deploy.md's "one prefork instance per host behind a load balancer", on one machine:

  instance a   prefork serve hello -b 127.0.0.1:PORT -w 2 --control ... --pid ...
  instance b   prefork serve hello -b unix:DIR/b.sock -w 2 --control ... --pid ...
               (mode 660, group of nginx's workers, when running as root)
  nginx        its own configuration and prefix in a temporary directory, unprivileged ports,
               `stream { upstream { server ...; server unix:...; } server { proxy_pass ...; } }`

Then prefork's load generator drives nginx (50 clients, a new connection per request) while the
script, one round after another, upgrades one instance in place (SIGUSR2, then SIGTERM to the old
master once the new one serves) and reloads the other (`prefork ctl reload`), each time waiting
until the pool has settled.

Health checks: nginx open source has only passive ones in the stream module (`max_fails` and
`fail_timeout` on each upstream server: after that many failed connections it leaves the server
out for that long, and `proxy_next_upstream` retries the session on the other). The active check
is `prefork ctl status --json` on each instance (the master answers and has a ready worker), as
docs/deploy.md shows: this script runs it every 0.2 s throughout and reports any instance found
unhealthy. From nginx's own session log it reports how many sessions each instance served, how
many nginx had to retry on the other instance (a refused connection that the client never saw,
but a sign of downtime all the same) and how many ended with a status other than 200.

nginx comes from Debian's packages, with the stream module (libnginx-mod-stream, loaded with
load_module when nginx has it as a dynamic module); both are installed with apt-get when missing
and running as root; otherwise the script says what is missing and exits with status 2.
Exit status: 0 when every request was answered, no session was retried or failed in nginx and
every operation settled; 1 otherwise; 2 for bad arguments or nginx missing. Nothing is left
running: every process it started is stopped, and checked for, before it exits.
"""

import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter

from _operations import (Instance, OperationFailed, Parser, become_subreaper, common_problems, conclude,
                         in_session, load_with_operations, machine, positive, print_tables, reap, summarize,
                         terminate_on_sigterm, wait_for)

FULL = {"rounds": 2, "gap": 2.5, "lead": 1.5, "tail": 1.5}
QUICK = {"rounds": 1, "gap": 2.0, "lead": 1.0, "tail": 1.0}
PER_OPERATION = 2.0        # seconds budgeted for an operation to settle, to size the load window
HEALTH_INTERVAL = 0.2      # seconds between two active checks of each instance

NGINX_CONF = """\
# nginx's stream module (TCP) in front of two prefork instances; written by scripts/nginx_lb.py
{load_module}{user}worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log notice;
events {{ worker_connections 4096; }}

stream {{
    log_format sessions '$msec $upstream_addr $status $bytes_sent $session_time';
    access_log {prefix}/sessions.log sessions buffer=64k flush=1s;

    upstream prefork {{
        # Passive health checks: after max_fails failed connections within fail_timeout, a
        # server is left out for fail_timeout; proxy_next_upstream retries on the other one.
        server {backend_a} max_fails=2 fail_timeout=5s;
        server {backend_b} max_fails=2 fail_timeout=5s;
    }}

    server {{
        listen {listen} backlog=2048;
        proxy_pass prefork;
        proxy_connect_timeout 1s;
        proxy_timeout 15s;
        proxy_next_upstream on;
        proxy_next_upstream_tries 2;
    }}
}}
"""


class Missing(Exception):
    """What cannot be had, and how to get it: exit status 2."""


# -- nginx --------------------------------------------------------------------------------

def apt_install(*packages):
    """Install Debian packages (root only); False with apt-get's complaint if it failed."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print(f"installing {' '.join(packages)} with apt-get ...", flush=True)
    argv = ["apt-get", "install", "-y", "-q", *packages]
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    if done.returncode != 0:                       # a stale package list: update once, then try again
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
    return done.returncode == 0, done.stderr.strip()[-300:]


def can_install():
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def find_nginx(install=True):
    """(path of nginx, the load_module line its stream module needs, or ''); Missing if unavailable."""
    def which():
        return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")

    nginx = which()
    if nginx is None:
        if not (install and can_install()):
            raise Missing("nginx is missing: apt-get install nginx libnginx-mod-stream (as root)")
        ok, why = apt_install("nginx", "libnginx-mod-stream")
        nginx = which()
        if nginx is None:
            raise Missing(f"apt-get install nginx libnginx-mod-stream failed: {why}")
    configure = subprocess.run([nginx, "-V"], capture_output=True, text=True).stderr
    if re.search(r"--with-stream(\s|$)", configure):
        return nginx, ""                           # built in
    if "--with-stream=dynamic" not in configure:
        raise Missing(f"{nginx} was built without the stream module")
    found = re.search(r"--modules-path=(\S+)", configure)
    module = os.path.join(found.group(1) if found else "/usr/lib/nginx/modules", "ngx_stream_module.so")
    if not os.path.exists(module):
        if not (install and can_install()):
            raise Missing(f"nginx's stream module is missing ({module}): apt-get install libnginx-mod-stream "
                          f"(as root)")
        ok, why = apt_install("libnginx-mod-stream")
        if not os.path.exists(module):
            raise Missing(f"apt-get install libnginx-mod-stream did not provide {module}: {why}")
    return nginx, f"load_module {module};\n"


def nginx_version(nginx):
    return subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_identity():
    """(user, group) nginx's workers run as: www-data when we are root and it exists, else ourselves."""
    if os.geteuid() == 0:
        for user in ("www-data", "nobody"):
            with contextlib.suppress(KeyError):
                entry = pwd.getpwnam(user)
                return user, grp.getgrgid(entry.pw_gid).gr_name
    return None, None


class Nginx:
    """nginx with its own configuration, prefix and logs in workdir, in a session of its own."""

    def __init__(self, binary, load_module, workdir, backends, user=None, group=None):
        self.binary, self.prefix = binary, os.path.join(workdir, "nginx")
        os.makedirs(self.prefix)
        self.port = free_port()
        self.address = ("127.0.0.1", self.port)
        self.conf = os.path.join(self.prefix, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(NGINX_CONF.format(load_module=load_module, prefix=self.prefix,
                                      user=f"user {user} {group};\n" if user else "",
                                      backend_a=backends[0], backend_b=backends[1],
                                      listen=f"127.0.0.1:{self.port}"))
        self.proc = None

    def argv(self, *flags):
        return [self.binary, "-c", self.conf, "-p", self.prefix + "/", *flags]

    def test(self):
        done = subprocess.run(self.argv("-t"), capture_output=True, text=True)
        if done.returncode:
            raise OperationFailed(f"nginx -t refused its configuration:\n{done.stderr.strip()}")

    def start(self):
        self.test()
        with open(os.path.join(self.prefix, "stderr"), "wb") as stderr:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=stderr,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: self._died() or self._answers(), 15, "nginx to proxy a request")
        return self

    def _died(self):
        if self.proc.poll() is not None:
            raise OperationFailed(f"nginx exited with status {self.proc.returncode}: {self.errors()}")
        return False

    def _answers(self):
        try:
            with socket.create_connection(self.address, timeout=2) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: nginx-lb\r\nConnection: close\r\n\r\n")
                reply = b""
                while chunk := sock.recv(4096):
                    reply += chunk
        except OSError:
            return False
        return reply.startswith(b"HTTP/1.1 200")

    def errors(self):
        text = ""
        for name in ("stderr", "error.log"):
            with contextlib.suppress(OSError), open(os.path.join(self.prefix, name), errors="replace") as f:
                text += f.read()
        return text.strip()[-600:]

    def sessions(self):
        """nginx's log of every proxied session: by upstream, retried ones, statuses."""
        by_upstream, statuses, retried, failed = Counter(), Counter(), 0, []
        with contextlib.suppress(OSError), open(os.path.join(self.prefix, "sessions.log")) as f:
            for line in f:
                parts = line.split()
                if len(parts) < 5:
                    continue
                upstream, status = " ".join(parts[1:-3]), parts[-3]
                tried = [u.strip() for u in upstream.split(",")]
                retried += len(tried) > 1
                by_upstream[tried[-1]] += 1
                statuses[status] += 1
                if status != "200":
                    failed.append(line.strip())
        return {"sessions": sum(statuses.values()), "by_upstream": dict(by_upstream), "statuses": dict(statuses),
                "retried": retried, "not_200": failed[:10]}

    def stop(self):
        """SIGQUIT (graceful shutdown), then SIGKILL whatever is left of its session; the pids left."""
        if self.proc is None:
            return []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        left = in_session(self.proc.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for pid in left:
            with contextlib.suppress(OperationFailed):
                reap(pid, 5)
        self.proc.wait()
        return left


# -- the run -------------------------------------------------------------------------------

def parse_args(argv=None):
    parser = Parser(prog="nginx_lb.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round (~13 s)")
    parser.add_argument("--rounds", type=positive(int), metavar="N",
                        help="rounds of: upgrade one instance, reload the other (2; --quick 1)")
    parser.add_argument("-w", "--workers", type=positive(int), default=2, metavar="N", help="workers per instance (2)")
    parser.add_argument("-c", "--clients", type=positive(int), default=50, metavar="N", help="concurrent clients (50)")
    parser.add_argument("--gap", type=positive(float), metavar="S",
                        help="seconds of plain load after each operation (2.5; --quick 2)")
    parser.add_argument("--duration", type=positive(float), metavar="S",
                        help="seconds of measured load (default: enough for the operations and their gaps)")
    parser.add_argument("--timeout", type=positive(float), default=2.0, metavar="S",
                        help="seconds after which an unanswered request is a failure (2)")
    parser.add_argument("--no-install", action="store_true", help="never run apt-get; exit 2 if nginx is missing")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (configs, logs)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    args.rounds = args.rounds or plan["rounds"]
    args.gap = args.gap or plan["gap"]
    args.lead, args.tail = plan["lead"], plan["tail"]
    if args.duration is None:
        args.duration = args.lead + 2 * args.rounds * (PER_OPERATION + args.gap) + args.tail
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        parser.error(f"--json {args.json}: no such directory")
    return args


def watch_health(instances, records):
    """The active check of every instance, every HEALTH_INTERVAL, for the load window."""
    def watch(t0, stopped):
        while not stopped.wait(HEALTH_INTERVAL):
            for instance in instances:
                healthy = instance.healthy()
                records[instance.name]["checks"] += 1
                if not healthy:
                    records[instance.name]["unhealthy"].append(round(time.monotonic() - t0, 2))
    return watch


def main(argv=None):
    args = parse_args(argv)
    try:
        nginx_binary, load_module = find_nginx(install=not args.no_install)
    except Missing as exc:
        print(f"nginx_lb.py: {exc}", file=sys.stderr)
        return 2
    become_subreaper()
    terminate_on_sigterm()
    workdir = tempfile.mkdtemp(prefix="pf-lb-")
    user, group = worker_identity()
    if user:
        os.chmod(workdir, 0o711)       # nginx's workers (www-data) must reach the Unix socket in it
    socket_b = os.path.join(workdir, "b.sock")
    port_a = free_port()
    b_flags = ("--socket-mode", "660", "--socket-owner", f"{pwd.getpwuid(os.geteuid()).pw_name}:{group}") \
        if user else ()
    instances = [Instance("a", workdir, f"127.0.0.1:{port_a}", args.workers),
                 Instance("b", workdir, f"unix:{socket_b}", args.workers, extra=b_flags)]
    nginx = Nginx(nginx_binary, load_module, workdir, [f"127.0.0.1:{port_a}", f"unix:{socket_b}"], user, group)
    health = {i.name: {"checks": 0, "unhealthy": []} for i in instances}
    report = {"machine": machine(), "nginx": nginx_version(nginx_binary), "nginx_conf": nginx.conf,
              "instances": {i.name: i.command() for i in instances}, "clients": args.clients,
              "new_connection_per_request": True, "duration": args.duration, "workdir": workdir,
              "operations": [], "load": None, "nginx_sessions": None, "health": health, "left_behind": []}
    problems = []
    try:
        for instance in instances:
            print(f"instance {instance.name}: {instance.command()}", flush=True)
            instance.start()
        nginx.start()
        print(f"{report['nginx']} on 127.0.0.1:{nginx.port} ({nginx.conf}); {args.clients} clients for "
              f"{args.duration:.0f} s", flush=True)
        for instance in instances:
            if not instance.healthy():
                raise OperationFailed(f"instance {instance.name} fails its health check before the load")
        a, b = instances
        operations = []
        for round_number in range(args.rounds):
            upgraded, reloaded = (a, b) if round_number % 2 == 0 else (b, a)
            operations += [("USR2 + TERM old", upgraded, upgraded.upgrade),
                           ("ctl reload", reloaded, lambda r=reloaded: r.reload("ctl"))]
        result, report["operations"] = load_with_operations(
            nginx.address, args.clients, args.duration, operations, args.lead, args.gap, timeout=args.timeout,
            log=lambda line: print(line, flush=True), watch=watch_health(instances, health))
        report["load"] = summarize(result)
    except OperationFailed as exc:
        problems.append(str(exc))
    except KeyboardInterrupt:
        problems.append("interrupted")
    finally:
        left = nginx.stop()
        for instance in instances:
            left += instance.stop()
        report["left_behind"] = left
        report["nginx_sessions"] = nginx.sessions()
    problems += common_problems(report, 2 * args.rounds)
    sessions = report["nginx_sessions"]
    if sessions["retried"]:
        problems.append(f"nginx retried {sessions['retried']} session(s) on the other instance: one refused")
    if sum(n for status, n in sessions["statuses"].items() if status != "200"):
        problems.append(f"nginx ended sessions with statuses {sessions['statuses']}")
    for name, record in health.items():
        if record["unhealthy"]:
            problems.append(f"instance {name} failed {len(record['unhealthy'])} of {record['checks']} active "
                            f"checks, at {record['unhealthy'][:5]} s")

    print_tables(report)
    names = {f"127.0.0.1:{port_a}": "a", f"unix:{socket_b}": "b"}
    print(f"nginx: {sessions['sessions']:,} sessions, " + ", ".join(
        f"instance {names.get(u, u)} {n:,}" for u, n in sorted(sessions["by_upstream"].items(), key=lambda x: x[0]))
          + f"; retried on the other instance: {sessions['retried']}; statuses: {sessions['statuses']}")
    print("active checks (prefork ctl status): " + ", ".join(
        f"instance {name} {r['checks'] - len(r['unhealthy'])}/{r['checks']} healthy" for name, r in health.items()))
    return conclude(report, problems, args.json, args.keep, workdir, kept="configuration and logs")


if __name__ == "__main__":
    sys.exit(main())
