"""Runs in the master: the TLS settings made into an ssl.SSLContext, at start and at each reload.

The master builds the context before it forks, as nginx's master reads its
keys: a key may be readable by root only, while the workers run as --user.
Each generation's workers inherit the context the master checked, so
`prefork ctl reload` rotates certificates: the new generation serves the new
ones, the old workers finish their connections with theirs, and certificates
that do not load fail the reload while the old ones keep serving. The
handshakes run in the workers (handling.tls_handshake, and the parking
loop's pool/handshake_process.py), never here.
"""

import os
import ssl

CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}



class TLSError(ValueError):
    """A TLS setting that cannot be used: which setting (certfile, keyfile, ...), its file, and why."""

    def __init__(self, setting, path, problem):
        super().__init__(f"{path}: {problem}")
        self.setting = setting


class _NoPassword(Exception):
    """OpenSSL asked for a password, and none was given."""


def server_context(certfile, keyfile="", ca_certs="", cert_reqs="none", password_file=""):
    """A server-side SSLContext from PEM files; TLSError if one cannot be read or used.

    keyfile: the private key, when not in certfile. ca_certs: the CAs whose
    client certificates are accepted (mutual TLS), with cert_reqs "optional"
    or "required". password_file: its first line decrypts an encrypted key.
    """
    for setting, path in (("certfile", certfile), ("keyfile", keyfile), ("ca_certs", ca_certs),
                          ("keyfile_password_file", password_file)):
        if path and (os.path.isdir(path) or not os.access(path, os.R_OK)):
            problem = ("no such file" if not os.path.exists(path) else "a directory, not a file"
                       if os.path.isdir(path) else "cannot be read (permissions)")
            raise TLSError(setting, path, problem)
    password = _read_password(password_file) if password_file else None
    try:                     # the certificates alone first: OpenSSL's "PEM lib" does not say which file failed
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=certfile)
    except ssl.SSLError:
        raise TLSError("certfile", certfile, "no PEM certificate in it (-----BEGIN CERTIFICATE-----)") from None
    except OSError as exc:               # gone since the check above (a deploy swapping links, say)
        raise TLSError("certfile", certfile, exc.strerror or str(exc)) from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # A renegotiation would make a parked connection's read want to write; TLS 1.3 has none anyway.
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    key_setting, key_path = ("keyfile", keyfile) if keyfile else ("certfile", certfile)
    try:
        context.load_cert_chain(certfile, keyfile or None, password=lambda: _given(password))
    except _NoPassword:
        raise TLSError(key_setting, key_path, "the key is encrypted: give its password in "
                       "--keyfile-password-file") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            problem = f"the key does not match the certificate in {certfile}"
        elif password is not None and _encrypted(key_path):
            problem = "cannot decrypt the key: wrong password (--keyfile-password-file)"
        else:
            problem = "no PEM private key in it (-----BEGIN PRIVATE KEY-----)"
        raise TLSError(key_setting, key_path, problem) from None
    except ValueError as exc:            # a password longer than OpenSSL takes
        raise TLSError("keyfile_password_file", password_file, str(exc)) from None
    except OSError as exc:
        raise TLSError(key_setting, key_path, exc.strerror or str(exc)) from None
    if ca_certs:
        try:
            context.load_verify_locations(cafile=ca_certs)
        except ssl.SSLError:
            raise TLSError("ca_certs", ca_certs, "no PEM certificate in it (-----BEGIN CERTIFICATE-----)") from None
        except OSError as exc:
            raise TLSError("ca_certs", ca_certs, exc.strerror or str(exc)) from None
    context.verify_mode = CERT_REQS[cert_reqs]
    return context


def _read_password(path):
    try:
        with open(path, "rb") as file:
            line = file.readline()
    except OSError as exc:
        raise TLSError("keyfile_password_file", path, exc.strerror) from None
    return line.rstrip(b"\r\n")


def _given(password):
    if password is None:            # without a callback, OpenSSL would prompt on the terminal
        raise _NoPassword
    return password


def _encrypted(path):
    try:
        with open(path, "rb") as file:
            return b"ENCRYPTED" in file.read()
    except OSError:
        return False
