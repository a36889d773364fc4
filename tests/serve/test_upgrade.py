"""What a new master makes of the descriptors an old master passed it (upgrade.inherited)."""

import contextlib
import os
import signal
import socket

from prefork.serve import pidfile, upgrade
from prefork.serve.upgrade import Successor, inherited


def test_systemds_sockets_come_back_as_activated_with_their_names_and_the_variables_go():
    own, web, local = (socket.socket() for _ in range(3))
    environ = {"PREFORK_FDS": f"{own.fileno()},{web.fileno()},{local.fileno()}",
               "PREFORK_SYSTEMD_FDS": f"{web.fileno()}=web:{local.fileno()}=a=b,c",   # names may hold = and ,
               "PREFORK_UPGRADE_FD": "9", "PREFORK_PREDECESSOR": "1234", "OTHER": "kept"}
    got = inherited(environ)
    assert [s.fileno() for s in got.listeners] == [own.fileno()]
    assert [(s.fileno(), name) for s, name in got.activated] == [(web.fileno(), "web"), (local.fileno(), "a=b,c")]
    assert got.control is None and got.ready == 9 and got.predecessor == 1234 and environ == {"OTHER": "kept"}
    for sock in (own, web, local):
        assert not sock.get_inheritable()
    for sock in [*got.listeners, *(s for s, _ in got.activated)]:
        sock.detach()                  # the same fds as ours: closed once, below, not again at collection
    for sock in (own, web, local):
        sock.close()


def test_a_first_master_inherits_nothing():
    assert inherited({}) == ([], [], None, None, None, None)


# -- the new master's check that the old one still runs ------------------------------------------

def _fork(body):
    """Fork a child that runs body() and exits: 0 if body returned, 1 if it raised."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()
            code = 0
        finally:
            os._exit(code)
    return pid


def test_the_new_master_follows_the_old_one_by_a_pidfd_never_by_its_pid(monkeypatch):
    """The old master that exited is gone for the Successor, whatever process has its pid (or its
    prefork title) by then: with a pid check that says "a live master" of every pid, it still is."""
    monkeypatch.setattr(upgrade, "is_master", lambda pid: True, raising=False)
    monkeypatch.setattr(pidfile, "is_master", lambda pid: True)
    answers_r, answers_w = os.pipe()
    asks_r, asks_w = os.pipe()

    def run_new_master():                     # the child of the old master, as in an upgrade
        def say(successor):
            os.write(answers_w, b"1" if successor.other_master_serves else b"0")
        os.close(answers_r)
        os.close(asks_w)                       # for a read of asks_r to end should the test fail
        fds, old = set(os.listdir("/proc/self/fd")), os.getppid()
        successor, in_child = Successor(None, []), Successor(None, [], predecessor=old)
        in_child.close(in_child=True)          # as in a worker forked by the new master
        say(successor)
        closed = Successor(None, [])
        closed.close()
        say(closed)                             # a roll-back: the master's _finish asks after close()
        os.read(asks_r, 1)                     # the old master was killed and reaped: its pid is free
        say(successor)
        say(Successor(None, [], predecessor=old))            # it died before we could open a pidfd
        successor.close()
        say(successor)                          # after close(), the answer close() had
        os.write(answers_w, b"1" if set(os.listdir("/proc/self/fd")) == fds else b"0")

    def run_old_master():
        _fork(run_new_master)
        for fd in (answers_r, answers_w, asks_r, asks_w):
            os.close(fd)
        while True:
            signal.pause()

    old_master = _fork(run_old_master)
    os.close(answers_w)
    os.close(asks_r)
    try:
        with os.fdopen(answers_r, "rb", buffering=0) as answers:
            assert answers.read(1) == b"1", "the old master runs"
            assert answers.read(1) == b"1", "it runs, as close() saw"
            os.kill(old_master, signal.SIGKILL)
            os.waitpid(old_master, 0)
            os.write(asks_w, b"?")
            assert answers.read(1) == b"0", "the old master exited"
            assert answers.read(1) == b"0", "it had exited before the Successor was made"
            assert answers.read(1) == b"0", "still gone after close()"
            assert answers.read(1) == b"1", "every pidfd closed"
            assert answers.read(1) == b"", "the new master exits"
    finally:
        os.close(asks_w)
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(old_master, signal.SIGKILL)
            os.waitpid(old_master, 0)
