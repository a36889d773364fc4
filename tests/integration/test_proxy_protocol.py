"""--proxy-protocol through the CLI: every handler kind sees the client a PROXY header names, behind a real
HAProxy (send-proxy, send-proxy-v2) and nginx's stream module (proxy_protocol on); peers not allowed are
refused, malformed headers closed."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading

import pytest

from conftest import REPO, run_cli, wait_for

sys.path.insert(0, os.path.join(REPO, "scripts"))
import nginx_lb  # noqa: E402

pytestmark = pytest.mark.timeout(60)

TESTS = os.path.join(REPO, "tests")
HANDLERS = {"classic": "apps.handlers:PeerEcho", "parking": "apps.handlers:ParkedPeerEcho"}


def ask(address, payload, timeout=10):
    """Send payload, read until the server closes or a line arrives."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(payload)
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
        return reply, sock.getsockname()


@pytest.mark.parametrize("kind", sorted(HANDLERS))
def test_the_header_names_the_client_for_classic_and_parking_handlers(serve_cli, kind):
    server = serve_cli(HANDLERS[kind], "-w", "1", "-b", "127.0.0.1:0", "--proxy-protocol", "*", cwd=TESTS)
    (address,) = server.addresses()
    server.wait_workers(1)
    v1 = b"PROXY TCP4 203.0.113.7 192.0.2.1 40123 80\r\nhello\n"
    assert ask(address, v1)[0] == b"203.0.113.7 40123\n"
    v2 = (b"\r\n\r\n\x00\r\nQUIT\n\x21\x21\x00\x24" + socket.inet_pton(socket.AF_INET6, "2001:db8::9")
          + socket.inet_pton(socket.AF_INET6, "2001:db8::1") + (51000).to_bytes(2, "big") + (443).to_bytes(2, "big"))
    assert ask(address, v2 + b"hello\n")[0] == b"2001:db8::9 51000\n"
    local = b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"          # LOCAL (a health check): the proxy's own address
    reply, mine = ask(address, local + b"hello\n")
    assert reply == f"{mine[0]} {mine[1]}\n".encode()
    for bad in (b"GET / HTTP/1.1\r\n\r\n", b"PROXY TCP4 1.2.3 4.5.6.7 1 2\r\nhello\n"):
        assert ask(address, bad)[0] == b"", "a connection without a good header is closed unanswered"


def test_a_peer_not_allowed_is_refused_and_a_late_header_times_out(serve_cli):
    server = serve_cli(HANDLERS["parking"], "-w", "1", "-b", "127.0.0.1:0", "--proxy-protocol", "*",
                       "--proxy-allow", "10.0.0.0/8", "--log-level", "debug", cwd=TESTS)
    (address,) = server.addresses()
    server.wait_workers(1)
    assert ask(address, b"PROXY TCP4 203.0.113.7 192.0.2.1 40123 80\r\nhello\n")[0] == b""
    server.wait_log(r"refused a connection from \('127\.0\.0\.1', \d+\): not among the proxies allowed")
    allowed = serve_cli(HANDLERS["classic"], "-w", "1", "-b", "127.0.0.1:0", "--proxy-protocol", "*",
                        "--client-timeout", "1", "--log-level", "debug", cwd=TESTS)
    (address,) = allowed.addresses()
    allowed.wait_workers(1)
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"PROXY TCP4 203.0.113.7 ")                  # and no more
        assert sock.recv(100) == b""
    allowed.wait_log(r"no whole PROXY header within 1 s")


def test_settings_for_the_proxy_protocol_that_cannot_work_are_one_line_errors():
    for args, message in [
        (["--proxy-allow", "10.0.0.1/8", "--proxy-protocol", "*"], "--proxy-allow"),
        (["--proxy-protocol", "127.0.0.1:9"], "--proxy-protocol 127.0.0.1:9 names no -b/--bind"),
        (["--proxy-allow", "10.0.0.0/8"], "--proxy-allow applies with --proxy-protocol only"),
        (["-b", "udp://127.0.0.1:0", "--proxy-protocol", "udp://127.0.0.1:0"], "stream listeners only"),
    ]:
        returncode, _, stderr = run_cli("serve", "hello", *args)
        assert returncode == 2 and message in stderr and len(stderr.strip().splitlines()) == 1, stderr


HAPROXY_CONFIG = """
global
    maxconn 1000
defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
listen v1
    bind 127.0.0.1:{v1}
    server prefork 127.0.0.1:{backend} send-proxy
listen v2
    bind 127.0.0.1:{v2}
    server prefork 127.0.0.1:{backend} send-proxy-v2
"""


@pytest.mark.skipif(not shutil.which("haproxy"), reason="haproxy is not installed (apt-get install haproxy)")
def test_behind_haproxy_every_request_sees_its_own_client_with_v1_and_v2(serve_cli, tmp_path):
    server = serve_cli("--wsgi", "apps.wsgi_apps:app", "-w", "2", "-b", "127.0.0.1:0", "--proxy-protocol", "*",
                       cwd=TESTS)
    (backend,) = server.addresses()
    server.wait_workers(2)
    ports = {"v1": nginx_lb.free_port(), "v2": nginx_lb.free_port()}
    config = tmp_path / "haproxy.cfg"
    config.write_text(HAPROXY_CONFIG.format(backend=backend[1], **ports))
    haproxy = subprocess.Popen(["haproxy", "-f", str(config), "-db"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for version, port in ports.items():
            wait_for(lambda: _connects(port), message=f"haproxy listening on {port}")
            failures, seen = [], []

            def clients():
                for _ in range(100):
                    try:
                        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                            sock.sendall(b"GET /environ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                            reply = b""
                            while chunk := sock.recv(65536):
                                reply += chunk
                            seen.append((sock.getsockname()[1], reply))
                    except OSError as exc:
                        failures.append(exc)
            threads = [threading.Thread(target=clients) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert not failures and len(seen) == 400, version
            for client_port, reply in seen:
                environ = json.loads(reply.split(b"\r\n\r\n", 1)[1])
                assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("127.0.0.1", str(client_port)), version
    finally:
        os.killpg(haproxy.pid, signal.SIGKILL)
        haproxy.wait(10)


@pytest.mark.timeout(150)
def test_behind_nginx_stream_proxy_protocol_the_handler_sees_the_client(serve_cli, short_tmp):
    try:
        nginx, load_module = nginx_lb.find_nginx(install=nginx_lb.can_install())
    except nginx_lb.Missing as exc:
        pytest.skip(str(exc))
    server = serve_cli(HANDLERS["parking"], "-w", "1", "-b", "127.0.0.1:0", "--proxy-protocol", "*", cwd=TESTS)
    (backend,) = server.addresses()
    server.wait_workers(1)
    port = nginx_lb.free_port()
    conf = os.path.join(short_tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"{load_module}daemon off;\npid {short_tmp}/nginx.pid;\nerror_log {short_tmp}/error.log;\n"
                f"events {{ }}\nstream {{ server {{ listen 127.0.0.1:{port}; proxy_protocol on; "
                f"proxy_pass 127.0.0.1:{backend[1]}; }} }}\n")
    proxy = subprocess.Popen([nginx, "-c", conf, "-p", short_tmp + "/"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: _connects(port), message="nginx listening")
        for _ in range(5):
            reply, mine = ask(("127.0.0.1", port), b"hello\n")
            assert reply == f"127.0.0.1 {mine[1]}\n".encode()
    finally:
        os.killpg(proxy.pid, signal.SIGKILL)
        proxy.wait(10)


def _connects(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False
