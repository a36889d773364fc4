"""scripts/zero_downtime.py and scripts/nginx_lb.py end to end in --quick mode: real masters,
real signals, a real nginx, real load. Each must exit 0 having failed no request (issue 9), and
leave no process behind."""

import json
import os
import re
import subprocess
import sys

import psutil
import pytest

from conftest import REPO

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


@pytest.mark.timeout(60)        # the run itself takes about 12 s
def test_zero_downtime_quick_fails_no_request(tmp_path):
    proc, report = run_script("zero_downtime.py", tmp_path)
    check_run(proc, report)
    assert [op["operation"] for op in report["operations"]] == ["ctl reload", "HUP", "USR2 + TERM old"]
    old, new = map(int, re.match(r"master (\d+) -> (\d+);", report["operations"][-1]["detail"]).groups())
    assert report["final_master"] == new != old, "the pid file names the new master"


@pytest.mark.timeout(150)       # the run takes about 12 s; the first one may install nginx with apt-get
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
