"""Identity and authorization through the real server: raw HTTP over TLS (requests would
normalise the URLs itself), spoofed headers, trusted proxies, and the Paste pipeline."""
from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

import pytest
from support import REPO, PKIFiles, ServerProcess, client_context, raw_https, session, status_of

APPS = str(Path(__file__).parent / "apps")
RULES = [
    {"name": "admin", "paths": ["/admin/*"], "allow": [{"cn": "alice"}]},
    {"name": "health", "paths": ["/healthz"], "allow": [{"anonymous": True}]},
    {"name": "members", "paths": ["/*"], "allow": [{"any": True}]},
]


def _config(test_pki: PKIFiles, trusted: list) -> dict:
    return {
        "tls": test_pki.tls_section("optional"),
        "app": {"factory": "echo:app", "python_path": [APPS]},
        "identity": {"remote_user": "cn", "trusted_proxies": trusted},
        "authorization": {"default": "deny", "rules": RULES},
    }


@pytest.fixture(scope="module")
def guarded(start_server, test_pki: PKIFiles) -> ServerProcess:
    return start_server(_config(test_pki, ["10.0.0.0/8"]), name="guarded")


@pytest.fixture(scope="module")
def behind_proxy(start_server, test_pki: PKIFiles) -> ServerProcess:
    return start_server(_config(test_pki, ["127.0.0.0/8"]), name="proxied")


def _get(server: ServerProcess, test_pki: PKIFiles, who: str, target: str,
         headers: str = "") -> bytes:
    client = None if who == "anonymous" else test_pki.clients[who]
    request = (f"GET {target} HTTP/1.1\r\nHost: localhost\r\n{headers}"
               "Connection: close\r\n\r\n").encode()
    return raw_https(server, request, client_context(test_pki.ca_pem, client))


def _json(response: bytes) -> dict:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


@pytest.mark.parametrize("who", ["alice", "bob", "anonymous"])
def test_two_certificates_get_different_answers(guarded, test_pki, who: str) -> None:
    expected = {"alice": 200, "bob": 403, "anonymous": 403}[who]
    assert status_of(_get(guarded, test_pki, who, "/admin/panel")) == expected
    assert status_of(_get(guarded, test_pki, who, "/healthz")) == 200
    assert status_of(_get(guarded, test_pki, who, "/other")) == (
        403 if who == "anonymous" else 200)


BYPASSES = ["//admin/panel", "/./admin/panel", "/x/../admin/panel", "/%61dmin/panel",
            "/admin/./panel", "/healthz/../admin/panel", "/admin//panel"]


@pytest.mark.parametrize("target", BYPASSES)
def test_path_tricks_are_judged_by_the_admin_rule(guarded, test_pki, target: str) -> None:
    for who in ("bob", "anonymous"):
        assert status_of(_get(guarded, test_pki, who, target)) in (400, 403), who
    response = _get(guarded, test_pki, "alice", target)
    assert status_of(response) in (200, 400)
    if status_of(response) == 200:  # the app routes exactly what was judged
        assert _json(response)["PATH_INFO"] in ("/admin/panel",)


@pytest.mark.parametrize("target", ["/admin%2Fpanel", "/admin%2fpanel", "/%2e%2e/admin/panel",
                                    "/x/..%2Fadmin/panel", "/admin%5Cpanel", "/../admin"])
def test_encoded_separators_and_escapes_are_400(guarded, test_pki, target: str) -> None:
    for who in ("alice", "bob", "anonymous"):
        assert status_of(_get(guarded, test_pki, who, target)) == 400, who


def test_environ_describes_the_tls_peer(guarded, test_pki: PKIFiles) -> None:
    env = _json(_get(guarded, test_pki, "alice", "/whoami"))
    assert env["SSL_CLIENT_VERIFY"] == "SUCCESS"
    assert env["SSL_CLIENT_S_DN"] == "CN=alice"
    assert env["SSL_CLIENT_S_DN_CN"] == "alice"
    assert env["SSL_CLIENT_I_DN"] == "CN=securewsgi test CA"
    assert env["SSL_CLIENT_SAN_URI_0"] == "spiffe://example.org/ns/ops/alice"
    assert env["REMOTE_USER"] == "alice"
    assert env["securewsgi.peer.source"] == "tls"
    assert env["SSL_PROTOCOL"] == "TLSv1.3"
    assert env["SSL_TLS_SNI"] == "localhost"


def _pem_header(test_pki: PKIFiles, name: str, header: str) -> str:
    pem = test_pki.clients[name].cert.read_text()
    if header == "x-forwarded-client-cert":
        return f'X-Forwarded-Client-Cert: Cert="{urllib.parse.quote(pem, safe="")}"\r\n'
    return f"X-SSL-Client-Cert: {urllib.parse.quote(pem, safe='')}\r\n"


SPOOFS = [
    "X-SSL-Client-S-DN: CN=alice\r\n",
    "SSL-Client-Verify: SUCCESS\r\nRemote-User: alice\r\n",
    "X-Remote-User: alice\r\n",
]


@pytest.mark.parametrize("who", ["bob", "anonymous"])
def test_spoofed_headers_from_an_untrusted_client_change_nothing(guarded, test_pki,
                                                                 who: str) -> None:
    headers = "".join(SPOOFS) + _pem_header(test_pki, "alice", "x-forwarded-client-cert")
    response = _get(guarded, test_pki, who, "/admin/panel", headers)
    assert status_of(response) == 403
    env = _json(_get(guarded, test_pki, who, "/healthz", headers))
    assert "HTTP_X_FORWARDED_CLIENT_CERT" not in env  # removed before the app runs
    assert env.get("REMOTE_USER") == ("bob" if who == "bob" else None)
    assert env["SSL_CLIENT_VERIFY"] == ("SUCCESS" if who == "bob" else "NONE")
    assert env.get("SSL_CLIENT_S_DN") == ("CN=bob" if who == "bob" else None)


def test_trusted_proxy_forwards_the_callers_certificate(behind_proxy, test_pki) -> None:
    header = _pem_header(test_pki, "alice", "x-forwarded-client-cert")
    response = _get(behind_proxy, test_pki, "bob", "/admin/panel", header)
    assert status_of(response) == 200
    env = _json(response)
    assert env["SSL_CLIENT_S_DN"] == "CN=alice"
    assert env["securewsgi.peer.source"] == "proxy"
    assert "HTTP_X_FORWARDED_CLIENT_CERT" not in env
    # no forwarded certificate from the proxy: anonymous, not the proxy's own identity
    assert status_of(_get(behind_proxy, test_pki, "bob", "/admin/panel")) == 403


def test_malformed_forwarded_certificate_from_trusted_proxy_is_400(behind_proxy,
                                                                   test_pki) -> None:
    response = _get(behind_proxy, test_pki, "bob", "/healthz",
                    'X-Forwarded-Client-Cert: Cert="not%20a%20certificate"\r\n')
    assert status_of(response) == 400
    assert b"Traceback" not in response
    assert "Traceback" not in behind_proxy.stderr


def test_denial_is_logged_with_rule_and_dn_and_body_echoes_nothing(guarded, test_pki) -> None:
    response = _get(guarded, test_pki, "bob", "/admin/panel?x=<script>")
    assert status_of(response) == 403
    body = response.split(b"\r\n\r\n", 1)[1]
    assert b"bob" not in body and b"script" not in body and b"admin" not in body
    guarded.wait_log(r"denied by rule admin: GET /admin/panel client=CN=bob")


def test_paste_pipeline_serves_through_the_identity_filter(start_server, test_pki) -> None:
    """etc/api-paste.ini with etc/policy.yaml: GET /admin/* for any verified client, writes
    only for CN ops-*; the filter sees the TLS peer that the server verified."""
    server = start_server({"tls": test_pki.tls_section("optional"),
                           "app": {"paste": str(REPO / "etc" / "api-paste.ini")}},
                          name="paste")
    with session(test_pki.ca_pem, test_pki.clients["alice"]) as s:
        response = s.get(server.url("/admin/x"), timeout=10)
        assert response.status_code == 200
        assert response.json()["client"]["subject"] == "CN=alice"
        # alice's SAN spiffe://example.org/ns/ops/alice matches the admin rule
        assert s.post(server.url("/admin/x"), timeout=10).status_code == 200
    with session(test_pki.ca_pem, test_pki.clients["bob"]) as s:
        assert s.get(server.url("/admin/x"), timeout=10).status_code == 200
        assert s.post(server.url("/admin/x"), timeout=10).status_code == 403
    with session(test_pki.ca_pem) as s:
        assert s.get(server.url("/admin/x"), timeout=10).status_code == 403
        assert s.get(server.url("/healthz"), timeout=10).status_code == 200
