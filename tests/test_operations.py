"""Operations with real processes and signals: certificate rotation (SIGHUP, changed
files, Kubernetes symlink swaps), graceful stop, workers, and the logs."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
import requests
from support import PKIFiles, ServerProcess, client_context, raw_https, session, status_of, wait_for

APPS = str(Path(__file__).parent / "apps")


def _server_serial(server: ServerProcess, ca: Path) -> int:
    """The serial of the certificate a *new* connection is served with."""
    ctx = client_context(ca)
    with socket.create_connection((server.host, server.port), timeout=10) as sock, \
            ctx.wrap_socket(sock, server_hostname="localhost") as tls:
        return int(tls.getpeercert()["serialNumber"], 16)


def _new_server_pair(test_pki: PKIFiles, directory: Path, stem: str = "server") -> int:
    cert, key = test_pki.ca.issue_server(["localhost", "127.0.0.1"])
    staging = directory / f".{stem}.tmp"
    staging.mkdir(exist_ok=True)
    from securewsgi import pki

    pki.write_cert(staging / "server.pem", cert)
    pki.write_key(staging / "server-key.pem", key)
    os.replace(staging / "server.pem", directory / "server.pem")
    os.replace(staging / "server-key.pem", directory / "server-key.pem")
    return cert.serial_number


class RequestLoop(threading.Thread):
    """New connection per request, bounded in count and time, counting failures."""

    def __init__(self, server: ServerProcess, test_pki: PKIFiles, limit: int = 2000,
                 seconds: float = 30.0) -> None:
        super().__init__(daemon=True)
        self.server, self.test_pki = server, test_pki
        self.limit, self.deadline = limit, time.monotonic() + seconds
        self.ok = 0
        self.failures: list = []
        self.stop_flag = threading.Event()

    def run(self) -> None:
        ctx = client_context(self.test_pki.ca_pem, self.test_pki.clients["alice"])
        for _ in range(self.limit):
            if self.stop_flag.is_set() or time.monotonic() > self.deadline:
                return
            try:
                response = raw_https(self.server, b"GET / HTTP/1.1\r\nHost: localhost\r\n"
                                                  b"Connection: close\r\n\r\n", ctx)
                if status_of(response) == 200:
                    self.ok += 1
                else:
                    self.failures.append(response[:100])
            except (OSError, AssertionError) as exc:
                self.failures.append(repr(exc))

    def finish(self) -> None:
        self.stop_flag.set()
        self.join(30)


@pytest.fixture()
def rotating(start_server, test_pki: PKIFiles, tmp_path: Path):
    def start(**tls_extra) -> tuple:
        directory = tmp_path / "certs"
        directory.mkdir()
        serial = _new_server_pair(test_pki, directory)
        tls = test_pki.tls_section("mutual", certfile=str(directory / "server.pem"),
                                   keyfile=str(directory / "server-key.pem"), **tls_extra)
        server = start_server({"tls": tls}, name="rotating")
        return server, directory, serial

    return start


def test_sighup_rotation_under_load_drops_nothing(rotating, test_pki: PKIFiles) -> None:
    server, directory, old_serial = rotating()
    assert _server_serial(server, test_pki.ca_pem) == old_serial
    loop = RequestLoop(server, test_pki)
    loop.start()
    wait_for(lambda: loop.ok >= 20, what="requests before the rotation")
    new_serial = _new_server_pair(test_pki, directory)
    server.signal(signal.SIGHUP)
    wait_for(lambda: _server_serial(server, test_pki.ca_pem) == new_serial,
             what="the new certificate on new connections")
    seen = loop.ok
    wait_for(lambda: loop.ok >= seen + 20, what="requests after the rotation")
    loop.finish()
    assert loop.failures == []
    server.wait_log(rf"TLS material reloaded \(SIGHUP\): certificate CN=localhost serial "
                    rf"{new_serial:X}")


def test_invalid_new_material_keeps_the_old(rotating, test_pki: PKIFiles) -> None:
    server, directory, old_serial = rotating()
    shutil.copy(test_pki.clients["bob"].key, directory / "server-key.pem")  # key != cert
    server.signal(signal.SIGHUP)
    log = server.wait_log("TLS reload \\(SIGHUP\\) failed")
    line = next(line for line in log.splitlines() if "TLS reload (SIGHUP) failed" in line)
    assert "tls.keyfile" in line and "does not match the certificate" in line
    assert _server_serial(server, test_pki.ca_pem) == old_serial
    with session(test_pki.ca_pem, test_pki.clients["alice"]) as s:
        assert s.get(server.url("/"), timeout=10).status_code == 200


def test_kubernetes_symlink_swap_with_reload_interval(start_server, test_pki: PKIFiles,
                                                      tmp_path: Path) -> None:
    """A Secret volume: tls.crt -> ..data/tls.crt, ..data -> ..2026_v1 (swapped atomically)."""
    mount = tmp_path / "secret"
    mount.mkdir()
    serials = []
    for version in ("..v1", "..v2"):
        (mount / version).mkdir()
        cert, key = test_pki.ca.issue_server(["localhost", "127.0.0.1"])
        from securewsgi import pki

        pki.write_cert(mount / version / "tls.crt", cert)
        pki.write_key(mount / version / "tls.key", key)
        serials.append(cert.serial_number)
    (mount / "..data").symlink_to("..v1")
    (mount / "tls.crt").symlink_to("..data/tls.crt")
    (mount / "tls.key").symlink_to("..data/tls.key")
    tls = test_pki.tls_section("mutual", certfile=str(mount / "tls.crt"),
                               keyfile=str(mount / "tls.key"), reload_interval=0.2)
    server = start_server({"tls": tls}, name="k8s")
    assert _server_serial(server, test_pki.ca_pem) == serials[0]
    (mount / "..data_tmp").symlink_to("..v2")
    os.replace(mount / "..data_tmp", mount / "..data")  # what kubelet does
    wait_for(lambda: _server_serial(server, test_pki.ca_pem) == serials[1], timeout=15,
             what="the swapped certificate")
    server.wait_log(r"TLS material reloaded \(files changed\)")


def test_revoked_client_is_refused_after_sighup(start_server, test_pki: PKIFiles,
                                                tmp_path: Path) -> None:
    crl = tmp_path / "crl.pem"
    shutil.copy(test_pki.crl, crl)
    carol = test_pki.add_client("carol")
    server = start_server({"tls": test_pki.tls_section("mutual", crl_file=str(crl))},
                          name="crl")
    with session(test_pki.ca_pem, carol) as s:
        assert s.get(server.url("/"), timeout=10).status_code == 200
    from cryptography import x509

    from securewsgi import pki

    serial = x509.load_pem_x509_certificate(carol.cert.read_bytes()).serial_number
    pki.write_crl(crl, test_pki.ca.build_crl([serial]))
    server.signal(signal.SIGHUP)
    server.wait_log(r"TLS material reloaded \(SIGHUP\)")
    with session(test_pki.ca_pem, carol) as s, pytest.raises(requests.RequestException):
        s.get(server.url("/"), timeout=10)
    server.wait_log("reason=client certificate revoked")
    with session(test_pki.ca_pem, test_pki.clients["alice"]) as s:
        assert s.get(server.url("/"), timeout=10).status_code == 200


# ------------------------------------------------------------------ graceful stop


def _slow_server(start_server, test_pki: PKIFiles, name: str, **server_extra):
    return start_server({"tls": test_pki.tls_section("server"),
                         "server": {"shutdown_timeout": 10, **server_extra},
                         "app": {"factory": "slow:app", "python_path": [APPS]}}, name=name)


def _background_get(server: ServerProcess, test_pki: PKIFiles, path: str) -> dict:
    result: dict = {}

    def get() -> None:
        try:
            result["response"] = raw_https(server, f"GET {path} HTTP/1.1\r\nHost: x\r\n"
                                                   "Connection: close\r\n\r\n".encode(),
                                           client_context(test_pki.ca_pem), timeout=30)
        except OSError as exc:
            result["error"] = exc

    thread = threading.Thread(target=get, daemon=True)
    thread.start()
    result["thread"] = thread
    return result


def test_graceful_stop_finishes_the_in_flight_request(start_server, test_pki) -> None:
    server = _slow_server(start_server, test_pki, "graceful")
    idle = client_context(test_pki.ca_pem).wrap_socket(
        socket.create_connection((server.host, server.port), timeout=10),
        server_hostname="localhost")
    slow = _background_get(server, test_pki, "/slow?seconds=2")
    server.wait_log("slow request started")
    server.signal(signal.SIGTERM)
    server.wait_log("SIGTERM received: no new connections; waiting up to 10s for 1 in-flight")
    with pytest.raises(OSError):  # the listener is closed at once
        socket.create_connection((server.host, server.port), timeout=2).close()
    slow["thread"].join(30)
    assert status_of(slow["response"]) == 200
    try:  # the idle keep-alive connection was closed by the server
        assert idle.recv(10) == b""
    except ssl.SSLError as exc:
        assert "EOF" in str(exc)
    idle.close()
    assert server.proc.wait(20) == 0
    assert "cutting" not in server.stderr
    assert "Traceback" not in server.stderr


def test_shutdown_timeout_cuts_and_says_how_many(start_server, test_pki) -> None:
    server = _slow_server(start_server, test_pki, "cut", shutdown_timeout=0.5)
    slow = _background_get(server, test_pki, "/slow?seconds=20")
    server.wait_log("slow request started")
    server.signal(signal.SIGTERM)
    assert server.proc.wait(20) == 0
    assert "shutdown_timeout (0.5s) reached: cutting 1 in-flight request(s)" in server.stderr
    slow["thread"].join(30)
    assert "error" in slow or not slow.get("response")


# ------------------------------------------------------------------------ workers


def _children(pid: int) -> list:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_two_workers_survive_the_loss_of_one(start_server, test_pki: PKIFiles) -> None:
    server = start_server({"tls": test_pki.tls_section("mutual"),
                           "server": {"workers": 2}}, name="workers")
    workers = wait_for(lambda: len(_children(server.pid)) == 2 and _children(server.pid),
                       what="two workers")
    loop = RequestLoop(server, test_pki)
    loop.start()
    wait_for(lambda: loop.ok >= 10, what="requests before the kill")
    os.kill(workers[0], signal.SIGKILL)
    server.wait_log(r"worker \d died \(killed by SIGKILL\)")
    replaced = wait_for(lambda: len(_children(server.pid)) == 2 and
                        workers[0] not in _children(server.pid), timeout=15,
                        what="a replacement worker")
    seen = loop.ok
    wait_for(lambda: loop.ok >= seen + 20, what="requests after the kill")
    loop.finish()
    assert replaced
    # A request in flight on the killed worker may fail; none after it.
    assert len(loop.failures) <= 1, loop.failures
    server.signal(signal.SIGHUP)
    server.wait_log("SIGHUP received: passing it to 2 worker")
    wait_for(lambda: server.stderr.count("TLS material reloaded (SIGHUP)") == 2,
             what="both workers reloading")
    server.signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0


def test_worker_config_error_stops_everything_with_exit_2(start_server, test_pki,
                                                          tmp_path: Path) -> None:
    server = start_server({"tls": test_pki.tls_section("server"), "server": {"workers": 2},
                           "app": {"factory": "no_such_module_abc:app"}}, name="bad")
    assert server.proc.wait(30) == 2
    assert "app.factory: cannot import 'no_such_module_abc'" in server.stderr


# --------------------------------------------------------------------------- logs


def test_access_and_handshake_lines_in_json(start_server, test_pki: PKIFiles) -> None:
    server = start_server({"tls": test_pki.tls_section("mutual"),
                           "logging": {"format": "json"}}, name="json")
    with session(test_pki.ca_pem, test_pki.clients["alice"]) as s:
        assert s.get(server.url("/hello?x=1"), timeout=10).status_code == 200
    with session(test_pki.ca_pem, test_pki.clients["unknown-ca"]) as s, \
            pytest.raises(requests.RequestException):
        s.get(server.url("/"), timeout=10)
    access = json.loads(server.wait_log("hello", stream="stdout").strip().splitlines()[-1])
    assert access["client"].startswith("127.0.0.1")
    assert access["cn"] == "alice"
    assert access["tls"] == "TLSv1.3"
    assert (access["method"], access["path"], access["status"]) == ("GET", "/hello?x=1", 200)
    assert access["bytes"] > 0 and access["duration"] >= 0
    refused = [json.loads(line) for line in server.wait_log("unknown CA").splitlines()
               if "unknown CA" in line]
    assert refused[0]["level"] == "INFO"
    assert re.match(r"TLS handshake failed: client=127\.0\.0\.1:\d+ reason=client certificate "
                    r"from an unknown CA", refused[0]["message"])


def test_text_access_line(start_server, test_pki: PKIFiles) -> None:
    server = start_server({"tls": test_pki.tls_section("optional")}, name="text")
    with session(test_pki.ca_pem, test_pki.clients["bob"]) as s:
        s.get(server.url("/x"), timeout=10)
    with session(test_pki.ca_pem) as s:
        s.get(server.url("/y"), timeout=10)
    out = server.wait_log('"GET /y HTTP/1.1"', stream="stdout")
    assert re.search(r'^\S+Z 127\.0\.0\.1 bob TLSv1\.3 "GET /x HTTP/1\.1" 200 \d+ [\d.]+$',
                     out, re.M)
    assert re.search(r'^\S+Z 127\.0\.0\.1 - TLSv1\.3 "GET /y HTTP/1\.1" 200 \d+ [\d.]+$',
                     out, re.M)


def test_handshake_log_is_rate_limited(start_server, test_pki: PKIFiles) -> None:
    server = start_server({"tls": test_pki.tls_section("mutual")}, name="flood")
    for _ in range(300):  # plain HTTP to the TLS port: the cheapest refused handshake
        with socket.create_connection((server.host, server.port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            with contextlib.suppress(OSError):
                sock.recv(10)
    def counts() -> tuple:
        log = server.stderr
        lines = log.count("reason=plain HTTP sent to the TLS port")
        suppressed = sum(int(n) for n in re.findall(r"(\d+) similar line\(s\) suppressed",
                                                    log))
        return lines, suppressed

    # every refusal is either logged or counted once the periodic flush (5 s) has run
    wait_for(lambda: sum(counts()) == 300, timeout=20, what="all 300 refusals accounted")
    lines, suppressed = counts()
    assert suppressed > 0
    assert lines <= 100 + 10 * 20  # the burst, plus the rate over the test's duration


def test_sighup_reopens_a_rotated_access_log(start_server, test_pki: PKIFiles,
                                             tmp_path: Path) -> None:
    log_file = tmp_path / "access.log"
    server = start_server({"tls": test_pki.tls_section("server"),
                           "logging": {"access_log": str(log_file)}}, name="logrotate")
    with session(test_pki.ca_pem) as s:
        s.get(server.url("/before"), timeout=10)
    wait_for(lambda: log_file.exists() and "/before" in log_file.read_text(),
             what="the first access line")
    log_file.rename(tmp_path / "access.log.1")  # what logrotate does
    server.signal(signal.SIGHUP)
    server.wait_log(r"TLS material reloaded \(SIGHUP\)")
    with session(test_pki.ca_pem) as s:
        s.get(server.url("/after"), timeout=10)
    wait_for(lambda: log_file.exists() and "/after" in log_file.read_text(),
             what="the access line in the new file")
    assert "/after" not in (tmp_path / "access.log.1").read_text()
