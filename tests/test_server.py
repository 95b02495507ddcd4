"""The serving loop: handshakes in their own greenthreads with a deadline, no fd leaks,
hostile first bytes, listening addresses, and start-up failures."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys

import pytest
import yaml
from support import (
    PKIFiles,
    ServerProcess,
    client_context,
    raw_https,
    run_command,
    session,
    status_of,
    wait_for,
)

HANDSHAKE_TIMEOUT = 2


@pytest.fixture(scope="module")
def mutual(start_server, test_pki: PKIFiles) -> ServerProcess:
    return start_server({"tls": test_pki.tls_section("mutual"),
                         "server": {"handshake_timeout": HANDSHAKE_TIMEOUT}}, name="mutual")


def _connect(server: ServerProcess) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=10)


def _hostile_clients(server: ServerProcess) -> list[socket.socket]:
    """Silent, plain-HTTP, garbage and half-ClientHello clients, all left open."""
    socks = []
    for _ in range(20):
        socks.append(_connect(server))  # silent
    for payload in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00\xff" * 100,
                    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"):  # a truncated hello
        sock = _connect(server)
        sock.sendall(payload)
        socks.append(sock)
    return socks


def test_hostile_clients_do_not_delay_a_valid_client(mutual, test_pki: PKIFiles) -> None:
    socks = _hostile_clients(mutual)
    try:
        with session(test_pki.ca_pem, test_pki.clients["alice"]) as s:
            # Far below HANDSHAKE_TIMEOUT x 23 clients: a serial handshake would block.
            response = s.get(mutual.url("/"), timeout=HANDSHAKE_TIMEOUT)
        assert response.status_code == 200
    finally:
        for sock in socks:
            sock.close()


def test_silent_client_is_cut_off_after_handshake_timeout(mutual) -> None:
    with _connect(mutual) as sock:
        sock.settimeout(HANDSHAKE_TIMEOUT * 5)
        assert sock.recv(1) == b""  # the server closed it; no fixed sleep here
    mutual.wait_log(rf"reason=no TLS handshake within {HANDSHAKE_TIMEOUT}s")


def test_plain_http_and_garbage_are_logged_once_with_a_reason(mutual) -> None:
    before = mutual.stderr
    with _connect(mutual) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(10)
        with contextlib.suppress(ConnectionResetError):
            sock.recv(100)
    log = mutual.wait_log("plain HTTP sent to the TLS port")
    new = log[len(before):]
    assert new.count("plain HTTP sent to the TLS port") == 1
    assert "Traceback" not in log


def test_fd_count_returns_to_baseline_after_failed_handshakes(mutual, test_pki) -> None:
    with session(test_pki.ca_pem, test_pki.clients["alice"]) as s:
        s.get(mutual.url("/"), timeout=10)  # warm up
    baseline = mutual.settled_fds()
    no_cert = client_context(test_pki.ca_pem)
    bad_cert = client_context(test_pki.ca_pem, test_pki.clients["unknown-ca"])
    for round_ in range(40):
        for ctx in (no_cert, bad_cert):
            with contextlib.suppress(ssl.SSLError, OSError):
                raw_https(mutual, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", ctx, timeout=10)
        with _connect(mutual) as sock:
            sock.sendall(b"\x16\x03\x01garbage" if round_ % 2 else b"GET / HTTP/1.0\r\n\r\n")
        _connect(mutual).close()  # connect and leave at once
    wait_for(lambda: mutual.open_fds() <= baseline, timeout=HANDSHAKE_TIMEOUT * 5,
             what=f"open fds back to the baseline of {baseline}")
    with session(test_pki.ca_pem, test_pki.clients["alice"]) as s:
        assert s.get(mutual.url("/"), timeout=10).status_code == 200
    assert "Traceback" not in mutual.stderr


def test_keep_alive_serves_several_requests_on_one_connection(mutual, test_pki) -> None:
    ctx = client_context(test_pki.ca_pem, test_pki.clients["alice"])
    request = b"GET /one HTTP/1.1\r\nHost: localhost\r\n\r\n" * 2 + \
              b"GET /three HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    response = raw_https(mutual, request, ctx)
    assert response.count(b"HTTP/1.1 200 OK") == 3


def test_app_exception_gives_an_empty_500_and_a_log_line(start_server, test_pki, tmp_path
                                                          ) -> None:
    (tmp_path / "boom.py").write_text(
        "def app(environ, start_response):\n    raise ValueError('secret detail')\n")
    server = start_server({"tls": test_pki.tls_section("server"),
                           "app": {"factory": "boom:app", "python_path": [str(tmp_path)]}},
                          name="boom")
    response = raw_https(server, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                         client_context(test_pki.ca_pem))
    assert status_of(response) == 500
    # no traceback to the client (eventlet.wsgi's debug=True default would send it)
    assert b"secret detail" not in response
    server.wait_log("ValueError: secret detail")


def test_port_zero_on_ipv6_loopback(start_server, test_pki: PKIFiles) -> None:
    server = start_server({"tls": test_pki.tls_section("server"),
                           "server": {"host": "::1", "port": 0}}, name="ipv6")
    assert server.host == "::1" and server.port > 0
    ctx = client_context(test_pki.ca_pem)
    with socket.create_connection(("::1", server.port), timeout=10) as sock, \
            ctx.wrap_socket(sock, server_hostname="localhost") as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert tls.recv(100).startswith(b"HTTP/1.1 200")


def test_port_in_use_exits_1_with_one_line(mutual, test_pki: PKIFiles, tmp_path) -> None:
    path = tmp_path / "clash.yaml"
    path.write_text(yaml.safe_dump({"tls": test_pki.tls_section("server"),
                                    "server": {"port": mutual.port},
                                    "app": {"factory": "securewsgi.demo:app"}}))
    result = run_command(sys.executable, "-m", "securewsgi", "--config", str(path), timeout=30)
    assert result.returncode == 1
    assert f"server.port: 127.0.0.1:{mutual.port} is already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_sigterm_exits_0(start_server, test_pki: PKIFiles) -> None:
    server = start_server({"tls": test_pki.tls_section("server")}, name="sigterm")
    server.signal(signal.SIGTERM)
    assert server.proc.wait(20) == 0
    assert "SIGTERM received" in server.stderr


def test_sigint_exits_0(start_server, test_pki: PKIFiles) -> None:
    server = start_server({"tls": test_pki.tls_section("server")}, name="sigint")
    server.signal(signal.SIGINT)
    assert server.proc.wait(20) == 0


def test_plain_http_mode_on_loopback(start_server, test_pki: PKIFiles) -> None:
    server = start_server({"tls": {"mode": "none"}}, name="plain")
    assert server.scheme == "http"
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    assert status_of(data) == 200
    assert b'"wsgi.url_scheme": "http"' in data


def test_curl_shows_the_client_subject(mutual, test_pki: PKIFiles) -> None:
    alice = test_pki.clients["alice"]
    result = subprocess.run(
        ["curl", "-sS", "--cacert", str(test_pki.ca_pem), "--cert", str(alice.cert), "--key",
         str(alice.key), mutual.url("/")], capture_output=True, text=True, timeout=30,
        env={k: v for k, v in os.environ.items() if "PROXY" not in k.upper()})
    assert result.returncode == 0, result.stderr
    assert '"subject": "CN=alice"' in result.stdout
