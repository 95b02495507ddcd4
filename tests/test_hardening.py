"""Hostile clients: request smuggling and parser abuse, slow heads, oversized requests,
an exhausted connection pool. After each, the server still serves a valid client."""
from __future__ import annotations

import hashlib
import socket
import ssl
import time
from pathlib import Path

import pytest
from support import PKIFiles, ServerProcess, client_context, raw_https, status_of, wait_for

APPS = str(Path(__file__).parent / "apps")
GOOD = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


@pytest.fixture(scope="module")
def server(start_server, test_pki: PKIFiles) -> ServerProcess:
    return start_server({"tls": test_pki.tls_section("server"),
                         "server": {"max_request_body": 1000, "header_timeout": 1,
                                    "url_length_limit": 1024, "max_header_count": 20,
                                    "max_header_bytes": 4096},
                         "app": {"factory": "body:app", "python_path": [APPS]}},
                        name="hardened")


def _send(server: ServerProcess, test_pki: PKIFiles, request: bytes) -> bytes:
    return raw_https(server, request, client_context(test_pki.ca_pem))


def _post(headers: str, body: bytes = b"", version: str = "HTTP/1.1") -> bytes:
    return f"POST / {version}\r\nHost: localhost\r\n{headers}\r\n".encode() + body


# (case, raw request, expected status): each answered by our protocol, then closed.
# The table in docs/source/security.rst lists the same cases.
ABUSE = [
    ("CL and TE together", _post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                                 b"0\r\n\r\n"), 400),
    ("duplicate Content-Length", _post("Content-Length: 3\r\nContent-Length: 3\r\n",
                                       b"abc"), 400),
    ("comma-joined Content-Length", _post("Content-Length: 3, 3\r\n", b"abc"), 400),
    ("negative Content-Length", _post("Content-Length: -3\r\n", b"abc"), 400),
    ("signed Content-Length", _post("Content-Length: +3\r\n", b"abc"), 400),
    ("hex Content-Length", _post("Content-Length: 0x3\r\n", b"abc"), 400),
    ("invalid chunk size", _post("Transfer-Encoding: chunked\r\n", b"zz\r\nabc\r\n0\r\n\r\n"),
     400),
    ("chunk size overflow", _post("Transfer-Encoding: chunked\r\n",
                                  b"1" * 40 + b"\r\nabc\r\n0\r\n\r\n"), 400),
    ("chunk longer than its size", _post("Transfer-Encoding: chunked\r\n",
                                         b"2\r\nabc\r\n0\r\n\r\n"), 400),
    ("chunk size with bare LF", _post("Transfer-Encoding: chunked\r\n", b"3\nabc\r\n0\r\n\r\n"),
     400),
    ("unknown transfer coding", _post("Transfer-Encoding: gzip, chunked\r\n",
                                      b"0\r\n\r\n"), 501),
    ("chunked twice", _post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                            b"0\r\n\r\n"), 400),
    ("TE in HTTP/1.0", _post("Transfer-Encoding: chunked\r\n", b"0\r\n\r\n", "HTTP/1.0"),
     400),
    ("obs-fold header", b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: b\r\n c\r\n\r\n", 400),
    ("bare LF line endings", b"GET / HTTP/1.1\nHost: localhost\n\n", 400),
    ("bare LF inside the head", b"GET / HTTP/1.1\r\nHost: localhost\nX: y\r\n\r\n", 400),
    ("bare CR", b"GET / HTTP/1.1\r\nHost: localhost\rX: y\r\n\r\n", 400),
    ("NUL in the request line", b"GET /a\x00b HTTP/1.1\r\nHost: localhost\r\n\r\n", 400),
    ("NUL in a header", b"GET / HTTP/1.1\r\nHost: localhost\r\nX: a\x00b\r\n\r\n", 400),
    ("control byte in a header", b"GET / HTTP/1.1\r\nHost: localhost\r\nX: a\x01b\r\n\r\n",
     400),
    ("DEL in a header name", b"GET / HTTP/1.1\r\nHost: localhost\r\nX\x7f: b\r\n\r\n", 400),
    ("space before the colon", b"GET / HTTP/1.1\r\nHost : localhost\r\n\r\n", 400),
    ("absolute-form with userinfo", b"GET http://user@localhost/ HTTP/1.1\r\n"
     b"Host: localhost\r\n\r\n", 400),
    ("absolute-form, not http(s)", b"GET ftp://localhost/ HTTP/1.1\r\nHost: localhost\r\n"
     b"\r\n", 400),
    ("authority-form target", b"CONNECT localhost:443 HTTP/1.1\r\nHost: localhost\r\n\r\n",
     400),
    ("HTTP/0.9 request", b"GET /\r\n\r\n", 400),
    ("HTTP/2.0 version", b"GET / HTTP/2.0\r\nHost: localhost\r\n\r\n", 505),
    ("lower-case version", b"GET / http/1.1\r\nHost: localhost\r\n\r\n", 400),
    ("missing Host in HTTP/1.1", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("duplicate Host", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("request line too long", b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    ("too many header fields", b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 30 + b"\r\n",
     431),
    ("header section too large", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: " + b"b" * 5000 +
     b"\r\n\r\n", 431),
    ("Content-Length above max_request_body", _post("Content-Length: 1001\r\n"), 413),
    ("chunked body above max_request_body",
     _post("Transfer-Encoding: chunked\r\n", b"3e8\r\n" + b"a" * 1000 + b"\r\n1\r\nb\r\n0\r\n\r\n"),
     413),
]


@pytest.mark.parametrize(("case", "request_bytes", "status"), ABUSE, ids=[c[0] for c in ABUSE])
def test_abuse_is_refused_and_the_connection_closed(server, test_pki, case: str,
                                                    request_bytes: bytes, status: int) -> None:
    # A valid request follows on the same connection: it must never be answered.
    response = _send(server, test_pki, request_bytes + GOOD)
    assert status_of(response) == status, response[:200]
    assert response.count(b"HTTP/1.1 ") == 1, f"{case}: the connection was not closed"
    assert b"Connection: close" in response
    assert status_of(_send(server, test_pki, GOOD)) == 200  # still serving


def test_valid_bodies_are_read_exactly(server, test_pki) -> None:
    data = b"x" * 700
    digest = hashlib.sha256(data).hexdigest().encode()
    by_length = _post(f"Content-Length: {len(data)}\r\n", data)
    chunked = _post("Transfer-Encoding: chunked\r\n",
                    b"258;ext=1\r\n" + data[:600] + b"\r\n64\r\n" + data[600:] +
                    b"\r\n0\r\nTrailer: yes\r\n\r\n")
    for request in (by_length, chunked):
        response = _send(server, test_pki, request.replace(b"Host: localhost",
                                                           b"Host: localhost\r\nConnection: close"))
        assert status_of(response) == 200
        assert b"700 " + digest in response


def test_pipelined_requests_after_a_body_are_kept_apart(server, test_pki) -> None:
    """The body's last byte and the next request's first byte arrive in one read."""
    request = _post("Content-Length: 3\r\n", b"abc") + \
        b"GET /second HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    response = _send(server, test_pki, request)
    assert response.count(b"HTTP/1.1 200 OK") == 2
    assert b"3 " + hashlib.sha256(b"abc").hexdigest().encode() in response
    assert b"0 " + hashlib.sha256(b"").hexdigest().encode() in response


def test_expect_100_continue(server, test_pki) -> None:
    ctx = client_context(test_pki.ca_pem)
    with socket.create_connection((server.host, server.port), timeout=10) as sock, \
            ctx.wrap_socket(sock, server_hostname="localhost") as tls:
        tls.sendall(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\n"
                    b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
        assert tls.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        tls.sendall(b"data")
        assert tls.recv(100).startswith(b"HTTP/1.1 200 OK")


def test_slow_header_dribble_is_cut_at_header_timeout(server, test_pki) -> None:
    """One byte every 0.2 s keeps every read alive, but the head has 1 s in all."""
    ctx = client_context(test_pki.ca_pem)
    started = time.monotonic()
    with socket.create_connection((server.host, server.port), timeout=10) as sock, \
            ctx.wrap_socket(sock, server_hostname="localhost") as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        tls.settimeout(0.2)
        answer = b""
        for byte in b"X-Slow: " + b"a" * 60:  # bounded: 68 bytes, at most ~14 s
            try:
                tls.sendall(bytes([byte]))
            except OSError:
                break
            try:
                answer += tls.recv(1000)
                break
            except (socket.timeout, ssl.SSLError):
                continue
            except OSError:
                break
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout")
    assert time.monotonic() - started < 10
    assert status_of(_send(server, test_pki, GOOD)) == 200


def test_response_header_injection_is_refused(start_server, test_pki, tmp_path) -> None:
    (tmp_path / "inject.py").write_text(
        "def app(environ, start_response):\n"
        "    value = environ['QUERY_STRING'].replace('_', '\\r\\n')\n"
        "    start_response('200 OK', [('X-Name', value)])\n"
        "    return [b'ok']\n")
    injecting = start_server({"tls": test_pki.tls_section("server"),
                              "app": {"factory": "inject:app", "python_path": [str(tmp_path)]}},
                             name="inject")
    response = _send(injecting, test_pki, b"GET /?a_Set-Cookie:%20x=1 HTTP/1.1\r\n"
                                          b"Host: localhost\r\nConnection: close\r\n\r\n")
    assert status_of(response) == 500
    assert b"Set-Cookie" not in response
    injecting.wait_log("invalid response header")


def test_exhausted_pool_queues_new_clients_and_spares_open_ones(start_server,
                                                                test_pki) -> None:
    full = start_server({"tls": test_pki.tls_section("server"),
                         "server": {"max_connections": 3}}, name="small-pool")
    ctx = client_context(test_pki.ca_pem)
    held = []
    for _ in range(3):
        sock = socket.create_connection((full.host, full.port), timeout=10)
        held.append(ctx.wrap_socket(sock, server_hostname="localhost"))
    waiting = socket.create_connection((full.host, full.port), timeout=10)  # in the backlog
    waiting.settimeout(10)
    for tls in held:  # the open connections still get answers
        tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert tls.recv(100).startswith(b"HTTP/1.1 200")
    pending = {}

    def handshake() -> None:
        pending["tls"] = ctx.wrap_socket(waiting, server_hostname="localhost")

    import threading

    thread = threading.Thread(target=handshake, daemon=True)
    thread.start()
    thread.join(0.5)
    assert "tls" not in pending  # not served while the pool is full
    held.pop().close()
    thread.join(10)
    tls = pending["tls"]
    tls.sendall(GOOD)
    assert tls.recv(100).startswith(b"HTTP/1.1 200")
    for sock in [tls, *held]:
        sock.close()
    assert "Traceback" not in full.stderr


def test_sessions_resume_but_an_expired_certificate_does_not(start_server, test_pki,
                                                             tmp_path) -> None:
    """OpenSSL skips certificate checks on resumption; securewsgi repeats them."""
    import datetime

    now = datetime.datetime.now(datetime.timezone.utc)
    not_after = now + datetime.timedelta(seconds=3)
    brief = test_pki.add_client("brief", not_after=not_after)
    server = start_server({"tls": test_pki.tls_section("mutual", session_tickets=1)},
                          name="resume")
    ctx = client_context(test_pki.ca_pem, brief)

    def get(session_=None) -> tuple:
        with socket.create_connection((server.host, server.port), timeout=10) as sock, \
                ctx.wrap_socket(sock, server_hostname="localhost", session=session_) as tls:
            tls.sendall(GOOD)
            data = b""
            while chunk := tls.recv(4096):
                data += chunk
            return data, tls.session, tls.session_reused

    response, saved, reused = get()
    assert status_of(response) == 200 and not reused
    response, _, reused = get(saved)
    assert status_of(response) == 200 and reused  # resumption works for valid clients
    wait_for(lambda: datetime.datetime.now(datetime.timezone.utc) > not_after, timeout=10,
             interval=0.1, what="the client certificate to expire")
    with pytest.raises((ssl.SSLError, OSError, AssertionError)):
        response, _, reused = get(saved)
        assert status_of(response) == 200
    server.wait_log(r"reason=client certificate expired \(resumed session refused\)")


def _reused_on_reconnect(server: ServerProcess, ctx: ssl.SSLContext) -> list:
    """session_reused of two connections, the second offering the first's session."""
    reused, saved = [], None
    for _ in range(2):
        with socket.create_connection((server.host, server.port), timeout=10) as sock, \
                ctx.wrap_socket(sock, server_hostname="localhost", session=saved) as tls:
            tls.sendall(GOOD)
            while tls.recv(4096):
                pass
            reused.append(tls.session_reused)
            saved = tls.session
    return reused


def test_no_resumption_by_default_in_mutual_mode(start_server, test_pki) -> None:
    """session_tickets: auto = none with client certificates (a ticket costs a fifth of
    the handshake there)."""
    server = start_server({"tls": test_pki.tls_section("mutual")}, name="no-tickets")
    ctx = client_context(test_pki.ca_pem, test_pki.clients["alice"])
    assert _reused_on_reconnect(server, ctx) == [False, False]


def test_server_mode_resumes_by_default(start_server, test_pki) -> None:
    server = start_server({"tls": test_pki.tls_section("server")}, name="tickets-server")
    assert _reused_on_reconnect(server, client_context(test_pki.ca_pem)) == [False, True]
