"""`PeerIdentity` and the identity keys of the environ (``SSL_CLIENT_*``,
``REMOTE_USER``, ``securewsgi.peer``), as an application behind `IdentityMiddleware`
sees them.

Every expected value is computed here from the certificate with `cryptography` (or
written out literally), never with securewsgi's own helpers; certificates are real,
signed by a `securewsgi.pki.CertificateAuthority`.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import logging
from typing import Any, Optional

import pytest
import webob
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from securewsgi import IdentityMiddleware, PeerIdentity
from securewsgi.pki import CertificateAuthority

UTC = dt.timezone.utc
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


# ------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("Test CA, Unit \"X\"")


def make_cert(ca: CertificateAuthority, subject: x509.Name, *,
              sans: tuple = (), serial: Optional[int] = None,
              not_before: Optional[dt.datetime] = None,
              not_after: Optional[dt.datetime] = None) -> x509.Certificate:
    """A client certificate built directly with cryptography and signed by `ca`."""
    now = dt.datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(hours=1))
        .not_valid_after(not_after or now + dt.timedelta(days=30))
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)),
                                        critical=False)
    return builder.sign(ca.key, hashes.SHA256())


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def peer_of(cert: x509.Certificate) -> PeerIdentity:
    return PeerIdentity.from_der(der(cert), source="tls")


def name(*pairs: tuple) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in pairs])


class Recorder:
    """A WSGI app that remembers the environ it was called with."""

    def __init__(self) -> None:
        self.environ: dict[str, Any] = {}

    def __call__(self, environ: dict, start_response: Any) -> list:
        self.environ = dict(environ)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]


def seen(peer: Optional[PeerIdentity], extra: Optional[dict] = None,
         **options: Any) -> dict[str, Any]:
    """The environ the app receives for a request over TLS from `peer`."""
    app = Recorder()
    mw = IdentityMiddleware(app, **options)
    request = webob.Request.blank("/", environ={"securewsgi.tls_peer": peer, **(extra or {})})
    assert request.get_response(mw).status_int == 200
    return app.environ


def client_keys(environ: dict) -> dict[str, str]:
    return {k: v for k, v in environ.items() if k.startswith("SSL_CLIENT_")}


def openssl_time(moment: dt.datetime) -> str:
    """Independent of identity.openssl_time: format the parts by hand."""
    moment = moment.astimezone(UTC)
    day = str(moment.day).rjust(2)
    return (f"{MONTHS[moment.month - 1]} {day} {moment.hour:02d}:{moment.minute:02d}:"
            f"{moment.second:02d} {moment.year} GMT")


# --------------------------------------------------------------------- the DN keys


def test_full_environ_of_a_rich_certificate(ca: CertificateAuthority) -> None:
    subject = name(
        (NameOID.COUNTRY_NAME, "US"),
        (NameOID.STATE_OR_PROVINCE_NAME, "California"),
        (NameOID.LOCALITY_NAME, "San Francisco"),
        (NameOID.ORGANIZATION_NAME, "Example Inc"),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, "Operations"),
        (NameOID.COMMON_NAME, "alice"),
        (NameOID.EMAIL_ADDRESS, "alice@example.org"),
    )
    start = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    end = dt.datetime(2099, 12, 25, 23, 59, 58, tzinfo=UTC)
    cert = make_cert(ca, subject, serial=0x00ABCDEF0123, not_before=start, not_after=end,
                     sans=(x509.DNSName("a.example.org"), x509.DNSName("b.example.org"),
                           x509.UniformResourceIdentifier("spiffe://example.org/ns/a/sa/b"),
                           x509.RFC822Name("alice@example.org"),
                           x509.IPAddress(ipaddress.ip_address("192.0.2.7")),
                           x509.IPAddress(ipaddress.ip_address("2001:db8::1"))))
    env = seen(peer_of(cert))
    now = dt.datetime.now(UTC)
    expected = {
        "SSL_CLIENT_VERIFY": "SUCCESS",
        # RFC 4514 order: the last RDN first
        "SSL_CLIENT_S_DN": "1.2.840.113549.1.9.1=alice@example.org,CN=alice,OU=Operations,"
                           "OU=Engineering,O=Example Inc,L=San Francisco,ST=California,C=US",
        "SSL_CLIENT_S_DN_Email": "alice@example.org",
        "SSL_CLIENT_S_DN_CN": "alice",
        # attribute keys in DER order (as built above), the unnumbered one the first
        "SSL_CLIENT_S_DN_OU": "Engineering",
        "SSL_CLIENT_S_DN_OU_0": "Engineering",
        "SSL_CLIENT_S_DN_OU_1": "Operations",
        "SSL_CLIENT_S_DN_O": "Example Inc",
        "SSL_CLIENT_S_DN_L": "San Francisco",
        "SSL_CLIENT_S_DN_ST": "California",
        "SSL_CLIENT_S_DN_C": "US",
        "SSL_CLIENT_I_DN": ca.cert.subject.rfc4514_string(),
        "SSL_CLIENT_I_DN_CN": 'Test CA, Unit "X"',
        "SSL_CLIENT_M_SERIAL": "ABCDEF0123",
        "SSL_CLIENT_V_START": "Jan  2 03:04:05 2025 GMT",
        "SSL_CLIENT_V_END": "Dec 25 23:59:58 2099 GMT",
        "SSL_CLIENT_V_REMAIN": str((end - now).days),
        "SSL_CLIENT_SAN_DNS_0": "a.example.org",
        "SSL_CLIENT_SAN_DNS_1": "b.example.org",
        "SSL_CLIENT_SAN_URI_0": "spiffe://example.org/ns/a/sa/b",
        "SSL_CLIENT_SAN_Email_0": "alice@example.org",
        "SSL_CLIENT_SAN_IP_0": "192.0.2.7",
        "SSL_CLIENT_SAN_IP_1": "2001:db8::1",
        "SSL_CLIENT_CERT": cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        "SSL_CLIENT_CERT_SHA256": hashlib.sha256(der(cert)).hexdigest(),
    }
    assert client_keys(env) == expected
    assert expected["SSL_CLIENT_S_DN"] == cert.subject.rfc4514_string()
    assert expected["SSL_CLIENT_CERT_SHA256"] == cert.fingerprint(hashes.SHA256()).hex()
    assert "REMOTE_USER" not in env  # remote_user defaults to none
    assert env["securewsgi.peer"].subject == expected["SSL_CLIENT_S_DN"]


def test_ou_order_follows_the_der_order_not_the_dn_string(ca: CertificateAuthority
                                                          ) -> None:
    """mod_ssl walks the subject in DER order, the reverse of the RFC 4514 string."""
    ous = ["first-in-der", "second", "third-in-der"]
    subject = name(*[(NameOID.ORGANIZATIONAL_UNIT_NAME, ou) for ou in ous],
                   (NameOID.COMMON_NAME, "bob"))
    cert = make_cert(ca, subject)
    env = seen(peer_of(cert))
    dn = cert.subject.rfc4514_string()
    in_string_order = [part.split("=", 1)[1] for part in dn.split(",") if part.startswith("OU=")]
    assert in_string_order == list(reversed(ous))
    assert env["SSL_CLIENT_S_DN"] == dn  # the string itself stays RFC 4514
    for index, value in enumerate(ous):
        assert env[f"SSL_CLIENT_S_DN_OU_{index}"] == value
    assert env["SSL_CLIENT_S_DN_OU"] == ous[0] == "first-in-der"
    assert "SSL_CLIENT_S_DN_OU_3" not in env
    assert "SSL_CLIENT_S_DN_CN_0" not in env  # single-valued attributes are not numbered


def test_unicode_common_name(ca: CertificateAuthority) -> None:
    cn = "Jürgen Müller 日本"
    cert = make_cert(ca, name((NameOID.COMMON_NAME, cn), (NameOID.ORGANIZATION_NAME, "Ünï")))
    env = seen(peer_of(cert), remote_user="cn")
    assert env["SSL_CLIENT_S_DN_CN"] == cn
    assert env["SSL_CLIENT_S_DN"] == cert.subject.rfc4514_string() == f"O=Ünï,CN={cn}"
    assert env["REMOTE_USER"] == cn
    assert env["securewsgi.peer"].common_name == cn


def test_escaped_characters_in_the_dn(ca: CertificateAuthority) -> None:
    cn = 'Smith, John+Jr "JJ" <x>;#\\'
    cert = make_cert(ca, name((NameOID.ORGANIZATION_NAME, " lead space"),
                              (NameOID.COMMON_NAME, cn)))
    env = seen(peer_of(cert), remote_user="dn")
    dn = cert.subject.rfc4514_string()
    assert "\\," in dn and "\\+" in dn and '\\"' in dn  # escaped in the string form
    assert env["SSL_CLIENT_S_DN"] == dn == env["REMOTE_USER"]
    assert env["SSL_CLIENT_S_DN_CN"] == cn  # ... and raw in the attribute key
    assert env["SSL_CLIENT_S_DN_O"] == " lead space"


def test_serial_format(ca: CertificateAuthority) -> None:
    for serial in (1, 0x0F, 0x0100, 0x00FEDCBA9876543210, x509.random_serial_number()):
        cert = make_cert(ca, name((NameOID.COMMON_NAME, "s")), serial=serial)
        env = seen(peer_of(cert))
        assert env["SSL_CLIENT_M_SERIAL"] == f"{cert.serial_number:X}"
        assert env["SSL_CLIENT_M_SERIAL"] == hex(serial)[2:].upper()
        assert not env["SSL_CLIENT_M_SERIAL"].startswith("0") or serial == 0


@pytest.mark.parametrize("moment", [
    dt.datetime(2027, 1, 2, 3, 4, 5, tzinfo=UTC),
    dt.datetime(2030, 10, 31, 13, 0, 9, tzinfo=UTC),
    dt.datetime(2049, 2, 9, 0, 0, 0, tzinfo=UTC),
])
def test_validity_format(ca: CertificateAuthority, moment: dt.datetime) -> None:
    start = dt.datetime(2024, 11, 5, 6, 7, 8, tzinfo=UTC)
    cert = make_cert(ca, name((NameOID.COMMON_NAME, "v")), not_before=start, not_after=moment)
    env = seen(peer_of(cert))
    assert env["SSL_CLIENT_V_START"] == "Nov  5 06:07:08 2024 GMT"
    assert env["SSL_CLIENT_V_END"] == openssl_time(cert.not_valid_after_utc)
    assert env["SSL_CLIENT_V_END"] == moment.strftime("%b ") + \
        f"{moment.day:>2} " + moment.strftime("%H:%M:%S %Y GMT")
    assert env["SSL_CLIENT_V_REMAIN"] == str((moment - dt.datetime.now(UTC)).days)


def test_expired_certificate_has_zero_days_remaining(ca: CertificateAuthority) -> None:
    # (the TLS layer refuses expired certificates; a forwarded one may be old)
    past = dt.datetime(2020, 1, 1, tzinfo=UTC)
    cert = make_cert(ca, name((NameOID.COMMON_NAME, "old")),
                     not_before=past - dt.timedelta(days=1), not_after=past)
    assert seen(peer_of(cert))["SSL_CLIENT_V_REMAIN"] == "0"


def test_certificate_without_sans_or_cn(ca: CertificateAuthority) -> None:
    cert = make_cert(ca, name((NameOID.ORGANIZATION_NAME, "NoCN")))
    env = seen(peer_of(cert), remote_user="cn")
    assert not [k for k in env if k.startswith("SSL_CLIENT_SAN_")]
    assert "SSL_CLIENT_S_DN_CN" not in env
    assert "REMOTE_USER" not in env
    assert env["securewsgi.peer"].common_name is None


# ------------------------------------------------------------------- PeerIdentity


def test_peer_identity_fields(ca: CertificateAuthority) -> None:
    cert = make_cert(ca, name((NameOID.COMMON_NAME, "carol")),
                     sans=(x509.DNSName("c.example.org"),
                           x509.UniformResourceIdentifier("spiffe://e/x")))
    peer = seen(peer_of(cert))["securewsgi.peer"]
    assert isinstance(peer, PeerIdentity)
    assert peer.subject == "CN=carol"
    assert peer.issuer == ca.cert.subject.rfc4514_string()
    assert peer.serial == cert.serial_number and isinstance(peer.serial, int)
    assert peer.not_before == cert.not_valid_before_utc
    assert peer.not_after == cert.not_valid_after_utc
    assert peer.not_before.tzinfo is not None
    assert peer.san_dns == ("c.example.org",)
    assert peer.san_uri == ("spiffe://e/x",)
    assert peer.san_email == () and peer.san_ip == ()
    assert peer.fingerprint_sha256 == cert.fingerprint(hashes.SHA256()).hex()
    assert peer.pem == cert.public_bytes(serialization.Encoding.PEM).decode()
    assert peer.source == "tls"


def test_from_pem_and_from_der_agree(ca: CertificateAuthority) -> None:
    cert = make_cert(ca, name((NameOID.COMMON_NAME, "d")))
    a = PeerIdentity.from_der(der(cert))
    b = PeerIdentity.from_pem(cert.public_bytes(serialization.Encoding.PEM), source="tls")
    assert a == b
    assert PeerIdentity.from_pem(cert.public_bytes(serialization.Encoding.PEM)).source == "proxy"


def test_app_cannot_corrupt_the_cached_keys(ca: CertificateAuthority) -> None:
    cert = make_cert(ca, name((NameOID.COMMON_NAME, "e")))
    peer = peer_of(cert)
    before = dict(peer.environ())

    def rude_app(environ: dict, start_response: Any) -> list:
        environ["SSL_CLIENT_S_DN_CN"] = "root"
        del environ["SSL_CLIENT_CERT"]
        start_response("200 OK", [])
        return []

    mw = IdentityMiddleware(rude_app)
    webob.Request.blank("/", environ={"securewsgi.tls_peer": peer}).get_response(mw)
    assert peer.environ() == before
    recorder = Recorder()
    webob.Request.blank("/", environ={"securewsgi.tls_peer": peer}).get_response(
        IdentityMiddleware(recorder))
    assert recorder.environ["SSL_CLIENT_S_DN_CN"] == "e"


# ------------------------------------------------------------------- REMOTE_USER


@pytest.mark.parametrize(("mode", "expected"), [
    ("none", None),
    ("cn", "svc"),
    ("dn", "CN=svc,O=Org"),
    ("san_dns", "first.example.org"),
    ("san_uri", "spiffe://example.org/first"),
    ("san_email", "first@example.org"),
])
def test_remote_user(ca: CertificateAuthority, mode: str, expected: Optional[str]) -> None:
    cert = make_cert(ca, name((NameOID.ORGANIZATION_NAME, "Org"), (NameOID.COMMON_NAME, "svc")),
                     sans=(x509.DNSName("first.example.org"), x509.DNSName("second.example.org"),
                           x509.UniformResourceIdentifier("spiffe://example.org/first"),
                           x509.UniformResourceIdentifier("spiffe://example.org/second"),
                           x509.RFC822Name("first@example.org"),
                           x509.RFC822Name("second@example.org")))
    assert seen(peer_of(cert), remote_user=mode).get("REMOTE_USER") == expected


@pytest.mark.parametrize("mode", ["san_dns", "san_uri", "san_email"])
def test_remote_user_unset_without_that_san(ca: CertificateAuthority, mode: str) -> None:
    cert = make_cert(ca, name((NameOID.COMMON_NAME, "nosan")))
    assert "REMOTE_USER" not in seen(peer_of(cert), remote_user=mode)


@pytest.mark.parametrize("mode", ["none", "cn", "dn", "san_uri"])
def test_anonymous_request(mode: str) -> None:
    env = seen(None, remote_user=mode)
    assert client_keys(env) == {"SSL_CLIENT_VERIFY": "NONE"}
    assert env["securewsgi.peer"] is None
    assert "REMOTE_USER" not in env


# ---------------------------------------------------------------------- spoofing

PLANTED = {
    "SSL_CLIENT_VERIFY": "SUCCESS",
    "SSL_CLIENT_S_DN": "CN=admin",
    "SSL_CLIENT_S_DN_CN": "admin",
    "SSL_CLIENT_SAN_DNS_7": "admin.example.org",
    "SSL_CLIENT_CERT_SHA256": "00" * 32,
    "REMOTE_USER": "admin",
    "securewsgi.peer": "not a peer",
}


@pytest.mark.parametrize("with_cert", [False, True])
def test_planted_keys_never_reach_the_app(ca: CertificateAuthority, with_cert: bool) -> None:
    """Under a server that maps headers with underscores (eventlet drops them), or
    from an earlier middleware: nothing under our names survives."""
    cert = make_cert(ca, name((NameOID.COMMON_NAME, "mallory")))
    peer = peer_of(cert) if with_cert else None
    app = Recorder()
    request = webob.Request.blank(
        "/", environ={"securewsgi.tls_peer": peer, **PLANTED},
        headers={"SSL-Client-S-DN-CN": "admin", "Remote-User": "admin",
                 "SSL_CLIENT_VERIFY": "SUCCESS"})
    request.get_response(IdentityMiddleware(app, remote_user="none"))
    env = app.environ
    if with_cert:
        assert client_keys(env) == dict(peer.environ(), SSL_CLIENT_V_REMAIN=env[
            "SSL_CLIENT_V_REMAIN"])
        assert env["SSL_CLIENT_S_DN_CN"] == "mallory"
        assert env["securewsgi.peer"] is peer
    else:
        assert client_keys(env) == {"SSL_CLIENT_VERIFY": "NONE"}
        assert env["securewsgi.peer"] is None
    assert "REMOTE_USER" not in env
    assert "SSL_CLIENT_SAN_DNS_7" not in env
    # identity-looking headers from an untrusted peer are removed (strip_identity_headers)
    assert "HTTP_SSL_CLIENT_S_DN_CN" not in env
    assert "HTTP_REMOTE_USER" not in env
    assert "HTTP_SSL_CLIENT_VERIFY" not in env


def test_headers_stay_headers_when_not_stripped(ca: CertificateAuthority) -> None:
    """With strip_identity_headers off, a header is passed on as a header: an HTTP_*
    key never becomes an identity key."""
    peer = peer_of(make_cert(ca, name((NameOID.COMMON_NAME, "mallory"))))
    app = Recorder()
    request = webob.Request.blank(
        "/", environ={"securewsgi.tls_peer": peer, **PLANTED},
        headers={"SSL-Client-S-DN-CN": "admin", "Remote-User": "admin"})
    request.get_response(IdentityMiddleware(app, remote_user="cn",
                                            strip_identity_headers=False))
    env = app.environ
    assert env["HTTP_SSL_CLIENT_S_DN_CN"] == "admin"
    assert env["HTTP_REMOTE_USER"] == "admin"
    assert env["SSL_CLIENT_S_DN_CN"] == "mallory"
    assert env["REMOTE_USER"] == "mallory"


def test_remote_user_from_client_is_replaced(ca: CertificateAuthority) -> None:
    cert = make_cert(ca, name((NameOID.COMMON_NAME, "real")))
    assert seen(peer_of(cert), {"REMOTE_USER": "admin"}, remote_user="cn")[
        "REMOTE_USER"] == "real"
    assert "REMOTE_USER" not in seen(peer_of(cert), {"REMOTE_USER": "admin"})
    assert "REMOTE_USER" not in seen(None, {"REMOTE_USER": "admin"}, remote_user="cn")


# ------------------------------------------------------------ other WSGI servers


def test_without_securewsgi_server_every_request_is_anonymous(
        ca: CertificateAuthority, caplog: pytest.LogCaptureFixture) -> None:
    app = Recorder()
    mw = IdentityMiddleware(app, remote_user="cn")
    caplog.set_level(logging.WARNING, logger="securewsgi.identity")
    for _ in range(3):
        request = webob.Request.blank("/", environ=dict(PLANTED))
        assert request.get_response(mw).status_int == 200
        assert client_keys(app.environ) == {"SSL_CLIENT_VERIFY": "NONE"}
        assert app.environ["securewsgi.peer"] is None
        assert "REMOTE_USER" not in app.environ
    warnings = [r for r in caplog.records if r.name == "securewsgi.identity"]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "securewsgi.tls_peer" in warnings[0].getMessage()
    assert "anonymous" in warnings[0].getMessage()


def test_plain_http_mode_is_anonymous_without_warning(caplog: pytest.LogCaptureFixture
                                                      ) -> None:
    caplog.set_level(logging.WARNING, logger="securewsgi.identity")
    env = seen(None)
    assert env["SSL_CLIENT_VERIFY"] == "NONE"
    assert not [r for r in caplog.records if r.name == "securewsgi.identity"]
