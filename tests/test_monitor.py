import os
import subprocess
import sys

from prefork.monitor import Monitor


def test_samples_a_live_process_and_returns_none_once_it_is_gone():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        monitor = Monitor(1.0)
        sample = monitor.sample(child.pid)
        assert 0 < sample.uss <= sample.rss and sample.num_fds >= 3 and sample.num_threads >= 1
        assert monitor.sample(child.pid).cpu_percent >= 0
    finally:
        child.kill()
        child.wait()
    assert monitor.sample(child.pid) is None


def test_unknown_pid_is_none():
    assert Monitor(1.0).sample(2**22 + 12345) is None
    assert Monitor(1.0).sample(os.getpid()).rss > 0


def test_a_read_that_fails_midway_is_none_not_an_exception(monkeypatch):
    import psutil

    def broken(self):
        raise ValueError("smaps_rollup cut short")

    monkeypatch.setattr(psutil.Process, "memory_full_info", broken)
    assert Monitor(1.0).sample(os.getpid()) is None
