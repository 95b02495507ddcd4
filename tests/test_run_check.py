"""`securewsgi-run --check`: the TLS material and app are validated before serving; each
failure is one line on stderr naming file, key and cause, with exit code 2."""
from __future__ import annotations

import datetime
import textwrap
from pathlib import Path

import pytest
from support import PKIFiles, run_command

from securewsgi import pki
from securewsgi.commands.run import main


@pytest.fixture()
def service(tmp_path: Path, test_pki: PKIFiles):
    def write(tls: str = "", app: str = "factory: securewsgi.demo:app", extra: str = "") -> Path:
        path = tmp_path / "service.yaml"
        tls_lines = {"certfile": str(test_pki.server_cert), "keyfile": str(test_pki.server_key),
                     "ca_certs": str(test_pki.ca_pem)}
        for line in textwrap.dedent(tls).strip().splitlines():
            key, _, value = line.partition(":")
            tls_lines[key.strip()] = value.strip()
        body = "tls:\n" + "".join(f"  {k}: {v}\n" for k, v in tls_lines.items() if v != "DROP")
        body += f"app:\n  {app}\n" + textwrap.dedent(extra)
        path.write_text(body)
        return path

    return write


def check(path: Path, capsys: pytest.CaptureFixture) -> tuple:
    code = main(["--config", str(path), "--check"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_check_prints_a_summary(service, capsys, test_pki: PKIFiles) -> None:
    code, out, err = check(service(), capsys)
    assert code == 0, err
    assert "would listen on https://127.0.0.1:8443" in out
    assert "tls: mode=mutual versions=TLSv1.2-TLSv1.3" in out
    assert "certificate: CN=localhost SANs=[DNS:localhost, IP:127.0.0.1, IP:::1]" in out
    assert "client CA: CN=securewsgi test CA" in out
    assert "app: factory securewsgi.demo:app" in out
    assert out.rstrip().endswith("OK")


@pytest.mark.parametrize(("tls", "extra", "key", "cause"), [
    # a misspelt rule key is named, not taken for a rule without paths
    ("", "authorization:\n  rules:\n    - {name: admin, path: [/admin/*]}\n",
     "authorization.rules[admin].path", "unknown key (did you mean 'paths'?)"),
    # the suggestion is the documented key, not its alias key_file
    ("key_fiel: x.pem", "", "tls.key_fiel", "unknown key (did you mean 'keyfile'?)"),
])
def test_misspelt_keys_get_the_documented_suggestion(service, capsys, tls: str, extra: str,
                                                     key: str, cause: str) -> None:
    code, _, err = check(service(tls, extra=extra), capsys)
    _one_error_line(code, err, key, cause)


def _make_pair(test_pki: PKIFiles, stem: str, **kwargs) -> tuple:
    cert, key = test_pki.ca.issue_server(["localhost"], **kwargs)
    return test_pki.write_pair(stem, cert, key)


def _one_error_line(code: int, err: str, key: str, cause: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f": {key}: " in lines[0]
    assert cause in lines[0]
    assert "Traceback" not in err


def test_key_does_not_match_certificate(service, capsys, test_pki: PKIFiles) -> None:
    code, _, err = check(service(f"keyfile: {test_pki.clients['bob'].key}"), capsys)
    _one_error_line(code, err, "tls.keyfile", "does not match the certificate")


def test_encrypted_key(service, capsys, test_pki: PKIFiles, tmp_path: Path) -> None:
    cert, key = test_pki.ca.issue_server(["localhost"])
    cert_path, key_path = tmp_path / "enc.pem", tmp_path / "enc-key.pem"
    pki.write_cert(cert_path, cert)
    pki.write_key(key_path, key, password=b"open sesame")
    files = f"certfile: {cert_path}\nkeyfile: {key_path}"
    code, _, err = check(service(files), capsys)
    _one_error_line(code, err, "tls.keyfile", "is encrypted; set tls.key_password")
    code, _, err = check(service(files + "\nkey_password: wrong"), capsys)
    _one_error_line(code, err, "tls.key_password", "wrong password")
    code, _out, err = check(service(files + '\nkey_password: "open sesame"'), capsys)
    assert code == 0, err


def test_expired_and_future_server_certificates(service, capsys, test_pki: PKIFiles) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    cert, key = _make_pair(test_pki, "old-server", not_before=now - datetime.timedelta(days=9),
                           not_after=now - datetime.timedelta(days=1))
    code, _, err = check(service(f"certfile: {cert}\nkeyfile: {key}"), capsys)
    _one_error_line(code, err, "tls.certfile", "expired on")
    cert, key = _make_pair(test_pki, "new-server", not_before=now + datetime.timedelta(days=1),
                           not_after=now + datetime.timedelta(days=9))
    code, _, err = check(service(f"certfile: {cert}\nkeyfile: {key}"), capsys)
    _one_error_line(code, err, "tls.certfile", "is not valid before")


def test_certificate_expiring_soon_is_a_warning(service, capsys, test_pki: PKIFiles) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    cert, key = _make_pair(test_pki, "soon", not_after=now + datetime.timedelta(days=10))
    code, out, err = check(service(f"certfile: {cert}\nkeyfile: {key}"), capsys)
    assert code == 0, err
    assert "warning: tls.certfile: certificate" in out
    assert "expires in 9 days" in out or "expires in 10 days" in out


def test_bad_ca_and_crl(service, capsys, test_pki: PKIFiles, tmp_path: Path) -> None:
    code, _, err = check(service(f"ca_certs: {test_pki.server_key}"), capsys)
    _one_error_line(code, err, "tls.ca_certs", "no PEM certificate")
    now = datetime.datetime.now(datetime.timezone.utc)
    old_ca = pki.CertificateAuthority.create("old CA", not_before=now - datetime.timedelta(
        days=20), not_after=now - datetime.timedelta(days=2))
    pki.write_cert(tmp_path / "old-ca.pem", old_ca.cert)
    code, _, err = check(service(f"ca_certs: {tmp_path / 'old-ca.pem'}"), capsys)
    _one_error_line(code, err, "tls.ca_certs", "expired on")
    pki.write_crl(tmp_path / "other-crl.pem", test_pki.other_ca.build_crl([]))
    code, _, err = check(service(f"crl_file: {tmp_path / 'other-crl.pem'}"), capsys)
    _one_error_line(code, err, "tls.crl_file", "not signed by any CA in tls.ca_certs")
    code, out, err = check(service(f"crl_file: {test_pki.crl}"), capsys)
    assert code == 0, err
    assert "(0 revoked)" in out


def test_ca_directory(service, capsys, test_pki: PKIFiles, tmp_path: Path) -> None:
    cas = tmp_path / "cas"
    cas.mkdir()
    (cas / "one.pem").write_bytes(test_pki.ca_pem.read_bytes())
    (cas / "two.crt").write_bytes(test_pki.other_ca_pem.read_bytes())
    code, out, err = check(service(f"ca_certs: {cas}"), capsys)
    assert code == 0, err
    assert "client CA: CN=securewsgi test CA" in out
    assert "client CA: CN=some other CA" in out


def test_bad_cipher_string(service, capsys) -> None:
    code, _, err = check(service('ciphers: "NOSUCHCIPHER"'), capsys)
    _one_error_line(code, err, "tls.ciphers", "accepts no cipher")


@pytest.mark.parametrize(("app", "key", "cause"), [
    ("factory: no_such_module_xyz:app", "app.factory", "no module named 'no_such_module_xyz'"),
    ("factory: securewsgi.demo:nope", "app.factory", "has no attribute 'nope'"),
    ("factory: securewsgi.demo:_TLS_KEYS", "app.factory", "is not a WSGI callable"),
    ("paste: /nonexistent/api-paste.ini", "app.paste", "no such file or directory"),
])
def test_app_errors(service, capsys, app: str, key: str, cause: str) -> None:
    code, _, err = check(service(app=app), capsys)
    _one_error_line(code, err, key, cause)


def test_app_that_fails_to_import_names_its_line(service, capsys, tmp_path: Path) -> None:
    (tmp_path / "brokenapp.py").write_text("import os\n\nraise RuntimeError('db is down')\n")
    code, _, err = check(service(app=f"factory: brokenapp:app\n  python_path: [{tmp_path}]"),
                         capsys)
    _one_error_line(code, err, "app.factory", "raised RuntimeError: db is down")
    assert "brokenapp.py:3" in err


def test_app_factory_with_options(service, capsys, tmp_path: Path) -> None:
    (tmp_path / "factoryapp.py").write_text(
        "def make(greeting):\n"
        "    def app(environ, start_response):\n"
        "        start_response('200 OK', [])\n"
        "        return [greeting.encode()]\n"
        "    return app\n")
    code, _out, err = check(service(app=f"factory: factoryapp:make\n  python_path: [{tmp_path}]"
                                       "\n  options: {greeting: hi}"), capsys)
    assert code == 0, err
    code, _, err = check(service(app=f"factory: factoryapp:make\n  python_path: [{tmp_path}]"
                                     "\n  options: {wrong: hi}"), capsys)
    _one_error_line(code, err, "app.options", "raised TypeError")


def test_console_script_exit_codes_without_traceback(service, tmp_path: Path) -> None:
    result = run_command("securewsgi-run", "--config", str(service(app="factory: nope:app")),
                         "--check")
    assert result.returncode == 2
    assert result.stderr.startswith("securewsgi-run: ")
    assert "Traceback" not in result.stderr
    result = run_command("securewsgi-run", "--config", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2
    assert "missing.yaml: no such file" in result.stderr
    result = run_command("securewsgi-run")
    assert result.returncode == 2
    assert "--config" in result.stderr
    result = run_command("python", "-m", "securewsgi", "--config", str(service()), "--check")
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
