"""`securewsgi-run` command-line overrides (gunicorn's names) over the config file, and
`--print-config`: real `securewsgi-run` processes, real sockets, real clients."""
from __future__ import annotations

import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Optional

import pytest
import yaml
from support import PKIFiles, free_port, run_command, session, stop_process, wait_for

from securewsgi.config import load_config

_LISTENING = re.compile(r"listening on https://(\[[^\]]+\]|[^:]+):(\d+)")


class Run:
    """`securewsgi-run --config FILE FLAGS...` in a child process we own (stopped by PID)."""

    def __init__(self, config: Path, *flags: str, cwd: Path) -> None:
        self.err_path = cwd / f"{config.stem}.run.stderr"
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                ["securewsgi-run", "--config", str(config), *flags],
                stdout=subprocess.DEVNULL, stderr=err, cwd=str(cwd),
                env=dict(os.environ, PYTHONWARNINGS="ignore"))

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def listening(self, timeout: float = 20.0) -> tuple[str, int]:
        def started() -> Optional[re.Match]:
            if self.proc.poll() is not None:
                raise AssertionError(f"exited with {self.proc.returncode}:\n{self.stderr}")
            return _LISTENING.search(self.stderr)

        match = wait_for(started, timeout, what="the 'listening on' line")
        return match.group(1).strip("[]"), int(match.group(2))

    def stop(self) -> int:
        return stop_process(self.proc, 20)


def _service(directory: Path, test_pki: PKIFiles, engine: str, **sections: dict) -> Path:
    """A service file whose own host, port and TLS files are all wrong on purpose:
    serving proves the overrides replaced them before validation."""
    data = {
        "server": {"host": "192.0.2.1", "port": 1, "engine": engine},
        "tls": {"mode": "mutual", "certfile": "missing/server.pem",
                "keyfile": "missing/server-key.pem", "ca_certs": "missing/ca.pem"},
        "identity": {"remote_user": "cn"},
        "app": {"factory": "securewsgi.demo:app"},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    path = directory / "service.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_help_lists_the_flags_in_groups() -> None:
    result = run_command("securewsgi-run", "--help")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    groups = [m.start() for m in re.finditer(r"^(configuration|overrides|checks):",
                                              out, re.M)]
    assert len(groups) == 3, out
    configuration, overrides, checks = (out[a:b] for a, b in zip(groups, [*groups[1:],
                                                                        len(out)]))
    assert "--config FILE" in configuration
    for flag in ("--bind HOST:PORT", "--workers N", "--certfile FILE", "--keyfile FILE",
                 "--ca-certs FILE", "--log-level LEVEL", "--pid FILE"):
        assert flag in overrides, flag
    assert "--check" in checks and "--print-config" in checks


def test_config_file_stays_required() -> None:
    result = run_command("securewsgi-run", "--bind", "127.0.0.1:8443")
    assert result.returncode == 2
    assert "--config" in result.stderr


def test_overrides_replace_the_file_before_validation(tmp_path: Path, test_pki: PKIFiles,
                                                      engine: str) -> None:
    """--bind, --certfile/--keyfile/--ca-certs (relative to the current directory, not
    the file), --workers and --pid on a real server answering mutual TLS requests."""
    config_dir = tmp_path / "conf"
    config_dir.mkdir()
    config = _service(config_dir, test_pki, engine)
    port = free_port()
    pid_file = tmp_path / "run" / "securewsgi.pid"
    pid_file.parent.mkdir()
    run = Run(config, "--bind", f"127.0.0.1:{port}", "--workers", "2",
              "--certfile", test_pki.server_cert.name, "--keyfile", test_pki.server_key.name,
              "--ca-certs", test_pki.ca_pem.name, "--pid", str(pid_file),
              cwd=test_pki.dir)
    try:
        assert run.listening() == ("127.0.0.1", port)
        assert "2 worker(s)" in run.stderr and f"engine {engine}" in run.stderr
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(),
                 what="the pid file")
        assert int(pid_file.read_text()) == run.proc.pid
        with session(test_pki.ca_pem, test_pki.clients["alice"]) as client:
            reply = client.get(f"https://localhost:{port}/whoami", timeout=10)
        assert reply.status_code == 200
        assert reply.json()["tls"]["REMOTE_USER"] == "alice"
    finally:
        assert run.stop() == 0, run.stderr
    assert not pid_file.exists()


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_bind_ipv6_in_brackets(tmp_path: Path, test_pki: PKIFiles, engine: str) -> None:
    config = _service(tmp_path, test_pki, engine, tls=test_pki.tls_section())
    run = Run(config, "--bind", "[::1]:0", cwd=tmp_path)
    try:
        host, port = run.listening()
        assert host == "::1"
        with session(test_pki.ca_pem, test_pki.clients["bob"]) as client:
            assert client.get(f"https://[::1]:{port}/", timeout=10).status_code == 200
    finally:
        assert run.stop() == 0, run.stderr


@pytest.mark.parametrize(("flags", "expected"), [
    (["--bind", "8443"], "--bind: expected HOST:PORT (IPv6 as [::1]:8443), got '8443'"),
    (["--bind", "::1:8443"], "--bind: expected HOST:PORT"),
    (["--bind", "127.0.0.1:"], "--bind: expected HOST:PORT"),
    (["--bind", "[::zz]:8443"], "--bind: not an IPv6 address in brackets: '::zz'"),
    (["--bind", "localhost:70000"], "--bind: port must be between 0 and 65535, got 70000"),
    (["--bind", "localhost:https"], "--bind: port expected a whole number, got 'https'"),
    (["--workers", "0"], "--workers: must be between 1 and 1024, got 0"),
    (["--workers", "many"], "--workers: expected a whole number, got 'many'"),
    (["--certfile", "nope.pem"], "--certfile: no such file or directory: {cwd}/nope.pem"),
    (["--ca-certs", "nope"], "--ca-certs: no such file or directory: {cwd}/nope"),
    (["--log-level", "LOUD"], "--log-level: must be one of DEBUG, INFO, WARNING, ERROR, "
                              "CRITICAL, got 'LOUD'"),
    (["--keyfile", "{bob_key}"], "--keyfile: private key {bob_key} does not match the "
                                 "certificate"),
])
def test_a_bad_override_names_the_flag(flags: list[str], expected: str, tmp_path: Path,
                                       test_pki: PKIFiles) -> None:
    config = _service(tmp_path, test_pki, "threads", tls=test_pki.tls_section())
    values = {"cwd": str(tmp_path), "bob_key": str(test_pki.clients["bob"].key)}
    flags = [flag.format(**values) for flag in flags]
    result = run_command("securewsgi-run", "--config", str(config), *flags, "--check",
                         cwd=str(tmp_path))
    assert result.returncode == 2, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"securewsgi-run: {expected.format(**values)}"), lines[0]


def test_an_error_the_override_did_not_cause_still_names_the_file(
        tmp_path: Path, test_pki: PKIFiles) -> None:
    config = _service(tmp_path, test_pki, "threads", tls=test_pki.tls_section())
    result = run_command("securewsgi-run", "--config", str(config), "--certfile",
                         str(test_pki.server_cert), "--keyfile", "missing.pem", "--check",
                         cwd=str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"securewsgi-run: --keyfile: no such file or "
                                     f"directory: {tmp_path}/missing.pem")
    config.write_text(config.read_text().replace("port: 1", "prot: 1"))
    result = run_command("securewsgi-run", "--config", str(config), "--bind", "[::1]:1",
                         "--check", cwd=str(tmp_path))
    assert result.stderr.strip() == (f"securewsgi-run: {config}: server.prot: unknown key "
                                     "(did you mean 'port'?)")


def test_override_replaces_an_oslo_alias_in_the_file(tmp_path: Path,
                                                     test_pki: PKIFiles) -> None:
    """`cert_file` (oslo) in the file and --certfile on the command line is one setting
    replaced, not the same setting given twice."""
    path = tmp_path / "service.ini"
    path.write_text(textwrap.dedent(f"""\
        [server]
        engine = threads
        [tls]
        cert_file = missing.pem
        key_file = {test_pki.server_key}
        ca_file = {test_pki.ca_pem}
        [app]
        factory = securewsgi.demo:app
        """))
    result = run_command("securewsgi-run", "--config", str(path), "--certfile",
                         str(test_pki.server_cert), "--print-config", cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    tls = yaml.safe_load(result.stdout)["tls"]
    assert tls["certfile"] == str(test_pki.server_cert)
    assert tls["mode"] == "mutual" and tls["ca_certs"] == str(test_pki.ca_pem)


# ------------------------------------------------------------------ --print-config

RICH = """
server:
  port: ${PORT:-9443}
  workers: 3
  keepalive: 15
  max_request_body: 1048576
  engine: ENGINE
tls:
  cert_reqs: CERT_OPTIONAL
  certfile: pki/server.pem
  keyfile: pki/server-key.pem
  ca_certs: pki/ca.pem
  crl_file: pki/crl.pem
  ssl_version: PROTOCOL_TLSv1_2
  ciphers: ECDHE+AESGCM
app:
  factory: securewsgi.demo:app
  python_path: [pki]
identity:
  remote_user: san_uri
  trusted_proxies: [10.0.0.0/8, "fd00::/8"]
  trusted_proxy_identities:
    - cn: "proxy-*"
authorization:
  default: deny
  rules:
    - name: admin
      paths: ["/admin/*"]
      methods: [post, DELETE]
      allow:
        - cn: "ops-*"
          issuer_dn: "CN=securewsgi test CA"
        - serial: "0x1A"
    - name: health
      paths: [/healthz, /readyz]
      allow:
        - anonymous: true
    - name: any
      paths: ["/*"]
      allow:
        - any: true
logging:
  access_log: logs/access.log
  format: json
"""


def _rich(tmp_path: Path, test_pki: PKIFiles, engine: str) -> Path:
    (tmp_path / "pki").symlink_to(test_pki.dir)
    (tmp_path / "logs").mkdir()
    path = tmp_path / "service.yaml"
    path.write_text(RICH.replace("ENGINE", engine))
    return path


def _print_config(config: Path, *flags: str, cwd: Path, **env: str) -> str:
    result = run_command("securewsgi-run", "--config", str(config), *flags,
                         "--print-config", cwd=str(cwd), env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


@pytest.mark.parametrize("engine", ["eventlet", "threads"])
def test_print_config_round_trip(tmp_path: Path, test_pki: PKIFiles, engine: str) -> None:
    """The printed file, loaded again, is the same Config (overrides and ${VAR} included,
    every path absolute), and printing that file again prints the same text."""
    config = _rich(tmp_path, test_pki, engine)
    flags = ("--bind", "localhost:0", "--log-level", "warning")
    out = _print_config(config, *flags, cwd=tmp_path, PORT="9999")
    expected = load_config(config, environ={"PORT": "9999"},
                           overrides={"server": {"host": "localhost", "port": "0"},
                                      "logging": {"level": "warning"}})
    printed = tmp_path / "elsewhere" / "effective.yaml"
    printed.parent.mkdir()
    printed.write_text(out)
    again = load_config(printed, environ={})
    assert dataclasses.replace(again, source=expected.source) == expected
    assert expected.server.port == 0 and expected.logging.level == "WARNING"
    data = yaml.safe_load(out)
    assert data["tls"]["certfile"] == str(tmp_path / "pki" / "server.pem")
    assert data["tls"]["mode"] == "optional" and "cert_reqs" not in data["tls"]
    assert data["logging"]["access_log"] == str(tmp_path / "logs" / "access.log")
    reprinted = _print_config(printed, cwd=tmp_path)
    assert reprinted.split("\n", 1)[1] == out.split("\n", 1)[1]


def test_print_config_of_an_ini_file_with_defaults(tmp_path: Path,
                                                   test_pki: PKIFiles) -> None:
    path = tmp_path / "service.ini"
    path.write_text(textwrap.dedent(f"""\
        [server]
        engine = threads
        [tls]
        mode = server
        certfile = {test_pki.server_cert}
        keyfile = {test_pki.server_key}
        [app]
        paste = api.ini
        [logging]
        access_log = false
        config_file = log.yaml
        [rule:admin]
        paths = /admin/*
        allow =
            cn:ops-* & san_uri:spiffe://example.org/ns/ops/*
        """))
    (tmp_path / "api.ini").write_text("[app:main]\nuse = call:securewsgi.demo:app_factory\n")
    (tmp_path / "log.yaml").write_text("version: 1\n")
    out = _print_config(path, cwd=tmp_path)
    printed = tmp_path / "effective.yaml"
    printed.write_text(out)
    original = load_config(path, environ={})
    assert dataclasses.replace(load_config(printed, environ={}),
                               source=original.source) == original
    data = yaml.safe_load(out)
    assert data["app"] == {"paste": str(tmp_path / "api.ini"), "name": "main",
                           "python_path": []}
    assert data["logging"]["access_log"] is False
    assert data["logging"]["config_file"] == str(tmp_path / "log.yaml")
    assert "level" not in data["logging"]  # refused next to config_file
    assert "monkey_patch" not in data["server"]  # refused next to engine: threads
    assert data["tls"]["session_tickets"] == "auto"


def test_print_config_masks_the_key_password(tmp_path: Path, test_pki: PKIFiles) -> None:
    config = _service(tmp_path, test_pki, "threads",
                      tls={**test_pki.tls_section(), "key_password": "${KEY_PASS}"})
    out = _print_config(config, cwd=tmp_path, KEY_PASS="open sesame")
    assert "open sesame" not in out
    assert yaml.safe_load(out)["tls"]["key_password"] == "********"


def test_print_config_validates_but_neither_imports_the_app_nor_reads_tls(
        tmp_path: Path, test_pki: PKIFiles) -> None:
    """It shows what is configured, so it works where the app or the key is not
    readable yet (another machine, a build step); --check is what tries them."""
    tls = {**test_pki.tls_section(), "keyfile": str(test_pki.clients["bob"].key)}
    config = _service(tmp_path, test_pki, "threads", tls=tls,
                      app={"factory": "not_installed_anywhere:app"})
    _print_config(config, cwd=tmp_path)
    result = run_command("securewsgi-run", "--config", str(config), "--print-config",
                         "--workers", "none", cwd=str(tmp_path))
    assert result.returncode == 2 and result.stdout == ""
    assert "--workers: expected a whole number" in result.stderr


def test_print_config_and_check_exclude_each_other(tmp_path: Path,
                                                   test_pki: PKIFiles) -> None:
    config = _service(tmp_path, test_pki, "threads", tls=test_pki.tls_section())
    result = run_command("securewsgi-run", "--config", str(config), "--print-config",
                         "--check")
    assert result.returncode == 2
    assert "not allowed with argument" in result.stderr


def test_python_m_securewsgi_takes_the_same_flags(tmp_path: Path,
                                                  test_pki: PKIFiles) -> None:
    config = _service(tmp_path, test_pki, "threads", tls=test_pki.tls_section())
    result = subprocess.run([sys.executable, "-m", "securewsgi", "--config", str(config),
                             "--bind", "127.0.0.1:0", "--check"], capture_output=True,
                            text=True, timeout=60, env=dict(os.environ,
                                                            PYTHONWARNINGS="ignore"))
    assert result.returncode == 0, result.stderr
    assert "would listen on https://127.0.0.1:0" in result.stdout


def test_sigterm_after_overrides_is_a_clean_stop(tmp_path: Path, test_pki: PKIFiles,
                                                 engine: str) -> None:
    config = _service(tmp_path, test_pki, engine, tls=test_pki.tls_section())
    run = Run(config, "--bind", "localhost:0", "--log-level", "DEBUG", cwd=tmp_path)
    _host, port = run.listening()
    with session(test_pki.ca_pem, test_pki.clients["alice"]) as client:
        reply = client.get(f"https://localhost:{port}/", timeout=10,
                           headers={"X-SSL-Client-CN": "mallory"})
        assert reply.status_code == 200
    # Only --log-level DEBUG shows the removal of identity-looking request headers.
    wait_for(lambda: "DEBUG securewsgi.identity removed identity-looking" in run.stderr,
             what="a DEBUG line")
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(20) == 0, run.stderr
