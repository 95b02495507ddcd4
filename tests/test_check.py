"""`securewsgi-check`: every failure class produced for real, and explained in one sentence.

Real peers only: securewsgi servers (module-scoped), stdlib `ssl`/TCP peers in threads
for what securewsgi never serves (an expired certificate, a silent reset after the
handshake, a port that never answers), and `openssl s_server` for a server that names
acceptable client CAs. All traffic stays on 127.0.0.1.
"""
from __future__ import annotations

import datetime
import http.server
import json
import re
import ssl
import subprocess
import sys
import threading
from typing import Any, Optional

import pytest
from cryptography.x509 import Name, NameAttribute
from cryptography.x509.oid import NameOID
from support import (
    PKIFiles,
    ServerProcess,
    TCPPeer,
    TLSPeer,
    UnacceptedListener,
    free_port,
    http_response,
    run_command,
    wait_for,
)

from securewsgi import pki
from securewsgi.client.diagnose import JSON_KEYS, _name_to_string, hostname_matches
from securewsgi.commands.check import main

UNKNOWN_CA_FIX = "pass --ca with the CA that signed the server certificate."
REQUIRED = "the server requires a client certificate and none was sent."
REQUIRED_FIX = ("pass --cert and --key with a certificate signed by a CA the server trusts "
                "(its tls.ca_certs).")
PLAIN_HTTP = "the server answered in plain HTTP, not TLS (OpenSSL: wrong version number)."
PLAIN_HTTP_FIX = ("this port serves http://, not https://: use http:// for it, or the port "
                  "where the server serves HTTPS.")


# --------------------------------------------------------------------------- helpers


def check(capsys: pytest.CaptureFixture, url: str, *args: Any) -> tuple:
    """Run `securewsgi-check` in-process; return (exit status, stdout, stderr)."""
    code = main([url, *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def check_json(capsys: pytest.CaptureFixture, url: str, *args: Any) -> dict[str, Any]:
    code, out, _err = check(capsys, url, *args, "--json")
    report = json.loads(out)
    assert report["exit_code"] == code
    return report


def client_args(test_pki: PKIFiles, kind: str) -> list:
    client = test_pki.clients[kind]
    return ["--cert", client.cert, "--key", client.key]


def result_lines(out: str) -> tuple:
    """The explanation and the fix, as printed."""
    failed = re.search(r"^result    FAILED: (.*)$", out, re.M)
    fix = re.search(r"^fix       (.*)$", out, re.M)
    assert failed and fix, out
    return failed.group(1), fix.group(1)


@pytest.fixture(scope="module")
def servers(start_server, test_pki: PKIFiles) -> dict[str, ServerProcess]:
    """One securewsgi server per TLS situation the checks need."""
    wrong_cert, wrong_key = test_pki.write_pair(
        "other-name", *test_pki.ca.issue_server(["other.example"]))
    rules = {"default": "allow", "rules": [
        {"name": "admin", "paths": ["/admin/*"], "allow": [{"cn": "ops-*"}]}]}
    configs = {
        "mutual": {"tls": test_pki.tls_section("mutual"), "authorization": rules},
        "optional": {"tls": test_pki.tls_section("optional"), "authorization": rules},
        "server": {"tls": test_pki.tls_section("server")},
        "tls12": {"tls": test_pki.tls_section("server", max_version="TLSv1.2")},
        "tls13": {"tls": test_pki.tls_section("server", min_version="TLSv1.3")},
        "rsa-ciphers": {"tls": test_pki.tls_section(
            "server", max_version="TLSv1.2", ciphers="ECDHE-RSA-AES128-GCM-SHA256")},
        "other-name": {"tls": test_pki.tls_section(
            "server", certfile=str(wrong_cert), keyfile=str(wrong_key))},
        "plain": {"tls": {"mode": "none"}},
    }
    return {name: start_server(config, name=f"check-{name}") for name, config in configs.items()}


def url(server: ServerProcess, path: str = "/who", host: str = "localhost") -> str:
    return server.url(path, host=host)


# ------------------------------------------------------------------------ successes


def test_mutual_tls_success_reports_every_step(servers, test_pki, capsys) -> None:
    code, out, err = check(capsys, url(servers["mutual"]), "--ca", test_pki.ca_pem,
                           *client_args(test_pki, "alice"))
    assert code == 0, out + err
    port = servers["mutual"].port
    assert f"connect   127.0.0.1 port {port}: ok" in out
    assert re.search(r"^TLS       TLSv1\.3, TLS_\w+$", out, re.M)
    assert "  [0] subject CN=localhost" in out
    assert "      issuer  CN=securewsgi test CA" in out
    assert "      SANs    DNS:localhost, IP:127.0.0.1, IP:::1" in out
    assert re.search(r"      valid   \d{4}-\d\d-\d\d to \d{4}-\d\d-\d\d \(36[45] days left\)",
                     out)
    assert f"trusted   yes, by {test_pki.ca_pem}" in out
    assert "hostname  localhost matches the certificate" in out
    assert ("client    the server asked for a certificate (it named no acceptable CAs); "
            "sent CN=alice, accepted") in out
    assert "HTTP      GET /who -> 200 OK" in out
    assert out.rstrip().endswith("result    OK")


def test_json_has_the_documented_keys_and_facts(servers, test_pki, capsys) -> None:
    report = check_json(capsys, url(servers["mutual"]), "--ca", test_pki.ca_pem,
                        *client_args(test_pki, "alice"), "--tls-version", "1.2")
    assert list(report) == list(JSON_KEYS)
    assert report["ok"] is True and report["exit_code"] == 0 and report["problem"] is None
    assert report["protocol"] == "TLSv1.2" and report["cipher"].startswith("ECDHE-ECDSA-")
    assert report["tls_version"] == "1.2"
    assert report["handshake_completed"] is True and report["tcp_connected"] is True
    leaf = report["chain"][0]
    assert set(leaf) == {"subject", "issuer", "sans", "not_before", "not_after", "days_left",
                         "sha256"}
    assert leaf["subject"] == "CN=localhost"
    assert leaf["sans"] == ["DNS:localhost", "IP:127.0.0.1", "IP:::1"]
    assert 360 <= leaf["days_left"] <= 366 and len(leaf["sha256"]) == 64
    assert report["trusted"] is True and report["hostname_match"] is True
    assert report["client_cert_requested"] is True
    assert report["client_ca_names"] == []  # securewsgi names no CAs (Python has no API)
    assert report["client_cert_sent"] is True and report["client_cert_accepted"] is True
    assert report["client_cert_subject"] == "CN=alice"
    assert report["http_status"] == 200 and report["http_reason"] == "OK"
    assert report["path"] == "/who" and report["host"] == "localhost"


def test_one_way_server_and_a_certificate_nobody_asked_for(servers, test_pki, capsys) -> None:
    report = check_json(capsys, url(servers["server"], host="127.0.0.1"), "--ca",
                        test_pki.ca_pem, *client_args(test_pki, "alice"))
    assert report["ok"] is True
    assert report["client_cert_requested"] is False and report["client_cert_sent"] is False
    assert report["client_cert_accepted"] is None
    assert "the server did not ask for a client certificate; --cert was not used" in \
        report["notes"]
    # one-way TLS: OpenSSL sends the root along only with mutual TLS (it builds the
    # chain from the client CA store then), so here the server sends its leaf alone
    assert len(report["chain"]) == 1


def test_ca_directory_works_without_c_rehash(servers, test_pki, capsys, tmp_path) -> None:
    (tmp_path / "cas").mkdir()
    (tmp_path / "cas" / "our-ca.crt").write_bytes(test_pki.ca_pem.read_bytes())
    (tmp_path / "cas" / "other.pem").write_bytes(test_pki.other_ca_pem.read_bytes())
    code, out, _ = check(capsys, url(servers["server"]), "--ca", tmp_path / "cas")
    assert code == 0, out


# -------------------------------------------------------- the server's certificate


def test_unknown_ca(servers, test_pki, capsys) -> None:
    server = servers["mutual"]
    code, out, _ = check(capsys, url(server), "--ca", test_pki.other_ca_pem,
                         *client_args(test_pki, "alice"))
    assert code == 1
    assert result_lines(out) == (
        "the server certificate (issuer CN=securewsgi test CA) is not signed by a CA this "
        "client trusts (self-signed certificate in certificate chain).", UNKNOWN_CA_FIX)
    # the chain and the other facts are still there, from the failed handshake and a probe
    assert "  [0] subject CN=localhost" in out and "  [1] subject CN=securewsgi test CA" in out
    assert (f"trusted   NO, not by {test_pki.other_ca_pem}: self-signed certificate in "
            "certificate chain") in out
    assert "hostname  localhost matches the certificate" in out
    server.wait_log(r"reason=the client does not trust our certificate \(unknown CA\)")


def test_unknown_ca_with_tls12_still_learns_the_certificate_request(servers, test_pki,
                                                                    capsys) -> None:
    report = check_json(capsys, url(servers["mutual"]), "--ca", test_pki.other_ca_pem,
                        "--tls-version", "1.2")
    assert report["problem"] == "unknown_ca" and report["trusted"] is False
    assert report["protocol"] == "TLSv1.2" and report["cipher"]
    assert report["client_cert_requested"] is True  # from the non-verifying probe


def test_system_trust_store_is_the_default(servers, capsys) -> None:
    report = check_json(capsys, url(servers["server"]))
    assert report["ca"] == "system"
    assert report["problem"] == "unknown_ca"
    assert report["explanation"] == (
        "the server certificate (issuer CN=securewsgi test CA) is not signed by a CA this "
        "client trusts (unable to get local issuer certificate).")
    assert report["fix"] == UNKNOWN_CA_FIX


@pytest.mark.parametrize("host, names", [("localhost", "DNS:other.example"),
                                         ("127.0.0.1", "DNS:other.example")])
def test_hostname_mismatch(servers, test_pki, capsys, host: str, names: str) -> None:
    code, out, _ = check(capsys, url(servers["other-name"], host=host), "--ca",
                         test_pki.ca_pem)
    assert code == 1
    assert result_lines(out) == (
        f"the server certificate is not valid for {host}: it names {names}.",
        f"connect with one of those names, or give the server a certificate whose subject "
        f"alternative names include {host}.")
    assert f"hostname  {host} does NOT match the certificate" in out
    report = check_json(capsys, url(servers["other-name"], host=host), "--ca", test_pki.ca_pem)
    assert report["trusted"] is True and report["hostname_match"] is False


def _server_cert_peer(test_pki: PKIFiles, stem: str, **validity: Any) -> TLSPeer:
    cert, key = test_pki.write_pair(stem, *test_pki.ca.issue_server(
        ["localhost", "127.0.0.1"], **validity))
    return TLSPeer(TLSPeer.context_for(cert, key))


def test_expired_server_certificate(test_pki, capsys) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    end = now - datetime.timedelta(days=2)
    # securewsgi refuses to start with an expired certificate, so a stdlib server serves it
    with _server_cert_peer(test_pki, "server-expired", not_before=now - datetime.timedelta(
            days=30), not_after=end) as peer:
        code, out, _ = check(capsys, peer.url(), "--ca", test_pki.ca_pem)
    assert code == 1
    assert result_lines(out) == (
        f"the server certificate expired on {end:%Y-%m-%d}.",
        "renew the server certificate, then reload the server (securewsgi: SIGHUP) or "
        "restart it; if the date looks wrong, check this machine's clock.")
    assert re.search(r"valid   \d{4}-\d\d-\d\d to \S+ \(expired \d+ days ago\)", out)


def test_not_yet_valid_server_certificate(test_pki, capsys) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    start = now + datetime.timedelta(days=3)
    with _server_cert_peer(test_pki, "server-future", not_before=start,
                           not_after=now + datetime.timedelta(days=30)) as peer:
        report = check_json(capsys, peer.url(), "--ca", test_pki.ca_pem)
    assert report["problem"] == "server_cert_not_yet_valid"
    assert report["explanation"] == f"the server certificate is not valid before {start:%Y-%m-%d}."


# ----------------------------------------------------------- the client certificate


@pytest.mark.parametrize("version, detail", [("1.3", "tlsv13 alert certificate required"),
                                             ("1.2", "sslv3 alert handshake failure")])
def test_client_certificate_required(servers, test_pki, capsys, version: str,
                                     detail: str) -> None:
    code, out, _ = check(capsys, url(servers["mutual"]), "--ca", test_pki.ca_pem,
                         "--tls-version", version)
    assert code == 1
    assert result_lines(out) == (REQUIRED, REQUIRED_FIX)
    assert ("client    the server asked for a certificate (it named no acceptable CAs); "
            "none sent") in out
    report = check_json(capsys, url(servers["mutual"]), "--ca", test_pki.ca_pem,
                        "--tls-version", version)
    assert report["problem"] == "client_cert_required" and detail in report["detail"]
    assert report["trusted"] is True  # the server certificate itself was fine


REFUSED = {
    "unknown-ca": ("CN=mallory", "it is not signed by a CA the server trusts (TLS alert: "
                   "unknown CA)", "use a certificate issued by a CA in the server's "
                   "tls.ca_certs, or add its CA there.",
                   "client certificate from an unknown CA"),
    "expired": ("CN=expired", "it has expired (TLS alert: certificate expired)",
                "issue a new client certificate.", "client certificate expired"),
    "server-eku": ("CN=server-eku", "it is not meant for client authentication: its extended "
                   "key usage lacks clientAuth (TLS alert: unsupported certificate)",
                   "issue a client certificate with the clientAuth extended key usage "
                   "(securewsgi-certs issue does).",
                   "client certificate not for client authentication"),
}


@pytest.mark.parametrize("version", ["1.3", "1.2"])
@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_client_certificate_refused(servers, test_pki, capsys, kind: str,
                                    version: str) -> None:
    subject, cause, fix, logged = REFUSED[kind]
    server = servers["mutual"]
    code, out, _ = check(capsys, url(server), "--ca", test_pki.ca_pem,
                         *client_args(test_pki, kind), "--tls-version", version)
    assert code == 1
    assert result_lines(out) == (
        f"the server refused the client certificate {subject}: {cause}.", fix)
    assert f"sent {subject}, REFUSED" in out
    server.wait_log(f"reason={re.escape(logged)}")


def test_not_yet_valid_client_certificate_is_explained_from_local_facts(
        servers, test_pki, capsys) -> None:
    report = check_json(capsys, url(servers["mutual"]), "--ca", test_pki.ca_pem,
                        *client_args(test_pki, "future"))
    assert report["problem"] == "client_cert_refused"
    not_before = report["client_cert_not_before"]
    assert report["explanation"] == (
        f"the server refused the client certificate CN=future: it is not valid before "
        f"{not_before} (TLS alert: bad certificate).")
    assert any(note.startswith("the client certificate is not valid before")
               for note in report["notes"])


def test_tls13_reset_after_handshake_without_certificate(test_pki, capsys) -> None:
    """A TLS 1.3 server that drops the client without an alert: reset/EOF on write or read."""
    context = TLSPeer.context_for(test_pki.server_cert, test_pki.server_key,
                                  client_ca=test_pki.ca_pem,
                                  version=ssl.TLSVersion.TLSv1_3)
    with TLSPeer(context, drop_unless="alice") as peer:
        report = check_json(capsys, peer.url(), "--ca", test_pki.ca_pem)
        assert report["problem"] == "client_cert_required", report
        assert report["explanation"] == REQUIRED
        assert report["protocol"] == "TLSv1.3" and report["handshake_completed"] is True
        refused = check_json(capsys, peer.url(), "--ca", test_pki.ca_pem,
                             *client_args(test_pki, "bob"))
        accepted = check_json(capsys, peer.url(), "--ca", test_pki.ca_pem,
                              *client_args(test_pki, "alice"))
    assert refused["problem"] == "client_cert_refused"
    assert refused["explanation"] == (
        "the server refused the client certificate CN=bob: it closed the connection right "
        "after the TLS 1.3 handshake without saying why, which is how TLS 1.3 servers refuse "
        "a client certificate.")
    assert refused["fix"] == ("the server's log names the reason (unknown CA, expired, "
                              "revoked, wrong extended key usage).")
    assert refused["client_cert_accepted"] is False
    assert accepted["ok"] is True and accepted["client_cert_accepted"] is True


def test_acceptable_ca_names_from_openssl_s_server(test_pki, capsys) -> None:
    with _OpenSSLServer(test_pki) as port:
        code, out, _ = check(capsys, f"https://localhost:{port}/", "--ca", test_pki.ca_pem,
                             *client_args(test_pki, "alice"), "--tls-version", "1.2")
        assert code == 0, out
        assert ("client    the server asked for a certificate from: CN=securewsgi test CA; "
                "sent CN=alice, accepted") in out
        report = check_json(capsys, f"https://localhost:{port}/", "--ca", test_pki.ca_pem)
    assert report["client_ca_names"] == ["CN=securewsgi test CA"]
    assert report["explanation"] == ("the server requires a client certificate and none was "
                                     "sent (it accepts certificates from: CN=securewsgi test "
                                     "CA).")


class _OpenSSLServer:
    """`openssl s_server -Verify`: unlike Python, it sends the acceptable CA names."""

    def __init__(self, test_pki: PKIFiles) -> None:
        self.log = test_pki.dir / "s_server.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                ["openssl", "s_server", "-accept", "127.0.0.1:0", "-cert",
                 str(test_pki.server_cert), "-key", str(test_pki.server_key), "-CAfile",
                 str(test_pki.ca_pem), "-Verify", "1", "-www"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    def __enter__(self) -> int:
        def port() -> Optional[int]:
            if self.proc.poll() is not None:
                raise AssertionError(f"openssl s_server exited: {self.log.read_text()}")
            match = re.search(r"ACCEPT .*:(\d+)", self.log.read_text(errors="replace"))
            return int(match.group(1)) if match else None

        return wait_for(port, what="openssl s_server's ACCEPT line")

    def __exit__(self, *exc: Any) -> None:
        self.proc.kill()
        self.proc.wait(10)


# -------------------------------------------------------------- versions and ciphers


VERSION_FIX = {
    "1.3": "offer TLS 1.3 (--tls-version 1.3; raise the client's maximum version), or set "
           "the server's tls.min_version: TLSv1.2.",
    "1.2": "offer TLS 1.2 (--tls-version 1.2; lower the client's minimum version), or "
           "remove the server's tls.max_version so it accepts TLS 1.3.",
}


@pytest.mark.parametrize("server_name, offered, accepted",
                         [("tls12", "1.3", "1.2"), ("tls13", "1.2", "1.3")])
def test_tls_version_mismatch(servers, test_pki, capsys, server_name: str,
                              offered: str, accepted: str) -> None:
    """The check tries each version alone and says which one the server takes."""
    code, out, _ = check(capsys, url(servers[server_name]), "--ca", test_pki.ca_pem,
                         "--tls-version", offered)
    assert code == 1
    assert result_lines(out) == (
        f"the server accepts only TLS {accepted}; this client tried TLS {offered}.",
        VERSION_FIX[accepted])


def test_cipher_mismatch(servers, test_pki, capsys) -> None:
    # an ECDSA certificate with RSA-only cipher suites: the server can use none of them
    code, out, _ = check(capsys, url(servers["rsa-ciphers"]), "--ca", test_pki.ca_pem)
    assert code == 1
    explanation, fix = result_lines(out)
    assert explanation == ("the client and the server have no cipher suite (or signature "
                           "algorithm) in common ([SSL: SSLV3_ALERT_HANDSHAKE_FAILURE] sslv3 "
                           "alert handshake failure).")
    assert fix == ("compare the server's tls.ciphers with what this client offers; cipher "
                   "strings do not apply to TLS 1.3 (try --tls-version 1.3).")


# ------------------------------------------------------ wrong protocol, wrong port


def test_https_to_securewsgi_plain_http_port(servers, test_pki, capsys) -> None:
    plain = servers["plain"]
    assert plain.scheme == "http"
    code, out, _ = check(capsys, f"https://localhost:{plain.port}/", "--ca", test_pki.ca_pem)
    assert code == 1
    assert result_lines(out) == (PLAIN_HTTP, PLAIN_HTTP_FIX)


def test_https_to_a_stdlib_http_server(capsys) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        report = check_json(capsys, f"https://127.0.0.1:{server.server_address[1]}/")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    assert (report["problem"], report["explanation"]) == ("plain_http", PLAIN_HTTP)


def test_https_to_a_port_that_answers_http_400(capsys) -> None:
    with TCPPeer(reply=http_response("400 Bad Request")) as peer:
        report = check_json(capsys, peer.url())
    assert (report["problem"], report["fix"]) == ("plain_http", PLAIN_HTTP_FIX)


def test_a_port_that_speaks_something_else(capsys) -> None:
    with TCPPeer(reply=b"SSH-2.0-OpenSSH_9.2\r\n") as peer:
        report = check_json(capsys, peer.url())
    assert report["problem"] == "not_tls"
    assert report["explanation"] == ("the server answered with something that is not TLS "
                                     "(first bytes b'SSH-2'; OpenSSL: wrong version number).")


def test_http_url_to_a_plain_http_port_is_checked_as_plain_http(servers, capsys) -> None:
    plain = servers["plain"]
    report = check_json(capsys, f"http://localhost:{plain.port}/who")
    assert report["ok"] is True and report["http_status"] == 200
    assert report["protocol"] is None and report["chain"] == []
    assert ("plain HTTP: nothing on this connection is encrypted, and no certificate is "
            "checked") in report["notes"]


def test_http_url_to_a_tls_port_that_just_closes(test_pki, capsys) -> None:
    """A stdlib TLS server drops plain HTTP without a word: a TLS probe tells why."""
    with TLSPeer(TLSPeer.context_for(test_pki.server_cert, test_pki.server_key)) as peer:
        report = check_json(capsys, peer.url("/x", scheme="http"))
    assert report["problem"] == "tls_port"
    assert report["explanation"] == ("this port speaks TLS: use https://, not http:// (the "
                                     "server refused the plain HTTP request).")
    assert report["fix"] == f"use https://127.0.0.1:{peer.port}/x."


def test_http_url_to_an_nginx_style_https_port(capsys) -> None:
    reply = http_response("400 Bad Request", b"The plain HTTP request was sent to HTTPS "
                                             b"port\n")
    with TCPPeer(reply=reply) as peer:
        report = check_json(capsys, peer.url(scheme="http"))
    assert report["problem"] == "tls_port" and report["exit_code"] == 1


def test_connection_refused(capsys) -> None:
    port = free_port()
    code, out, _ = check(capsys, f"https://127.0.0.1:{port}/")
    assert code == 1
    assert result_lines(out) == (
        f"nothing accepts connections on 127.0.0.1 port {port} (connection refused).",
        "check the port number and that the server is running and listening on this address.")


def test_handshake_timeout(capsys) -> None:
    with TCPPeer(reply=None) as peer:  # accepts, never answers
        code, out, _ = check(capsys, peer.url(), "--timeout", "0.3")
    assert code == 1
    assert result_lines(out)[0] == ("the server accepted the TCP connection but did not "
                                    "answer the TLS handshake within 0.3s.")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux drops SYNs on a "
                    "full accept queue; other systems may refuse instead")
def test_connect_timeout(capsys) -> None:
    listener = UnacceptedListener()
    try:
        report = check_json(capsys, f"https://127.0.0.1:{listener.port}/", "--timeout", "0.3")
    finally:
        listener.close()
    assert report["problem"] == "connect_timeout" and report["tcp_connected"] is False
    assert report["explanation"] == (f"no answer from 127.0.0.1 port {listener.port} within "
                                     "0.3s while connecting.")


# ---------------------------------------------------------------------- HTTP status


def test_forbidden_by_authorization_rules(servers, test_pki, capsys) -> None:
    code, out, _ = check(capsys, url(servers["mutual"], "/admin/users"), "--ca",
                         test_pki.ca_pem, *client_args(test_pki, "alice"))
    assert code == 1  # TLS worked, but the request did not succeed: exit 1
    assert "HTTP      GET /admin/users -> 403 Forbidden" in out
    assert "sent CN=alice, accepted" in out
    assert result_lines(out) == (
        "TLS and the client certificate are fine, but the server answered 403 Forbidden to "
        "GET /admin/users: its authorization rules do not allow CN=alice there.",
        "use a certificate the rules for /admin/users allow, or change the rules (the "
        "server's log names the rule).")


def test_forbidden_without_a_certificate(servers, test_pki, capsys) -> None:
    report = check_json(capsys, url(servers["optional"], "/admin"), "--ca", test_pki.ca_pem)
    assert report["http_status"] == 403 and report["problem"] == "http_forbidden"
    assert report["client_cert_requested"] is True and report["client_cert_sent"] is False
    assert report["explanation"] == ("TLS is fine, but the server answered 403 Forbidden to "
                                     "GET /admin without a client certificate.")


def test_server_error_status(test_pki, capsys) -> None:
    context = TLSPeer.context_for(test_pki.server_cert, test_pki.server_key)
    with TLSPeer(context, reply=http_response("500 Internal Server Error")) as peer:
        report = check_json(capsys, peer.url("/boom"), "--ca", test_pki.ca_pem)
    assert report["exit_code"] == 1 and report["http_status"] == 500
    assert report["explanation"] == ("TLS is fine, but the server answered 500 Internal Server "
                                     "Error to GET /boom.")
    assert report["fix"] == "the application failed: see the server's log."


# ------------------------------------------------------------------- usage and CLI


@pytest.mark.parametrize("argv, message", [
    (["ftp://localhost:1/"], "give an https:// URL"),
    (["https://localhost:1/", "--key", "k.pem"], "--key needs --cert"),
    (["https://localhost:1/", "--ca", "/nonexistent/ca.pem"],
     "--ca: /nonexistent/ca.pem: no such file"),
    (["https://localhost:1/", "--timeout", "0"], "expected seconds > 0"),
])
def test_usage_errors_exit_2(capsys, argv: list, message: str) -> None:
    code, out, err = check(capsys, *argv)
    assert code == 2 and out == ""
    last = err.strip().splitlines()[-1]  # argparse prints its usage lines first
    assert last.startswith("securewsgi-check: ") and message in last


def test_encrypted_key_needs_its_password(servers, test_pki, capsys, tmp_path) -> None:
    cert, key = test_pki.ca.issue_client("carol")
    pki.write_cert(tmp_path / "carol.pem", cert)
    pki.write_key(tmp_path / "carol-key.pem", key, password=b"s3cret")
    args = ["--ca", test_pki.ca_pem, "--cert", tmp_path / "carol.pem", "--key",
            tmp_path / "carol-key.pem"]
    code, _, err = check(capsys, url(servers["mutual"]), *args)
    assert code == 2
    assert err == (f"securewsgi-check: --key: {tmp_path / 'carol-key.pem'}: the private key "
                   "is encrypted; pass --key-password\n")
    code, out, _ = check(capsys, url(servers["mutual"]), *args, "--key-password", "s3cret")
    assert code == 0 and "sent CN=carol, accepted" in out


def test_file_errors_name_the_flags(test_pki, tmp_path) -> None:
    """The messages name --ca/--cert/--key/--key-password, what the user typed, never
    the Python parameters (ca_certs, certfile, keyfile, key_password) behind them."""
    cert, key = test_pki.ca.issue_client("dora")
    pki.write_cert(tmp_path / "dora.pem", cert)
    pki.write_key(tmp_path / "dora-key.pem", key, password=b"s3cret")
    target = "https://localhost:1/"
    cases = [
        (["--ca", tmp_path / "none.pem"], f"--ca: {tmp_path / 'none.pem'}: no such file"),
        (["--cert", test_pki.server_key],
         f"--cert: {test_pki.server_key}: no PEM certificate in it"),
        (["--cert", tmp_path / "dora.pem"],
         f"--cert: {tmp_path / 'dora.pem'}: no PEM private key in it; pass --key"),
        (["--cert", tmp_path / "dora.pem", "--key", tmp_path / "dora-key.pem",
          "--key-password", "wrong"],
         f"--key: {tmp_path / 'dora-key.pem'}: wrong --key-password for this encrypted key"),
    ]
    for args, message in cases:
        result = run_command("securewsgi-check", target, *map(str, args))
        assert (result.returncode, result.stdout) == (2, ""), result
        assert result.stderr == f"securewsgi-check: {message}\n"
        for name in ("ca_certs", "certfile", "keyfile", "key_password"):
            assert name not in result.stderr


def test_help_points_at_the_clients_page() -> None:
    result = run_command("securewsgi-check", "--help", env={"COLUMNS": "200"})
    assert result.returncode == 0
    assert 'docs/source/clients.rst, section "Checking a connection"' in result.stdout


def test_console_script_exit_codes(servers, test_pki) -> None:
    ok = run_command("securewsgi-check", url(servers["mutual"]), "--ca", str(test_pki.ca_pem),
                     "--cert", str(test_pki.clients["alice"].cert), "--key",
                     str(test_pki.clients["alice"].key), "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["http_status"] == 200
    refused = run_command("securewsgi-check", url(servers["mutual"]), "--ca",
                          str(test_pki.ca_pem), "--timeout", "5")
    assert refused.returncode == 1 and "FAILED: " + REQUIRED in refused.stdout
    assert refused.stderr == ""


# ------------------------------------------------------------------------ unit tests


def test_hostname_matching_rules(test_pki) -> None:
    cert, _ = test_pki.ca.issue_server(["*.example.org", "10.0.0.1"])
    assert hostname_matches("a.example.org", cert)
    assert hostname_matches("A.Example.org.", cert)
    assert not hostname_matches("example.org", cert)
    assert not hostname_matches("a.b.example.org", cert)
    assert hostname_matches("10.0.0.1", cert) and not hostname_matches("10.0.0.2", cert)


def test_der_names_are_rendered_as_rfc4514(test_pki) -> None:
    name = Name([NameAttribute(NameOID.COUNTRY_NAME, "US"),
                 NameAttribute(NameOID.ORGANIZATION_NAME, "Example, Inc."),
                 NameAttribute(NameOID.COMMON_NAME, "ops CA")])
    assert _name_to_string(name.public_bytes()) == name.rfc4514_string()
    assert _name_to_string(b"\x30\x03garbage").startswith("(unparsed name ")


