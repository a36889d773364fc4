"""TLS through the CLI: classic and parking handlers get an ssl.SSLSocket, mutual TLS, handshakes that
never stall a worker, certificates rotated by `prefork ctl reload` without a failed request, and one-line
errors for files that cannot be used. Certificates are made by trustme, per test."""

import http.client
import json
import os
import shutil
import socket
import ssl
import threading
import time

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from conftest import REPO, run_cli, wait_for
from prefork.tls import server_context

pytestmark = pytest.mark.timeout(60)

TESTS = os.path.join(REPO, "tests")
HANDLERS = {"classic": "apps.handlers:TLSEcho", "parking": "apps.handlers:ParkedTLSEcho"}


class Certificates:
    """A CA and files in a directory: the server's certificate and key, and a client's."""

    def __init__(self, path, name="localhost"):
        self.path = path
        self.ca = trustme.CA()
        self.issue(name)
        client = self.ca.issue_cert("client@example.org", common_name="the-client")
        self.client_cert = self.write("client.pem", client.private_key_and_cert_chain_pem.bytes())
        self.ca_file = self.write("ca.pem", self.ca.cert_pem.bytes())

    def issue(self, common_name, ca=None):
        """The server's certificate (SAN 127.0.0.1 and localhost), written over cert.pem and key.pem."""
        server = (ca or self.ca).issue_cert("127.0.0.1", "localhost", common_name=common_name)
        self.cert = self.write("cert.pem", b"".join(pem.bytes() for pem in server.cert_chain_pems))
        self.key = self.write("key.pem", server.private_key_pem.bytes())

    def write(self, name, data):
        path = os.path.join(self.path, name)
        with open(path + ".new", "wb") as file:
            file.write(data)
        os.replace(path + ".new", path)          # as a deploy would: a reader never sees half a file
        return path

    def encrypted_key(self, password):
        """The server's key, encrypted with password, in encrypted.pem."""
        with open(self.key, "rb") as file:
            key = serialization.load_pem_private_key(file.read(), None)
        return self.write("encrypted.pem", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password)))

    def client_context(self, with_cert=False, ca=None):
        context = ssl.create_default_context(cafile=self.ca_file if ca is None else ca)
        if with_cert:
            context.load_cert_chain(self.client_cert)
        return context

    def tls_args(self):
        return ["--certfile", self.cert, "--keyfile", self.key]


@pytest.fixture
def certs(tmp_path):
    return Certificates(str(tmp_path))


def server_name(sock):
    return dict(pair for rdn in sock.getpeercert()["subject"] for pair in rdn)["commonName"]


def tls_connect(address, context, timeout=10):
    raw = socket.create_connection(address, timeout=timeout)
    return context.wrap_socket(raw, server_hostname="localhost")


def lines(sock, count):
    """Send count lines, read count answers."""
    reader = sock.makefile("rb")
    answers = []
    for _ in range(count):
        sock.sendall(b"hi\n")
        answers.append(reader.readline().decode())
    return answers


@pytest.mark.parametrize("kind", sorted(HANDLERS))
def test_handlers_get_an_ssl_socket_and_a_plain_listener_beside_stays_plain(serve_cli, certs, kind, short_tmp):
    unix = os.path.join(short_tmp, "plain.sock")
    server = serve_cli(HANDLERS[kind], "-w", "1", "-b", "127.0.0.1:0", "-b", f"unix:{unix}", *certs.tls_args(),
                       "--tls", "127.0.0.1:0", cwd=TESTS)
    secure, plain = server.addresses()
    server.wait_workers(1)
    server.wait_log(r"TLS on 127\.0\.0\.1:\d+: certificate .*cert\.pem, client certificates none")
    with tls_connect(secure, certs.client_context()) as sock:
        assert server_name(sock) == "localhost"
        answers = lines(sock, 3)                     # several requests on one connection
    assert len(answers) == 3 and all(a.startswith("SSLSocket TLSv1.3 -") for a in answers), answers
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(plain)
        assert lines(sock, 1)[0].startswith("socket None -")


@pytest.mark.parametrize("kind", sorted(HANDLERS))
def test_mutual_tls_handlers_read_the_client_certificate(serve_cli, certs, kind):
    server = serve_cli(HANDLERS[kind], "-w", "1", "-b", "127.0.0.1:0", *certs.tls_args(), "--ca-certs",
                       certs.ca_file, "--cert-reqs", "required", "--log-level", "debug", cwd=TESTS)
    (address,) = server.addresses()
    server.wait_workers(1)
    with tls_connect(address, certs.client_context(with_cert=True)) as sock:
        assert lines(sock, 1)[0].strip() == "SSLSocket TLSv1.3 the-client"
    with pytest.raises((ssl.SSLError, ConnectionError)):     # no certificate: refused
        with tls_connect(address, certs.client_context()) as sock:
            lines(sock, 1)                                     # TLS 1.3 says so at the first read
    server.wait_log("TLS handshake failed")
    optional = serve_cli(HANDLERS[kind], "-w", "1", "-b", "127.0.0.1:0", *certs.tls_args(), "--ca-certs",
                         certs.ca_file, "--cert-reqs", "optional", cwd=TESTS)
    (address,) = optional.addresses()
    optional.wait_workers(1)
    with tls_connect(address, certs.client_context()) as sock:
        assert lines(sock, 1)[0].strip() == "SSLSocket TLSv1.3 -"
    with tls_connect(address, certs.client_context(with_cert=True)) as sock:
        assert lines(sock, 1)[0].strip() == "SSLSocket TLSv1.3 the-client"


@pytest.mark.parametrize("kind", sorted(HANDLERS))
def test_a_stalled_handshake_is_closed_after_the_client_timeout(serve_cli, certs, kind):
    """A client that connects and sends half a ClientHello: the parking worker serves its other
    connections meanwhile; either kind closes it after the client timeout, not before, not much after."""
    server = serve_cli(HANDLERS[kind], "-w", "1", "-b", "127.0.0.1:0", *certs.tls_args(), "--client-timeout", "2",
                       "--log-level", "debug", cwd=TESTS)
    (address,) = server.addresses()
    server.wait_workers(1)
    parked = tls_connect(address, certs.client_context()) if kind == "parking" else None
    if parked is not None:
        lines(parked, 1)                                    # handshaken and parked
    staller = socket.create_connection(address, timeout=10)
    staller.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")   # a ClientHello's first bytes
    began = time.monotonic()
    if parked is not None:
        answered = time.monotonic()
        assert lines(parked, 1)[0].startswith("SSLSocket"), "the parked connection is served meanwhile"
        assert time.monotonic() - answered < 1.5
        parked.close()
    assert staller.recv(100) == b""                        # closed by the server
    waited = time.monotonic() - began
    staller.close()
    assert 1.8 <= waited <= 4.5, waited
    server.wait_log("no TLS handshake within 2 s" if kind == "parking" else "TLS handshake failed")
    with tls_connect(address, certs.client_context()) as sock:     # and the worker serves on
        assert lines(sock, 1)[0].startswith("SSLSocket")


@pytest.mark.parametrize("kind", sorted(HANDLERS))
def test_plain_text_to_a_tls_port_is_closed_and_the_worker_serves_on(serve_cli, certs, kind):
    server = serve_cli(HANDLERS[kind], "-w", "1", "-b", "127.0.0.1:0", *certs.tls_args(), "--log-level", "debug",
                       cwd=TESTS)
    (address,) = server.addresses()
    pids = server.wait_workers(1)
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        while sock.recv(4096):                         # an alert, perhaps, then the close
            pass
    server.wait_log("TLS handshake failed")
    with tls_connect(address, certs.client_context()) as sock:
        assert lines(sock, 1)[0].startswith("SSLSocket")
    assert server.wait_workers(1) == pids, "the same worker"
    assert "Traceback" not in server.log()


def test_an_encrypted_key_with_its_password_file(serve_cli, certs, tmp_path):
    encrypted = certs.encrypted_key(b"s3cret")
    password = certs.write("password", b"s3cret\n")
    server = serve_cli(HANDLERS["parking"], "-w", "1", "-b", "127.0.0.1:0", "--certfile", certs.cert, "--keyfile",
                       encrypted, "--keyfile-password-file", password, cwd=TESTS)
    (address,) = server.addresses()
    server.wait_workers(1)
    with tls_connect(address, certs.client_context()) as sock:
        assert lines(sock, 1)[0].startswith("SSLSocket")


def test_settings_that_cannot_work_are_one_line_errors(certs):
    other = trustme.CA().issue_cert("127.0.0.1")
    mismatched = certs.write("other-key.pem", other.private_key_pem.bytes())
    encrypted = certs.encrypted_key(b"s3cret")
    wrong = certs.write("wrong", b"nope\n")
    missing = os.path.join(certs.path, "missing.pem")
    for args, message in [
        (["--certfile", missing], f"--certfile {missing}: no such file"),
        (["--certfile", certs.cert, "--keyfile", mismatched],
         f"--keyfile {mismatched}: the key does not match the certificate in {certs.cert}"),
        (["--certfile", certs.cert, "--keyfile", encrypted],
         f"--keyfile {encrypted}: the key is encrypted: give its password in --keyfile-password-file"),
        (["--certfile", certs.cert, "--keyfile", encrypted, "--keyfile-password-file", wrong],
         f"--keyfile {encrypted}: cannot decrypt the key: wrong password"),
        (["--certfile", certs.key], f"--certfile {certs.key}: no PEM certificate in it"),
        (["--certfile", certs.cert], f"--certfile {certs.cert}: no PEM private key in it"),
        (["--keyfile", certs.key], "--keyfile applies with --certfile only"),
        ([*certs.tls_args(), "--cert-reqs", "required"], "--cert-reqs required needs --ca-certs"),
        ([*certs.tls_args(), "--ca-certs", certs.ca_file], "--ca-certs applies with --cert-reqs optional or required"),
        ([*certs.tls_args(), "--tls", "127.0.0.1:9"], "--tls 127.0.0.1:9 names no -b/--bind"),
        ([*certs.tls_args(), "-b", "udp://127.0.0.1:0", "--tls", "udp://127.0.0.1:0"], "stream listeners only"),
    ]:
        returncode, stdout, stderr = run_cli("serve", "echo", "-b", "127.0.0.1:0", *args)
        assert returncode == 2, (args, stderr)
        assert message in stderr, (args, stderr)
        assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr, stderr


@pytest.mark.parametrize("preload", [False, True], ids=["workers-load", "preload"])
def test_reload_rotates_the_certificate_without_a_failed_request(serve_cli, certs, short_tmp, preload):
    """Requests on new connections and on a keep-alive one run throughout; the reload swaps the files
    for a certificate from another CA. Every request succeeds; new connections get the new
    certificate; a reload with a broken key fails, and the new certificate keeps serving."""
    control = os.path.join(short_tmp, "ctl")
    server = serve_cli("hello", "-w", "2", "-b", "127.0.0.1:0", *certs.tls_args(), "--control", control,
                       *(["--preload"] if preload else []))
    ((host, port),) = server.addresses()
    server.wait_workers(2)
    both = certs.write("both-cas.pem", certs.ca.cert_pem.bytes())
    new_ca = trustme.CA()
    with open(both, "ab") as file:
        file.write(new_ca.cert_pem.bytes())
    context = certs.client_context(ca=both)
    names, kept, failures, stop = [], [], [], threading.Event()

    def new_connections():
        while not stop.is_set():
            try:
                with tls_connect((host, port), context) as sock:
                    name = server_name(sock)
                    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    reply = sock.makefile("rb").read()
                    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"\r\n\r\nHello, World!"), reply
                    names.append(name)
            except Exception as exc:                     # noqa: BLE001 - every failure is counted
                failures.append(repr(exc))

    def keep_alive():
        connection = http.client.HTTPSConnection(host, port, context=context, timeout=10)
        while not stop.is_set():
            try:
                connection.request("GET", "/")
                response = connection.getresponse()
                assert response.status == 200 and response.read() == b"Hello, World!"
                kept.append(server_name(connection.sock) if connection.sock else None)
                if response.getheader("Connection", "").lower() == "close":
                    connection.close()                   # the retiring worker said so: the next goes anew
            except Exception as exc:                     # noqa: BLE001
                failures.append(f"keep-alive: {exc!r}")
                connection.close()
            time.sleep(0.02)
        connection.close()

    threads = [threading.Thread(target=new_connections), threading.Thread(target=keep_alive)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: "localhost" in names, message=lambda: f"requests with the first certificate: {failures[:3]}")
        certs.issue("rotated", ca=new_ca)
        returncode, _, stderr = ctl_reload(control)
        assert returncode == 0, stderr
        server.wait_log("TLS certificate .*cert.pem read again")
        count, kept_count = len(names), len(kept)
        wait_for(lambda: len(names) > count + 20 and len(kept) > kept_count + 5, message="requests after the reload")
        assert names[-1] == "rotated", names[-5:]
        wait_for(lambda: kept[-1] == "rotated", message="the keep-alive client on a new worker")
        certs.write("key.pem", b"not a key\n")
        returncode, _, stderr = ctl_reload(control)
        assert returncode == 1 and "no PEM private key" in stderr, stderr
        count = len(names)
        wait_for(lambda: len(names) > count + 20, message="requests after the failed reload")
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
    assert failures == [], failures[:5]
    assert names[-1] == "rotated"


def ctl_reload(control):
    returncode, stdout, stderr = run_cli("ctl", "--control", control, "reload", timeout=30)
    return returncode, stdout, stdout + stderr


def test_a_wsgi_app_sees_https_and_its_file_is_sent_encrypted_not_with_sendfile(serve_cli, certs, tmp_path):
    """os.sendfile() would put the file's bytes on the wire in plain text, past TLS."""
    data = os.urandom(300_000)
    path = tmp_path / "blob"
    path.write_bytes(data)
    server = serve_cli("--wsgi", "apps.wsgi_apps:app", "-w", "1", "-b", "127.0.0.1:0", *certs.tls_args(),
                       cwd=TESTS)
    ((host, port),) = server.addresses()
    server.wait_workers(1)
    connection = http.client.HTTPSConnection(host, port, context=certs.client_context(), timeout=10)
    for _ in range(2):                               # and the connection is fine afterwards
        connection.request("GET", f"/file?{path}")
        response = connection.getresponse()
        assert response.status == 200 and response.read() == data
    connection.request("GET", "/environ")
    environ = json.loads(connection.getresponse().read())
    assert environ["wsgi.url_scheme"] == "https" and environ["SERVER_PORT"] == str(port)
    connection.close()


def test_the_python_api_takes_a_context_and_shakes_hands_in_the_request_thread(certs):
    import prefork

    class Server(prefork.ThreadingTCPServer):
        daemon_threads = True
        tls = server_context(certs.cert, certs.key)

    class Handler(prefork.StreamRequestHandler):
        def handle(self):
            self.wfile.write(f"{type(self.request).__name__} {threading.current_thread() is not main}\n".encode())

    main = threading.current_thread()
    with Server(("127.0.0.1", 0), Handler) as server:
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        try:
            staller = socket.create_connection(server.server_address)     # a handshake that never comes:
            with tls_connect(server.server_address, certs.client_context()) as sock:   # only its thread waits
                assert sock.makefile("rb").readline() == b"SSLSocket True\n"
            staller.close()
        finally:
            server.shutdown()
            thread.join(10)
    shutil.rmtree(certs.path, ignore_errors=True)


@pytest.mark.parametrize("policy", ["prefork", "thread"])
def test_a_response_that_ends_with_the_connection_ends_with_close_notify(serve_cli, certs, policy):
    """A client that reads to the end (HTTP/1.0, no length) must be told the end is the end: without
    close_notify, a strict client (suppress_ragged_eofs=False, OpenSSL 3's default) sees a truncation."""
    server = serve_cli("hello", "--policy", policy, "-b", "127.0.0.1:0", *certs.tls_args())
    (address,) = server.addresses()
    server.wait_log("listening on")
    for _ in range(3):
        raw = socket.create_connection(address, timeout=10)
        with certs.client_context().wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            reply = b""
            while chunk := sock.recv(4096):              # SSLEOFError here without close_notify
                reply += chunk
        assert reply.startswith(b"HTTP/1.") and reply.endswith(b"Hello, World!"), reply


def test_a_connection_that_never_says_hello_is_closed_without_a_client_timeout(serve_cli, certs):
    """--client-timeout 0: a connection with no ClientHello still goes, after the keep-alive timeout (it would
    otherwise hold a place under --max-connections for good)."""
    server = serve_cli(HANDLERS["parking"], "-w", "1", "-b", "127.0.0.1:0", *certs.tls_args(), "--client-timeout",
                       "0", "--keepalive-timeout", "2", "--log-level", "debug", cwd=TESTS)
    (address,) = server.addresses()
    server.wait_workers(1)
    with socket.create_connection(address, timeout=10) as silent:
        began = time.monotonic()
        assert silent.recv(100) == b""
        assert 1.8 <= time.monotonic() - began <= 4.5
    server.wait_log("no TLS handshake within 2 s")


def test_half_a_tls_record_is_bounded_by_the_client_timeout_not_the_keepalive_one(serve_cli, certs):
    server = serve_cli(HANDLERS["parking"], "-w", "1", "-b", "127.0.0.1:0", *certs.tls_args(), "--client-timeout",
                       "2", "--keepalive-timeout", "60", "--log-level", "debug", cwd=TESTS)
    (address,) = server.addresses()
    server.wait_workers(1)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = certs.client_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with socket.create_connection(address, timeout=10) as raw:
        while True:                                   # the handshake, by hand, over the raw socket
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                raw.sendall(outgoing.read())
                incoming.write(raw.recv(65536))
        raw.sendall(outgoing.read())
        tls.write(b"hi\n")
        record = outgoing.read()
        raw.sendall(record[:len(record) // 2])        # half of it, and no more
        began = time.monotonic()
        while raw.recv(65536):                        # the server's session tickets, then the close
            pass
        assert 1.8 <= time.monotonic() - began <= 4.5
    server.wait_log("part of a request pending")


@pytest.mark.parametrize("kind", ["classic", "parking"])
def test_behind_a_proxy_the_proxy_header_comes_first_then_the_handshake(serve_cli, certs, kind):
    handler = {"classic": "apps.handlers:PeerEcho", "parking": "apps.handlers:ParkedPeerEcho"}[kind]
    server = serve_cli(handler, "-w", "1", "-b", "127.0.0.1:0", *certs.tls_args(), "--proxy-protocol", "*",
                       cwd=TESTS)
    (address,) = server.addresses()
    server.wait_workers(1)
    raw = socket.create_connection(address, timeout=10)
    raw.sendall(b"PROXY TCP4 203.0.113.7 192.0.2.1 40123 443\r\n")      # in clear, as HAProxy sends it
    with certs.client_context().wrap_socket(raw, server_hostname="localhost") as sock:
        sock.sendall(b"hello\n")
        assert sock.makefile("rb").readline() == b"203.0.113.7 40123\n"
