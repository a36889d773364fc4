"""prefork.tls.server_context: contexts that work, and one TLSError naming the setting for each file that cannot
be used; the parking loop's non-blocking handshakes (pool/handshake_process.py) and a TLS connection's reader, on
real sockets with certificates made by trustme."""

import os
import select
import socket
import ssl
import threading

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from prefork.parking import ConnectionReader
from prefork.pool.handshake_process import Handshakes
from prefork.tls import TLSError, server_context

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture
def files(tmp_path, ca):
    issued = ca.issue_cert("localhost", common_name="localhost")
    paths = {"cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem", "both": tmp_path / "both.pem",
             "ca": tmp_path / "ca.pem"}
    issued.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    issued.private_key_pem.write_to_path(str(paths["key"]))
    issued.private_key_and_cert_chain_pem.write_to_path(str(paths["both"]))
    ca.cert_pem.write_to_path(str(paths["ca"]))
    key = serialization.load_pem_private_key(issued.private_key_pem.bytes(), None)
    paths["encrypted"] = tmp_path / "encrypted.pem"
    paths["encrypted"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.BestAvailableEncryption(b"s3cret")))
    paths["long_password"] = tmp_path / "long_password"
    paths["long_password"].write_bytes(b"x" * 2000 + b"\n")
    return {name: str(path) for name, path in paths.items()}


def test_contexts_from_separate_files_and_from_one(files):
    for context in (server_context(files["cert"], files["key"]), server_context(files["both"])):
        assert context.verify_mode == ssl.CERT_NONE
        assert context.options & ssl.OP_NO_RENEGOTIATION
    mutual = server_context(files["cert"], files["key"], files["ca"], "required")
    assert mutual.verify_mode == ssl.CERT_REQUIRED and len(mutual.get_ca_certs()) == 1
    assert server_context(files["cert"], files["key"], files["ca"], "optional").verify_mode == ssl.CERT_OPTIONAL


def test_each_unusable_file_names_its_setting(files, tmp_path):
    unreadable = tmp_path / "unreadable.pem"
    unreadable.write_text("x")
    unreadable.chmod(0)
    cases = [
        ((str(tmp_path / "nope.pem"),), "certfile", "nope.pem: no such file"),
        ((files["cert"], files["cert"]), "keyfile", "no PEM private key in it"),
        ((files["key"],), "certfile", "no PEM certificate in it"),
        ((files["cert"], files["key"], files["key"], "required"), "ca_certs", "no PEM certificate in it"),
        ((files["cert"], files["key"], "", "none", str(tmp_path / "nope")), "keyfile_password_file", "no such file"),
        ((str(tmp_path),), "certfile", "a directory, not a file"),
        ((files["cert"], str(tmp_path)), "keyfile", "a directory, not a file"),
        ((files["cert"], files["key"], str(tmp_path), "required"), "ca_certs", "a directory, not a file"),
        ((files["cert"], files["encrypted"], "", "none", files["long_password"]), "keyfile_password_file",
         "longer than 1024"),
    ]
    if os.geteuid() != 0:                      # root reads anything
        cases.append(((str(unreadable),), "certfile", "cannot be read (permissions)"))
    for args, setting, problem in cases:
        with pytest.raises(TLSError) as caught:
            server_context(*args)
        assert caught.value.setting == setting and problem in str(caught.value), (args, str(caught.value))


def shake_hands(files):
    """A server-side socket of a connection whose client is in a thread: (server sock, client thread's result)."""
    listener = socket.create_server(("127.0.0.1", 0))
    result = {}

    def client(send_hello=True, lines=()):
        raw = socket.create_connection(listener.getsockname(), timeout=10)
        if not send_hello:
            result["raw"] = raw
            return
        context = ssl.create_default_context(cafile=files["ca"])
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            for line in lines:
                sock.sendall(line)
            result["reply"] = sock.recv(100)
    return listener, result, client


class FakeServer:
    def __init__(self, context):
        self.tls = context
        self.closed = []

    def shutdown_request(self, sock):
        self.closed.append(sock)
        sock.close()


def test_handshakes_advance_without_blocking_and_stalled_ones_expire(files):
    listener, result, client = shake_hands(files)
    server = FakeServer(server_context(files["cert"], files["key"]))
    with select.epoll() as poller, listener:
        handshakes = Handshakes()
        handshakes.poller = poller
        stalled = threading.Thread(target=client, kwargs={"send_hello": False})
        stalled.start()
        stalled.join()
        sock, address = listener.accept()
        assert handshakes.begin(sock, 0, server, address, now=100.0) is None      # nothing sent: it waits
        assert len(handshakes) == 1
        good = threading.Thread(target=client, kwargs={"lines": [b"one\n", b"two\n", b"three\n"]})
        good.start()
        sock, address = listener.accept()
        good_fd = sock.fileno()
        done = handshakes.begin(sock, 0, server, address, now=101.0)
        while done is None:                                # each step as epoll says, none of them blocking
            for fd, _ in poller.poll(5):
                if fd == good_fd:
                    done = handshakes.step(fd)
        assert isinstance(done.sock, ssl.SSLSocket) and len(handshakes) == 1
        handshakes.expire(now=101.9, limit=2)
        assert len(handshakes) == 1, "not before the limit"
        handshakes.expire(now=102.0, limit=2)
        assert len(handshakes) == 0 and len(server.closed) == 1, "the stalled one, at the limit"
        reader = ConnectionReader(done.sock)
        good_lines = b"one\ntwo\nthree\n"
        while len(reader.pending) < len(good_lines):      # three TLS records: read without waiting
            select.select([done.sock], [], [], 5)
            reader.fill()
        assert bytes(reader.pending) == good_lines and reader.fill() is None
        done.sock.settimeout(5)
        done.sock.sendall(b"bye")
        good.join(10)
        assert result["reply"] == b"bye"
        assert reader.fill(wait=True) == 0 and reader.eof
        done.sock.close()
        result["raw"].close()


def test_a_plain_text_client_fails_the_handshake_and_is_closed(files):
    listener, _result, _client = shake_hands(files)
    server = FakeServer(server_context(files["cert"], files["key"]))
    with select.epoll() as poller, listener, socket.create_connection(listener.getsockname()) as plain:
        handshakes = Handshakes()
        handshakes.poller = poller
        plain.sendall(b"GET / HTTP/1.1\r\n\r\n")
        sock, address = listener.accept()
        select.select([sock], [], [], 5)
        assert handshakes.begin(sock, 0, server, address, now=0.0) is None
        assert len(handshakes) == 0 and len(server.closed) == 1


def test_a_client_ending_its_tls_session_is_a_client_that_went_away(caplog):
    """Its close_notify (SSLZeroReturnError) or its vanishing (SSLEOFError) under a handler's write: one debug
    line and the outcome client_went_away, not an error with a traceback."""
    import prefork
    from prefork.access import outcome_of

    server = prefork.TCPServer(("127.0.0.1", 0), prefork.BaseRequestHandler, bind_and_activate=False)
    for exc in (ssl.SSLZeroReturnError(6, "TLS/SSL connection has been closed (EOF)"),
                ssl.SSLEOFError(8, "EOF occurred in violation of protocol")):
        assert outcome_of(exc) == "client_went_away"
        caplog.clear()
        try:
            raise exc
        except ssl.SSLError:
            with caplog.at_level("DEBUG", logger="prefork"):
                server.handle_error(None, ("127.0.0.1", 1))
        assert [r.levelname for r in caplog.records] == ["DEBUG"] and "went away" in caplog.text
    assert outcome_of(ssl.SSLCertVerificationError()) == "handler_error", "the handler's own TLS is its error"
    server.server_close()
