"""Forwarded client certificates: trusted proxies, Envoy XFCC, nginx escaped PEM, and
every way a client might try to pass its own."""
from __future__ import annotations

import hashlib
import ipaddress
import logging
import urllib.parse
from typing import Any, Optional

import pytest
import webob
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from securewsgi import IdentityMiddleware, PeerIdentity
from securewsgi.identity.forwarded import (
    ForwardedCertError,
    ForwardedCertReader,
    TrustedProxies,
    environ_key,
    parse_xfcc,
)
from securewsgi.pki import CertificateAuthority

# ------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("Edge CA")


def make_cert(ca: CertificateAuthority, cn: str, *, uri: Optional[str] = None
              ) -> x509.Certificate:
    cert, _key = ca.issue_client(cn, san_uri=[uri] if uri else [])
    return cert


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def xfcc_element(cert: x509.Certificate, *, by: str = "spiffe://example.org/api",
                 with_hash: bool = True) -> str:
    """One element as Envoy writes it (Cert URL-encoded and quoted, Subject quoted)."""
    parts = [f"By={by}"]
    if with_hash:
        parts.append(f"Hash={sha256(cert)}")
    parts.append(f'Cert="{urllib.parse.quote(pem(cert), safe="")}"')
    subject = cert.subject.rfc4514_string().replace('"', '\\"')
    parts.append(f'Subject="{subject}"')
    parts.append("URI=spiffe://example.org/client")
    return ";".join(parts)


def tls_peer(cert: x509.Certificate) -> PeerIdentity:
    return PeerIdentity.from_der(cert.public_bytes(serialization.Encoding.DER))


class Recorder:
    def __init__(self) -> None:
        self.environ: Optional[dict] = None

    def __call__(self, environ: dict, start_response: Any) -> list:
        self.environ = dict(environ)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]


def request(mw: Any, *, remote_addr: str = "10.0.0.5", peer: Optional[PeerIdentity] = None,
            headers: Optional[dict] = None, path: str = "/") -> webob.Response:
    environ = {"securewsgi.tls_peer": peer, "REMOTE_ADDR": remote_addr}
    return webob.Request.blank(path, environ=environ, headers=headers or {}).get_response(mw)


# ---------------------------------------------------------------- trusted proxies


@pytest.mark.parametrize(("address", "trusted"), [
    ("10.0.0.5", True),
    ("10.255.255.255", True),
    ("11.0.0.1", False),
    ("192.168.1.1", True),
    ("192.168.1.2", False),
    ("::ffff:10.0.0.5", True),  # IPv4-mapped: matches the IPv4 network
    ("::ffff:11.0.0.5", False),
    ("fd00::1", True),
    ("fd01::1", False),
    ("[fd00::1]", True),
    ("fe80::1%eth0", False),
    ("", False),
    ("localhost", False),
    ("/run/app.sock", False),
    ("10.0.0.5 ", False),
])
def test_trusted_proxies(address: str, trusted: bool) -> None:
    proxies = TrustedProxies([ipaddress.ip_network("10.0.0.0/8"),
                              ipaddress.ip_network("192.168.1.1/32"),
                              ipaddress.ip_network("fd00::/16")])
    assert (address in proxies) is trusted


def test_ipv6_network_covering_mapped_addresses() -> None:
    proxies = TrustedProxies([ipaddress.ip_network("::ffff:0:0/96")])
    assert "::ffff:10.1.2.3" in proxies
    assert "10.1.2.3" not in proxies  # a plain IPv4 peer is not an IPv6 address


def test_no_trusted_proxies() -> None:
    proxies = TrustedProxies([])
    assert not proxies
    assert "127.0.0.1" not in proxies
    assert None not in proxies


# ------------------------------------------------------------------------- XFCC


def test_parse_xfcc_quoting() -> None:
    value = ('By=spiffe://a;Hash=ab;Subject="CN=x,O=a;b=c \\"q\\"";URI=spiffe://c,'
             'By=spiffe://b;Cert="x%20y";DNS=a.test;DNS=b.test')
    assert parse_xfcc(value) == [
        [("by", "spiffe://a"), ("hash", "ab"), ("subject", 'CN=x,O=a;b=c "q"'),
         ("uri", "spiffe://c")],
        [("by", "spiffe://b"), ("cert", "x%20y"), ("dns", "a.test"), ("dns", "b.test")],
    ]


@pytest.mark.parametrize("value", [
    'Cert="unterminated',
    "Cert",
    "=value",
    'Cert="a"b',
    'Cert=a"b"',
    "By=a;;Cert=b",
    "By=a,,By=b",
])
def test_parse_xfcc_malformed(value: str) -> None:
    with pytest.raises(ForwardedCertError):
        parse_xfcc(value)


def test_xfcc_uses_the_last_element(ca: CertificateAuthority) -> None:
    """Envoy appends: the last element is the one the proxy talking to us wrote."""
    forged = make_cert(CertificateAuthority.create("Forger"), "admin")
    real = make_cert(ca, "alice")
    reader = ForwardedCertReader()
    peer = reader.peer(f"{xfcc_element(forged)},{xfcc_element(real)}")
    assert peer is not None
    assert peer.common_name == "alice"
    assert peer.source == "proxy"
    assert peer.fingerprint_sha256 == sha256(real)


def test_xfcc_hash_must_match_the_certificate(ca: CertificateAuthority) -> None:
    a, b = make_cert(ca, "a"), make_cert(ca, "b")
    element = xfcc_element(a).replace(sha256(a), sha256(b))
    with pytest.raises(ForwardedCertError, match="Hash"):
        ForwardedCertReader().peer(element)
    element = xfcc_element(a).replace(sha256(a), sha256(a).upper())
    assert ForwardedCertReader().peer(element).common_name == "a"  # hex case is irrelevant


def test_xfcc_without_hash_is_accepted(ca: CertificateAuthority) -> None:
    peer = ForwardedCertReader().peer(xfcc_element(make_cert(ca, "nohash"), with_hash=False))
    assert peer.common_name == "nohash"


@pytest.mark.parametrize("value", [
    "By=spiffe://a;Hash=abcd;URI=spiffe://c",  # Envoy default: no Cert
    'Cert=""',
    'Cert="not-a-certificate"',
    'Cert="-----BEGIN%20CERTIFICATE-----%0AAAAA%0A-----END%20CERTIFICATE-----"',
    'Cert="%FF%FE"',
    'Cert="a";Cert="b"',
])
def test_xfcc_unusable(value: str) -> None:
    with pytest.raises(ForwardedCertError):
        ForwardedCertReader().peer(value)


def test_empty_header_is_anonymous() -> None:
    assert ForwardedCertReader().peer("") is None
    assert ForwardedCertReader("x-ssl-client-cert").peer("  ") is None


def test_nginx_escaped_pem(ca: CertificateAuthority) -> None:
    cert = make_cert(ca, "bob")
    # what nginx's $ssl_client_escaped_cert looks like (urlencoded PEM)
    value = urllib.parse.quote(pem(cert), safe="")
    reader = ForwardedCertReader("x-ssl-client-cert")
    assert reader.environ_key == "HTTP_X_SSL_CLIENT_CERT"
    peer = reader.peer(value)
    assert peer.common_name == "bob"
    assert peer.source == "proxy"
    assert peer.pem == pem(cert)
    with pytest.raises(ForwardedCertError):
        reader.peer(xfcc_element(cert))  # XFCC syntax is not a PEM


def test_reader_caches_by_value(ca: CertificateAuthority) -> None:
    reader = ForwardedCertReader()
    value = xfcc_element(make_cert(ca, "cached"))
    first = reader.peer(value)
    assert reader.peer(value) is first
    assert reader.cache_info()["hits"] == 1


def test_environ_key() -> None:
    assert environ_key("x-forwarded-client-cert") == "HTTP_X_FORWARDED_CLIENT_CERT"
    assert environ_key("X-SSL-Client-Cert") == "HTTP_X_SSL_CLIENT_CERT"


# ----------------------------------------------------------- through the middleware


def test_header_from_untrusted_address_is_removed(ca: CertificateAuthority) -> None:
    app = Recorder()
    mw = IdentityMiddleware(app, trusted_proxies=["10.0.0.0/8"], remote_user="cn")
    forged = xfcc_element(make_cert(ca, "admin"))
    client = tls_peer(make_cert(ca, "mallory"))
    for address in ("203.0.113.9", "::ffff:203.0.113.9", "2001:db8::9"):
        assert request(mw, remote_addr=address, peer=client,
                       headers={"X-Forwarded-Client-Cert": forged}).status_int == 200
        env = app.environ
        assert "HTTP_X_FORWARDED_CLIENT_CERT" not in env
        assert env["SSL_CLIENT_S_DN_CN"] == "mallory"  # the TLS peer, not the header
        assert env["REMOTE_USER"] == "mallory"
        assert env["securewsgi.peer"].source == "tls"


def test_header_removed_when_no_proxy_is_trusted(ca: CertificateAuthority) -> None:
    app = Recorder()
    mw = IdentityMiddleware(app)
    request(mw, remote_addr="127.0.0.1",
            headers={"X-Forwarded-Client-Cert": xfcc_element(make_cert(ca, "admin"))})
    assert "HTTP_X_FORWARDED_CLIENT_CERT" not in app.environ
    assert app.environ["SSL_CLIENT_VERIFY"] == "NONE"
    assert app.environ["securewsgi.peer"] is None


def test_header_from_trusted_proxy_is_honoured(ca: CertificateAuthority) -> None:
    app = Recorder()
    mw = IdentityMiddleware(app, trusted_proxies="10.0.0.0/8 fd00::/8", remote_user="san_uri")
    cert = make_cert(ca, "alice", uri="spiffe://example.org/ns/ops/alice")
    proxy_cert = tls_peer(make_cert(ca, "envoy"))
    for address in ("10.0.0.5", "::ffff:10.0.0.5", "fd00::5"):
        response = request(mw, remote_addr=address, peer=proxy_cert,
                           headers={"X-Forwarded-Client-Cert": xfcc_element(cert)})
        assert response.status_int == 200
        env = app.environ
        assert "HTTP_X_FORWARDED_CLIENT_CERT" not in env
        assert env["SSL_CLIENT_VERIFY"] == "SUCCESS"
        assert env["SSL_CLIENT_S_DN"] == cert.subject.rfc4514_string()
        assert env["SSL_CLIENT_S_DN_CN"] == "alice"
        assert env["SSL_CLIENT_I_DN"] == "CN=Edge CA"
        assert env["SSL_CLIENT_M_SERIAL"] == format(cert.serial_number, "X")
        assert env["SSL_CLIENT_SAN_URI_0"] == "spiffe://example.org/ns/ops/alice"
        assert env["SSL_CLIENT_CERT"] == pem(cert)
        assert env["SSL_CLIENT_CERT_SHA256"] == cert.fingerprint(hashes.SHA256()).hex()
        assert env["REMOTE_USER"] == "spiffe://example.org/ns/ops/alice"
        assert env["securewsgi.peer"].source == "proxy"


def test_trusted_proxy_without_header_is_anonymous(ca: CertificateAuthority) -> None:
    """The proxy's own certificate is not its client's identity."""
    app = Recorder()
    mw = IdentityMiddleware(app, trusted_proxies=["10.0.0.0/8"], remote_user="cn")
    for headers in ({}, {"X-Forwarded-Client-Cert": ""}):
        assert request(mw, peer=tls_peer(make_cert(ca, "envoy")),
                       headers=headers).status_int == 200
        assert app.environ["SSL_CLIENT_VERIFY"] == "NONE"
        assert app.environ["securewsgi.peer"] is None
        assert "REMOTE_USER" not in app.environ
        assert "SSL_CLIENT_S_DN" not in app.environ


@pytest.mark.parametrize("value", [
    'Cert="garbage"',
    "By=spiffe://a;Hash=abcd",
    'Cert="unterminated',
    "x" * 70000,
])
def test_malformed_header_from_trusted_proxy_is_400(
        value: str, caplog: pytest.LogCaptureFixture) -> None:
    called = []
    mw = IdentityMiddleware(lambda e, s: called.append(1) or s("200 OK", []) or [],
                            trusted_proxies=["10.0.0.0/8"])
    caplog.set_level(logging.WARNING, logger="securewsgi.identity")
    response = request(mw, headers={"X-Forwarded-Client-Cert": value})
    assert response.status == "400 Bad Request"
    assert response.body == b"400 Bad Request: unusable forwarded client certificate\n"
    assert b"Traceback" not in response.body and b"garbage" not in response.body
    assert called == []
    assert any("10.0.0.5" in r.getMessage() for r in caplog.records
               if r.name == "securewsgi.identity")


def test_malformed_header_from_untrusted_client_is_just_dropped() -> None:
    app = Recorder()
    mw = IdentityMiddleware(app, trusted_proxies=["10.0.0.0/8"])
    assert request(mw, remote_addr="203.0.113.1",
                   headers={"X-Forwarded-Client-Cert": 'Cert="garbage'}).status_int == 200
    assert "HTTP_X_FORWARDED_CLIENT_CERT" not in app.environ


def test_nginx_header_name(ca: CertificateAuthority) -> None:
    app = Recorder()
    mw = IdentityMiddleware(app, trusted_proxies=["127.0.0.1/32"],
                            forwarded_cert_header="X-SSL-Client-Cert")
    cert = make_cert(ca, "bob")
    value = urllib.parse.quote(pem(cert), safe="")
    # from the trusted nginx
    request(mw, remote_addr="127.0.0.1", headers={"X-SSL-Client-Cert": value})
    assert app.environ["SSL_CLIENT_S_DN_CN"] == "bob"
    assert app.environ["securewsgi.peer"].source == "proxy"
    assert "HTTP_X_SSL_CLIENT_CERT" not in app.environ
    # from anybody else
    request(mw, remote_addr="127.0.0.2", headers={"X-SSL-Client-Cert": value})
    assert app.environ["SSL_CLIENT_VERIFY"] == "NONE"
    assert "HTTP_X_SSL_CLIENT_CERT" not in app.environ
    # with this header configured, an XFCC header is just another header: never honoured
    request(mw, remote_addr="127.0.0.1",
            headers={"X-Forwarded-Client-Cert": xfcc_element(cert)})
    assert app.environ["SSL_CLIENT_VERIFY"] == "NONE"


def test_forwarded_certificate_is_authorised_like_a_tls_one(ca: CertificateAuthority) -> None:
    app = Recorder()
    mw = IdentityMiddleware(app, trusted_proxies=["10.0.0.0/8"], rules=[
        {"name": "ops", "paths": ["/ops/*"], "allow": [{"cn": "ops-*"}]}])
    ops = xfcc_element(make_cert(ca, "ops-1"))
    dev = xfcc_element(make_cert(ca, "dev-1"))
    assert request(mw, path="/ops/x", headers={"X-Forwarded-Client-Cert": ops}
                   ).status_int == 200
    assert request(mw, path="/ops/x", headers={"X-Forwarded-Client-Cert": dev}
                   ).status_int == 403
    # the same header from an untrusted address counts for nothing
    assert request(mw, path="/ops/x", remote_addr="8.8.8.8",
                   headers={"X-Forwarded-Client-Cert": ops}).status_int == 403


def test_forwarded_header_under_another_wsgi_server(ca: CertificateAuthority) -> None:
    """Without securewsgi's server there is no TLS peer, but a trusted proxy (the usual
    reason to run the middleware elsewhere) still vouches for its client."""
    app = Recorder()
    mw = IdentityMiddleware(app, trusted_proxies=["10.0.0.0/8"])
    value = xfcc_element(make_cert(ca, "carol"))
    environ = {"REMOTE_ADDR": "10.0.0.7"}  # no securewsgi.tls_peer key
    webob.Request.blank("/", environ=environ, headers={
        "X-Forwarded-Client-Cert": value}).get_response(mw)
    assert app.environ["SSL_CLIENT_S_DN_CN"] == "carol"
    webob.Request.blank("/", environ={"REMOTE_ADDR": "8.8.8.8"}, headers={
        "X-Forwarded-Client-Cert": value}).get_response(mw)
    assert app.environ["SSL_CLIENT_VERIFY"] == "NONE"


def test_cookbook_service_mesh_by_spiffe_id(ca: CertificateAuthority) -> None:
    app = Recorder()
    mw = IdentityMiddleware(app, trusted_proxies=["127.0.0.1/32"], default="deny", rules=[
        {"name": "mesh", "paths": ["/*"],
         "allow": [{"san_uri": "spiffe://example.org/ns/payments/sa/*"}]}])
    good = make_cert(ca, "w1", uri="spiffe://example.org/ns/payments/sa/api")
    bad = make_cert(ca, "w2", uri="spiffe://example.org/ns/payments/sa/api/extra")
    for cert, status in ((good, 200), (bad, 403)):
        response = request(mw, remote_addr="127.0.0.1",
                           headers={"X-Forwarded-Client-Cert": xfcc_element(cert)})
        assert response.status_int == status

