"""Each TLS mode against each kind of client, with real clients on a real server."""
from __future__ import annotations

import ssl
import subprocess
import threading
import warnings

import pytest
import requests
from support import (
    PKIFiles,
    ServerProcess,
    client_context,
    openssl_s_client,
    raw_https,
    session,
    status_of,
    wait_for,
)

MODES = ("server", "optional", "mutual")
# client kind -> the reason the server logs when it refuses that client
REFUSAL = {
    "none": "no client certificate",
    "unknown-ca": "client certificate from an unknown CA",
    "expired": "client certificate expired",
    "future": "client certificate not yet valid",
    "server-eku": "client certificate not for client authentication",
}
# (mode, client kind) -> accepted?
ACCEPTED = {
    ("server", kind): True for kind in ("alice", *REFUSAL)
}
ACCEPTED.update({("optional", "alice"): True, ("optional", "none"): True})
ACCEPTED.update({("mutual", "alice"): True})


@pytest.fixture(scope="module")
def servers(start_server, test_pki: PKIFiles) -> dict[str, ServerProcess]:
    return {
        mode: start_server({"tls": test_pki.tls_section(mode)}, name=f"mode-{mode}")
        for mode in MODES
    }


def _get(server: ServerProcess, test_pki: PKIFiles, kind: str) -> requests.Response:
    client = None if kind == "none" else test_pki.clients[kind]
    with session(test_pki.ca_pem, client) as s:
        return s.get(server.url("/who"), timeout=10)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["alice", *REFUSAL])
def test_mode_and_client(servers, test_pki: PKIFiles, mode: str, kind: str) -> None:
    server = servers[mode]
    if ACCEPTED.get((mode, kind), False):
        body = _get(server, test_pki, kind).json()
        assert body["tls"]["HTTPS"] == "on"
        assert body["tls"]["wsgi.url_scheme"] == "https"
        if mode != "server" and kind == "alice":
            assert body["client"]["subject"] == "CN=alice"
            assert body["tls"]["SSL_CLIENT_VERIFY"] == "SUCCESS"
        else:  # mode server never asks for a certificate; optional without one
            assert body["client"] is None
            assert body["tls"]["SSL_CLIENT_VERIFY"] == "NONE"
    else:
        with pytest.raises(requests.exceptions.RequestException):
            _get(server, test_pki, kind)
        server.wait_log(f"TLS handshake failed: client=127.0.0.1:\\d+ reason={REFUSAL[kind]}")


def test_mutual_with_openssl_s_client(servers, test_pki: PKIFiles) -> None:
    alice = test_pki.clients["alice"]
    result = openssl_s_client(
        servers["mutual"], "-CAfile", str(test_pki.ca_pem), "-cert", str(alice.cert),
        "-key", str(alice.key), request=b"GET /who HTTP/1.1\r\nHost: localhost\r\n"
                                        b"Connection: close\r\n\r\n")
    out = result.stdout.decode(errors="replace")
    assert "Verify return code: 0 (ok)" in out
    assert "HTTP/1.1 200 OK" in out
    assert '"subject": "CN=alice"' in out


def test_mutual_refuses_s_client_without_certificate(servers, test_pki: PKIFiles) -> None:
    result = openssl_s_client(servers["mutual"], "-CAfile", str(test_pki.ca_pem),
                              request=b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    both = (result.stdout + result.stderr).decode(errors="replace")
    assert "HTTP/1.1 200" not in both
    assert "certificate required" in both  # the TLS 1.3 alert the server sent


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls12_and_tls13_accepted(servers, test_pki: PKIFiles, version: ssl.TLSVersion) -> None:
    ctx = client_context(test_pki.ca_pem, test_pki.clients["alice"], minimum=version,
                         maximum=version)
    response = raw_https(servers["mutual"], b"GET / HTTP/1.1\r\nHost: localhost\r\n"
                                            b"Connection: close\r\n\r\n", ctx)
    assert status_of(response) == 200
    expected = "TLSv1.2" if version == ssl.TLSVersion.TLSv1_2 else "TLSv1.3"
    assert f'"SSL_PROTOCOL": "{expected}"'.encode() in response


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls10_and_tls11_refused(servers, test_pki: PKIFiles, version: ssl.TLSVersion) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(test_pki.ca_pem))
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client really offer old versions
    with warnings.catch_warnings():  # TLSv1 and TLSv1_1 are deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = version
        ctx.maximum_version = version
    server = servers["server"]
    before = server.stderr.count("below the server minimum")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        raw_https(server, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", ctx)
    wait_for(lambda: server.stderr.count("below the server minimum") > before,
             what="the server's refusal log line")


def test_server_certificate_chain_verifies_for_localhost_and_ip(servers, test_pki) -> None:
    server = servers["server"]
    with session(test_pki.ca_pem) as s:
        assert s.get(server.url("/", host="localhost"), timeout=10).status_code == 200
        assert s.get(server.url("/", host="127.0.0.1"), timeout=10).status_code == 200
    with session(test_pki.other_ca_pem) as s, pytest.raises(requests.exceptions.SSLError):
        s.get(server.url("/"), timeout=10)


def test_alpn_is_http11(servers, test_pki: PKIFiles) -> None:
    import socket

    ctx = client_context(test_pki.ca_pem)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    server = servers["server"]
    with socket.create_connection((server.host, server.port), timeout=10) as sock, \
            ctx.wrap_socket(sock, server_hostname="localhost") as tls:
        assert tls.selected_alpn_protocol() == "http/1.1"


def test_renegotiation_is_refused(servers, test_pki: PKIFiles) -> None:
    alice = test_pki.clients["alice"]
    server = servers["mutual"]
    # "R" on stdin asks s_client to renegotiate; stdin must stay open meanwhile.
    cmd = ["openssl", "s_client", "-connect", f"{server.host}:{server.port}", "-tls1_2",
           "-servername", "localhost", "-CAfile", str(test_pki.ca_pem), "-cert",
           str(alice.cert), "-key", str(alice.key)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    watchdog = threading.Timer(20, proc.kill)  # bounds the blocking reads below
    watchdog.start()
    lines = []
    try:
        proc.stdin.write(b"R\n")
        proc.stdin.flush()  # stdin stays open: EOF would end s_client before it renegotiates
        for raw in proc.stdout:
            lines.append(raw.decode(errors="replace"))
            if "no renegotiation" in lines[-1]:
                break
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait()
    both = "".join(lines)
    assert "RENEGOTIATING" in both
    assert "no renegotiation" in both  # the server's no_renegotiation alert
    with session(test_pki.ca_pem, alice) as s:  # and the server carries on
        assert s.get(server.url("/"), timeout=10).status_code == 200
    assert "Traceback" not in server.stderr


@pytest.mark.parametrize("kind", ["unknown-ca", "expired", "future", "server-eku"])
def test_mutual_refuses_bad_certificates_with_openssl_s_client(servers, test_pki: PKIFiles,
                                                               kind: str) -> None:
    client = test_pki.clients[kind]
    server = servers["mutual"]
    result = openssl_s_client(server, "-CAfile", str(test_pki.ca_pem), "-cert",
                              str(client.cert), "-key", str(client.key),
                              request=b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    both = (result.stdout + result.stderr).decode(errors="replace")
    assert "HTTP/1.1 200" not in both
    assert "alert" in both  # the server's refusal reaches the client as a TLS alert
    server.wait_log(f"reason={REFUSAL[kind]}")


def test_server_sends_its_certificate_and_the_ca_once_worked_out(servers,
                                                                 test_pki: PKIFiles) -> None:
    """The test PKI's certificate file holds the leaf alone: OpenSSL would complete the
    chain from ca_certs at every handshake; the server now hands it that chain once at
    start-up, and the client still receives the same two certificates."""
    alice = test_pki.clients["alice"]
    result = openssl_s_client(servers["mutual"], "-CAfile", str(test_pki.ca_pem),
                              "-cert", str(alice.cert), "-key", str(alice.key), "-showcerts",
                              request=b"GET / HTTP/1.1\r\nHost: localhost\r\n"
                                      b"Connection: close\r\n\r\n")
    out = result.stdout.decode(errors="replace")
    assert out.count("-----BEGIN CERTIFICATE-----") == 2
    assert "Verify return code: 0 (ok)" in out
    # in "server" mode there is no ca_certs to complete it from: the leaf alone
    result = openssl_s_client(servers["server"], "-CAfile", str(test_pki.ca_pem),
                              "-showcerts", request=b"GET / HTTP/1.1\r\nHost: localhost\r\n"
                                                    b"Connection: close\r\n\r\n")
    assert result.stdout.decode(errors="replace").count("-----BEGIN CERTIFICATE-----") == 1


def test_own_chain_is_worked_out_only_when_it_is_unambiguous() -> None:
    """`own_chain`: the issuers above a lone leaf, from ca_certs, up to a self-signed
    certificate; nothing when the file has a chain, the leaf is self-signed, an
    issuer is missing or two different certificates could be the issuer."""
    import trustme
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    from securewsgi.tls.context import own_chain

    def load(blob: trustme.Blob) -> x509.Certificate:
        return x509.load_pem_x509_certificate(blob.bytes())

    root = trustme.CA()
    intermediate = root.create_child_ca()
    leaf = load(intermediate.issue_cert("localhost").cert_chain_pems[0])
    root_cert, middle, other = load(root.cert_pem), load(intermediate.cert_pem), \
        load(trustme.CA().cert_pem)
    assert own_chain([leaf], [other, middle, root_cert]) == [middle, root_cert]
    assert own_chain([leaf], [middle, middle, root_cert]) == [middle, root_cert]  # a copy
    assert own_chain([leaf, middle], [middle, root_cert]) == []  # the file has a chain
    assert own_chain([leaf], [middle]) == []  # the root is missing
    assert own_chain([root_cert], [root_cert]) == []  # self-signed leaf
    # the intermediate re-issued (same name and key, new serial): OpenSSL might pick
    # either, so the choice stays OpenSSL's
    root_key = serialization.load_pem_private_key(root.private_key_pem.bytes(), None)
    reissued = (x509.CertificateBuilder().subject_name(middle.subject)
                .issuer_name(middle.issuer).public_key(middle.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(middle.not_valid_before_utc)
                .not_valid_after(middle.not_valid_after_utc)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(root_key, hashes.SHA256()))
    assert own_chain([leaf], [middle, reissued, root_cert]) == []
