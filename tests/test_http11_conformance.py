"""HTTP/1.1 and PEP 3333 conformance through the real server: real clients (requests,
TLS sockets sending exact bytes) against `python -m securewsgi`, with the app in
tests/apps/conformance.py, and a PEP 3333 validator around tests/apps/validated.py.
(The same behaviours are checked byte by byte, without sockets, in
test_protocol_memory.py.)"""
from __future__ import annotations

import hashlib
import json
import os
import re
import ssl
from pathlib import Path

import pytest
from support import (
    PKIFiles,
    ServerProcess,
    client_context,
    raw_https,
    session,
    status_of,
    wait_for,
)

APPS = str(Path(__file__).parent / "apps")
CLOSE = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
BODY_500 = len(b"500 Internal Server Error\n")


@pytest.fixture(scope="module")
def server(start_server, test_pki: PKIFiles) -> ServerProcess:
    return start_server({
        "tls": test_pki.tls_section("mutual"),
        "authorization": {"default": "allow", "rules": [
            {"name": "admin", "paths": ["/admin/*"], "allow": [{"cn": "alice"}]}]},
        "app": {"factory": "conformance:app", "python_path": [APPS]},
    }, name="conformance")


@pytest.fixture(scope="module")
def alice(test_pki: PKIFiles) -> ssl.SSLContext:
    return client_context(test_pki.ca_pem, test_pki.clients["alice"])


@pytest.fixture(scope="module")
def bob(test_pki: PKIFiles) -> ssl.SSLContext:
    return client_context(test_pki.ca_pem, test_pki.clients["bob"])


def get(path: str, headers: str = "", version: str = "HTTP/1.1", method: str = "GET",
        close: bool = True) -> bytes:
    host = "Host: localhost\r\n" if version == "HTTP/1.1" and "Host:" not in headers else ""
    connection = "Connection: close\r\n" if close and version == "HTTP/1.1" else ""
    return f"{method} {path} {version}\r\n{host}{headers}{connection}\r\n".encode()


def head_of(response: bytes) -> dict:
    """The header fields of the first response (lower-case names)."""
    lines = response.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {name.lower(): value.strip() for name, _, value in
            (line.partition(":") for line in lines)}


def access_line(server: ServerProcess, request_line: str) -> re.Match:
    """The access-log line of `request_line` (the server logs to its stdout)."""
    pattern = re.escape(f'"{request_line}"') + r" (\d+) (\d+) "
    wait_for(lambda: re.search(pattern, server.stdout), what=f"access line {request_line}")
    return re.search(pattern, server.stdout)


def responses_in(data: bytes) -> int:
    return len(re.findall(rb"HTTP/1\.[01] [1-5]\d\d ", data))


# ------------------------------------------------------------ the app's own errors


@pytest.mark.parametrize(("path", "error"), [
    ("/db-down", r"ConnectionRefusedError: \[Errno 111\] Connection refused \(the database\)"),
    ("/db-slow", r"(TimeoutError|timeout): the database timed out"),
])
def test_an_os_error_of_the_app_is_a_logged_500(server, alice, path: str,
                                                error: str) -> None:
    """The app's database refusing or timing out is the app's error, not a client that
    went away: a 500, a traceback in the log, and the 500 in the access log."""
    response = raw_https(server, get(path), alice)
    assert status_of(response) == 500
    server.wait_log(rf"application error: GET {path}(.|\n)*{error}")
    assert access_line(server, f"GET {path} HTTP/1.1").groups() == ("500", str(BODY_500))


# -------------------------------------------------------------- bodies not of bytes


def test_a_str_body_is_a_500_and_logged_as_sent(server, alice) -> None:
    response = raw_https(server, get("/text"), alice)
    assert status_of(response) == 500
    assert response.endswith(b"500 Internal Server Error\n")
    server.wait_log(r"application error: GET /text(.|\n)*TypeError: the app's response "
                    r"body holds str, not bytes")
    assert access_line(server, "GET /text HTTP/1.1").groups() == ("500", str(BODY_500))


def test_a_str_after_the_head_was_sent_cuts_the_connection(server, alice) -> None:
    """Too late for a 500: the response is cut (no last chunk) and the connection
    closed, though the client asked to keep it."""
    response = raw_https(server, get("/late-text", close=False) + CLOSE, alice)
    assert status_of(response) == 200
    assert responses_in(response) == 1
    assert not response.endswith(b"0\r\n\r\n")
    server.wait_log(r"application error: GET /late-text(.|\n)*TypeError")
    assert access_line(server, "GET /late-text HTTP/1.1").groups() == ("200", "8000")


# --------------------------------------------------- frameworks read chunked bodies


def _chunks(*sizes: int) -> list[bytes]:
    return [hashlib.sha256(b"%d" % i).digest() * (size // 32) for i, size in enumerate(sizes)]


@pytest.mark.parametrize("framework", ["webob", "werkzeug"])
@pytest.mark.parametrize("chunks", [[b"hello"], _chunks(64000, 100000, 32)],
                         ids=["5 bytes", "several chunks"])
def test_frameworks_read_a_chunked_body(server, test_pki, framework: str,
                                        chunks: list) -> None:
    """wsgi.input_terminated tells WebOb and Werkzeug that the input ends by itself:
    without it, both read a body without Content-Length as empty."""
    data = b"".join(chunks)
    with session(test_pki.ca_pem, test_pki.clients["alice"]) as s:
        response = s.post(server.url(f"/{framework}"), data=iter(chunks), timeout=10)
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert response.status_code == 200
    assert response.text == f"{len(data)} {hashlib.sha256(data).hexdigest()}"


# ------------------------------------------------------------------ wsgi.file_wrapper


def test_file_wrapper_sends_the_file_and_closes_it(server, test_pki) -> None:
    size = 3 * 1024 * 1024 + 7
    expected = (hashlib.sha256(str(size).encode()).digest() * (size // 32 + 1))[:size]
    with session(test_pki.ca_pem, test_pki.clients["alice"]) as s:
        response = s.get(server.url(f"/file?size={size}"), timeout=30)
        assert response.status_code == 200
        assert len(response.content) == size
        assert response.content == expected
        closed = wait_for(lambda: s.get(server.url("/file-closed"), timeout=10).json(),
                          what="the list of files handed to wsgi.file_wrapper")
        wait_for(lambda: all(s.get(server.url("/file-closed"), timeout=10).json()),
                 what="every file closed")
    assert closed


def test_a_body_larger_than_the_socket_buffers_arrives_whole(server, test_pki) -> None:
    """One 16 MiB body item is one write that cannot fit the socket buffers: the
    engine's socket is non-blocking between requests, so that write first finds the
    buffer full and must then wait for the client (socket_timeout), retrying the same
    TLS write. The whole body arrives and the connection serves the next request."""
    size = 16 * 1024 * 1024 + 3
    expected = (hashlib.sha256(str(size).encode()).digest() * (size // 32 + 1))[:size]
    with session(test_pki.ca_pem, test_pki.clients["alice"]) as s:
        response = s.get(server.url(f"/big?size={size}"), timeout=60)
        assert response.status_code == 200
        assert len(response.content) == size
        assert response.content == expected
        again = s.get(server.url("/big?size=5"), timeout=10)
        assert again.content == hashlib.sha256(b"5").digest()[:5]


# ------------------------------------------------------------------------------ HEAD


def test_head_with_an_empty_body_gets_no_invented_content_length(server, alice) -> None:
    response = raw_https(server, get("/empty", method="HEAD", close=False) + CLOSE, alice)
    assert responses_in(response) == 2
    fields = head_of(response)
    assert status_of(response) == 200
    assert "content-length" not in fields and "transfer-encoding" not in fields
    get_response = raw_https(server, get("/empty"), alice)
    assert head_of(get_response)["content-length"] == "0"  # GET unchanged


# ------------------------------------------------------------------------ Connection


@pytest.mark.parametrize(("request_bytes", "answered"), [
    (get("/", "Connection: keep-alive, Upgrade\r\n", "HTTP/1.0") + get("/", "", "HTTP/1.0"),
     2),
    (get("/", "Connection: close-ish\r\n", close=False) + CLOSE, 2),
    (get("/", "Connection: x-close\r\n", close=False) + CLOSE, 2),
    (get("/", "Connection: foo, close\r\n", close=False) + CLOSE, 1),
    (get("/connection?value=foo,%20close", close=False) + CLOSE, 1),
    (get("/connection?value=x-close", close=False) + CLOSE, 2),
], ids=["1.0 keep-alive, Upgrade", "close-ish", "x-close", "foo, close",
        "app: foo, close", "app: x-close"])
def test_connection_is_a_token_list(server, alice, request_bytes: bytes,
                                    answered: int) -> None:
    assert responses_in(raw_https(server, request_bytes, alice)) == answered


# ------------------------------------------------------------------- request targets


def test_absolute_form_is_authorized_on_its_path(server, alice, bob) -> None:
    """RFC 9112 3.2.2: a server MUST accept absolute-form; the rule for /admin/* must
    then judge the target's path, exactly as for the origin-form request."""
    absolute = get("https://localhost/admin/x")
    assert status_of(raw_https(server, get("/admin/x"), bob)) == 403
    assert status_of(raw_https(server, absolute, bob)) == 403
    assert status_of(raw_https(server, absolute, alice)) == 200


def test_absolute_form_target_gives_path_query_and_host(server, alice) -> None:
    response = raw_https(server, get("https://example.com:8443/p%20q/r?x=1",
                                     "Host: other.example\r\n"), alice)
    environ = json.loads(response.split(b"\r\n\r\n", 1)[1])
    assert (environ["PATH_INFO"], environ["RAW_PATH_INFO"], environ["QUERY_STRING"]) == \
        ("/p q/r", "/p%20q/r", "x=1")
    assert environ["HTTP_HOST"] == "example.com:8443"
    environ = json.loads(raw_https(server, get("http://localhost"), alice).split(
        b"\r\n\r\n", 1)[1])
    assert environ["PATH_INFO"] == "/"


@pytest.mark.parametrize("request_bytes", [
    get("ftp://localhost/"),
    get("https://bob@localhost/"),
    get("/", "Host: local host\r\n"),
    get("/", "Host: a/b\r\n"),
    get("/", "Host: user@localhost\r\n"),
    get("/", "Host: a\\b\r\n"),
    get("/", "Host: a, b\r\n"),
    get("/", "Host: localhost:99999\r\n"),
    get("/", "Host: localhost:https\r\n"),
    get("/", "Content-Type: a\r\nContent-Type: b\r\n"),
    get("/", "Authorization: a\r\nAuthorization: b\r\n"),
], ids=["ftp scheme", "userinfo", "Host with a space", "Host with a slash", "Host with @",
        "Host with a backslash", "Host list", "Host port too large", "Host port name",
        "Content-Type twice", "Authorization twice"])
def test_invalid_targets_hosts_and_repeated_singletons_are_a_400(server, alice,
                                                                 request_bytes: bytes
                                                                 ) -> None:
    response = raw_https(server, request_bytes + CLOSE, alice)
    assert status_of(response) == 400
    assert responses_in(response) == 1


def test_no_100_continue_for_http_1_0(server, alice) -> None:
    """RFC 9110 10.1.1: an HTTP/1.0 client cannot read an interim response."""
    request = get("/webob", "Content-Length: 4\r\nExpect: 100-continue\r\n", "HTTP/1.0",
                  method="POST") + b"data"
    response = raw_https(server, request, alice)
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"100 Continue" not in response


# -------------------------------------------------------------- the PEP 3333 validator


@pytest.fixture(scope="module")
def validated(start_server, test_pki: PKIFiles) -> ServerProcess:
    return start_server({"tls": test_pki.tls_section("server"),
                         "app": {"factory": "validated:app", "python_path": [APPS]}},
                        name="validated")


def _failures(server: ServerProcess, test_pki: PKIFiles) -> list:
    with session(test_pki.ca_pem) as s:
        return s.get(server.url("/_failures"), timeout=10).json()


def test_wsgiref_validator_finds_no_violation(validated, test_pki) -> None:
    """wsgiref.validate checks the environ and how the server calls start_response,
    iterates and closes; tests/apps/validated.py records whatever it raises."""
    before = _failures(validated, test_pki)
    payload = os.urandom(20000)
    digest = f"{len(payload)} {hashlib.sha256(payload).hexdigest()}"
    with session(test_pki.ca_pem) as s:
        assert s.get(validated.url("/"), timeout=10).text == "hello\n"
        assert s.head(validated.url("/"), timeout=10).status_code == 200
        assert s.post(validated.url("/echo"), data=payload, timeout=10).text == digest
        assert s.post(validated.url("/echo"), data=iter([payload[:7], payload[7:]]),
                      timeout=10).text == digest
        assert s.get(validated.url("/file"), timeout=10).content == b"f" * 100000
        assert s.get(validated.url("/stream"), timeout=10).content == \
            b"a" * 5000 + b"b" * 10
    ctx = client_context(test_pki.ca_pem)
    for request in (get("https://localhost/echo"), get("/", version="HTTP/1.0"),
                    get("/", method="HEAD")):
        assert status_of(raw_https(validated, request, ctx)) == 200
    assert _failures(validated, test_pki) == before


def test_the_validator_reports_a_violation(validated, test_pki) -> None:
    """The recording works: reading wsgi.input without a size breaks the validator's
    rules; it is recorded, and the server answers 500."""
    before = _failures(validated, test_pki)
    with session(test_pki.ca_pem) as s:
        assert s.post(validated.url("/violate"), data=b"x", timeout=10).status_code == 500
    new = _failures(validated, test_pki)[len(before):]
    assert len(new) == 1 and new[0].startswith("AssertionError")
