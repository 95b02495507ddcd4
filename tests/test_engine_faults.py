"""What an outside fault battery found in the engines, on each engine: an identity spoof
through address-less PROXY headers, a pre-authentication flood of silent connections,
a replacement worker meeting broken TLS files, a SIGHUP whose log reopen fails, closes
that reset a client still sending, and TLS sessions ended without close_notify."""
from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from support import (
    PKIFiles,
    ServerProcess,
    client_context,
    session,
    status_of,
    wait_for,
)

from securewsgi import pki
from securewsgi.proxyprotocol import V2_SIGNATURE

APPS = str(Path(__file__).parent / "apps")


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


# ------------------------------------------- 1. PROXY headers without an address

ADDRESSLESS = {
    "v1-unknown": b"PROXY UNKNOWN\r\n",
    "v1-unknown-with-addresses": b"PROXY UNKNOWN 192.0.2.1 192.0.2.2 1000 443\r\n",
    "v2-local": V2_SIGNATURE + bytes([0x20, 0x00]) + b"\x00\x00",
    "v2-proxy-unspec": V2_SIGNATURE + bytes([0x21, 0x00]) + b"\x00\x00",
    "v2-proxy-unix": V2_SIGNATURE + bytes([0x21, 0x31]) + (216).to_bytes(2, "big")
    + b"/run/haproxy.sock".ljust(108, b"\x00") + b"/run/app.sock".ljust(108, b"\x00"),
}


def _proxied_server(start_server, test_pki: PKIFiles, mode: str) -> ServerProcess:
    return start_server({"tls": test_pki.tls_section(mode),
                         "server": {"proxy_protocol": True, "handshake_timeout": 5},
                         "identity": {"trusted_proxies": ["127.0.0.1/32"],
                                      "remote_user": "cn"},
                         "app": {"factory": "echo:app", "python_path": [APPS]}},
                        name=f"proxied-{mode}")


@pytest.fixture(scope="module")
def proxied_optional(start_server, test_pki: PKIFiles) -> ServerProcess:
    return _proxied_server(start_server, test_pki, "optional")


@pytest.fixture(scope="module", params=["mutual", "optional"])
def proxied(request: pytest.FixtureRequest, start_server, test_pki: PKIFiles,
            proxied_optional: ServerProcess) -> ServerProcess:
    if request.param == "optional":
        return proxied_optional
    return _proxied_server(start_server, test_pki, request.param)


def _spoof(server: ServerProcess, test_pki: PKIFiles, header: bytes,
           client: str | None) -> dict[str, Any]:
    """A PROXY header, a TLS handshake as `client`, then alice's certificate in XFCC."""
    pem = urllib.parse.quote(test_pki.clients["alice"].cert.read_text(), safe="")
    request = (f"GET /who HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
               f'X-Forwarded-Client-Cert: Cert="{pem}"\r\n\r\n').encode()
    ctx = client_context(test_pki.ca_pem, test_pki.clients[client] if client else None)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(header)
        with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
            tls.sendall(request)
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    assert status_of(data) == 200, data[:200]
    return json.loads(data.split(b"\r\n\r\n", 1)[1])


@pytest.mark.parametrize("header", list(ADDRESSLESS.values()), ids=list(ADDRESSLESS))
def test_addressless_proxy_header_never_forwards_an_identity(proxied, test_pki,
                                                             header: bytes) -> None:
    env = _spoof(proxied, test_pki, header, "bob")
    assert env.get("REMOTE_USER") == "bob"
    assert env["SSL_CLIENT_S_DN_CN"] == "bob"
    assert env["securewsgi.peer.source"] == "tls"
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert "HTTP_X_FORWARDED_CLIENT_CERT" not in env


@pytest.mark.parametrize("header", list(ADDRESSLESS.values()), ids=list(ADDRESSLESS))
def test_addressless_proxy_header_without_certificate_is_anonymous(proxied_optional,
                                                                   test_pki,
                                                                   header: bytes) -> None:
    env = _spoof(proxied_optional, test_pki, header, None)
    assert "REMOTE_USER" not in env
    assert env["SSL_CLIENT_VERIFY"] == "NONE"
    assert env["securewsgi.peer.source"] is None


# ------------------------------------------ 2. silent connections before the handshake


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


class SilentFlood:
    """Opens `count` TCP connections from `source` and says nothing on them."""

    def __init__(self, port: int, source: str, count: int) -> None:
        self.port, self.source, self.count = port, source, count
        self.sockets: list[socket.socket] = []
        self.opened = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._open, daemon=True)

    def _open(self) -> None:
        deadline = time.monotonic() + 60
        try:
            for _ in range(self.count):
                if time.monotonic() > deadline:
                    break
                sock = socket.socket()
                sock.settimeout(5)
                sock.bind((self.source, 0))
                try:
                    sock.connect(("127.0.0.1", self.port))
                except OSError:
                    sock.close()
                    continue
                self.sockets.append(sock)
                self.opened += 1
        finally:
            self.done.set()

    def __enter__(self) -> SilentFlood:
        _raise_fd_limit(self.count + 512)
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.done.wait(70)
        for sock in self.sockets:
            sock.close()


def _timed_fresh_requests(server: ServerProcess, test_pki: PKIFiles, count: int
                          ) -> list[float]:
    durations = []
    for _ in range(count):
        started = time.monotonic()
        with session(test_pki.ca_pem, test_pki.clients["alice"]) as s:  # a new connection
            response = s.get(server.url("/"), timeout=20)
        durations.append(time.monotonic() - started)
        assert response.status_code == 200
    return durations


def test_a_silent_flood_from_one_address_does_not_delay_others(start_server,
                                                               test_pki) -> None:
    """3,000 silent connections from 127.0.0.2; 20 fresh mutual-TLS requests from
    127.0.0.1 all succeed, each well under handshake_timeout (10 s)."""
    server = start_server({"tls": test_pki.tls_section("mutual")}, name="flood-ip")
    with SilentFlood(server.port, "127.0.0.2", 3000) as flood:
        wait_for(lambda: flood.opened >= 500 or flood.done.is_set(), 30,
                 what="the flood under way")
        durations = _timed_fresh_requests(server, test_pki, 20)
        flood.done.wait(70)
        assert flood.opened >= 2000, "the flood did not get its connections through"
        durations += _timed_fresh_requests(server, test_pki, 5)
    assert max(durations) < 2.0, durations
    line = server.wait_log(r"server\.max_handshakes_per_ip \(64\) is full")
    assert re.search(r"max_handshakes_per_ip \(64\) is full: .*top source 127\.0\.0\.2",
                     line)


def test_a_full_handshake_budget_drops_the_oldest(start_server, test_pki) -> None:
    """Without a per-address cap, silent connections fill server.max_handshakes; each
    new connection then pushes out the oldest, so a real client is served at once."""
    server = start_server({"tls": test_pki.tls_section("mutual"),
                           "server": {"max_handshakes": 16, "max_handshakes_per_ip": 0}},
                          name="flood-budget")
    with SilentFlood(server.port, "127.0.0.2", 300) as flood:
        flood.done.wait(70)
        assert flood.opened >= 250
        durations = _timed_fresh_requests(server, test_pki, 20)
    assert max(durations) < 2.0, durations
    line = server.wait_log(r"server\.max_handshakes \(16\) is full")
    assert re.search(r"dropping the oldest unfinished handshake.*top source 127\.0\.0\.2",
                     line)


# ------------------------------------ 7. a replacement worker meets broken TLS files


def test_replacement_worker_serves_with_the_last_good_material(start_server, test_pki,
                                                               tmp_path: Path) -> None:
    cert, key = tmp_path / "server.pem", tmp_path / "server-key.pem"
    shutil.copy(test_pki.server_cert, cert)
    shutil.copy(test_pki.server_key, key)
    server = start_server({"tls": test_pki.tls_section("mutual", certfile=str(cert),
                                                       keyfile=str(key)),
                           "server": {"workers": 2}}, name="rotation-broken")
    workers = wait_for(lambda: len(_children(server.pid)) == 2 and _children(server.pid),
                       what="two workers")
    key.unlink()
    pki.write_key(key, pki.generate_key())  # no longer matches the certificate
    server.signal(signal.SIGHUP)
    wait_for(lambda: server.stderr.count("TLS reload (SIGHUP) failed") >= 2,
             what="both workers refusing the broken material")
    os.kill(workers[0], signal.SIGKILL)
    server.wait_log(r"worker \d died \(killed by SIGKILL\)")
    wait_for(lambda: len(_children(server.pid)) == 2 and workers[0] not in
             _children(server.pid), 15, what="a replacement worker")
    for _ in range(20):  # both workers answer, whichever takes the connection
        with session(test_pki.ca_pem, test_pki.clients["alice"]) as s:
            assert s.get(server.url("/"), timeout=10).status_code == 200
    assert server.proc.poll() is None
    assert "refused the configuration" not in server.stderr


def test_a_worker_refusing_the_configuration_is_retried_while_others_serve(
        start_server, test_pki, tmp_path: Path) -> None:
    """An app that fails to import in a replacement worker: retried with back-off,
    the healthy worker keeps serving, the service does not exit."""
    apps = tmp_path / "apps"
    apps.mkdir()
    good = ("import os, pathlib\n"
            f"pathlib.Path({str(tmp_path)!r}, f'imported-{{os.getpid()}}').touch()\n"
            "from securewsgi.demo import app\n")
    (apps / "flaky_app.py").write_text(good)
    server = start_server({"tls": test_pki.tls_section("mutual"), "server": {"workers": 2},
                           "app": {"factory": "flaky_app:app", "python_path": [str(apps)]}},
                          name="refusing-worker")
    workers = wait_for(lambda: len(_children(server.pid)) == 2 and _children(server.pid),
                       what="two workers")
    wait_for(lambda: all((tmp_path / f"imported-{pid}").exists() for pid in workers),
             what="both workers serving the app")
    (apps / "flaky_app.py").write_text("raise ImportError('database driver missing')\n")
    os.kill(workers[0], signal.SIGKILL)
    server.wait_log(r"worker \d refused the configuration .*retrying in", timeout=20)
    for _ in range(5):
        with session(test_pki.ca_pem, test_pki.clients["alice"]) as s:
            assert s.get(server.url("/"), timeout=10).status_code == 200
    assert server.proc.poll() is None
    (apps / "flaky_app.py").write_text(good)
    wait_for(lambda: len(list(tmp_path.glob("imported-*"))) == 3, 40,
             what="the retried worker serving")


# -------------------------------------------- 10. SIGHUP: each part on its own


def test_sighup_reloads_tls_even_when_the_log_cannot_be_reopened(start_server, test_pki,
                                                                 tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    server = start_server({"tls": test_pki.tls_section("mutual"),
                           "logging": {"access_log": str(logs / "access.log")}},
                          name="reopen-fails")
    shutil.rmtree(logs)  # logrotate's directory is gone: the reopen must fail
    server.signal(signal.SIGHUP)
    server.wait_log(r"SIGHUP: cannot reopen the access log .*access\.log")
    server.wait_log(r"TLS material reloaded \(SIGHUP\)")
    with session(test_pki.ca_pem, test_pki.clients["alice"]) as s:
        assert s.get(server.url("/"), timeout=10).status_code == 200


# ------------------------------------- 11. lingering close; 12. close_notify


@pytest.fixture(scope="module")
def refusing(start_server, test_pki: PKIFiles) -> ServerProcess:
    return start_server({"tls": test_pki.tls_section("mutual"),
                         "app": {"factory": "refuse_body:app", "python_path": [APPS]}},
                        name="refusing")


def test_a_large_body_the_app_refuses_unread_shows_the_client_its_answer(
        refusing, test_pki) -> None:
    body = os.urandom(10 * 1024 * 1024)
    for _ in range(3):
        with session(test_pki.ca_pem, test_pki.clients["alice"]) as s:
            response = s.post(refusing.url("/upload"), data=body, timeout=30)
        assert response.status_code == 413
        assert response.text == "too large\n"


def test_curl_sees_the_refusal_of_a_large_upload(refusing, test_pki, tmp_path) -> None:
    upload = tmp_path / "upload.bin"
    upload.write_bytes(os.urandom(10 * 1024 * 1024))
    alice = test_pki.clients["alice"]
    result = subprocess.run(
        ["curl", "-sS", "--cacert", str(test_pki.ca_pem), "--cert", str(alice.cert),
         "--key", str(alice.key), "--data-binary", f"@{upload}", "-o", "/dev/null",
         "-w", "%{http_code}", refusing.url("/upload")],
        capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (0, "413"), result.stderr


def test_tls_sessions_end_with_close_notify(refusing, test_pki) -> None:
    """A client that treats a bare TCP close as truncation (suppress_ragged_eofs off)
    reads the whole response and a clean end of the session."""
    ctx = client_context(test_pki.ca_pem, test_pki.clients["alice"])
    for request in (b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                    b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", refusing.port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost",
                                suppress_ragged_eofs=False) as tls:
            tls.sendall(request)
            data = b""
            while chunk := tls.recv(65536):  # SSLEOFError without close_notify
                data += chunk
        assert status_of(data) == 200


def test_ab_without_keepalive_counts_no_failures(refusing, test_pki, tmp_path) -> None:
    ab = shutil.which("ab")
    assert ab, "ab is needed (Debian package apache2-utils)"
    alice = test_pki.clients["alice"]
    bundle = tmp_path / "alice-bundle.pem"
    bundle.write_text(alice.cert.read_text() + alice.key.read_text())
    result = subprocess.run([ab, "-n", "200", "-c", "4", "-E", str(bundle),
                             f"https://127.0.0.1:{refusing.port}/"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert re.search(r"Complete requests:\s+200", result.stdout), result.stdout
    assert re.search(r"Failed requests:\s+0\b", result.stdout), result.stdout
