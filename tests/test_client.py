"""`securewsgi.client.session()` against real one-way and mutual servers, its config file,
its one error type, and the `securewsgi-certs issue`/`revoke` round trip with a CRL."""
from __future__ import annotations

import json
import os
import ssl
from pathlib import Path

import pytest
import requests
from support import PKIFiles, ServerProcess, TCPPeer, run_command

from securewsgi import pki
from securewsgi.client import ClientConfigError, read_client_config, session, ssl_context
from securewsgi.client.diagnose import diagnose

PASSWORD = "c0rrect horse"


@pytest.fixture(scope="module")
def servers(start_server, test_pki: PKIFiles) -> dict[str, ServerProcess]:
    return {mode: start_server({"tls": test_pki.tls_section(mode)}, name=f"client-{mode}")
            for mode in ("server", "mutual")}


@pytest.fixture(scope="module")
def carol(test_pki: PKIFiles, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A client whose key is encrypted with PASSWORD, next to a client.yaml using it."""
    directory = tmp_path_factory.mktemp("carol")
    cert, key = test_pki.ca.issue_client("carol")
    pki.write_cert(directory / "carol.pem", cert)
    pki.write_key(directory / "carol-key.pem", key, password=PASSWORD.encode())
    return {"dir": directory, "cert": directory / "carol.pem", "key": directory / "carol-key.pem"}


def subject(response: requests.Response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["client"]["subject"]


# -------------------------------------------------------------------- the session


def test_one_way_server(servers, test_pki) -> None:
    with session(ca_certs=test_pki.ca_pem) as s:
        assert s.trust_env is False
        assert s.verify == str(test_pki.ca_pem) and s.cert is None
        response = s.get(servers["server"].url("/who"), timeout=10)
    assert response.status_code == 200 and response.json()["client"] is None


def test_mutual_server(servers, test_pki) -> None:
    alice = test_pki.clients["alice"]
    with session(test_pki.ca_pem, alice.cert, alice.key) as s:
        assert s.cert == (str(alice.cert), str(alice.key))
        assert subject(s.get(servers["mutual"].url("/who"), timeout=10)) == "CN=alice"


def test_spec_example_with_relative_paths(servers, test_pki, tmp_path, monkeypatch) -> None:
    """The documented `session(...)` example, verbatim: paths relative to the working
    directory."""
    (tmp_path / "pki").mkdir()
    for name in ("ca.pem", "alice.pem", "alice-key.pem"):
        (tmp_path / "pki" / name).write_bytes((test_pki.dir / name).read_bytes())
    monkeypatch.chdir(tmp_path)
    s = session(ca_certs="pki/ca.pem", certfile="pki/alice.pem", keyfile="pki/alice-key.pem")
    assert subject(s.get(servers["mutual"].url("/"), timeout=10)) == "CN=alice"


def test_certfile_holding_the_key_too(servers, test_pki, tmp_path) -> None:
    alice = test_pki.clients["alice"]
    combined = tmp_path / "alice-combined.pem"
    combined.write_bytes(alice.cert.read_bytes() + alice.key.read_bytes())
    with session(test_pki.ca_pem, combined) as s:
        assert subject(s.get(servers["mutual"].url("/"), timeout=10)) == "CN=alice"


def test_encrypted_key_with_password(servers, test_pki, carol) -> None:
    with session(test_pki.ca_pem, carol["cert"], carol["key"], PASSWORD) as s:
        assert subject(s.get(servers["mutual"].url("/"), timeout=10)) == "CN=carol"
        # two more requests: the same context serves new connections, no password prompt
        assert s.get(servers["mutual"].url("/"), timeout=10, headers={"Connection": "close"}
                     ).status_code == 200
        assert s.get(servers["mutual"].url("/"), timeout=10).status_code == 200


def test_requests_ca_bundle_cannot_override_verify(servers, test_pki, monkeypatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(test_pki.other_ca_pem))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(test_pki.other_ca_pem))
    url = servers["server"].url("/")
    # the trap this helper avoids: Session.verify loses to the environment's bundle
    with requests.Session() as plain, pytest.raises(requests.exceptions.SSLError):
        plain.verify = str(test_pki.ca_pem)
        plain.get(url, timeout=10)
    with session(ca_certs=test_pki.ca_pem) as s:
        assert s.get(url, timeout=10).status_code == 200


def test_only_the_given_ca_is_trusted(servers, test_pki) -> None:
    with session(ca_certs=test_pki.other_ca_pem) as s, \
            pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        s.get(servers["server"].url("/"), timeout=10)


def test_ca_directory_without_c_rehash(servers, test_pki, tmp_path) -> None:
    (tmp_path / "our.crt").write_bytes(test_pki.ca_pem.read_bytes())
    (tmp_path / "theirs.pem").write_bytes(test_pki.other_ca_pem.read_bytes())
    (tmp_path / "README").write_text("not a certificate, and ignored (wrong suffix)")
    with session(ca_certs=tmp_path) as s:
        assert s.verify == str(tmp_path)
        assert s.get(servers["server"].url("/"), timeout=10).status_code == 200


def test_tls_floor_is_tls12_and_hostname_checking_is_on(test_pki) -> None:
    context = ssl_context(test_pki.ca_pem)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.check_hostname is True and context.verify_mode == ssl.CERT_REQUIRED


def test_per_request_verify_override_gets_its_own_context(servers, test_pki) -> None:
    url = servers["server"].url("/")
    with session(ca_certs=test_pki.ca_pem) as s:
        with pytest.raises(requests.exceptions.SSLError):
            s.get(url, verify=str(test_pki.other_ca_pem), timeout=10)
        assert s.get(url, timeout=10).status_code == 200  # the preset is untouched


def test_default_timeout(test_pki) -> None:
    with TCPPeer(reply=None) as peer, session(test_pki.ca_pem, timeout=0.3) as s, \
            pytest.raises(requests.exceptions.ReadTimeout):
        s.get(peer.url(scheme="http"))


# ----------------------------------------------------------- one clear exception


def _error(**kwargs) -> ClientConfigError:
    with pytest.raises(ClientConfigError) as caught:
        session(**kwargs)
    assert isinstance(caught.value, ValueError)
    return caught.value


def test_key_that_does_not_match_the_certificate(test_pki) -> None:
    alice, bob = test_pki.clients["alice"], test_pki.clients["bob"]
    error = _error(ca_certs=test_pki.ca_pem, certfile=alice.cert, keyfile=bob.key)
    assert str(error) == (f"keyfile: {bob.key}: private key does not match the certificate "
                          f"in {alice.cert}")
    assert error.path == bob.key


def test_encrypted_key_without_or_with_a_wrong_password(test_pki, carol) -> None:
    error = _error(ca_certs=test_pki.ca_pem, certfile=carol["cert"], keyfile=carol["key"])
    assert str(error) == f"keyfile: {carol['key']}: the private key is encrypted; pass key_password"
    error = _error(ca_certs=test_pki.ca_pem, certfile=carol["cert"], keyfile=carol["key"],
                   key_password="wrong")
    assert str(error) == f"keyfile: {carol['key']}: wrong key_password for this encrypted key"


@pytest.mark.parametrize("key", ["ca_certs", "certfile", "keyfile"])
def test_missing_file(test_pki, tmp_path, key: str) -> None:
    alice = test_pki.clients["alice"]
    given = {"ca_certs": test_pki.ca_pem, "certfile": alice.cert, "keyfile": alice.key}
    given[key] = tmp_path / "missing.pem"
    error = _error(**given)
    assert str(error) == f"{key}: {tmp_path / 'missing.pem'}: no such file"
    assert error.path == tmp_path / "missing.pem"


def test_not_a_certificate(test_pki) -> None:
    alice = test_pki.clients["alice"]
    error = _error(ca_certs=alice.key)
    assert str(error) == f"ca_certs: {alice.key}: no PEM certificate in it"
    error = _error(certfile=alice.cert)  # no key anywhere
    assert str(error) == f"certfile: {alice.cert}: no PEM private key in it; pass keyfile"


# --------------------------------------------------------------- the config file


def test_yaml_config_with_relative_paths_and_env(servers, test_pki, carol, monkeypatch
                                                 ) -> None:
    (carol["dir"] / "ca.pem").write_bytes(test_pki.ca_pem.read_bytes())
    config = carol["dir"] / "client.yaml"
    config.write_text("client:\n  ca_certs: ca.pem\n  certfile: carol.pem\n"
                      "  keyfile: carol-key.pem\n  key_password: ${CAROL_KEY_PASSWORD}\n"
                      "  timeout: 7\n")
    monkeypatch.setenv("CAROL_KEY_PASSWORD", PASSWORD)
    monkeypatch.chdir("/")  # relative to the file, not the working directory
    with session(config=config) as s:
        assert s.verify == str(carol["dir"] / "ca.pem")
        assert subject(s.get(servers["mutual"].url("/"))) == "CN=carol"
    assert read_client_config(config).timeout == 7.0


def test_ini_config_and_keyword_arguments_win(servers, test_pki, tmp_path) -> None:
    alice, bob = test_pki.clients["alice"], test_pki.clients["bob"]
    config = tmp_path / "client.ini"
    config.write_text(f"[client]\nca_certs = {test_pki.ca_pem}\ncertfile = {alice.cert}\n"
                      f"keyfile = {alice.key}\n")
    with session(config=config) as s:
        assert subject(s.get(servers["mutual"].url("/"), timeout=10)) == "CN=alice"
    with session(certfile=bob.cert, keyfile=bob.key, config=config) as s:
        assert subject(s.get(servers["mutual"].url("/"), timeout=10)) == "CN=bob"


def test_yaml_top_level_section(test_pki, tmp_path) -> None:
    config = tmp_path / "client.yml"
    config.write_text(f"ca_certs: {test_pki.ca_pem}\n")
    assert read_client_config(config, section=None).ca_certs == test_pki.ca_pem


@pytest.mark.parametrize("body, message", [
    ("client:\n  ca_cert: ca.pem\n", "client.ca_cert: unknown key (did you mean 'ca_certs'?)"),
    ("client:\n  key_password: ${NOT_SET_ANYWHERE}\n",
     "client.key_password: environment variable NOT_SET_ANYWHERE is not set"),
    ("client:\n  certfile: nope.pem\n", "client.certfile: {dir}/nope.pem: no such file"),
    ("server:\n  port: 1\n", "no 'client' section"),
    ("client:\n  timeout: soon\n", "client.timeout: expected a number of seconds > 0"),
])
def test_config_errors_name_the_file_and_key(tmp_path, body: str, message: str) -> None:
    config = tmp_path / "client.yaml"
    config.write_text(body)
    error = _error(config=config)
    assert str(error).startswith(f"{config}: ")
    assert message.format(dir=tmp_path) in str(error)


# ---------------------------------------------- issue / revoke with a real server


def test_issue_revoke_round_trip(start_server, tmp_path) -> None:
    directory = tmp_path / "pki"
    steps = [
        ("init", str(directory), "--client", "alice"),
        ("issue", str(directory), "--client", "carol", "--san-uri",
         "spiffe://example.org/ns/ops/carol", "--san-dns", "carol.example.org", "--san-email",
         "carol@example.org"),
    ]
    for step in steps:
        done = run_command("securewsgi-certs", *step)
        assert done.returncode == 0, done.stderr
    tls = {"mode": "mutual", "certfile": str(directory / "server.pem"),
           "keyfile": str(directory / "server-key.pem"), "ca_certs": str(directory / "ca.pem"),
           "crl_file": str(directory / "crl.pem")}
    config = {"tls": tls, "identity": {"remote_user": "san_uri"}}
    before = start_server(config, name="crl-before")
    carol = session(directory / "ca.pem", directory / "carol.pem", directory / "carol-key.pem")
    body = carol.get(before.url("/who"), timeout=10).json()
    assert body["client"]["san_uri"] == ["spiffe://example.org/ns/ops/carol"]
    assert body["client"]["san_dns"] == ["carol.example.org"]
    assert body["client"]["san_email"] == ["carol@example.org"]
    assert body["tls"]["REMOTE_USER"] == "spiffe://example.org/ns/ops/carol"

    revoked = run_command("securewsgi-certs", "revoke", str(directory), "carol")
    assert revoked.returncode == 0 and str(directory / "crl.pem") in revoked.stdout
    before.stop()  # a new process reads the new CRL (SIGHUP reloading has its own tests)
    after = start_server(config, name="crl-after")
    fresh = session(directory / "ca.pem", directory / "carol.pem", directory / "carol-key.pem")
    with pytest.raises(requests.exceptions.RequestException):
        fresh.get(after.url("/who"), timeout=10)
    after.wait_log(r"TLS handshake failed: client=127\.0\.0\.1:\d+ reason=client certificate "
                   r"revoked")
    alice = session(directory / "ca.pem", directory / "alice.pem", directory / "alice-key.pem")
    assert subject(alice.get(after.url("/who"), timeout=10)) == "CN=alice"
    # and securewsgi-check says it in words
    report = diagnose(after.url("/who"), ca=directory / "ca.pem",
                      certfile=directory / "carol.pem", keyfile=directory / "carol-key.pem",
                      timeout=10)
    assert report.problem == "client_cert_refused"
    assert report.explanation == ("the server refused the client certificate CN=carol: it has "
                                  "been revoked (TLS alert: certificate revoked).")
    assert json.loads(json.dumps(report.to_json()))["client_cert_accepted"] is False
    assert os.stat(directory / "carol-key.pem").st_mode & 0o077 == 0
