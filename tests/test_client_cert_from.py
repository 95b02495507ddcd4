"""`client_cert_from = server`: under another server (Apache mod_wsgi with mod_ssl, uWSGI
behind nginx) the certificate that server verified is the client's identity.

The middleware is called as a WSGI app with the environ such a server builds: real
certificates (signed by a `securewsgi.pki.CertificateAuthority`) in
``SSL_CLIENT_CERT`` as PEM (mod_ssl ``+ExportCertData``) or URL-escaped PEM (nginx
``$ssl_client_escaped_cert``), and ``SSL_CLIENT_VERIFY`` as those servers set it.
"""
from __future__ import annotations

import json
import logging
import shutil
import urllib.parse
from pathlib import Path
from typing import Any, Optional

import pytest
import webob
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from paste.deploy import loadapp

from securewsgi import IdentityMiddleware, PeerIdentity
from securewsgi.commands.run import main as run_main
from securewsgi.config import load_config
from securewsgi.errors import ConfigError
from securewsgi.identity.middleware import filter_factory
from securewsgi.pki import CertificateAuthority

ETC = Path(__file__).resolve().parent.parent / "etc"
RULES = [{"name": "admin", "paths": ["/admin/*"], "allow": [{"cn": "alice"}]}]
_BAD = b"400 Bad Request: unusable client certificate from the hosting server\n"


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("hosting server CA")


@pytest.fixture(scope="module")
def alice(ca: CertificateAuthority) -> x509.Certificate:
    cert, _ = ca.issue_client("alice", san_uri=["spiffe://example.org/ns/ops/alice"],
                              san_dns=["alice.example.org"])
    return cert


@pytest.fixture(scope="module")
def bob(ca: CertificateAuthority) -> x509.Certificate:
    return ca.issue_client("bob")[0]


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def nginx_escaped(cert: x509.Certificate) -> str:
    """$ssl_client_escaped_cert: the PEM URL-escaped (it starts "-----BEGIN%20")."""
    return urllib.parse.quote(pem(cert), safe="")


def mod_ssl_environ(cert: Optional[x509.Certificate], verify: Optional[str] = "SUCCESS",
                    value: Optional[str] = None) -> dict[str, Any]:
    """What Apache mod_ssl (+StdEnvVars +ExportCertData) puts into environ -- in its own
    formats, which the middleware replaces with securewsgi's."""
    environ: dict[str, Any] = {"HTTPS": "on", "SSL_PROTOCOL": "TLSv1.3",
                               "SSL_CLIENT_S_DN_CN": "set-by-the-hosting-server",
                               "SSL_CLIENT_M_SERIAL": "01",
                               "SSL_CLIENT_CERT_CHAIN_0": "chain", "REMOTE_USER": "apache"}
    if verify is not None:
        environ["SSL_CLIENT_VERIFY"] = verify
    if value is not None:
        environ["SSL_CLIENT_CERT"] = value
    elif cert is not None:
        environ["SSL_CLIENT_CERT"] = pem(cert)
    return environ


class Recorder:
    def __init__(self) -> None:
        self.environ: Optional[dict[str, Any]] = None
        self.calls = 0

    def __call__(self, environ: dict, start_response: Any) -> list:
        self.calls += 1
        self.environ = dict(environ)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]


def call(mw: IdentityMiddleware, environ: dict[str, Any], path: str = "/",
         headers: Optional[dict] = None, method: str = "GET") -> webob.Response:
    return webob.Request.blank(path, method=method, environ=dict(environ),
                               headers=headers or {}).get_response(mw)


def client_keys(environ: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in environ.items() if k.startswith("SSL_CLIENT_")}


def expected_keys(cert: x509.Certificate) -> dict[str, str]:
    """securewsgi's own keys for `cert`, exactly as securewsgi-run would set them."""
    peer = PeerIdentity.from_der(cert.public_bytes(serialization.Encoding.DER), source="tls")
    return dict(peer.environ())


# -------------------------------------------------------------- the verified certificate


@pytest.mark.parametrize("form", ["pem", "nginx-escaped", "quoted-with-slashes",
                                  "tab-indented", "crlf"])
def test_the_hosting_servers_certificate_is_the_identity(alice: x509.Certificate,
                                                         form: str) -> None:
    value = {
        "pem": pem(alice),
        "nginx-escaped": nginx_escaped(alice),
        "quoted-with-slashes": urllib.parse.quote(pem(alice)),
        "tab-indented": pem(alice).replace("\n", "\n\t").rstrip("\t"),  # $ssl_client_cert
        "crlf": pem(alice).replace("\n", "\r\n"),
    }[form]
    if form == "nginx-escaped":
        assert value.startswith("-----BEGIN%20")
    app = Recorder()
    mw = IdentityMiddleware(app, remote_user="cn", client_cert_from="server")
    assert call(mw, mod_ssl_environ(alice, value=value)).status_int == 200
    env = app.environ
    assert env is not None
    keys = client_keys(env)
    assert keys.pop("SSL_CLIENT_V_REMAIN").isdigit()
    expected = expected_keys(alice)
    expected.pop("SSL_CLIENT_V_REMAIN")
    assert keys == expected  # every key rebuilt by us; the server's own ones are gone
    assert env["SSL_CLIENT_S_DN_CN"] == "alice"
    assert env["SSL_CLIENT_CERT"] == pem(alice)  # PEM, whatever form the server used
    assert env["REMOTE_USER"] == "alice"
    assert env["securewsgi.peer"].source == "server"
    assert env["securewsgi.peer"].san_uri == ("spiffe://example.org/ns/ops/alice",)
    assert env["SSL_PROTOCOL"] == "TLSv1.3"  # the server's TLS facts stay


@pytest.mark.parametrize("verify", ["NONE", "FAILED:certificate has expired", "GENEROUS",
                                    "", "success", " SUCCESS", None])
def test_only_success_counts(alice: x509.Certificate, verify: Optional[str]) -> None:
    """mod_ssl's GENEROUS (optional_no_ca) and nginx's FAILED:reason describe a
    certificate nobody verified: the client is anonymous."""
    app = Recorder()
    mw = IdentityMiddleware(app, remote_user="cn", client_cert_from="server", rules=RULES)
    environ = mod_ssl_environ(alice, verify=verify, value=nginx_escaped(alice))
    assert call(mw, environ, "/admin/x").status_int == 403
    assert call(mw, environ, "/public").status_int == 200
    env = app.environ
    assert env is not None
    assert client_keys(env) == {"SSL_CLIENT_VERIFY": "NONE"}
    assert env["securewsgi.peer"] is None
    assert "REMOTE_USER" not in env


def test_authorization_applies(alice: x509.Certificate, bob: x509.Certificate) -> None:
    app = Recorder()
    mw = IdentityMiddleware(app, client_cert_from="server", rules=RULES, default="deny")
    assert call(mw, mod_ssl_environ(alice), "/admin/x").status_int == 200
    assert call(mw, mod_ssl_environ(bob), "/admin/x").status_int == 403
    assert call(mw, mod_ssl_environ(None, verify="NONE"), "/admin/x").status_int == 403
    assert call(mw, mod_ssl_environ(alice), "/admin%0a").status_int == 400
    assert app.calls == 1


def test_none_is_the_default_and_removes_the_servers_keys(alice: x509.Certificate) -> None:
    """The same environ: anonymous with the default (and nothing of the hosting server's
    left), the certificate's identity with client_cert_from = server."""
    environ = mod_ssl_environ(alice)
    for options, who in (({}, None), ({"client_cert_from": "none"}, None),
                         ({"client_cert_from": "server"}, "alice")):
        app = Recorder()
        assert call(IdentityMiddleware(app, remote_user="cn", **options),
                    environ).status_int == 200
        assert app.environ is not None
        if who is None:
            assert client_keys(app.environ) == {"SSL_CLIENT_VERIFY": "NONE"}
            assert "REMOTE_USER" not in app.environ
        else:
            assert app.environ["SSL_CLIENT_S_DN_CN"] == app.environ["REMOTE_USER"] == who


def test_parsed_once_per_distinct_certificate(alice: x509.Certificate,
                                              bob: x509.Certificate) -> None:
    app = Recorder()
    mw = IdentityMiddleware(app, client_cert_from="server")
    peers = []
    for cert in (alice, alice, bob, alice):
        call(mw, mod_ssl_environ(cert, value=nginx_escaped(cert)))
        assert app.environ is not None
        peers.append(app.environ["securewsgi.peer"])
    assert peers[0] is peers[1] is peers[3]
    assert mw.server_certs is not None
    assert mw.server_certs.cache_info() == {"hits": 2, "misses": 2, "size": 2}


# ---------------------------------------------------- what a client or server gets wrong


@pytest.mark.parametrize(("value", "reason"), [
    (None, "SSL_CLIENT_CERT is missing"),
    ("", "SSL_CLIENT_CERT is missing"),
    ("not a certificate", "not one PEM certificate"),
    ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "cannot be read"),
    ("-----BEGIN%20CERTIFICATE-----%0A%FF%0A-----END%20CERTIFICATE-----", "URL-escaped"),
    ("CHAIN", "not one PEM certificate"),
])
def test_unusable_verified_certificate_is_400_and_logged(
        alice: x509.Certificate, bob: x509.Certificate, value: Optional[str], reason: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """SSL_CLIENT_VERIFY=SUCCESS without a readable certificate is a misconfigured server
    (e.g. Apache without +ExportCertData): refused, never taken as anonymous."""
    if value == "CHAIN":
        value = pem(alice) + pem(bob)
    environ = mod_ssl_environ(None)
    if value is not None:
        environ["SSL_CLIENT_CERT"] = value
    app = Recorder()
    mw = IdentityMiddleware(app, client_cert_from="server")
    caplog.set_level(logging.ERROR, logger="securewsgi.identity")
    request = webob.Request.blank("/", environ=environ)
    response = request.get_response(mw)
    assert response.status_int == 400
    assert response.body == _BAD
    assert app.calls == 0
    assert request.environ["securewsgi.peer"] is None  # for an outer access log
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert reason in record.getMessage()
    if reason == "SSL_CLIENT_CERT is missing":
        assert "+ExportCertData" in record.getMessage()


def test_request_headers_cannot_supply_the_certificate(alice: x509.Certificate,
                                                       bob: x509.Certificate) -> None:
    """HTTP_SSL_CLIENT_CERT is a header, not the server's SSL_CLIENT_CERT."""
    spoof = {"SSL-Client-Cert": nginx_escaped(alice), "SSL-Client-Verify": "SUCCESS",
             "X-SSL-Client-Cert": nginx_escaped(alice), "X-SSL-Client-Verify": "SUCCESS"}
    app = Recorder()
    mw = IdentityMiddleware(app, remote_user="cn", client_cert_from="server", rules=RULES)
    for environ in ({}, mod_ssl_environ(None, verify="NONE"), mod_ssl_environ(bob)):
        assert call(mw, environ, "/admin/x", headers=spoof).status_int == 403
        call(mw, environ, "/public", headers=spoof)
        assert app.environ is not None
        assert not [k for k in app.environ if k.startswith(("HTTP_SSL_", "HTTP_X_SSL_"))]
        assert app.environ.get("REMOTE_USER") in (None, "bob")


def test_under_securewsgis_own_server_it_is_an_error_once(
        ca: CertificateAuthority, alice: x509.Certificate, bob: x509.Certificate,
        caplog: pytest.LogCaptureFixture) -> None:
    """securewsgi-run verified the client itself: its peer is used, SSL_CLIENT_CERT (here
    a copy an outer layer could have set) is ignored, and the mistake is logged once."""
    tls_peer = PeerIdentity.from_der(bob.public_bytes(serialization.Encoding.DER))
    app = Recorder()
    mw = IdentityMiddleware(app, remote_user="cn", client_cert_from="server")
    caplog.set_level(logging.WARNING, logger="securewsgi.identity")
    for _ in range(3):
        environ = dict(mod_ssl_environ(alice), **{"securewsgi.tls_peer": tls_peer})
        assert call(mw, environ).status_int == 200
        assert app.environ is not None
        assert app.environ["REMOTE_USER"] == "bob"
        assert app.environ["securewsgi.peer"] is tls_peer
        assert app.environ["SSL_CLIENT_CERT"] == pem(bob)
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert "client_cert_from = server" in record.getMessage()
    assert "securewsgi's own server" in record.getMessage()


def test_a_proxy_verified_by_the_hosting_server_may_forward(ca: CertificateAuthority,
                                                            alice: x509.Certificate) -> None:
    """trusted_proxy_identities matches the proxy's certificate as the hosting server
    verified it, just as it does for securewsgi's own handshake."""
    proxy, _ = ca.issue_client("edge-proxy")
    app = Recorder()
    mw = IdentityMiddleware(app, client_cert_from="server",
                            trusted_proxy_identities=[{"cn": "edge-proxy"}])
    xfcc = {"X-Forwarded-Client-Cert": f'Cert="{nginx_escaped(alice)}"'}
    call(mw, mod_ssl_environ(proxy), headers=xfcc)
    assert app.environ is not None
    assert app.environ["securewsgi.peer"].common_name == "alice"
    assert app.environ["securewsgi.peer"].source == "proxy"
    call(mw, mod_ssl_environ(alice), headers=xfcc)  # not the proxy: its own identity
    assert app.environ["securewsgi.peer"].source == "server"
    assert "HTTP_X_FORWARDED_CLIENT_CERT" not in app.environ


# ------------------------------------------------------------------------ options


def test_bad_value_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        IdentityMiddleware(Recorder(), client_cert_from="apache")
    assert (info.value.source, info.value.key) == ("IdentityMiddleware", "client_cert_from")
    assert "must be one of none, server" in info.value.message
    paste_file = tmp_path / "api-paste.ini"
    with pytest.raises(ConfigError) as info:
        filter_factory({"here": str(tmp_path), "__file__": str(paste_file)},
                       client_cert_from="nginx")
    assert (info.value.source, info.value.key) == (str(paste_file), "client_cert_from")


@pytest.mark.parametrize(("value", "error"), [
    ("none", None),
    ("server", "only for the Paste filter or IdentityMiddleware under another server"),
    ("apache", "must be one of none, server"),
])
def test_service_file_accepts_only_none(tmp_path: Path, value: str,
                                        error: Optional[str]) -> None:
    for suffix, text in ((".yaml", f"identity:\n  client_cert_from: {value}\n"),
                         (".ini", f"[identity]\nclient_cert_from = {value}\n")):
        path = tmp_path / f"svc{suffix}"
        head = ("tls: {mode: none}\napp: {factory: 'x:y'}\n" if suffix == ".yaml"
                else "[tls]\nmode = none\n[app]\nfactory = x:y\n")
        path.write_text(head + text)
        if error is None:
            assert load_config(path, environ={}).identity.client_cert_from == "none"
            continue
        with pytest.raises(ConfigError) as info:
            load_config(path, environ={})
        assert str(info.value).startswith(f"{path}: identity.client_cert_from: ")
        assert error in str(info.value)
        assert "\n" not in str(info.value)


def test_securewsgi_run_refuses_server(tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "service.yaml"
    path.write_text("tls: {mode: none}\napp: {factory: 'securewsgi.demo:app'}\n"
                    "identity: {client_cert_from: server}\n")
    assert run_main(["--config", str(path), "--check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert f"{path}: identity.client_cert_from: " in err[0]
    assert "securewsgi-run verifies client certificates itself" in err[0]


# --------------------------------------------------------------------- Paste Deploy


PASTE_INI = """\
[pipeline:main]
pipeline = identity api

[filter:identity]
use = egg:securewsgi#identity
remote_user = cn
client_cert_from = server
policy_file = policy.yaml

[app:api]
use = call:securewsgi.demo:app_factory
"""


def test_paste_pipeline_under_another_server(tmp_path: Path, ca: CertificateAuthority,
                                             alice: x509.Certificate) -> None:
    """etc/policy.yaml behind a Paste pipeline as mod_wsgi or uWSGI would load it."""
    shutil.copy(ETC / "policy.yaml", tmp_path / "policy.yaml")
    (tmp_path / "api-paste.ini").write_text(PASTE_INI)
    app = loadapp(f"config:{tmp_path / 'api-paste.ini'}")
    assert isinstance(app, IdentityMiddleware)
    assert app.client_cert_from == "server"
    ops, _ = ca.issue_client("ops-carol")
    dev, _ = ca.issue_client("dev-dave")

    def get(environ: dict, path: str, method: str = "GET") -> webob.Response:
        return webob.Request.blank(path, method=method, environ=environ).get_response(app)

    response = get(mod_ssl_environ(ops, value=nginx_escaped(ops)), "/admin/users", "POST")
    assert response.status_int == 200
    answer = json.loads(response.body)
    assert answer["client"]["common_name"] == "ops-carol"
    assert answer["client"]["source"] == "server"
    assert answer["tls"]["REMOTE_USER"] == "ops-carol"
    assert answer["tls"]["SSL_CLIENT_VERIFY"] == "SUCCESS"
    # alice's SPIFFE ID matches the admin rule; dev-dave may only read
    assert get(mod_ssl_environ(alice), "/admin/users", "DELETE").status_int == 200
    assert get(mod_ssl_environ(dev), "/admin/users", "POST").status_int == 403
    assert get(mod_ssl_environ(dev), "/admin/users").status_int == 200
    unverified = mod_ssl_environ(ops, verify="FAILED:unable to get local issuer certificate")
    assert get(unverified, "/admin/users", "POST").status_int == 403
    assert get(mod_ssl_environ(None, verify="NONE"), "/healthz").status_int == 200
    assert get(mod_ssl_environ(None, verify="NONE"), "/admin/users").status_int == 403
    assert get(mod_ssl_environ(None, value="garbage"), "/healthz").status_int == 400
