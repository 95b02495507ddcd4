"""Fourteen TLS failure classes, each produced for real and explained on both sides.

For every class a securewsgi server runs (on each engine), a real client (requests,
`ssl`, curl, `openssl s_client`) triggers the failure, and the test asserts the
server's refusal line (who, why, what to do) and `securewsgi-check`'s sentence (cause
and fix). Everything stays on 127.0.0.1; waits poll with deadlines.
"""
from __future__ import annotations

import datetime
import json
import re
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from support import (
    Client,
    PKIFiles,
    ServerProcess,
    client_context,
    openssl_s_client,
    session,
    wait_for,
)

from securewsgi import pki
from securewsgi.client.diagnose import VERDICT_WAIT, diagnose
from securewsgi.commands.check import main as check_main
from securewsgi.config.loader import config_from_dict
from securewsgi.tls.context import build_server_tls
from securewsgi.tls.reload import TLSReloader
from securewsgi.tls.validity import days_left, expires, time_left

LINE = r"TLS handshake failed: client=127\.0\.0\.1:\d+ "


# --------------------------------------------------------------------------- helpers


def short_sha256(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()[:16]


def serial_of(path: Path) -> str:
    return format(x509.load_pem_x509_certificate(path.read_bytes()).serial_number, "X")


def server_line(server: ServerProcess, pattern: str) -> str:
    """The first log line matching `pattern`, once it is there."""
    log = server.wait_log(pattern)
    return next(line for line in log.splitlines() if re.search(pattern, line))


def check(capsys: pytest.CaptureFixture, url: str, *args: Any) -> tuple[int, str, str]:
    """`securewsgi-check URL ARGS`: (exit status, explanation, fix) as printed."""
    code = check_main([url, *map(str, args)])
    out = capsys.readouterr().out
    failed = re.search(r"^result    FAILED: (.*)$", out, re.M)
    fix = re.search(r"^fix       (.*)$", out, re.M)
    assert failed and fix, out
    return code, failed.group(1), fix.group(1)


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True,
                          text=True, timeout=30)


def load_config_text(directory: Path, text: str) -> Any:
    return config_from_dict(directory / "service.yaml",
                            {**yaml.safe_load(text), "app": {"factory": "securewsgi.demo:app"}})


def cert_args(client: Client) -> list:
    return ["--cert", client.cert, "--key", client.key]


@pytest.fixture(scope="module")
def extra(test_pki: PKIFiles, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What the fourteen classes need beyond the shared test PKI: a revoked client and
    its CRL, a second CA that has the *same name* as the server's CA (a second
    development PKI) with a client that sends its chain, and a server certificate for
    another name."""
    directory = tmp_path_factory.mktemp("refusals")
    revoked = test_pki.add_client("revoked-rita")
    crl = directory / "crl.pem"
    pki.write_crl(crl, test_pki.ca.build_crl([int(serial_of(revoked.cert), 16)]))
    namesake = pki.CertificateAuthority.create("securewsgi test CA")
    cert, key = namesake.issue_client("nina")
    nina_cert, nina_key = directory / "nina-chain.pem", directory / "nina-key.pem"
    pki.write_key(nina_key, key)
    nina_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM)
                          + namesake.cert.public_bytes(serialization.Encoding.PEM))
    nina_leaf = directory / "nina.pem"
    pki.write_cert(nina_leaf, cert)
    other_cert, other_key = test_pki.write_pair(
        "only-other-name", *test_pki.ca.issue_server(["other.example"]))
    return {"revoked": revoked, "crl": crl, "namesake": namesake,
            "nina": Client(nina_cert, nina_key), "nina_leaf": nina_leaf,
            "other_name": (other_cert, other_key)}


@pytest.fixture(scope="module")
def servers(start_server, test_pki: PKIFiles, extra: dict) -> dict[str, ServerProcess]:
    other_cert, other_key = extra["other_name"]
    configs = {
        "mutual": {"tls": test_pki.tls_section("mutual", crl_file=str(extra["crl"]))},
        "other-name": {"tls": test_pki.tls_section("server", certfile=str(other_cert),
                                                   keyfile=str(other_key))},
        "tls13": {"tls": test_pki.tls_section("server", min_version="TLSv1.3")},
        "plain": {"tls": {"mode": "none"}},
    }
    return {name: start_server(config, name=f"refusal-{name}")
            for name, config in configs.items()}


def ca_label(test_pki: PKIFiles) -> str:
    return f"CN=securewsgi test CA (sha256 {short_sha256(test_pki.ca.cert)})"


# ------------------------------------------------ 1-3: the server's own certificate


def test_1_client_has_no_ca_for_the_server(servers, test_pki, capsys) -> None:
    server = servers["mutual"]
    with requests.Session() as s, pytest.raises(requests.exceptions.SSLError):
        s.trust_env = False  # the system store only: it lacks our test CA
        s.get(server.url("/"), timeout=10)
    key_id = x509.load_pem_x509_certificate(test_pki.server_cert.read_bytes()).extensions \
        .get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier.hex()[:16]
    line = server_line(server, LINE + r"reason=the client does not trust our certificate")
    assert line.endswith(
        "reason=the client does not trust our certificate (unknown CA) hint=\"give the "
        f"client the CA that signed tls.certfile (CN=securewsgi test CA, key id {key_id}): "
        "curl --cacert, requests verify=, securewsgi-check --ca\" detail=\"[SSL: "
        "TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca\"")
    code, explanation, fix = check(capsys, server.url("/"), *cert_args(
        test_pki.clients["alice"]))
    assert code == 1
    assert explanation == ("the server certificate (issuer CN=securewsgi test CA) is not "
                           "signed by a CA this client trusts (self-signed certificate in "
                           "certificate chain).")
    assert fix == "pass --ca with the CA that signed the server certificate."


def test_2_hostname_mismatch(servers, test_pki, capsys, extra) -> None:
    """requests (OpenSSL checks the name inside the handshake, and says so with an
    alert). curl checks it after the handshake and just closes: nothing to log then."""
    server = servers["other-name"]
    with session(test_pki.ca_pem) as s, pytest.raises(requests.exceptions.SSLError):
        s.get(server.url("/"), timeout=10)
    line = server_line(server, LINE + r"reason=the client rejected our certificate: it asked")
    assert line.endswith(
        "reason=the client rejected our certificate: it asked for localhost, which "
        f"tls.certfile does not cover hint=\"connect with a name tls.certfile "
        f"({extra['other_name'][0]}) covers (DNS:other.example), or reissue it to include "
        "localhost\" detail=\"[SSL: SSLV3_ALERT_BAD_CERTIFICATE] sslv3 alert bad "
        "certificate\"")
    code, explanation, fix = check(capsys, server.url("/"), "--ca", test_pki.ca_pem)
    assert (code, explanation, fix) == (
        1, "the server certificate is not valid for localhost: it names DNS:other.example.",
        "connect with one of those names, or give the server a certificate whose subject "
        "alternative names include localhost.")


def test_3_server_certificate_expired_while_serving(start_server, test_pki, capsys,
                                                   tmp_path: Path) -> None:
    """securewsgi refuses to start with an expired certificate, so this one expires
    while the server runs: it warns at start, refuses to reload it, and names its own
    certificate when clients reject it."""
    now = datetime.datetime.now(datetime.timezone.utc)
    end = (now + datetime.timedelta(seconds=15)).replace(microsecond=0)
    cert, key = test_pki.ca.issue_server(["localhost", "127.0.0.1"], not_after=end)
    certfile, keyfile = tmp_path / "short.pem", tmp_path / "short-key.pem"
    pki.write_cert(certfile, cert)
    pki.write_key(keyfile, key)
    server = start_server({"tls": test_pki.tls_section("server", certfile=str(certfile),
                                                       keyfile=str(keyfile))},
                          name="expiring")
    date = f"{end:%Y-%m-%d %H:%M} UTC"
    assert (f"WARNING securewsgi.server tls.certfile: certificate {certfile} expires within "
            f"a day, on {date} (tls.expiry_warning_days: 14); renew it, then reload "
            "(SIGHUP)") in server.stderr
    wait_for(lambda: datetime.datetime.now(datetime.timezone.utc) > end, timeout=30,
             interval=0.2, what="the server certificate to expire")
    with session(test_pki.ca_pem) as s, pytest.raises(requests.exceptions.SSLError):
        s.get(server.url("/"), timeout=10)
    line = server_line(server, LINE + "reason=the client rejected our certificate: it expired")
    assert line.endswith(
        f"reason=the client rejected our certificate: it expired on {date} (tls.certfile) "
        f"hint=\"renew tls.certfile ({certfile}), then reload (SIGHUP)\" detail=\"[SSL: "
        "SSLV3_ALERT_CERTIFICATE_EXPIRED] sslv3 alert certificate expired\"")
    server.signal(signal.SIGHUP)  # every reload says it again
    server.wait_log(re.escape(f"TLS reload (SIGHUP) failed; still serving the previous "
                              f"material: tls.certfile: certificate {certfile} expired on "
                              f"{date}"))
    code, explanation, fix = check(capsys, server.url("/"), "--ca", test_pki.ca_pem)
    assert (code, explanation) == (1, f"the server certificate expired on {end:%Y-%m-%d}.")
    assert fix.startswith("renew the server certificate")


# ------------------------------------------------------ 4-9: the client certificate


@pytest.mark.parametrize("version", ["1.3", "1.2"])
def test_4_5_no_client_certificate(servers, test_pki, capsys, version: str) -> None:
    server = servers["mutual"]
    result = openssl_s_client(server, "-CAfile", str(test_pki.ca_pem),
                              f"-tls{version.replace('.', '_')}",
                              request=b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert b"HTTP/1.1 200" not in result.stdout
    line = server_line(server, LINE + "reason=no client certificate")
    assert line.endswith(
        "reason=no client certificate hint=\"the client must send a certificate from "
        f"{ca_label(test_pki)}: tls.mode is mutual\" detail=\"[SSL: "
        "PEER_DID_NOT_RETURN_A_CERTIFICATE] peer did not return a certificate\"")
    code, explanation, fix = check(capsys, server.url("/"), "--ca", test_pki.ca_pem,
                                   "--tls-version", version)
    assert (code, explanation, fix) == (
        1, "the server requires a client certificate and none was sent.",
        "pass --cert and --key with a certificate signed by a CA the server trusts (its "
        "tls.ca_certs).")


def test_6_client_certificate_from_an_unknown_ca(servers, test_pki, capsys) -> None:
    server = servers["mutual"]
    mallory = test_pki.clients["unknown-ca"]
    with session(test_pki.ca_pem, mallory) as s, pytest.raises(requests.RequestException):
        s.get(server.url("/"), timeout=10)
    line = server_line(server, LINE + 'reason=client certificate from an unknown CA cert="'
                                      'subject=CN=mallory')
    assert line.endswith(
        "reason=client certificate from an unknown CA cert=\"subject=CN=mallory, "
        f"issuer=CN=some other CA, serial={serial_of(mallory.cert)}\" hint=\"add the "
        "client's CA (CN=some other CA) to tls.ca_certs, or issue the client a certificate "
        f"from {ca_label(test_pki)}\" detail=\"unable to get local issuer certificate\"")
    code, explanation, fix = check(capsys, server.url("/"), "--ca", test_pki.ca_pem,
                                   *cert_args(mallory))
    assert (code, explanation, fix) == (
        1, "the server refused the client certificate CN=mallory: it is not signed by a CA "
           "the server trusts (TLS alert: unknown CA).",
        "use a certificate issued by a CA in the server's tls.ca_certs, or add its CA there.")


def test_7_server_auth_only_client_certificate(servers, test_pki, capsys) -> None:
    server = servers["mutual"]
    client = test_pki.clients["server-eku"]
    result = curl("--cacert", str(test_pki.ca_pem), "--cert", str(client.cert), "--key",
                  str(client.key), server.url("/"))
    assert result.returncode != 0
    line = server_line(server, LINE + "reason=client certificate not for client")
    assert line.endswith(
        "reason=client certificate not for client authentication (its extended key usage "
        f"lacks clientAuth) cert=\"subject=CN=server-eku, issuer=CN=securewsgi test CA, "
        f"serial={serial_of(client.cert)}\" hint=\"reissue it with the clientAuth extended "
        "key usage (securewsgi-certs issue does)\" detail=\"unsuitable certificate "
        "purpose\"")
    code, explanation, fix = check(capsys, server.url("/"), "--ca", test_pki.ca_pem,
                                   *cert_args(client))
    assert (code, explanation, fix) == (
        1, "the server refused the client certificate CN=server-eku: it is not meant for "
           "client authentication: its extended key usage lacks clientAuth (TLS alert: "
           "unsupported certificate).",
        "issue a client certificate with the clientAuth extended key usage "
        "(securewsgi-certs issue does).")


def test_8_client_certificate_not_yet_valid(servers, test_pki, capsys) -> None:
    server = servers["mutual"]
    client = test_pki.clients["future"]
    ctx = client_context(test_pki.ca_pem, client)
    with pytest.raises((ssl.SSLError, OSError)), \
            socket.create_connection((server.host, server.port), timeout=10) as sock, \
            ctx.wrap_socket(sock, server_hostname="localhost") as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        if not tls.recv(1024):
            raise ConnectionResetError("closed")
    start = x509.load_pem_x509_certificate(client.cert.read_bytes()).not_valid_before_utc
    line = server_line(server, LINE + "reason=client certificate not yet valid")
    assert line.endswith(
        f"reason=client certificate not yet valid (valid from {start:%Y-%m-%d %H:%M} UTC) "
        f"cert=\"subject=CN=future, issuer=CN=securewsgi test CA, "
        f"serial={serial_of(client.cert)}\" hint=\"wait until then or reissue it; if that "
        "date is wrong, check the clocks of the client, this server and the CA\" "
        "detail=\"certificate is not yet valid\"")
    code, explanation, fix = check(capsys, server.url("/"), "--ca", test_pki.ca_pem,
                                   *cert_args(client))
    assert code == 1
    assert re.fullmatch(r"the server refused the client certificate CN=future: it is not "
                        r"valid before \S+ \(TLS alert: bad certificate\)\.", explanation)
    assert fix == ("wait until then or issue a new certificate; check the clocks of both "
                   "machines.")


def test_9_revoked_client_certificate(servers, test_pki, capsys, extra) -> None:
    server = servers["mutual"]
    client = extra["revoked"]
    with session(test_pki.ca_pem, client) as s, pytest.raises(requests.RequestException):
        s.get(server.url("/"), timeout=10)
    line = server_line(server, LINE + "reason=client certificate revoked")
    assert line.endswith(
        "reason=client certificate revoked cert=\"subject=CN=revoked-rita, "
        f"issuer=CN=securewsgi test CA, serial={serial_of(client.cert)}\" hint=\"the client "
        f"needs a new certificate: this one is on tls.crl_file ({extra['crl']})\" "
        "detail=\"certificate revoked\"")
    code, explanation, fix = check(capsys, server.url("/"), "--ca", test_pki.ca_pem,
                                   *cert_args(client))
    assert (code, explanation, fix) == (
        1, "the server refused the client certificate CN=revoked-rita: it has been revoked "
           "(TLS alert: certificate revoked).",
        "issue a new client certificate; this one is on the server's CRL.")


# ------------------------------------------------- 10-13: versions, ports, keys


def test_10_tls_version_mismatch(servers, test_pki, capsys) -> None:
    server = servers["tls13"]
    result = curl("--cacert", str(test_pki.ca_pem), "--tls-max", "1.2", server.url("/"))
    assert result.returncode == 35, result.stderr  # curl: TLS handshake failed
    line = server_line(server, LINE + "reason=the client offers only TLS 1.2")
    assert line.endswith(
        "reason=the client offers only TLS 1.2 or lower, below the server minimum "
        "(tls.min_version: TLSv1.3) hint=\"enable TLS 1.3 in the client, or set "
        "tls.min_version: TLSv1.2\" detail=\"[SSL: UNSUPPORTED_PROTOCOL] unsupported "
        "protocol\"")
    code, explanation, fix = check(capsys, server.url("/"), "--ca", test_pki.ca_pem,
                                   "--tls-version", "1.2")
    assert (code, explanation, fix) == (
        1, "the server accepts only TLS 1.3; this client tried TLS 1.2.",
        "offer TLS 1.3 (--tls-version 1.3; raise the client's maximum version), or set the "
        "server's tls.min_version: TLSv1.2.")


def test_11_https_to_a_plain_http_port(servers, test_pki, capsys) -> None:
    server = servers["plain"]
    result = curl("--cacert", str(test_pki.ca_pem), f"https://localhost:{server.port}/")
    assert result.returncode == 35 and "wrong version number" in result.stderr
    server.wait_log(r"refused request: client=127\.0\.0\.1:\d+ status=400 reason=a TLS "
                    r"client reached this plain-HTTP port \(use http://, or enable tls\)")
    assert "bare LF" not in server.stderr
    code, explanation, fix = check(capsys, f"https://localhost:{server.port}/", "--ca",
                                   test_pki.ca_pem)
    assert (code, explanation, fix) == (
        1, "the server answered in plain HTTP, not TLS (OpenSSL: wrong version number).",
        "this port serves http://, not https://: use http:// for it, or the port where the "
        "server serves HTTPS.")


def test_12_http_to_the_tls_port(servers, test_pki, capsys) -> None:
    server = servers["mutual"]
    result = curl("-i", f"http://localhost:{server.port}/who")
    assert result.stdout.startswith("HTTP/1.1 400 Bad Request\n"), result  # text mode
    assert result.stdout.endswith(f"\n\nThis port speaks HTTPS: use "
                                  f"https://localhost:{server.port}/ instead of http://.\n")
    line = server_line(server, LINE + "reason=plain HTTP sent to the TLS port")
    assert line.endswith(
        "reason=plain HTTP sent to the TLS port hint=\"the client must use https:// (it "
        "was answered 400: this port speaks HTTPS)\" detail=\"[SSL: HTTP_REQUEST] http "
        "request\"")
    code, explanation, fix = check(capsys, f"http://localhost:{server.port}/who")
    assert (code, explanation, fix) == (
        1, "this port speaks TLS: use https://, not http:// (the server refused the plain "
           "HTTP request).", f"use https://localhost:{server.port}/who.")


def test_13_client_key_does_not_match_its_certificate(servers, test_pki, capsys) -> None:
    server = servers["mutual"]
    alice, bob = test_pki.clients["alice"], test_pki.clients["bob"]
    result = curl("--cacert", str(test_pki.ca_pem), "--cert", str(alice.cert), "--key",
                  str(bob.key), server.url("/"))
    # curl connects, then fails to load the pair and closes without a byte of TLS
    assert result.returncode == 58 and "unable to set private key file" in result.stderr
    line = server_line(server, LINE + "reason=the client closed the connection without")
    assert line.endswith(
        "reason=the client closed the connection without sending a TLS hello hint=\"a TCP "
        "health check does this, and so does a client that cannot use its own certificate "
        "and key (a key that does not match the certificate, a wrong password): run "
        "securewsgi-check with the client's --cert and --key\" detail=\"[SSL: "
        "UNEXPECTED_EOF_WHILE_READING] EOF occurred in violation of protocol\"")
    code, explanation, fix = check(capsys, server.url("/"), "--ca", test_pki.ca_pem,
                                   "--cert", alice.cert, "--key", bob.key)
    assert (code, explanation, fix) == (
        1, f"the private key {bob.key} does not belong to the client certificate CN=alice "
           f"({alice.cert}), so no TLS client can use the pair and the server never sees "
           "this client.",
        f"pass the key that was issued with {alice.cert} as --key (or the certificate of "
        f"{bob.key} as --cert).")


# ------------------------------------- 14: a CA bundle without the client's issuer


def test_14_ca_bundle_lacks_the_clients_issuer(servers, test_pki, capsys, extra) -> None:
    """A second PKI whose CA has the server CA's very name; its client sends its root
    along (as OpenSSL clients often do), so OpenSSL's own words would be "self-signed
    certificate in certificate chain": the line says what it means, by fingerprint."""
    server = servers["mutual"]
    nina = extra["nina"]
    result = openssl_s_client(server, "-CAfile", str(test_pki.ca_pem), "-cert",
                              str(extra["nina_leaf"]), "-cert_chain", str(nina.cert),
                              "-key", str(nina.key),
                              request=b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert b"HTTP/1.1 200" not in result.stdout
    theirs = short_sha256(extra["namesake"].cert)
    ours = short_sha256(test_pki.ca.cert)
    line = server_line(server, LINE + 'reason=client certificate from an unknown CA cert="'
                                      'subject=CN=nina')
    assert line.endswith(
        "reason=client certificate from an unknown CA cert=\"subject=CN=nina, "
        f"issuer=CN=securewsgi test CA, serial={serial_of(extra['nina_leaf'])}\" hint=\"its "
        f"issuer CN=securewsgi test CA (sha256 {theirs}) is another CA than the one of that "
        f"name in tls.ca_certs, CN=securewsgi test CA (sha256 {ours}): add the client's CA "
        "to tls.ca_certs, or issue the client a certificate from CN=securewsgi test CA "
        f"(sha256 {ours})\" detail=\"self-signed certificate in certificate chain\"")
    code, explanation, fix = check(capsys, server.url("/"), "--ca", test_pki.ca_pem,
                                   *cert_args(nina))
    assert (code, explanation, fix) == (
        1, "the server refused the client certificate CN=nina: it is not signed by a CA the "
           f"server trusts (TLS alert: unknown CA); its issuer (sha256 {theirs}) is not the CA "
           f"of the same name in --ca (sha256 {ours}).",
        "use a certificate issued by a CA in the server's tls.ca_certs, or add its CA there.")


# ------------------------------------------------------------- around the classes


def test_json_log_has_each_fact_as_a_field(start_server, test_pki) -> None:
    server = start_server({"tls": test_pki.tls_section("mutual"),
                           "logging": {"format": "json"}}, name="json-refusal")
    mallory = test_pki.clients["unknown-ca"]
    with session(test_pki.ca_pem, mallory) as s, pytest.raises(requests.RequestException):
        s.get(server.url("/"), timeout=10)
    log = server.wait_log('"event": "tls_handshake_refused"')
    record = next(json.loads(line) for line in log.splitlines()
                  if "tls_handshake_refused" in line)
    cert = x509.load_pem_x509_certificate(mallory.cert.read_bytes())
    assert record["message"].startswith("TLS handshake failed: client=127.0.0.1:")
    assert record["client"].startswith("127.0.0.1:")
    assert record["reason"] == "client certificate from an unknown CA"
    assert (record["cert_subject"], record["cert_issuer"]) == ("CN=mallory",
                                                              "CN=some other CA")
    assert record["cert_serial"] == format(cert.serial_number, "X")
    assert record["cert_sha256"] == cert.fingerprint(hashes.SHA256()).hex()
    assert record["hint"].startswith("add the client's CA (CN=some other CA) to tls.ca_certs")
    assert record["detail"] == "unable to get local issuer certificate"


def test_reload_line_says_what_it_loaded(servers, test_pki, extra) -> None:
    server = servers["mutual"]
    server.signal(signal.SIGHUP)
    line = server_line(server, r"TLS material reloaded \(SIGHUP\)")
    crl = x509.load_pem_x509_crl(extra["crl"].read_bytes())
    cert = x509.load_pem_x509_certificate(test_pki.server_cert.read_bytes())
    assert re.search(
        rf"TLS material reloaded \(SIGHUP\): certificate CN=localhost serial "
        rf"{cert.serial_number:X} expires {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC "
        rf"\(36[45] days left\); 1 client CA; CRL: 1 revoked, next update "
        rf"{crl.next_update_utc:%Y-%m-%d %H:%M} UTC$", line), line


def test_success_is_as_fast_as_failure(servers, test_pki) -> None:
    """TLS 1.3 with a client certificate and no session tickets: the response itself
    proves acceptance, so the check does not wait for a verdict that never comes."""
    server = servers["mutual"]
    alice = test_pki.clients["alice"]
    started = time.monotonic()
    report = diagnose(server.url("/"), ca=test_pki.ca_pem, certfile=alice.cert,
                      keyfile=alice.key, tls_version="1.3")
    elapsed = time.monotonic() - started
    assert report.ok and report.client_cert_accepted is True, report.explanation
    assert elapsed < VERDICT_WAIT / 2, elapsed


def test_check_shows_fingerprints_when_two_cas_share_a_name(start_server, test_pki,
                                                            capsys, extra) -> None:
    """A server of the second PKI checked with --ca of the first: same CA name, so the
    sentence tells them apart by fingerprint instead of contradicting itself."""
    namesake = extra["namesake"]
    directory = extra["crl"].parent
    cert, key = namesake.issue_server(["localhost"])
    certfile, keyfile = directory / "namesake-server.pem", directory / "namesake-key.pem"
    pki.write_cert(certfile, cert)
    pki.write_key(keyfile, key)
    ca_file = directory / "namesake-ca.pem"
    pki.write_cert(ca_file, namesake.cert)
    server = start_server({"tls": {"mode": "mutual", "certfile": str(certfile),
                                   "keyfile": str(keyfile), "ca_certs": str(ca_file)}},
                          name="namesake")
    code, explanation, fix = check(capsys, server.url("/"), "--ca", test_pki.ca_pem)
    theirs, ours = short_sha256(namesake.cert), short_sha256(test_pki.ca.cert)
    assert (code, explanation, fix) == (
        1, f"the server certificate (issuer CN=securewsgi test CA, sha256 {theirs}) is not "
           f"signed by a CA this client trusts: --ca holds a different CA of the same name "
           f"(sha256 {ours}).",
        f"pass --ca with the CA that signed the server certificate (sha256 {theirs}).")


# ------------------------------------------------------------------------ units


def test_days_are_counted_whole_and_said_with_the_right_plural() -> None:
    end = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.timezone.utc)
    after = {datetime.timedelta(seconds=9): "expired less than a day ago",
             datetime.timedelta(days=1, seconds=9): "expired 1 day ago",
             datetime.timedelta(days=2, seconds=9): "expired 2 days ago"}
    for delta, text in after.items():
        assert time_left(end, end + delta) == text
        assert expires(end, end + delta) == text
    assert days_left(end, end + datetime.timedelta(seconds=9)) == -1  # negative = expired
    assert time_left(end, end - datetime.timedelta(hours=23)) == "less than a day left"
    assert time_left(end, end - datetime.timedelta(days=1, seconds=1)) == "1 day left"
    assert expires(end, end - datetime.timedelta(hours=1)) == "expires within a day"
    assert expires(end, end - datetime.timedelta(days=9, hours=1)) == "expires in 9 days"


def test_development_cas_get_names_of_their_own(tmp_path: Path) -> None:
    names = [pki.CertificateAuthority.create().cert.subject.rfc4514_string()
             for _ in range(2)]
    assert names[0] != names[1]
    assert all(re.fullmatch(r"CN=securewsgi development CA [0-9a-f]{6}", n) for n in names)
    pki.init_pki(tmp_path)
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    assert re.fullmatch(r"CN=securewsgi development CA [0-9a-f]{6}", ca.subject.rfc4514_string())


def test_expiry_is_said_again_daily_and_when_it_happens(test_pki, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    end = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=2)
    cert, key = test_pki.ca.issue_server(["localhost"], not_after=end)
    pki.write_cert(tmp_path / "s.pem", cert)
    pki.write_key(tmp_path / "s-key.pem", key)
    tls = load_config_text(tmp_path, f"tls:\n  certfile: {tmp_path / 's.pem'}\n"
                                     f"  keyfile: {tmp_path / 's-key.pem'}\n").tls
    reloader = TLSReloader(tls, tmp_path / "service.yaml", build_server_tls(
        tls, tmp_path / "service.yaml"))
    caplog.set_level("INFO", logger="securewsgi.tls")
    reloader.check_expiry()  # the start-up lines said it already
    assert caplog.records == []
    reloader.check_expiry(now=time.monotonic() + 86400 + 1)  # a day later: again
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "expires within a day" in caplog.records[0].getMessage()
    wait_for(lambda: datetime.datetime.now(datetime.timezone.utc) > end, timeout=10,
             interval=0.1, what="the certificate to expire")
    reloader.check_expiry()  # it expired while serving: at once, as an error
    assert [r.levelname for r in caplog.records] == ["WARNING", "ERROR"]
    assert caplog.records[1].getMessage() == (
        f"tls.certfile: certificate {tmp_path / 's.pem'} expired less than a day ago, on "
        f"{end:%Y-%m-%d %H:%M} UTC: every client refuses it; renew it, then reload (SIGHUP)")
