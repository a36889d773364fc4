"""scripts/zero_downtime.py and scripts/nginx_lb.py end to end in --quick mode: real masters,
real signals, a real nginx, real load. Each must exit 0 having failed no request (issue 9), and
leave no process behind."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys

import psutil
import pytest

from conftest import REPO, process_gone, wait_for
from prefork.serve.pidfile import read_pid

SCRIPTS = os.path.join(REPO, "scripts")
sys.path.insert(0, SCRIPTS)

import nginx_lb  # noqa: E402


def run_script(name, tmp_path, *args, timeout=60):
    """Run scripts/NAME --quick --json FILE ARGS: (the completed process, the JSON report or None)."""
    report = tmp_path / f"{name}.json"
    proc = subprocess.run([sys.executable, os.path.join(SCRIPTS, name), "--quick", "--json", str(report), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)
    return proc, json.loads(report.read_text()) if report.exists() else None


def load_row(stdout):
    """The table the scripts print about the load, as {column: number}."""
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["requests", "answered", "failed"])
    names = lines[header].split()
    values = [float(v.replace(",", "")) for v in lines[header + 1].split()]
    return dict(zip(names, values))


def check_run(proc, report):
    output = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, output
    row = load_row(proc.stdout)
    assert (row["failed"], row["refused"], row["reset"], row["other"]) == (0, 0, 0, 0), output
    assert row["answered"] == row["requests"] > 1000, output
    assert re.search(r"^result: zero failed requests, every operation settled$", proc.stdout, re.M), output
    assert report["ok"] and report["load"]["failed"] == 0 and not report["left_behind"], output
    assert all("seconds" in op for op in report["operations"]), output
    left = []
    for process in psutil.process_iter(["cmdline"]):
        if report["workdir"] in " ".join(process.info["cmdline"] or ()):
            left.append(process)
    assert not left, f"processes left behind: {left}"
    assert not os.path.exists(report["workdir"]), "the working directory was removed"


@pytest.mark.xdist_group("load")        # load generators: one at a time, never beside a timing-bound test
@pytest.mark.once
@pytest.mark.timeout(60)        # the run itself takes about 16 s
def test_zero_downtime_quick_fails_no_request(tmp_path):
    proc, report = run_script("zero_downtime.py", tmp_path)
    check_run(proc, report)
    assert [op["operation"] for op in report["operations"]] == ["ctl reload", "HUP", "USR2 + TERM old"]
    old, new = map(int, re.match(r"master (\d+) -> (\d+);", report["operations"][-1]["detail"]).groups())
    assert report["final_master"] == new != old, "the pid file names the new master"


@pytest.mark.xdist_group("load")        # load generators: one at a time, never beside a timing-bound test
@pytest.mark.once
@pytest.mark.timeout(150)       # the run takes about 13 s; the first one may install nginx with apt-get
def test_nginx_lb_quick_fails_no_request(tmp_path):
    try:
        nginx_lb.find_nginx(install=False)
    except nginx_lb.Missing as exc:
        if not nginx_lb.can_install():
            pytest.skip(f"{exc}, and it cannot be installed here (needs root and apt-get)")
    proc, report = run_script("nginx_lb.py", tmp_path, timeout=140)
    check_run(proc, report)
    sessions = report["nginx_sessions"]
    assert sessions["retried"] == 0 and set(sessions["statuses"]) == {"200"}
    assert len(sessions["by_upstream"]) == 2 and min(sessions["by_upstream"].values()) > 100, sessions
    assert all(not record["unhealthy"] and record["checks"] > 10 for record in report["health"].values())


@pytest.mark.parametrize("script, args, message", [
    ("zero_downtime.py", ["-w", "0"], "argument -w/--workers: must be positive, got 0"),
    ("zero_downtime.py", ["--reloads", "0", "--hups", "0", "--upgrades", "0"], "nothing to do"),
    ("nginx_lb.py", ["--rounds", "x"], "argument --rounds: not a number: 'x'"),
    ("nginx_lb.py", ["--json", "/no/such/dir/r.json"], "--json /no/such/dir/r.json: no such directory"),
])
def test_bad_input_is_one_line_and_exit_status_2(script, args, message):
    proc = subprocess.run([sys.executable, os.path.join(SCRIPTS, script), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and message in proc.stderr, proc.stderr


# -- docs/deploy.md: every snippet marked <!-- checked: KIND NAME --> is validated here ------------

DEPLOY_MD = os.path.join(REPO, "docs", "deploy.md")
PREFORK_BIN = os.path.join(os.path.dirname(sys.executable), "prefork")


def snippets(kind):
    """{name: text} of docs/deploy.md's code blocks marked <!-- checked: KIND NAME -->."""
    with open(DEPLOY_MD) as f:
        text = f.read()
    found = re.findall(r"^<!-- checked: (\S+) (\S+) -->\n```[^\n]*\n(.*?)^```$", text, re.M | re.S)
    return {name: body for k, name, body in found if k == kind}


def localize(text, tmp):
    """A snippet with the paths of a deployment replaced by ones under tmp, and this prefork."""
    for path, local in (("/srv/myapp/.venv/bin/prefork", PREFORK_BIN), ("/run/myapp/", f"{tmp}/"),
                        ("/var/log/myapp/", f"{tmp}/"), ("/usr/local/bin/", f"{tmp}/"),
                        ("su myapp myapp", "su root root")):
        text = text.replace(path, local)
    return text


def write_script(tmp, name, text):
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)
    return path


def test_deploy_md_has_the_snippets_this_file_checks():
    assert set(snippets("systemd")) == {"myapp.socket", "myapp.service", "prefork-agent.socket",
                                        "prefork-agent@.service"}
    assert set(snippets("sh")) == {"prefork-health", "upgrade-myapp"}
    assert [set(snippets(kind)) for kind in ("nginx", "haproxy", "toml", "logrotate")] == [
        {"stream"}, {"haproxy.cfg", "haproxy-httpchk.cfg"}, {"prefork.toml", "flask"}, {"myapp"}]


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_deploy_md_systemd_units_pass_systemd_analyze_verify(short_tmp):
    write_script(short_tmp, "prefork-health", snippets("sh")["prefork-health"])
    units = []
    for name, text in snippets("systemd").items():
        units.append(os.path.join(short_tmp, name))
        with open(units[-1], "w") as f:
            f.write(localize(text, short_tmp))
    done = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_deploy_md_toml_passes_check_config(tmp_path):
    path = tmp_path / "prefork.toml"
    path.write_text(snippets("toml")["prefork.toml"])
    done = subprocess.run([sys.executable, "-m", "prefork", "check-config", "-c", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^workers\s+4\s+file ", done.stdout, re.M), done.stdout


def test_deploy_md_wsgi_toml_serves_its_flask_app(tmp_path, serve_cli):
    (tmp_path / "prefork.toml").write_text(snippets("toml")["flask"] + 'bind = ["127.0.0.1:0"]\n')
    (tmp_path / "hello.py").write_text("from flask import Flask\napp = Flask(__name__)\n\n"
                                      "@app.get('/')\ndef index():\n    return {'message': 'Hello, World!'}\n")
    server = serve_cli("-c", "prefork.toml", "-w", "2", cwd=str(tmp_path))
    host, port = server.addresses()[0]
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200 OK") and reply.endswith(b'{"message":"Hello, World!"}\n'), reply


@pytest.mark.timeout(150)
def test_deploy_md_nginx_stream_config_passes_nginx_t(short_tmp):
    try:
        nginx, load_module = nginx_lb.find_nginx(install=nginx_lb.can_install())
    except nginx_lb.Missing as exc:
        pytest.skip(str(exc))
    conf = os.path.join(short_tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"{load_module}pid {short_tmp}/nginx.pid;\nerror_log {short_tmp}/error.log;\n"
                f"events {{ }}\n{snippets('nginx')['stream']}")
    done = subprocess.run([nginx, "-t", "-c", conf, "-p", short_tmp + "/"], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0 and "test is successful" in done.stderr, done.stderr


@pytest.mark.skipif(not shutil.which("haproxy"), reason="haproxy is not installed (apt-get install haproxy)")
@pytest.mark.parametrize("name", ["haproxy.cfg", "haproxy-httpchk.cfg"])
def test_deploy_md_haproxy_config_passes_haproxy_c(tmp_path, name):
    path = tmp_path / "haproxy.cfg"
    path.write_text(snippets("haproxy")[name])
    done = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.timeout(60)
def test_deploy_md_health_check_says_up_then_down_also_as_an_haproxy_agent(serve_cli, short_tmp):
    control = os.path.join(short_tmp, "control.sock")
    health = write_script(short_tmp, "prefork-health", snippets("sh")["prefork-health"])
    env = dict(os.environ, PREFORK=PREFORK_BIN)
    server = serve_cli("hello", "-w", "2", "-b", "127.0.0.1:0", "--control", control)
    server.wait_workers(2)
    up = subprocess.run([health, control], env=env, capture_output=True, text=True, timeout=30)
    assert (up.returncode, up.stdout, up.stderr) == (0, "up\n", "")
    agent = None
    if shutil.which("systemd-socket-activate"):       # the agent of the HAProxy section, as systemd runs it
        port = nginx_lb.free_port()
        agent = subprocess.Popen(["systemd-socket-activate", "--accept", "--inetd", "-l", f"127.0.0.1:{port}",
                                  "-E", f"PREFORK={PREFORK_BIN}", health, control],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        if agent is not None:
            assert agent_says(port) == b"up\n"
        assert server.stop() == 0
        down = subprocess.run([health, control], env=env, capture_output=True, text=True, timeout=30)
        assert (down.returncode, down.stdout) == (1, "down\n")
        assert down.stderr.startswith(f"prefork-health: {control}: prefork: error: no master is listening")
        if agent is not None:
            assert agent_says(port) == b"down\n"
    finally:
        if agent is not None:
            os.killpg(agent.pid, signal.SIGKILL)
            agent.wait()


def agent_says(port):
    def ask():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                reply = b""
                while chunk := sock.recv(100):
                    reply += chunk
                return reply
        except ConnectionRefusedError:
            return None
    return wait_for(ask, timeout=10)


@pytest.mark.timeout(60)
def test_deploy_md_upgrade_script_retires_the_old_master_once_the_new_one_serves(serve_cli, short_tmp):
    control, pidfile = os.path.join(short_tmp, "control.sock"), os.path.join(short_tmp, "prefork.pid")
    script = write_script(short_tmp, "upgrade-myapp", localize(snippets("sh")["upgrade-myapp"], short_tmp))
    server = serve_cli("hello", "-w", "2", "-b", "127.0.0.1:0", "--control", control, "--pid", pidfile)
    server.wait_workers(2)
    done = subprocess.run([script], env=dict(os.environ, PREFORK=PREFORK_BIN), capture_output=True, text=True,
                          timeout=50)
    assert done.returncode == 0, done.stderr
    new = read_pid(pidfile)
    assert done.stdout == f"upgraded: master {server.pid} -> {new}\n"
    assert server.proc.wait(15) == 0
    wait_for(lambda: not os.path.exists(pidfile + ".oldbin"))
    assert json.loads(subprocess.run([PREFORK_BIN, "ctl", "--control", control, "status", "--json"],
                                     capture_output=True, text=True, timeout=30).stdout)["master"]["pid"] == new
    os.kill(new, signal.SIGTERM)
    wait_for(lambda: process_gone(new), timeout=15)


@pytest.mark.skipif(not shutil.which("logrotate"), reason="logrotate is not installed (apt-get install logrotate)")
@pytest.mark.timeout(60)
def test_deploy_md_logrotate_rotation_makes_master_and_workers_write_the_new_file(serve_cli, short_tmp):
    control, log = os.path.join(short_tmp, "control.sock"), os.path.join(short_tmp, "prefork.log")
    conf = os.path.join(short_tmp, "logrotate.conf")
    with open(conf, "w") as f:
        f.write(localize(snippets("logrotate")["myapp"], short_tmp))
    server = serve_cli("hello", "-w", "2", "-b", "127.0.0.1:0", "--control", control, "--log-file", log)
    wait_for(lambda: os.path.exists(log) and len(re.findall(r"ready \(pid", open(log).read())) >= 2)
    done = subprocess.run(["logrotate", "-f", "-s", os.path.join(short_tmp, "state"), conf], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "ready (pid" in open(log + ".1").read()
    os.kill(server.pid, signal.SIGHUP)        # the master logs the reload, new workers their start
    wait_for(lambda: os.path.exists(log) and len(re.findall(r"ready \(pid", open(log).read())) >= 2)
    assert "reloading" in open(log).read() and "reloading" not in open(log + ".1").read()
