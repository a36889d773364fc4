"""prefork.Adaptive with real processes: a burst grows the pool and it shrinks back; the accept
backlog grows it when the idle count says nothing; scale-down never takes a worker mid-request."""

import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

import prefork
from apps.handlers import Sleepy
from conftest import REPO, run_cli, serving, stream_exchange, wait_for

TESTS = os.path.join(REPO, "tests")


def sleepy(address, seconds, timeout=30):
    """One request to apps.handlers:Sleepy: the answer, b"done <pid>\\n" (an exception fails the test)."""
    return stream_exchange(socket.AF_INET, address, f"{seconds}\n".encode(), timeout)


def process_state(pid):
    """What the kernel says of a process (sleeping, stopped, zombie...), for failure messages."""
    try:
        return psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return "gone"


class Sampler:
    """Counts something every 10 ms in a thread, with the time: (seconds since start, count)."""

    def __init__(self, count):
        self.count, self.samples, self.started = count, [], time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._done.wait(0.01):
            self.samples.append((time.monotonic() - self.started, self.count()))

    def stop(self):
        self._done.set()
        self._thread.join(5)
        return self.samples


@pytest.mark.timeout(60)
def test_a_burst_grows_the_pool_is_served_in_full_and_the_pool_shrinks_back(serve_cli):
    server = serve_cli("apps.handlers:Sleepy", "--policy", "adaptive", "--min-workers", "1", "--max-workers", "6",
                       "--min-spare", "1", "--max-spare", "1", "--scale-down-after", "1", "-b", "127.0.0.1:0",
                       cwd=TESTS)
    address = server.addresses()[0]
    server.wait_workers(1)
    sampler = Sampler(lambda: len(server.workers()))
    with ThreadPoolExecutor(12) as clients:
        answers = list(clients.map(lambda _: sleepy(address, 1.5), range(12)))
    served_at = time.monotonic() - sampler.started
    assert all(answer.startswith(b"done ") for answer in answers), answers      # none failed
    wait_for(lambda: len(server.workers()) == 1, timeout=20, message=lambda: f"the pool back at 1:\n{server.log()}")
    back_at = time.monotonic() - sampler.started
    samples = sampler.stop()
    peak = max(count for _, count in samples)
    peak_at = next(t for t, count in samples if count == peak)
    print(f"\nburst of 12 x 1.5 s: 6 workers after {peak_at:.1f} s, served in {served_at:.1f} s, "
          f"back to 1 worker {back_at - served_at:.1f} s later")
    assert 4 <= peak <= 6, samples
    assert min(count for t, count in samples if t > peak_at) >= 1, samples
    log = server.log()
    assert re.search(r"pool target 1 -> 2 worker\(s\): 0 idle < min_spare 1 \+ backlog \d+: growing by 1", log), log
    assert re.search(r"pool target 2 -> 1 worker\(s\): 2 idle > max_spare 1 for [\d.]+ s: retiring 1", log), log
    assert "[ERROR]" not in log and "unexpectedly" not in log, log
    assert server.stop() == 0


@pytest.mark.timeout(30)
def test_connections_waiting_in_the_accept_queue_grow_the_pool_when_the_idle_count_says_nothing(caplog):
    """min_spare 0: every worker busy is no reason to grow; connections nobody accepts are."""
    caplog.set_level(logging.INFO, logger="prefork")
    policy = prefork.Adaptive(min_workers=1, max_workers=3, min_spare=0, max_spare=1, scale_down_after=30)
    server = prefork.TCPServer(("127.0.0.1", 0), Sleepy, policy=policy)
    with serving(server, workers=1), ThreadPoolExecutor(3) as clients:
        first = clients.submit(sleepy, server.server_address, 2.5)
        wait_for(lambda: server.stats()["workers"][0]["state"] == "busy", message="the only worker busy")
        wait_for(lambda: "0 idle, min_spare 0..max_spare 1: holding 1" in server.stats()["master"]["target_reason"],
                 message=lambda: f"a pool at rest with its worker busy: {server.stats()['master']}")
        queued = [clients.submit(sleepy, server.server_address, 0.5) for _ in range(2)]
        sampler = Sampler(lambda: len(server.stats()["workers"]))
        wait_for(lambda: server.stats()["master"]["target_workers"] >= 2, timeout=5,
                 message=lambda: f"growth: {server.stats()['master']}")
        assert all(f.result().startswith(b"done ") for f in [first, *queued])
        samples = sampler.stop()
    grew = [r.getMessage() for r in caplog.records if r.getMessage().startswith("pool target 1 -> 2")]
    assert grew and "0 idle < min_spare 0 + backlog 2: growing by 1" in grew[0], grew
    assert 2 <= max(count for _, count in samples) <= 3, samples


@pytest.mark.timeout(30)
def test_scale_down_retires_idle_workers_and_leaves_a_request_in_hand_alone():
    """The long request goes to the worker that has waited longest, the oldest (the kernel's
    choice): a policy that retired the oldest would take it mid-request."""
    policy = prefork.Adaptive(min_workers=1, max_workers=3, min_spare=1, max_spare=1, scale_down_after=1)
    server = prefork.TCPServer(("127.0.0.1", 0), Sleepy, policy=policy)

    def workers():
        return server.stats()["workers"]

    with serving(server, workers=1), ThreadPoolExecutor(3) as clients:
        burst = [clients.submit(sleepy, server.server_address, 1.0) for _ in range(3)]
        wait_for(lambda: len(workers()) == 3, timeout=10, message=lambda: f"3 workers: {workers()}")
        assert all(f.result().startswith(b"done ") for f in burst)
        wait_for(lambda: all(w["state"] == "idle" for w in workers()), message="an idle pool of 3")
        long_request = clients.submit(sleepy, server.server_address, 3.0)
        busy = wait_for(lambda: [w for w in workers() if w["state"] == "busy"], message="the long request taken")
        sampler = Sampler(lambda: [(w["pid"], w["state"]) for w in workers()])
        answer = long_request.result()
        during = sampler.stop()
        assert answer == f"done {busy[0]['pid']}\n".encode()
        wait_for(lambda: len(workers()) == 1, timeout=10,
                 message=lambda: f"back to 1 worker: {[(w, process_state(w['pid'])) for w in workers()]}")
    sizes = [len(seen) for _, seen in during]
    assert min(sizes) == 2 and sizes[-1] == 2, sizes                  # shrank while the request was in hand
    states_of_busy_worker = [state for _, seen in during for pid, state in seen if pid == busy[0]["pid"]]
    assert "busy" in states_of_busy_worker and "stopping" not in states_of_busy_worker, states_of_busy_worker


@pytest.mark.parametrize("args, expected", [
    (["--min-workers", "4", "--max-workers", "2"], "--min-workers must not be above --max-workers (2), got 4"),
    (["--min-spare", "3", "--max-spare", "2"], "--max-spare must not be below --min-spare (3), got 2"),
    (["--threads", "4", "--min-spare", "2", "--max-spare", "3"],
     "--max-spare must be at least --min-spare + --threads - 1 (5)"),
    (["--max-workers", "2", "--min-spare", "5", "--max-spare", "5"],
     "--min-spare must not be above --max-workers x --threads (2)"),
    (["--max-workers", "5000"], "argument --max-workers: must be between 1 and 4096, got 5000"),
    (["--min-spare", "-1"], "argument --min-spare: must be between 0 and"),
    (["--scale-down-after", "-1"], "argument --scale-down-after: must be at least 0, got -1.0"),
    (["-w", "3"], "--workers applies to --policy prefork only, not --policy adaptive (an adaptive pool takes "
                  "--min-workers and --max-workers)"),
])
def test_bad_adaptive_settings_get_one_clear_line(args, expected):
    returncode, stdout, stderr = run_cli("serve", "--policy", "adaptive", *args, "-b", "127.0.0.1:0", cwd=TESTS)
    assert returncode == 2 and stderr.count("\n") == 1 and stderr.startswith("prefork: error: "), stderr
    assert expected in stderr, stderr


def test_adaptive_settings_with_another_policy_are_refused_and_the_environment_is_named():
    returncode, _, stderr = run_cli("serve", "--min-spare", "2", "-b", "127.0.0.1:0", cwd=TESTS)
    assert returncode == 2 and stderr == "prefork: error: --min-spare applies to --policy adaptive only, " \
                                         "not --policy prefork\n"
    from_environment = subprocess.run(
        [sys.executable, "-m", "prefork", "check-config", "--policy", "adaptive"], cwd=TESTS, capture_output=True,
        text=True, timeout=20, env=dict(os.environ, PREFORK_MAX_WORKERS="2", PREFORK_MIN_WORKERS="3"))
    assert from_environment.returncode == 2 and from_environment.stderr == \
        "prefork: error: PREFORK_MIN_WORKERS must not be above PREFORK_MAX_WORKERS (2), got 3\n"
