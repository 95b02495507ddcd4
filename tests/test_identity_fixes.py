"""Identity hardening: identity-looking request headers, control characters in paths,
dot segments in URI SAN globs, and two CNs in one subject.

Unit tests call `IdentityMiddleware` as a WSGI app with real certificates signed by a
`securewsgi.pki.CertificateAuthority`; the end-to-end tests start the real server and
talk to it over mutual TLS with `ssl` sockets (raw bytes: requests would normalise).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any, Optional

import pytest
import webob
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from support import PKIFiles, ServerProcess, client_context, exchange, raw_https, status_of

from securewsgi import IdentityMiddleware, PeerIdentity
from securewsgi.config import RuleConfig, load_config
from securewsgi.errors import ConfigError
from securewsgi.identity.authz import compile_pattern, compile_policy
from securewsgi.identity.middleware import filter_factory
from securewsgi.pki import CertificateAuthority

APPS = str(Path(__file__).parent / "apps")
UTC = dt.timezone.utc


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("fixes CA")


def peer(ca: CertificateAuthority, cn: str = "client", **kwargs: Any) -> PeerIdentity:
    cert, _ = ca.issue_client(cn, **kwargs)
    return PeerIdentity.from_der(cert.public_bytes(serialization.Encoding.DER))


class Recorder:
    """A WSGI app that remembers the environ it was called with."""

    def __init__(self) -> None:
        self.environ: Optional[dict[str, Any]] = None

    def __call__(self, environ: dict, start_response: Any) -> list:
        self.environ = dict(environ)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]


def seen(mw_options: dict, headers: dict, who: Optional[PeerIdentity] = None,
         **environ: Any) -> dict[str, Any]:
    """The environ the app gets for a request with `headers` through a middleware."""
    app = Recorder()
    request = webob.Request.blank("/", headers=headers, environ=environ)
    response = request.get_response(IdentityMiddleware(app, **mw_options))
    assert response.status_int == 200, response.body
    assert app.environ is not None
    return app.environ


# ------------------------------------------------ 1. identity-looking request headers

SPOOFED = {
    "X-SSL-Client-Cert": "-----BEGIN%20CERTIFICATE-----",
    "X-SSL-Client-S-DN": "CN=admin",
    "X-SSL-Client-Verify": "SUCCESS",
    "X-SSL-Client": "admin",
    "X-Client-Cert": "admin",
    "X-Client-Cert-Chain": "admin",
    "X-Client-Certificate": "admin",
    "SSL-Client-S-DN-CN": "admin",
    "SSL-Client-Verify": "SUCCESS",
    "SSL_CLIENT_CERT": "admin",  # underscores: the same environ key as SSL-Client-Cert
    "X-Forwarded-Client-Cert": 'Cert="x"',
    "X-Forwarded-Client-Cert-Chain": "x",
    "Remote-User": "admin",
    "X-Remote-User": "admin",
    "X-Forwarded-Tls-Client-Cert": "x",
    "X-Amzn-Mtls-Clientcert": "x",
    "X-SSL-Cert": "x",
}
UNRELATED = {
    "X-Request-Id": "req-1",
    "X-Auth-Token": "token",
    "X-Forwarded-For": "192.0.2.1",
    "X-Client-Id": "app-7",
    "X-SSL-Protocol": "TLSv1.3",
    "User-Agent": "test",
}


def header_key(name: str) -> str:
    return "HTTP_" + name.upper().replace("-", "_")


@pytest.mark.parametrize(("under", "with_cert"), [
    ("securewsgi", True), ("securewsgi", False), ("other server", False)])
def test_identity_looking_headers_from_a_direct_client_are_removed(
        ca: CertificateAuthority, under: str, with_cert: bool) -> None:
    who = peer(ca, "bob") if with_cert else None
    environ = {"securewsgi.tls_peer": who} if under == "securewsgi" else {}
    env = seen({"remote_user": "cn"}, {**SPOOFED, **UNRELATED}, **environ)
    for name in SPOOFED:
        assert header_key(name) not in env, name
    for name, value in UNRELATED.items():  # everything else is left alone
        assert env[header_key(name)] == value
    expected = "bob" if with_cert and under == "securewsgi" else None
    assert env.get("REMOTE_USER") == expected


def test_the_configured_forwarded_header_is_removed_too(ca: CertificateAuthority) -> None:
    env = seen({"forwarded_cert_header": "x-custom-cert"},
               {"X-Custom-Cert": "x", "X-SSL-Client-Verify": "SUCCESS"},
               **{"securewsgi.tls_peer": peer(ca)})
    assert "HTTP_X_CUSTOM_CERT" not in env
    assert "HTTP_X_SSL_CLIENT_VERIFY" not in env


def test_a_trusted_proxy_keeps_its_headers(ca: CertificateAuthority) -> None:
    """A trusted front end may pass identity headers on; the same headers from any other
    address are removed. The forwarded-certificate header is consumed either way."""
    options = {"trusted_proxies": ["10.0.0.0/8"]}
    headers = {"X-SSL-Client-Verify": "SUCCESS", "Remote-User": "alice",
               "X-Forwarded-Client-Cert": ""}
    trusted = seen(options, headers, REMOTE_ADDR="10.1.2.3",
                   **{"securewsgi.tls_peer": peer(ca, "proxy")})
    assert trusted["HTTP_X_SSL_CLIENT_VERIFY"] == "SUCCESS"
    assert trusted["HTTP_REMOTE_USER"] == "alice"
    assert "HTTP_X_FORWARDED_CLIENT_CERT" not in trusted
    assert trusted["securewsgi.peer"] is None  # no forwarded certificate: anonymous
    direct = seen(options, headers, REMOTE_ADDR="192.0.2.9",
                  **{"securewsgi.tls_peer": peer(ca, "bob")})
    assert "HTTP_X_SSL_CLIENT_VERIFY" not in direct
    assert "HTTP_REMOTE_USER" not in direct


@pytest.mark.parametrize("value", [False, "false", "no", "off", "0"])
def test_stripping_can_be_turned_off(ca: CertificateAuthority, value: Any) -> None:
    env = seen({"strip_identity_headers": value}, SPOOFED,
               **{"securewsgi.tls_peer": peer(ca)})
    for name, sent in SPOOFED.items():
        if name != "X-Forwarded-Client-Cert":  # the configured header is always consumed
            assert env[header_key(name)] == sent, name
    assert "HTTP_X_FORWARDED_CLIENT_CERT" not in env
    assert env["SSL_CLIENT_S_DN_CN"] == "client"  # headers never become identity keys


def test_bad_strip_option_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        IdentityMiddleware(Recorder(), strip_identity_headers="sometimes")
    assert info.value.key == "strip_identity_headers"
    assert "expected true or false" in info.value.message
    with pytest.raises(ConfigError) as info:
        filter_factory({"here": str(tmp_path), "__file__": str(tmp_path / "p.ini")},
                       strip_identity_headers="maybe")
    assert info.value.key == "strip_identity_headers"
    assert info.value.source == str(tmp_path / "p.ini")


def test_paste_filter_option(tmp_path: Path, ca: CertificateAuthority) -> None:
    conf = {"here": str(tmp_path), "__file__": str(tmp_path / "p.ini")}
    for value, kept in (("false", True), ("true", False)):
        app = Recorder()
        mw = filter_factory(conf, strip_identity_headers=value)(app)
        webob.Request.blank("/", headers={"X-SSL-Client-Verify": "SUCCESS"}, environ={
            "securewsgi.tls_peer": peer(ca)}).get_response(mw)
        assert app.environ is not None
        assert ("HTTP_X_SSL_CLIENT_VERIFY" in app.environ) is kept


def test_service_file_option(tmp_path: Path, ca: CertificateAuthority) -> None:
    yaml_file = tmp_path / "svc.yaml"
    yaml_file.write_text("tls: {mode: none}\napp: {factory: 'x:y'}\n"
                         "identity: {strip_identity_headers: false}\n")
    ini_file = tmp_path / "svc.ini"
    ini_file.write_text("[tls]\nmode = none\n[app]\nfactory = x:y\n"
                        "[identity]\nstrip_identity_headers = no\n")
    for path in (yaml_file, ini_file):
        config = load_config(path, environ={})
        assert config.identity.strip_identity_headers is False
        app = Recorder()
        mw = IdentityMiddleware.from_config(app, config.identity, config.authorization,
                                            source=path)
        webob.Request.blank("/", headers={"Remote-User": "x"}, environ={
            "securewsgi.tls_peer": None}).get_response(mw)
        assert app.environ is not None and app.environ["HTTP_REMOTE_USER"] == "x"
    default = tmp_path / "default.yaml"
    default.write_text("tls: {mode: none}\napp: {factory: 'x:y'}\n")
    assert load_config(default, environ={}).identity.strip_identity_headers is True
    bad = tmp_path / "bad.yaml"
    bad.write_text("tls: {mode: none}\napp: {factory: 'x:y'}\n"
                   "identity: {strip_identity_headers: sometimes}\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad, environ={})
    assert str(info.value).startswith(f"{bad}: identity.strip_identity_headers: ")


def test_stripping_logs_only_at_debug(ca: CertificateAuthority,
                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="securewsgi")
    seen({}, SPOOFED, **{"securewsgi.tls_peer": peer(ca)})
    assert not [r for r in caplog.records if r.name.startswith("securewsgi")]
    caplog.set_level(logging.DEBUG, logger="securewsgi")
    seen({}, {"X-SSL-Client-Verify": "SUCCESS"}, REMOTE_ADDR="192.0.2.5",
         **{"securewsgi.tls_peer": peer(ca)})
    (record,) = [r for r in caplog.records if r.name == "securewsgi.identity"]
    assert record.levelno == logging.DEBUG
    assert "HTTP_X_SSL_CLIENT_VERIFY" in record.getMessage()
    assert "192.0.2.5" in record.getMessage()


# -------------------------------------------------- 3. URI SAN globs and dot segments

OPS = "spiffe://example.org/ns/ops"
AMBIGUOUS_URIS = [
    f"{OPS}/..", f"{OPS}/.", f"{OPS}/%2e%2e%2fadmin", f"{OPS}/%2E%2E", f"{OPS}/%2e",
    f"{OPS}/a%2fb", f"{OPS}/a%2Fb", f"{OPS}/..%2f", f"{OPS}/a%5cb", f"{OPS}/a\\b",
    f"{OPS}/..?x", f"{OPS}/..#x",
]


@pytest.mark.parametrize("value", AMBIGUOUS_URIS)
def test_uri_globs_never_match_dot_segments_or_encoded_separators(value: str) -> None:
    for pattern in (f"{OPS}/*", f"{OPS}/**", "spiffe://example.org/**", "spiffe://**",
                    "**"):
        assert not compile_pattern("san_uri", pattern)(value), pattern


@pytest.mark.parametrize("value", [f"{OPS}/x/../../admin", f"{OPS}/./x", f"{OPS}/x/..",
                                   f"{OPS}/%2e%2e/admin", "spiffe://example.org/ns/../ns/ops/x",
                                   "spiffe://example.org/./ns/ops/x"])
def test_the_rule_covers_the_whole_uri_not_only_the_wildcard(value: str) -> None:
    """A dot segment outside the part a `*` matched is just as ambiguous to a consumer
    that normalises the URI."""
    for pattern in (f"{OPS}/**", "spiffe://example.org/**", "spiffe://*/ns/ops/x",
                    "spiffe://example.org/*/ops/x", "spiffe://example.org/**/x"):
        assert not compile_pattern("san_uri", pattern)(value), pattern


def test_uri_globs_still_match_ordinary_uris() -> None:
    assert compile_pattern("san_uri", f"{OPS}/..")(f"{OPS}/..")  # exact: taken literally
    assert compile_pattern("san_uri", "re:spiffe://example\\.org/ns/ops/.*")(f"{OPS}/..")
    glob = compile_pattern("san_uri", f"{OPS}/*")
    deep = compile_pattern("san_uri", f"{OPS}/**")
    for value in (f"{OPS}/alice", f"{OPS}/.hidden", f"{OPS}/a..b", f"{OPS}/...",
                  f"{OPS}/a.b", f"{OPS}/100%25"):
        assert glob(value) and deep(value), value
    assert deep(f"{OPS}/sa/deployer") and not glob(f"{OPS}/sa/deployer")
    assert not glob(f"{OPS}/..")


@pytest.mark.parametrize("uri", [f"{OPS}/..", f"{OPS}/%2e%2e%2fadmin", f"{OPS}/x/../../admin"])
def test_certificate_with_a_dot_segment_uri_is_denied(ca: CertificateAuthority,
                                                      uri: str) -> None:
    rules = [{"name": "admin", "paths": ["/admin/*"],
              "allow": [{"san_uri": f"{OPS}/*"}, {"san_uri": f"{OPS}/**"}]}]
    mw = IdentityMiddleware(Recorder(), rules=rules)

    def status(who: PeerIdentity) -> int:
        request = webob.Request.blank("/admin/x", environ={"securewsgi.tls_peer": who})
        return request.get_response(mw).status_int

    assert status(peer(ca, "mesh", san_uri=[uri])) == 403
    assert status(peer(ca, "mesh", san_uri=[f"{OPS}/alice"])) == 200
    # any other URI SAN of the certificate may still match
    assert status(peer(ca, "mesh", san_uri=[uri, f"{OPS}/alice"])) == 200


# ------------------------------------------------------------- 4. two CNs in a subject


def two_cn_name(first: str, second: str) -> x509.Name:
    """A name with `first` then `second` in DER order (RFC 4514 prints them reversed)."""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, first),
                      x509.NameAttribute(NameOID.COMMON_NAME, second)])


def test_first_cn_in_der_order_everywhere(ca: CertificateAuthority) -> None:
    name = two_cn_name("bob", "alice")
    # the premise, checked against cryptography itself
    assert name.rfc4514_string() == "CN=alice,CN=bob"
    assert [a.value for a in name] == ["bob", "alice"]
    cert, _ = ca.issue_client("bob", subject=name)
    who = PeerIdentity.from_der(cert.public_bytes(serialization.Encoding.DER))
    assert who.common_name == "bob"
    env = seen({"remote_user": "cn"}, {}, **{"securewsgi.tls_peer": who})
    assert env["SSL_CLIENT_S_DN"] == "CN=alice,CN=bob"
    assert env["SSL_CLIENT_S_DN_CN"] == "bob"
    assert env["SSL_CLIENT_S_DN_CN_0"] == "bob"
    assert env["SSL_CLIENT_S_DN_CN_1"] == "alice"
    assert env["REMOTE_USER"] == "bob"
    assert env["securewsgi.peer"].common_name == "bob"
    policy = compile_policy([
        RuleConfig("alice", ("/alice/*",), (), (_entry("cn", "alice"),)),
        RuleConfig("bob", ("/bob/*",), (), (_entry("cn", "bob"),)),
    ])
    assert not policy.decide("/alice/x", "GET", who).allowed
    assert policy.decide("/bob/x", "GET", who).allowed


def _entry(field: str, pattern: str) -> Any:
    from securewsgi.config import AllowEntry

    return AllowEntry(((field, pattern),))


def test_issuer_keys_use_the_der_order_too() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(UTC)
    issuer = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Org"),
                        x509.NameAttribute(NameOID.COMMON_NAME, "ca-first"),
                        x509.NameAttribute(NameOID.COMMON_NAME, "ca-second")])
    ca_cert = (x509.CertificateBuilder().subject_name(issuer).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(1)
               .not_valid_before(now - dt.timedelta(hours=1))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .sign(key, hashes.SHA256()))
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(two_cn_name("svc", "other"))
            .issuer_name(ca_cert.subject).public_key(leaf_key.public_key()).serial_number(2)
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    who = PeerIdentity.from_der(leaf.public_bytes(serialization.Encoding.DER))
    env = seen({}, {}, **{"securewsgi.tls_peer": who})
    assert env["SSL_CLIENT_I_DN"] == "CN=ca-second,CN=ca-first,O=Org"
    assert env["SSL_CLIENT_I_DN_CN"] == "ca-first"
    assert env["SSL_CLIENT_I_DN_CN_0"] == "ca-first"
    assert env["SSL_CLIENT_I_DN_CN_1"] == "ca-second"
    assert env["SSL_CLIENT_I_DN_O"] == "Org"
    assert env["SSL_CLIENT_S_DN_CN"] == "svc"


# ------------------------------------------------------------------- end to end

RULES = [
    {"name": "alice", "paths": ["/alice/*"], "allow": [{"cn": "alice"}]},
    {"name": "bob", "paths": ["/bob/*"], "allow": [{"cn": "bob"}]},
    {"name": "admin", "paths": ["/admin/*"], "allow": [{"cn": "ops-*"}]},
]
PROXY_ADDRESS = "127.0.0.2"  # Linux routes 127/8 to lo: a second source address


@pytest.fixture(scope="module")
def server(start_server, test_pki: PKIFiles) -> ServerProcess:
    return start_server({
        "tls": test_pki.tls_section("mutual"),
        "app": {"factory": "echo:app", "python_path": [APPS]},
        "identity": {"remote_user": "cn", "trusted_proxies": [f"{PROXY_ADDRESS}/32"]},
        "authorization": {"default": "allow", "rules": RULES},
    }, name="fixes")


@pytest.fixture(scope="module")
def two_cns(test_pki: PKIFiles) -> Any:
    return test_pki.add_client("two-cns", subject=two_cn_name("bob", "alice"))


def get(server: ServerProcess, test_pki: PKIFiles, client: Any, target: str,
        headers: str = "", source: str = "127.0.0.1") -> bytes:
    request = (f"GET {target} HTTP/1.1\r\nHost: localhost\r\n{headers}"
               "Connection: close\r\n\r\n").encode()
    return exchange(server.port, request, client_context(test_pki.ca_pem, client),
                    source=source, host=server.host)


def body(response: bytes) -> dict:
    assert status_of(response) == 200, response[:300]
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


def test_e2e_spoofed_identity_headers_never_reach_the_app(server, test_pki) -> None:
    headers = "".join(f"{k}: {v}\r\n" for k, v in {**SPOOFED, **UNRELATED}.items()
                      if "_" not in k)  # eventlet drops header names with underscores
    env = body(get(server, test_pki, test_pki.clients["bob"], "/echo", headers))
    for name in SPOOFED:
        assert header_key(name) not in env, name
    for name, value in UNRELATED.items():
        assert env[header_key(name)] == value, name
    assert env["REMOTE_USER"] == "bob"
    assert env["SSL_CLIENT_S_DN_CN"] == "bob"
    # from the trusted proxy's address the same headers pass (it vouches for them)
    env = body(get(server, test_pki, test_pki.clients["bob"], "/echo",
                   "X-SSL-Client-Verify: SUCCESS\r\nRemote-User: carol\r\n",
                   source=PROXY_ADDRESS))
    assert env["HTTP_X_SSL_CLIENT_VERIFY"] == "SUCCESS"
    assert env["HTTP_REMOTE_USER"] == "carol"


def test_e2e_every_control_character_in_the_path_is_400(server, test_pki) -> None:
    client = test_pki.clients["bob"]
    for code in [*range(0x20), 0x7F]:
        for target in (f"/admin%{code:02x}", f"/echo%{code:02X}", f"/bob/x%{code:02x}y"):
            response = get(server, test_pki, client, target)
            assert status_of(response) == 400, (target, response[:200])
            assert response.endswith(b"\r\n\r\n400 Bad Request: ambiguous request path\n"), \
                target  # our refusal, before the app (the echo app would answer 200)
    assert status_of(get(server, test_pki, client, "/echo%20x")) == 200


def test_e2e_two_cns_the_first_in_der_order_decides(server, test_pki, two_cns) -> None:
    response = get(server, test_pki, two_cns, "/alice/x")
    assert status_of(response) == 403
    env = body(get(server, test_pki, two_cns, "/bob/x"))
    assert env["SSL_CLIENT_S_DN"] == "CN=alice,CN=bob"
    assert env["SSL_CLIENT_S_DN_CN"] == "bob"
    assert env["SSL_CLIENT_S_DN_CN_0"] == "bob"
    assert env["SSL_CLIENT_S_DN_CN_1"] == "alice"
    assert env["REMOTE_USER"] == "bob"
    server.wait_log(r"denied by rule alice: GET /alice/x client=CN=alice,CN=bob")
    # the plain one-CN certificates are unaffected
    assert status_of(raw_https(server, b"GET /alice/x HTTP/1.1\r\nHost: localhost\r\n"
                                       b"Connection: close\r\n\r\n",
                               client_context(test_pki.ca_pem, test_pki.clients["alice"]))
                     ) == 200
