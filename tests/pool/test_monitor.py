import os
import subprocess
import sys
import time

from prefork.pool.monitor import Monitor


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


def test_a_round_of_slow_samples_is_spread_over_passes(monkeypatch):
    """Sampling many large workers must not hold up the master's loop: a pass does SAMPLE_BUDGET."""
    import time
    from types import SimpleNamespace

    from prefork.pool import monitor as monitor_module

    def slow_sample(self, pid):
        time.sleep(0.002)
        return monitor_module.Sample(1, 1, 0.0, 1, 1)

    monkeypatch.setattr(Monitor, "sample", slow_sample)
    workers = [SimpleNamespace(pid=n, sample=None, sampled_requests=None, sampled_at=0.0, reaped=False)
               for n in range(20)]
    monitor = Monitor(1.0)
    come_back = monitor.work([(w, 0, False) for w in workers], now=50.0)
    sampled = sum(1 for w in workers if w.sample)
    assert 1 <= sampled <= 5 and come_back == 50.0          # the rest on the next pass, at once
    passes = 1
    while come_back == 50.0:
        come_back = monitor.work([(w, 0, False) for w in workers], now=50.0)
        passes += 1
    assert all(w.sample for w in workers) and come_back == 51.0 and passes >= 4
    # The next round skips idle workers whose sample is fresh: nothing to do till the one after.
    assert monitor.work([(w, 0, False) for w in workers], now=51.5) == 52.5


def test_the_first_sample_of_a_busy_process_says_it_is_busy():
    """psutil's first cpu_percent() compares with nothing and says 0.0: a busy new worker read as idle.
    The first sample says the CPU used since the process started."""
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert Monitor(1.0).sample(child.pid).cpu_percent > 30
    finally:
        child.kill()
        child.wait()
