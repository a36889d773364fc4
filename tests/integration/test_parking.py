"""Parking through `prefork serve`: idle connections cost no worker, move on retirement, close on a stop."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO, wait_for

TESTS = os.path.join(REPO, "tests")
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
HELLO_REPLY_END = b"Hello, World!"


def serve(serve_cli, *args):
    return serve_cli(*args, cwd=TESTS)


def connect(address, timeout=10):
    return socket.create_connection(address, timeout=timeout)


def receive_until(sock, marker, count=1):
    data = b""
    while data.count(marker) < count:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"closed after {data!r}")
        data += chunk
    return data


def line(sock, text):
    """Send a line to ParkedPidEcho: (pid, lines so far on this connection)."""
    sock.sendall(text + b"\n")
    reply = receive_until(sock, b"\n")
    pid, count, echoed = reply.split(b"|", 2)
    assert echoed == text + b"\n", reply
    return int(pid), int(count)


def serve_controlled(serve_cli, short_tmp, *args):
    """`prefork serve ... --control PATH`: (server, its first address, the control socket's path)."""
    control = os.path.join(short_tmp, "ctl.sock")
    server = serve(serve_cli, *args, "-b", "127.0.0.1:0", "--control", control)
    return server, server.addresses()[0], control


def stats(control):
    out = subprocess.run([sys.executable, "-m", "prefork", "ctl", "--control", control, "status", "--json"],
                         cwd=REPO, capture_output=True, text=True, timeout=15)
    return json.loads(out.stdout)


def test_two_idle_keepalive_clients_do_not_delay_a_third(serve_cli, short_tmp):
    """Before: a default two-worker pool kept the third client waiting 5.1 s."""
    server, address, control = serve_controlled(serve_cli, short_tmp, "hello", "-w", "2")
    server.wait_workers(2)
    idle = [connect(address) for _ in range(2)]
    for sock in idle:
        sock.sendall(GET)
        receive_until(sock, HELLO_REPLY_END)
    started = time.monotonic()
    with connect(address) as third:
        third.sendall(GET)
        assert receive_until(third, HELLO_REPLY_END).startswith(b"HTTP/1.1 200 OK")
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"the third client waited {elapsed:.2f} s"
    workers = wait_for(lambda: (w := stats(control)["workers"]) and sum(x["connections"] for x in w) == 2 and w,
                       message="two connections held")
    assert all(w["busy_threads"] == 0 for w in workers), "parked connections are not busy workers"
    for sock in idle:
        sock.close()
    wait_for(lambda: sum(x["connections"] for x in stats(control)["workers"]) == 0, message="closed while parked")


def test_pipelined_requests_and_a_request_half_received_when_the_connection_parks(serve_cli):
    server = serve(serve_cli, "hello", "-w", "1", "-b", "127.0.0.1:0")
    address = server.addresses()[0]
    server.wait_workers(1)
    with connect(address) as sock:
        sock.sendall(GET * 3 + b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HT")
        replies = receive_until(sock, b"HTTP/1.1 200 OK", 4)
        assert replies.count(HELLO_REPLY_END) == 3            # HEAD: headers only
        with connect(address) as other:                       # the half request holds nobody up
            other.sendall(GET)
            receive_until(other, HELLO_REPLY_END)
        sock.sendall(b"TP/1.1\r\nContent-Length: 4\r\n\r\nbo")
        time.sleep(0.05)
        sock.sendall(b"dy" + GET)
        assert receive_until(sock, HELLO_REPLY_END, 2).count(b"HTTP/1.1 200 OK") == 2
    assert "Traceback" not in server.log()


def test_a_chatty_connection_does_not_starve_a_quiet_one(serve_cli):
    """One request per connection per round: a line that arrives behind 50,000 pipelined ones from
    another client is served long before them (served all at once, it would be number 50,001)."""
    server = serve(serve_cli, "apps.handlers:Sequence", "-w", "1", "-b", "127.0.0.1:0")
    address = server.addresses()[0]
    server.wait_workers(1)
    burst = 50000
    with connect(address) as chatty, connect(address) as quiet:
        replies = []

        def read_chatty():
            data = b""
            while data.count(b"\n") < burst:
                data += chatty.recv(1 << 20)
            replies.append(data)
        reader = threading.Thread(target=read_chatty, daemon=True)
        reader.start()
        chatty.sendall(b"c\n" * burst)
        quiet.sendall(b"q\n")
        quiet_number = int(receive_until(quiet, b"\n"))
        reader.join(30)
    assert replies, "the chatty client's replies did not all come"
    chatty_numbers = [int(n) for n in replies[0].split()]
    assert chatty_numbers == sorted(chatty_numbers) and len(chatty_numbers) == burst
    assert quiet_number < burst // 2, f"the quiet line was number {quiet_number} of {burst + 1}"


def test_idle_and_half_sent_connections_close_after_their_timeouts(serve_cli):
    server = serve(serve_cli, "hello", "-w", "1", "-b", "127.0.0.1:0", "--keepalive-timeout", "1.5",
                   "--client-timeout", "1", "--log-level", "debug")
    address = server.addresses()[0]
    server.wait_workers(1)
    with connect(address) as idle, connect(address) as half:
        idle.sendall(GET)
        receive_until(idle, HELLO_REPLY_END)
        half.sendall(b"GET / HTTP/1.1\r\nHo")
        started = time.monotonic()
        assert half.recv(100) == b""
        half_closed = time.monotonic() - started
        assert idle.recv(100) == b""
        idle_closed = time.monotonic() - started
    assert 0.9 <= half_closed <= 2.5, half_closed            # the client timeout, from its first bytes
    assert 1.4 <= idle_closed <= 3.0, idle_closed            # the keep-alive timeout
    server.wait_log(r"idle for")


def test_the_connection_cap_holds_and_says_so(serve_cli):
    server = serve(serve_cli, "apps.handlers:ParkedPidEcho", "-w", "1", "-b", "127.0.0.1:0", "--max-connections", "3")
    address = server.addresses()[0]
    server.wait_workers(1)
    held = [connect(address) for _ in range(3)]
    for sock in held:
        line(sock, b"hi")
    with connect(address, timeout=0.5) as fourth:
        fourth.sendall(b"waiting\n")
        with pytest.raises(TimeoutError):
            fourth.recv(100)                                   # queued: not accepted past the cap
        server.wait_log(r"holds 3 connections \(--max-connections 3\)")
        held.pop().close()
        fourth.settimeout(10)
        assert receive_until(fourth, b"\n").endswith(b"|1|waiting\n")
    for sock in held:
        assert line(sock, b"still")[1] == 2
        sock.close()


def test_a_handler_that_raises_closes_only_its_connection(serve_cli):
    server = serve(serve_cli, "apps.handlers:ParkedPidEcho", "-w", "1", "-b", "127.0.0.1:0")
    address = server.addresses()[0]
    (pid,) = server.wait_workers(1)
    with connect(address) as bystander, connect(address) as victim:
        assert line(bystander, b"a") == (pid, 1)
        victim.sendall(b"boom\n")
        assert victim.recv(100) == b""
        assert line(bystander, b"b") == (pid, 2)
    assert server.wait_log(r"RuntimeError: boom requested")


def test_a_graceful_stop_serves_what_arrived_then_closes(serve_cli):
    server = serve(serve_cli, "apps.handlers:ParkedPidEcho", "-w", "1", "-b", "127.0.0.1:0")
    address = server.addresses()[0]
    server.wait_workers(1)
    with connect(address) as slow, connect(address) as waiting, connect(address) as idle:
        for sock in (slow, waiting, idle):
            line(sock, b"hello")
        slow.sendall(b"sleep\n")                               # holds the worker 1 s
        time.sleep(0.2)
        waiting.sendall(b"arrived\n")                          # arrives while the worker is busy
        os.kill(server.pid, signal.SIGTERM)
        assert receive_until(slow, b"\n").endswith(b"|2|sleep\n")
        assert receive_until(waiting, b"\n").endswith(b"|2|arrived\n")
        for sock in (slow, waiting, idle):
            assert sock.recv(100) == b""
    assert server.proc.wait(15) == 0


@pytest.mark.parametrize("how", ["reload", "recycle", "scale-down"])
def test_parked_connections_move_to_live_workers_instead_of_closing(serve_cli, how):
    workers = "1" if how == "scale-down" else "2"
    extra = ("--max-requests", "25") if how == "recycle" else ()
    server = serve(serve_cli, "apps.handlers:ParkedPidEcho", "-w", workers, "-b", "127.0.0.1:0", *extra)
    address = server.addresses()[0]
    old = server.wait_workers(int(workers))
    if how == "scale-down":
        os.kill(server.pid, signal.SIGTTIN)
        old = server.wait_workers(2)
    clients = [connect(address) for _ in range(20)]
    first = [line(sock, b"one") for sock in clients]
    sent = [1] * len(clients)
    assert {pid for pid, _ in first} <= set(old)
    if how == "reload":
        os.kill(server.pid, signal.SIGHUP)
        new = server.wait_replaced(old, 2, timeout=20)
    elif how == "scale-down":
        os.kill(server.pid, signal.SIGTTOU)
        server.wait_log(r"retired \(the pool shrinks\)")
        new = server.wait_workers(1)
    else:
        def traffic_until_both_recycled():                    # every connection sends, past the caps
            for index, sock in enumerate(clients):
                sent[index] += 1
                assert line(sock, b"load")[1] == sent[index]
            return not set(old) & {w.pid for w in server.workers()}
        wait_for(traffic_until_both_recycled, timeout=20, message=lambda: f"both first workers recycled:\n{server.log()}")
        new = [w.pid for w in server.workers()]
    second = [line(sock, b"two") for sock in clients]          # every connection is still open
    assert [count for _, count in second] == [n + 1 for n in sent], "the handler's state moved with it"
    retired = set(old) - set(new)
    assert retired and not {pid for pid, _ in second} & retired
    assert server.wait_log(r"handed \d+ connection\(s\) over")
    for sock in clients:
        sock.close()
    assert "Traceback" not in server.log()


def test_a_connection_whose_state_cannot_move_is_closed_on_reload(serve_cli):
    server = serve(serve_cli, "apps.handlers:PinnedEcho", "-w", "1", "-b", "127.0.0.1:0")
    address = server.addresses()[0]
    old = server.wait_workers(1)
    with connect(address) as sock:
        line(sock, b"one")
        os.kill(server.pid, signal.SIGHUP)
        assert sock.recv(100) == b""
    server.wait_replaced(old, 1, timeout=20)


def test_with_threads_and_preload_each_thread_parks_and_a_reload_moves_them(serve_cli, short_tmp):
    server, address, control = serve_controlled(serve_cli, short_tmp, "apps.handlers:ParkedPidEcho", "-w", "2",
                                                "--threads", "2", "--preload")
    old = server.wait_workers(2)
    clients = [connect(address) for _ in range(40)]
    assert {line(sock, b"one")[0] for sock in clients} <= set(old)
    held = [w["connections"] for w in stats(control)["workers"]]
    assert sum(held) == 40 and min(held) >= 10, f"one worker collected them all: {held}"
    os.kill(server.pid, signal.SIGHUP)
    new = server.wait_replaced(old, 2, timeout=20)
    answers = [line(sock, b"two") for sock in clients]
    assert {pid for pid, _ in answers} <= set(new) and [count for _, count in answers] == [2] * 40
    for sock in clients:
        sock.close()


def test_an_adaptive_pool_does_not_grow_for_parked_connections(serve_cli, short_tmp):
    server, address, control = serve_controlled(serve_cli, short_tmp, "apps.handlers:ParkedPidEcho", "--policy",
                                                "adaptive", "--min-workers", "1", "--max-workers", "4",
                                                "--min-spare", "0", "--max-spare", "1")
    server.wait_workers(1)
    clients = [connect(address) for _ in range(100)]
    for sock in clients:
        line(sock, b"hi")
    time.sleep(1.5)                                            # several of the master's passes
    workers = stats(control)["workers"]
    assert len(workers) == 1 and workers[0]["connections"] == 100
    for sock in clients:
        sock.close()


def test_the_open_file_limit_is_raised_for_max_connections(serve_cli, tmp_path):
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 5000:
        pytest.skip(f"the hard open-file limit is {hard}")
    server = serve_cli("echo", "-w", "1", "-b", "127.0.0.1:0", "--max-connections", "4000",
                       prefix=("prlimit", "--nofile=1024:" + str(hard if hard != resource.RLIM_INFINITY else 65536)))
    server.wait_log(r"raised the open-file limit \(RLIMIT_NOFILE\) from 1024 to 4256")
    log = server.wait_log(r"ready \(pid \d+")                 # prlimit execs: the master is server.pid
    pid = int(re.search(r"ready \(pid (\d+)", log).group(1))
    with open(f"/proc/{pid}/limits") as f:
        limits = f.read()
    assert "Max open files            4256" in limits, limits


def test_a_burst_of_clients_is_spread_over_the_workers(serve_cli, short_tmp):
    """EPOLLEXCLUSIVE wakes the first idle worker: without the fair share, 40 clients landed 4 and 36."""
    server, address, control = serve_controlled(serve_cli, short_tmp, "apps.handlers:ParkedPidEcho", "-w", "2")
    server.wait_workers(2)
    clients = [connect(address) for _ in range(40)]
    for sock in clients:
        line(sock, b"hi")
    held = sorted(w["connections"] for w in stats(control)["workers"])
    assert sum(held) == 40 and 14 <= held[0] <= held[1] <= 26, held
    for sock in clients:
        sock.close()


def test_a_reload_moves_a_thousand_parked_connections(serve_cli):
    """Before the batches: one message per connection overflowed the channel's queue, and a HUP closed
    more than half of 1,000 parked connections."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2500:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(2500, hard), hard))
    server = serve(serve_cli, "apps.handlers:ParkedPidEcho", "-w", "2", "-b", "127.0.0.1:0")
    address = server.addresses()[0]
    old = server.wait_workers(2)
    clients = [connect(address) for _ in range(1000)]
    for sock in clients:
        line(sock, b"one")
    os.kill(server.pid, signal.SIGHUP)
    new = server.wait_replaced(old, 2, timeout=20)
    answers = [line(sock, b"two") for sock in clients]          # raises if the server closed one
    assert {pid for pid, _ in answers} <= set(new) and {count for _, count in answers} == {2}
    assert "could not hand" not in server.log()
    for sock in clients:
        sock.close()


def test_a_state_that_cannot_move_closes_its_own_connection_only_and_finish_runs_where_it_ends(serve_cli):
    server = serve(serve_cli, "apps.handlers:StatefulEcho", "-w", "1", "-b", "127.0.0.1:0")
    address = server.addresses()[0]
    old = server.wait_workers(1)
    with connect(address) as plain, connect(address) as locked:
        line(plain, b"one")
        line(locked, b"lock")
        os.kill(server.pid, signal.SIGHUP)
        assert receive_until(locked, b"\n") == b"bye\n"            # closed where it was, after finish()
        assert locked.recv(100) == b""
        (new,) = server.wait_replaced(old, 1, timeout=20)
        assert line(plain, b"two") == (new, 2), "moved, without a goodbye from the old worker"
    log = server.log()
    assert "cannot pickle" in log and "crashed" not in log
