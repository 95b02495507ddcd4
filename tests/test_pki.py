"""Tests of the development PKI (``securewsgi.pki``) and ``securewsgi-certs``.

Real files in tmp_path, real ``openssl`` as the independent judge, no mocks.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import ssl
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from support import run_command

from securewsgi import __version__, pki
from securewsgi.commands.certs import main

# What `init` writes besides the client pairs.
INIT_FILES = {"ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "crl.pem"}
HOUR = dt.timedelta(hours=1)


# ------------------------------------------------------------------------- helpers


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    """Call ``securewsgi-certs`` in-process; return (exit status, stdout, stderr)."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True,
                          check=False)


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def key(path: Path) -> pki.PrivateKey:
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(loaded, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey))
    return loaded


def crl(path: Path) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(path.read_bytes())


def ext(certificate: x509.Certificate, kind: type) -> x509.Extension:
    return certificate.extensions.get_extension_for_class(kind)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_one_line_error(rc: int, err: str, *fragments: str) -> None:
    assert rc == 2
    assert err.startswith("securewsgi-certs: ")
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@pytest.fixture
def pki_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    directory = tmp_path / "pki"
    rc, _, err = run(capsys, "init", directory, "--client", "alice", "--client", "bob",
                     "--host", "example.test", "--host", "10.1.2.3", "--host", "2001:db8::1")
    assert rc == 0, err
    return directory


# ------------------------------------------------------------------------------ init


def test_init_writes_exactly_the_spec_files_with_private_keys_0600(pki_dir: Path) -> None:
    clients = {"alice.pem", "alice-key.pem", "bob.pem", "bob-key.pem"}
    assert set(os.listdir(pki_dir)) == INIT_FILES | clients  # no temp files left over
    for name in ("ca-key.pem", "server-key.pem", "alice-key.pem", "bob-key.pem"):
        assert mode(pki_dir / name) == 0o600, name
    for name in ("ca.pem", "server.pem", "alice.pem", "crl.pem"):
        assert mode(pki_dir / name) & 0o133 == 0, name  # public, but nobody else writes


def test_init_prints_files_and_usage_hint(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "pki"
    rc, out, err = run(capsys, "init", directory, "--client", "alice")
    assert (rc, err) == (0, "")
    for name in ("ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "alice.pem",
                 "alice-key.pem", "crl.pem"):
        assert str(directory / name) in out
    curl = next(line for line in out.splitlines() if "curl" in line)
    assert f"--cacert {directory / 'ca.pem'}" in curl
    assert f"--cert {directory / 'alice.pem'} --key {directory / 'alice-key.pem'}" in curl


def test_openssl_verifies_server_and_client_certificates(pki_dir: Path) -> None:
    ca = pki_dir / "ca.pem"
    server = openssl("verify", "-purpose", "sslserver", "-CAfile", ca, pki_dir / "server.pem")
    assert server.returncode == 0, server.stdout + server.stderr
    clients = openssl("verify", "-purpose", "sslclient", "-CAfile", ca,
                      pki_dir / "alice.pem", pki_dir / "bob.pem")
    assert clients.returncode == 0, clients.stdout + clients.stderr


def test_ca_is_a_self_signed_leaf_only_ca(pki_dir: Path) -> None:
    ca = cert(pki_dir / "ca.pem")
    assert ca.subject == ca.issuer
    ca.verify_directly_issued_by(ca)
    constraints = ext(ca, x509.BasicConstraints)
    assert constraints.critical
    assert (constraints.value.ca, constraints.value.path_length) == (True, 0)
    usage = ext(ca, x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert ext(ca, x509.SubjectKeyIdentifier).value.digest
    assert isinstance(ca.signature_hash_algorithm, hashes.SHA256)
    assert now() - 2 * HOUR < ca.not_valid_before_utc < now() - HOUR / 2
    assert ca.not_valid_after_utc - now() > dt.timedelta(days=3640)


def test_server_sans_are_typed_ip_or_dns(pki_dir: Path) -> None:
    server = cert(pki_dir / "server.pem")
    sans = ext(server, x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "example.test"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address(a) for a in ("127.0.0.1", "::1", "10.1.2.3", "2001:db8::1")]
    assert ext(server, x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH])
    assert ext(server, x509.BasicConstraints).value.ca is False


def test_server_hosts_are_deduplicated(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "init", tmp_path, "--host", "LOCALHOST", "--host", "127.0.0.1",
                     "--host", "0:0::1", "--host", "api.test", "--host", "api.test.")
    assert rc == 0, err
    sans = ext(cert(tmp_path / "server.pem"), x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "api.test"]
    assert len(sans.get_values_for_type(x509.IPAddress)) == 2


def test_leaf_certificates_chain_to_the_ca_by_key_identifier(pki_dir: Path) -> None:
    ca_ski = ext(cert(pki_dir / "ca.pem"), x509.SubjectKeyIdentifier).value
    for name in ("server.pem", "alice.pem"):
        leaf = cert(pki_dir / name)
        assert ext(leaf, x509.AuthorityKeyIdentifier).value.key_identifier == ca_ski.digest
        assert ext(leaf, x509.SubjectKeyIdentifier).value == \
            x509.SubjectKeyIdentifier.from_public_key(leaf.public_key())
        assert dt.timedelta(days=364) < leaf.not_valid_after_utc - now() <= \
            dt.timedelta(days=365)


def test_client_has_cn_name_and_client_auth_eku_only(pki_dir: Path) -> None:
    alice = cert(pki_dir / "alice.pem")
    cn = alice.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cn] == ["alice"]
    assert len(alice.subject) == 1
    assert list(ext(alice, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(x509.ExtensionNotFound):
        alice.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_default_key_type_is_ecdsa_p256(pki_dir: Path) -> None:
    for stem in ("ca", "server", "alice"):
        private = key(pki_dir / f"{stem}-key.pem")
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert isinstance(private.curve, ec.SECP256R1)
        assert isinstance(cert(pki_dir / f"{stem}.pem").signature_hash_algorithm, hashes.SHA256)


def test_rsa2048_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "init", tmp_path, "--client", "alice", "--key-type", "rsa2048")
    assert rc == 0, err
    for stem in ("ca", "server", "alice"):
        private = key(tmp_path / f"{stem}-key.pem")
        assert isinstance(private, rsa.RSAPrivateKey)
        assert private.key_size == 2048
    usage = ext(cert(tmp_path / "server.pem"), x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment
    result = openssl("verify", "-CAfile", tmp_path / "ca.pem", tmp_path / "server.pem",
                     tmp_path / "alice.pem")
    assert result.returncode == 0, result.stdout + result.stderr


def test_unknown_key_type_is_a_usage_error(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "init", tmp_path, "--key-type", "dsa")
    assert rc == 2 and "--key-type" in err
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------- overwrite protection


def test_init_refuses_to_overwrite(pki_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (pki_dir / "ca.pem").read_bytes()
    rc, out, err = run(capsys, "init", pki_dir)
    assert_one_line_error(rc, err, str(pki_dir / "ca.pem"), "--force")
    assert out == ""
    assert (pki_dir / "ca.pem").read_bytes() == before


def test_init_refuses_when_only_a_client_file_exists(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "alice-key.pem").write_text("precious")
    rc, _, err = run(capsys, "init", tmp_path, "--client", "alice")
    assert_one_line_error(rc, err, str(tmp_path / "alice-key.pem"))
    assert os.listdir(tmp_path) == ["alice-key.pem"]  # nothing written at all


def test_init_force_overwrites_and_keys_stay_0600(pki_dir: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    old_serial = cert(pki_dir / "ca.pem").serial_number
    (pki_dir / "ca-key.pem").chmod(0o644)
    (pki_dir / "alice-key.pem").chmod(0o666)
    rc, _, err = run(capsys, "init", pki_dir, "--client", "alice", "--force")
    assert rc == 0, err
    assert cert(pki_dir / "ca.pem").serial_number != old_serial
    assert mode(pki_dir / "ca-key.pem") == 0o600
    assert mode(pki_dir / "alice-key.pem") == 0o600
    result = openssl("verify", "-CAfile", pki_dir / "ca.pem", pki_dir / "alice.pem")
    assert result.returncode == 0, result.stdout + result.stderr


def test_init_exist_ok_keeps_the_pki(pki_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = {p.name: p.read_bytes() for p in pki_dir.iterdir()}
    rc, out, err = run(capsys, "init", pki_dir, "--exist-ok")
    assert (rc, err) == (0, "")
    assert out.count("\n") == 1 and "keep" in out and str(pki_dir) in out
    assert {p.name: p.read_bytes() for p in pki_dir.iterdir()} == before


def test_init_exist_ok_with_a_new_client_says_nothing_was_issued(
        pki_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--exist-ok keeps the PKI, so a new --client gets no certificate: the command
    says so and gives the line that does issue it (which then works)."""
    rc, out, err = run(capsys, "init", pki_dir, "--exist-ok", "--client", "alice",
                       "--client", "carol")
    assert rc == 0 and "keep" in out
    assert not (pki_dir / "carol.pem").exists()
    issue = f"securewsgi-certs issue {pki_dir} --client carol"
    assert err == (f"securewsgi-certs: the CA exists, so nothing was created for client "
                   f"carol; to issue it: {issue}\n")  # alice exists: nothing to say
    result = run_command(*issue.split())
    assert result.returncode == 0, result.stderr
    assert (pki_dir / "carol.pem").exists() and (pki_dir / "carol-key.pem").exists()


def test_version() -> None:
    result = run_command("securewsgi-certs", "--version")
    assert (result.returncode, result.stdout) == (0, f"securewsgi-certs {__version__}\n")


def test_init_exist_ok_creates_a_missing_pki(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "init", tmp_path / "new", "--exist-ok")
    assert rc == 0, err
    assert set(os.listdir(tmp_path / "new")) == INIT_FILES


def test_force_and_exist_ok_are_exclusive(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "init", tmp_path, "--force", "--exist-ok")
    assert rc == 2 and "not allowed with" in err


# ----------------------------------------------------------------------------- issue


def test_issue_client_with_san_uri_dns_and_email(pki_dir: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "issue", pki_dir, "--client", "carol",
                       "--san-uri", "spiffe://example.org/ns/ops/carol",
                       "--san-dns", "carol.example.test", "--san-email", "carol@example.test")
    assert (rc, err) == (0, "")
    assert str(pki_dir / "carol.pem") in out and str(pki_dir / "carol-key.pem") in out
    carol = cert(pki_dir / "carol.pem")
    sans = ext(carol, x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://example.org/ns/ops/carol"]
    assert sans.get_values_for_type(x509.DNSName) == ["carol.example.test"]
    assert sans.get_values_for_type(x509.RFC822Name) == ["carol@example.test"]
    assert carol.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "carol"
    assert mode(pki_dir / "carol-key.pem") == 0o600
    result = openssl("verify", "-purpose", "sslclient", "-CAfile", pki_dir / "ca.pem",
                     pki_dir / "carol.pem")
    assert result.returncode == 0, result.stdout + result.stderr


def test_issue_follows_the_ca_key_type(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "init", tmp_path, "--key-type", "rsa2048")[0] == 0
    assert run(capsys, "issue", tmp_path, "--client", "dave")[0] == 0
    assert isinstance(key(tmp_path / "dave-key.pem"), rsa.RSAPrivateKey)


def test_issue_refuses_to_overwrite_unless_forced(pki_dir: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    before = (pki_dir / "alice.pem").read_bytes()
    rc, _, err = run(capsys, "issue", pki_dir, "--client", "alice")
    assert_one_line_error(rc, err, str(pki_dir / "alice.pem"), "--force")
    assert (pki_dir / "alice.pem").read_bytes() == before
    rc, _, err = run(capsys, "issue", pki_dir, "--client", "alice", "--force")
    assert rc == 0, err
    assert (pki_dir / "alice.pem").read_bytes() != before


@pytest.mark.parametrize("option,value", [
    ("--san-uri", "not a uri"),
    ("--san-dns", "bad host!"),
    ("--san-email", "nobody"),
])
def test_issue_rejects_malformed_sans(pki_dir: Path, capsys: pytest.CaptureFixture[str],
                                      option: str, value: str) -> None:
    rc, _, err = run(capsys, "issue", pki_dir, "--client", "eve", option, value)
    assert_one_line_error(rc, err, str(pki_dir), repr(value))
    assert not (pki_dir / "eve.pem").exists()


# ---------------------------------------------------------------------------- revoke


def test_init_writes_an_empty_crl_signed_by_the_ca(pki_dir: Path) -> None:
    empty = crl(pki_dir / "crl.pem")
    assert len(empty) == 0
    assert empty.is_signature_valid(key(pki_dir / "ca-key.pem").public_key())
    checked = openssl("crl", "-in", pki_dir / "crl.pem", "-CAfile", pki_dir / "ca.pem",
                      "-noout")
    assert checked.returncode == 0 and "verify OK" in checked.stderr + checked.stdout
    result = openssl("verify", "-crl_check", "-CRLfile", pki_dir / "crl.pem",
                     "-CAfile", pki_dir / "ca.pem", pki_dir / "alice.pem")
    assert result.returncode == 0, result.stdout + result.stderr


def test_revoke_lists_the_serial_and_openssl_refuses_the_client(
        pki_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "revoke", pki_dir, "alice")
    assert (rc, err) == (0, "")
    crl_path = pki_dir / "crl.pem"
    assert str(crl_path) in out and "SIGHUP" in out
    revoked = crl(crl_path)
    assert [r.serial_number for r in revoked] == [cert(pki_dir / "alice.pem").serial_number]
    checked = openssl("crl", "-in", crl_path, "-CAfile", pki_dir / "ca.pem", "-noout")
    assert checked.returncode == 0 and "verify OK" in checked.stderr + checked.stdout
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(str(crl_path))

    def verify(name: str) -> subprocess.CompletedProcess[str]:
        return openssl("verify", "-crl_check", "-CRLfile", crl_path,
                       "-CAfile", pki_dir / "ca.pem", pki_dir / name)

    refused = verify("alice.pem")
    assert refused.returncode != 0 and "revoked" in refused.stdout + refused.stderr
    accepted = verify("bob.pem")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr


def test_revoke_twice_keeps_one_entry_and_accumulates(
        pki_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "revoke", pki_dir, "alice")[0] == 0
    first = crl(pki_dir / "crl.pem")
    assert run(capsys, "revoke", pki_dir, "alice")[0] == 0
    assert run(capsys, "revoke", pki_dir, "bob")[0] == 0
    final = crl(pki_dir / "crl.pem")
    serials = sorted(r.serial_number for r in final)
    assert serials == sorted(cert(pki_dir / f"{n}.pem").serial_number for n in ("alice", "bob"))
    alice_serial = cert(pki_dir / "alice.pem").serial_number
    assert final.get_revoked_certificate_by_serial_number(alice_serial).revocation_date_utc == \
        first.get_revoked_certificate_by_serial_number(alice_serial).revocation_date_utc
    number = final.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number > first.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert sorted(os.listdir(pki_dir)) == sorted(
        INIT_FILES | {"alice.pem", "alice-key.pem", "bob.pem", "bob-key.pem"})


def test_revoke_replaces_a_crl_from_another_ca(pki_dir: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    stranger = pki.CertificateAuthority.create("another CA")
    pki.write_crl(pki_dir / "crl.pem", stranger.build_crl([12345]))
    assert run(capsys, "revoke", pki_dir, "bob")[0] == 0
    fresh = crl(pki_dir / "crl.pem")
    assert [r.serial_number for r in fresh] == [cert(pki_dir / "bob.pem").serial_number]
    assert fresh.issuer == cert(pki_dir / "ca.pem").subject


def test_revoke_refuses_a_certificate_from_another_ca(
        pki_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other"
    assert run(capsys, "init", other, "--client", "mallory")[0] == 0
    shutil.copy(other / "mallory.pem", pki_dir / "mallory.pem")
    rc, _, err = run(capsys, "revoke", pki_dir, "mallory")
    assert_one_line_error(rc, err, str(pki_dir / "mallory.pem"), "not issued by")


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize("argv", [
    ["issue", "{d}", "--client", "alice"],
    ["revoke", "{d}", "alice"],
])
def test_missing_ca_is_one_line_naming_the_file(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                argv: list[str]) -> None:
    directory = tmp_path / "absent"
    rc, _, err = run(capsys, *(a.format(d=directory) for a in argv))
    assert_one_line_error(rc, err, str(directory / "ca.pem"), "init")


def test_revoke_unknown_client_names_the_file(pki_dir: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "revoke", pki_dir, "zoe")
    assert_one_line_error(rc, err, str(pki_dir / "zoe.pem"), "no such file")


@pytest.mark.parametrize("name", [
    "../evil", "a/b", ".hidden", "", "ca", "CA-key", "server", "server-key", "crl",
    "alice-key", "with space", "x" * 65,
])
@pytest.mark.parametrize("command", ["init", "issue", "revoke"])
def test_bad_client_names_are_refused(pki_dir: Path, capsys: pytest.CaptureFixture[str],
                                      command: str, name: str) -> None:
    before = sorted(os.listdir(pki_dir))
    argv = {"init": ["init", pki_dir, "--force", "--client", name],
            "issue": ["issue", pki_dir, "--client", name],
            "revoke": ["revoke", pki_dir, name]}[command]
    rc, _, err = run(capsys, *argv)
    assert_one_line_error(rc, err, str(pki_dir), "invalid client name")
    assert sorted(os.listdir(pki_dir)) == before
    assert not (pki_dir.parent / "evil.pem").exists()


@pytest.mark.parametrize("host", [
    "a b", "https://example.test", "example.test:8443", "256.1.1.1", "-bad.test",
    "fe80::1%eth0", "",
])
def test_bad_hosts_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               host: str) -> None:
    rc, _, err = run(capsys, "init", tmp_path, f"--host={host}")
    assert_one_line_error(rc, err, str(tmp_path), "invalid host")
    assert not list(tmp_path.iterdir())


def test_garbage_ca_files_are_named(pki_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (pki_dir / "ca-key.pem").write_text("not a key\n")
    rc, _, err = run(capsys, "issue", pki_dir, "--client", "carol")
    assert_one_line_error(rc, err, str(pki_dir / "ca-key.pem"), "not a PEM private key")
    (pki_dir / "ca.pem").write_text("not a certificate\n")
    rc, _, err = run(capsys, "revoke", pki_dir, "alice")
    assert_one_line_error(rc, err, str(pki_dir / "ca.pem"), "not a PEM certificate")


def test_mismatched_ca_key_is_named(pki_dir: Path) -> None:
    shutil.copy(pki_dir / "server-key.pem", pki_dir / "ca-key.pem")
    with pytest.raises(pki.PKIError, match=r"ca-key\.pem: key does not match"):
        pki.CertificateAuthority.load(pki_dir)


def test_directory_that_is_a_file_is_named(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    rc, _, err = run(capsys, "init", blocker / "pki")
    assert_one_line_error(rc, err, str(blocker / "pki"))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root ignores directory permissions")
def test_unwritable_directory_is_named(pki_dir: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    pki_dir.chmod(0o500)
    try:
        rc, _, err = run(capsys, "revoke", pki_dir, "alice")
    finally:
        pki_dir.chmod(0o700)
    assert_one_line_error(rc, err, str(pki_dir / "crl.pem"), "cannot write")


def test_usage_errors_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, )[0] == 2
    assert run(capsys, "issue", "somewhere")[0] == 2  # --client is required
    rc, out, _ = run(capsys, "--help")
    assert rc == 0 and "init" in out and "revoke" in out


# ------------------------------------------------------------------- library API


def test_write_key_is_0600_and_can_be_encrypted(tmp_path: Path) -> None:
    ca = pki.CertificateAuthority.create()
    path = tmp_path / "enc-key.pem"
    path.write_text("old")
    path.chmod(0o644)
    pki.write_key(path, ca.key, password=b"s3cret")
    assert mode(path) == 0o600
    assert b"ENCRYPTED" in path.read_bytes()
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(path.read_bytes(), password=None)
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=b"s3cret")
    assert loaded.public_key() == ca.key.public_key()
    assert os.listdir(tmp_path) == ["enc-key.pem"]


def test_issue_client_odd_subject_and_no_eku(tmp_path: Path) -> None:
    ca = pki.CertificateAuthority.create()
    subject = x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "ops"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "on-call, nights"),
        x509.NameAttribute(NameOID.COMMON_NAME, "Jürgen \"J\" O'Neil+1"),
    ])
    leaf, _ = ca.issue_client("ignored", subject=subject, extended_key_usage=())
    assert leaf.subject == subject
    with pytest.raises(x509.ExtensionNotFound):
        leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    pki.write_cert(tmp_path / "odd.pem", leaf)
    pki.write_cert(tmp_path / "ca.pem", ca.cert)
    result = openssl("verify", "-CAfile", tmp_path / "ca.pem", tmp_path / "odd.pem")
    assert result.returncode == 0, result.stdout + result.stderr


def test_explicit_validity_builds_an_expired_certificate(tmp_path: Path) -> None:
    ca = pki.CertificateAuthority.create(key_type="rsa2048")
    start, end = now() - dt.timedelta(days=30), now() - dt.timedelta(days=1)
    leaf, private = ca.issue_server(["localhost"], not_before=start, not_after=end,
                                    common_name="old")
    assert leaf.not_valid_after_utc == end.replace(microsecond=0)
    assert isinstance(private, ec.EllipticCurvePrivateKey)  # leaf key type is independent
    pki.write_cert(tmp_path / "ca.pem", ca.cert)
    pki.write_cert(tmp_path / "old.pem", leaf)
    result = openssl("verify", "-CAfile", tmp_path / "ca.pem", tmp_path / "old.pem")
    assert result.returncode != 0 and "expired" in result.stdout + result.stderr


def test_build_crl_drops_duplicate_serials() -> None:
    ca = pki.CertificateAuthority.create()
    revoked = ca.build_crl([7, 7, 9], next_update_days=2)
    assert sorted(r.serial_number for r in revoked) == [7, 9]
    assert revoked.next_update_utc is not None
    assert revoked.next_update_utc - now() <= dt.timedelta(days=2)


def test_library_functions_return_the_paths_written(tmp_path: Path) -> None:
    written = pki.init_pki(tmp_path, hosts=["svc.test"], clients=["a", "b"])
    assert {p.name for p in written} == INIT_FILES | {"a.pem", "a-key.pem", "b.pem", "b-key.pem"}
    assert pki.issue_client_files(tmp_path, "c", san_uri=["urn:example:c"]) == [
        tmp_path / "c.pem", tmp_path / "c-key.pem"]
    assert pki.revoke(tmp_path, "c") == tmp_path / "crl.pem"
    with pytest.raises(pki.PKIError, match=r"a\.pem: already exists"):
        pki.init_pki(tmp_path, clients=["a"])


# ----------------------------------------------------------------- console script


def test_installed_console_script(tmp_path: Path) -> None:
    script = shutil.which("securewsgi-certs")
    if script is None:
        pytest.skip("securewsgi-certs is not installed (pip install -e .)")
    directory = tmp_path / "pki"
    done = subprocess.run([script, "init", str(directory), "--client", "alice"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "curl" in done.stdout
    assert set(os.listdir(directory)) == INIT_FILES | {"alice.pem", "alice-key.pem"}
    again = subprocess.run([script, "init", str(directory)], capture_output=True, text=True,
                           check=False)
    assert again.returncode == 2
    assert again.stderr == f"securewsgi-certs: {directory / 'ca.pem'}: already exists" \
        " (and 4 more); use --force to overwrite\n"
