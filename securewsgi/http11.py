"""HTTP/1.1 for one connection: a strict request parser and a lean WSGI response writer.

Why not `eventlet.wsgi`'s protocol: it parses headers with the `email` package (a large
share of its CPU per request), accepts requests that proxies disagree on (obs-fold,
bare LF, control bytes, duplicate Content-Length: the raw material of request
smuggling), has no deadline for a request head that trickles in, and writes each
response in several `send()` calls (each one a TLS record and a syscall).

This module is engine-neutral: it needs a socket with `recv`, `send`, `sendall`, `settimeout`
and `shutdown`, as both green and blocking sockets have. The engine owns concurrency;
the `Connection` object tells it when the connection is idle, so a graceful stop can
close idle connections and let active ones finish.

Every request is refused the same way: a short status-only response with
``Connection: close``, then the connection is closed (see `_REFUSALS` for the table).

Choices where the RFCs leave one (or where we are stricter than they require):

* request-target (RFC 9112 3.2): origin-form, ``*`` for OPTIONS, and absolute-form
  with an ``http`` or ``https`` scheme (any case); the application sees the target's
  path and query, and ``HTTP_HOST`` is the target's authority (3.2.2: the Host field
  is ignored then, but must still be present in HTTP/1.1 and valid). An absolute-form
  target without a path means ``/``. Other schemes, userinfo (``user@``) and an empty
  host are refused (400), and so are authority-form (CONNECT), a fragment (``#``) and
  bytes outside visible ASCII in the target (RFC 3986 2: clients percent-encode them).
* Host (RFC 9112 3.2, RFC 3986 3.2.2): ``uri-host [":" port]``; an IPv6 literal must
  be a valid address, a port at most 65535 (an empty port is allowed, as the grammar
  does); a comma is refused although reg-name allows it (a comma list is what a
  proxy makes of repeated Host lines). An empty Host is valid.
* fields that hold one value (RFC 9110 5.3 allows repeating only list-based fields):
  a repeated Host, Content-Length, Transfer-Encoding, Content-Type, Authorization,
  Proxy-Authorization, Expect, If-Modified-Since, If-Unmodified-Since, If-Range,
  Range, Max-Forwards, User-Agent, Referer, From or Date is a 400, not a merged value
  (Transfer-Encoding and Expect are lists in RFC 9110, but the only value accepted is
  one ``chunked`` / one ``100-continue``). Other repeated fields are joined with
  ",", Cookie lines with "; " (RFC 6265 5.4).
* Connection (RFC 9110 7.6.1) is a comma-separated, case-insensitive token list, in
  requests and in the application's response headers.
* ``Expect: 100-continue`` is ignored in HTTP/1.0 requests (RFC 9110 10.1.1); any
  other expectation is ignored too (no 417).
* empty lines before a request line are ignored (RFC 9112 2.2), however segmented.
* chunk extensions must follow RFC 9112 7.1.1 (no whitespace around ";" or "="); they
  and trailer fields are read and discarded.
* HEAD (RFC 9110 9.3.2): Content-Length is added only when the app returned a
  non-empty body in one piece (then it is the real length); a HEAD response never
  gets ``Transfer-Encoding: chunked`` made up for it.
* the application's errors, including its own socket errors (a database that refuses
  connections), are a logged 500 when nothing was sent yet, and a cut connection
  otherwise; only an error on the client's socket means that the client went away.
  A response body item that is not ``bytes`` (PEP 3333) is such an error, found before
  the head is sent.
"""
from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, Callable, Optional
from urllib.parse import unquote

from .config import ServerConfig
from .errors import SecureWSGIError
from .logs import RateLimitedLog
from .text import printable
from .wsgitypes import WSGIApp

log = logging.getLogger("securewsgi.http")
# Malformed requests are triggered by clients at will: rate-limit their log lines.
refusal_log = RateLimitedLog(logging.getLogger("securewsgi.http"))

AccessLogger = Callable[[dict, int, int, float], None]

_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
# METHOD SP request-target SP HTTP/x.y -- the target in visible ASCII, without "#" (a
# fragment is no part of a request-target, RFC 9112 3.2).
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21\x22\x24-\x7e]+) HTTP/(\d)\.(\d)")
# name ":" OWS value OWS, CRLF-terminated; values allow HTAB and obs-text, no controls.
_HEADER_BLOCK = re.compile(rb"(?:" + _TOKEN + rb":[^\x00-\x08\x0a-\x1f\x7f]*\r\n)*")
_DIGITS = re.compile(rb"[0-9]{1,18}")
# chunk-size *( ";" token [ "=" ( token / quoted-string ) ] ), RFC 9112 7.1.1.
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;" + _TOKEN + rb"(?:=(?:" + _TOKEN +
                         rb'|"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|'
                         rb'\\[\t \x21-\x7e\x80-\xff])*"))?)*')
_STATUS = re.compile(r"[1-5][0-9][0-9] [^\x00-\x1f\x7f]*")
_HEADER_NAME = re.compile(_TOKEN.decode())
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# uri-host [ ":" port ] (RFC 3986 3.2.2), without the comma reg-name would allow.
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]{2,45}\]|(?:[A-Za-z0-9._~!$&'()*+;=-]|%[0-9A-Fa-f]{2})*)"
                   r"(?::([0-9]{0,5}))?")
_ABSOLUTE_FORM = re.compile(r"(?i:https?)://([^/?#]*)(.*)", re.DOTALL)
# Fields that hold one value (RFC 9110 5.3): a second line is a 400, not a list.
_SINGLETONS = frozenset({
    "host", "content-length", "transfer-encoding", "content-type", "authorization",
    "proxy-authorization", "expect", "if-modified-since", "if-unmodified-since",
    "if-range", "range", "max-forwards", "user-agent", "referer", "from", "date"})

DISCARD_LIMIT = 64 * 1024  # unread request body we read away to keep the connection
RECV_SIZE = 65536


class Refusal(SecureWSGIError):
    """A request that gets a status-only answer and ends the connection."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _ClientGone(Exception):
    """The client's socket failed (closed, reset, TLS alert): nothing to answer.

    Raised only where this module touches the client socket (`Connection.recv`,
    `Connection.send`), so that an OSError of the application (its database refusing
    connections) is never mistaken for a client that went away."""


class _ClientTimeout(_ClientGone):
    """The client sent nothing within the socket timeout."""


# What ends a connection quietly or with a refusal (OSError: a safety net, the client
# socket's own errors are _ClientGone).
_ENDINGS = (Refusal, _ClientGone, OSError)
# A non-blocking write that found the socket buffer full.
_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError)


_REASONS = {400: "Bad Request", 408: "Request Timeout", 413: "Content Too Large",
            414: "URI Too Long", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 501: "Not Implemented",
            505: "HTTP Version Not Supported"}


def _refusal_bytes(status: int, with_body: bool = True) -> bytes:
    body = f"{status} {_REASONS[status]}\n".encode()
    return (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + \
        (body if with_body else b"")


_REFUSALS = {status: _refusal_bytes(status) for status in _REASONS}
_REFUSAL_HEADS = {status: _refusal_bytes(status, False) for status in _REASONS}  # HEAD
# The body bytes of each refusal, for the access log.
_REFUSAL_BODY = {status: len(f"{status} {_REASONS[status]}\n") for status in _REASONS}


class _Clock:
    """`Date` header text, formatted at most once per second."""

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def date(self) -> str:
        now = int(time.time())
        if now != self.second:
            self.second, self.text = now, formatdate(now, usegmt=True)
        return self.text


_clock = _Clock()
_response_names: dict[str, tuple[str, str]] = {}


def _response_name(name: str) -> tuple[str, str]:
    """(lower-case, Capitalized-As-Eventlet-Does) for a response header name such as
    ``content-TYPE``; remembered, since an app sends the same names again and again."""
    known = _response_names.get(name)
    if known is None:
        known = (name.lower(), "-".join(part.capitalize() for part in name.split("-")))
        if len(_response_names) < 1024:
            _response_names[name] = known
    return known


class Connection:
    """One client connection: reads requests, calls the app, writes responses.

    `idle` is true while waiting for the next request head; the engine reads it to
    decide whether a graceful stop may close the connection at once. `closing` (set by
    the engine) makes the current response the last one.
    """

    __slots__ = ("access_log", "app", "base", "buf", "closing", "idle", "options",
                 "peer", "requests", "sock", "unread_body")

    def __init__(self, sock: Any, app: WSGIApp, base: dict, options: ServerConfig,
                 access_log: Optional[AccessLogger], peer: str) -> None:
        self.sock = sock
        self.app = app
        self.base = base
        self.options = options
        self.access_log = access_log
        self.peer = peer
        self.buf = b""
        self.idle = True
        self.closing = False
        self.requests = 0
        # The connection ends while the client may still be sending (an unread body,
        # a refused head): the engine then closes it lingeringly, so the client reads
        # our answer instead of a reset.
        self.unread_body = False

    # ------------------------------------------------------------------ the loop

    def serve(self) -> None:
        """Answer requests until the client or the server ends the connection (for
        engines whose reads block: each wait is a green switch or a blocked thread)."""
        try:
            while not self.closing:
                head = self._read_head()
                if head is None or not self._serve_one(head):
                    break
        except _ENDINGS as exc:
            self._ended(exc)

    def handle(self, head: bytes) -> bool:
        """Answer one request whose head an event-driven engine already took from
        `buf` (`take_head`); False when the connection must end afterwards."""
        try:
            return self._serve_one(head)
        except _ENDINGS as exc:  # a plain try, not a context manager: this runs per request
            self._ended(exc)
            return False

    def _ended(self, exc: BaseException) -> None:
        """How a connection ends on errors: a refusal is answered, a vanished or
        silent client is not."""
        if isinstance(exc, Refusal):
            self._refuse(exc)
        elif isinstance(exc, _ClientTimeout):
            log.debug("connection idle too long: client=%s", self.peer)
        else:  # _ClientGone (resets, TLS alerts from the peer), or a stray OSError
            log.debug("connection ended: client=%s %s", self.peer, exc)

    def _serve_one(self, head: bytes) -> bool:
        """One request/response; False when the connection must end afterwards."""
        started = time.monotonic()
        self.idle = False
        self.requests += 1
        try:
            request = _parse_head(head, self.options)
            environ, body = self._environ(request)
            keep = self._respond(environ, request, body, started) and body.finish()
            if not body.done:
                self.unread_body = True  # the client may still be sending: linger
            return keep
        finally:
            self.idle = True

    def _refuse(self, refusal: Refusal) -> None:
        refusal_log.info("refused request: client=%s status=%d reason=%s", self.peer,
                         refusal.status, refusal.reason)
        self.unread_body = True  # whatever the client sent after the refused head
        with contextlib.suppress(_ClientGone):
            self.send(_REFUSALS[refusal.status])

    # ---------------------------------------------------------------- reading

    def recv(self, timeout: float) -> bytes:
        """Up to RECV_SIZE bytes from the client (b"" when it closed); its socket
        errors become `_ClientGone`, a timeout `_ClientTimeout`."""
        try:
            self.sock.settimeout(timeout)
            return self.sock.recv(RECV_SIZE)
        except socket.timeout:
            raise _ClientTimeout() from None
        except OSError as exc:
            raise _ClientGone(str(exc)) from None

    def send(self, data: bytes) -> None:
        """All of `data` to the client; its socket errors become `_ClientGone`.

        An event-driven engine leaves its socket non-blocking between requests; one
        write nearly always takes a whole response, so it is tried as is. Only when
        the socket buffer is full does the rest wait, up to socket_timeout (a TLS
        write that would block is retried with the same bytes, as OpenSSL requires).
        """
        sock = self.sock
        try:
            sent = sock.send(data)
            if sent < len(data):
                self._send_slowly(memoryview(data)[sent:])
        except _WOULD_BLOCK:
            self._send_slowly(data)
        except OSError as exc:
            raise _ClientGone(str(exc)) from None

    def _send_slowly(self, data: Any) -> None:
        sock = self.sock
        try:
            if not sock.gettimeout():
                sock.settimeout(self.options.socket_timeout)
            sock.sendall(data)
        except OSError as exc:
            raise _ClientGone(str(exc)) from None

    def take_head(self) -> Optional[bytes]:
        """The next complete request head in `buf` (consumed, without the blank line),
        or None while it is incomplete; `Refusal` when the buffered bytes can never
        become a valid head. RFC 9112 2.2: empty lines before a request line are
        ignored, however the bytes were segmented."""
        buf = self.buf
        if buf[:2] == b"\r\n":
            while buf[:2] == b"\r\n":
                buf = buf[2:]
            self.buf = buf
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            self.buf = buf[end + 4:]
            return buf[:end + 2]  # keep the last header's CRLF
        _check_partial_head(buf, self.options)
        return None

    def idle_timeout(self) -> float:
        """How long to wait for the first byte of the next request."""
        options = self.options
        if self.requests and options.keepalive is not True:
            return options.keepalive
        return options.socket_timeout

    def _read_head(self) -> Optional[bytes]:
        """The request head (without the blank line), or None on a clean close.

        The wait for the first byte is an idle wait (keepalive/socket_timeout); from the
        first byte on, the whole head must arrive within header_timeout, however slowly
        it trickles (a slowloris client is cut off at the deadline, not per byte).
        """
        options = self.options
        deadline = None
        while True:
            head = self.take_head()
            if head is not None:
                return head
            if deadline is None:
                if self.buf:
                    deadline = time.monotonic() + options.header_timeout
                    timeout = min(options.socket_timeout, options.header_timeout)
                else:
                    timeout = self.idle_timeout()
            else:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    raise Refusal(408, f"request head not complete in "
                                       f"{options.header_timeout:g}s")
                timeout = min(timeout, options.socket_timeout)
            try:
                data = self.recv(timeout)
            except _ClientTimeout:
                if deadline is None:
                    raise
                raise Refusal(408, f"request head not complete in "
                                   f"{options.header_timeout:g}s") from None
            if not data:
                if self.buf.strip():
                    raise _ClientGone()
                return None
            self.buf += data

    # ---------------------------------------------------------------- environ

    def _environ(self, request: _Request) -> tuple:
        env = dict(self.base)
        env["REQUEST_METHOD"] = request.method
        env["SCRIPT_NAME"] = ""
        path, _, query = request.target.partition("?")
        env["RAW_PATH_INFO"] = path
        env["PATH_INFO"] = unquote(path, encoding="latin-1") if "%" in path else path
        env["QUERY_STRING"] = query
        env["SERVER_PROTOCOL"] = request.version
        headers = request.headers
        if "content-type" in headers:
            env["CONTENT_TYPE"] = headers["content-type"]
        length = request.content_length
        if length is not None:
            env["CONTENT_LENGTH"] = str(length)
        for key, value in request.environ_headers:
            env[key] = value
        body = Body(self, request)
        env["wsgi.input"] = body
        # PEP 3333 leaves the end of a body without Content-Length to the server: ours
        # ends (chunked), and frameworks (WebOb, Werkzeug) read it only when told so.
        env["wsgi.input_terminated"] = True
        env["wsgi.file_wrapper"] = FileWrapper
        return env, body

    # ---------------------------------------------------------------- writing

    def _respond(self, environ: dict, request: _Request, body: Body, started: float) -> bool:
        response = _Response(self, request, body)
        try:
            result = self.app(environ, response.start_response)
            try:
                response.send(result)
            finally:
                _close_result(result, request)
        except _ClientGone:  # the client's socket, read through wsgi.input or written
            response.keep_alive = False
        except Refusal as refusal:  # from wsgi.input: a body too large or malformed
            response.refuse(refusal)
        except Exception:  # the app's own errors, its own OSErrors included
            response.fail()
        if self.access_log is not None:
            self.access_log(environ, response.status_code, response.body_bytes,
                            time.monotonic() - started)
        return response.keep_alive and not self.closing


def _close_result(result: Any, request: _Request) -> None:
    """PEP 3333: the server calls close() on the app's iterable, whatever happened."""
    close = getattr(result, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            log.exception("application error in close(): %s %s", request.method,
                          printable(request.raw_target, 200))


@dataclass
class _Request:
    method: str
    target: str  # origin-form: path [ "?" query ] (or "*")
    raw_target: str  # as sent (absolute-form included)
    version: str
    headers: dict  # lower-case name -> value (str, latin-1), duplicates joined by ","
    environ_headers: list  # (HTTP_NAME, value)
    content_length: Optional[int]
    chunked: bool
    keep_alive: bool
    expect_continue: bool


def _check_partial_head(buf: bytes, options: ServerConfig) -> None:
    """Refuse early what can never become a valid head, before reading more of it."""
    if buf and buf[0] == 0x16 and buf[1:2] == b"\x03":  # TLS handshake: https:// client
        raise Refusal(400, "a TLS client reached this plain-HTTP port (use http://, or "
                           "enable tls)")
    line_end = buf.find(b"\r\n")
    if line_end < 0:
        if len(buf) > options.url_length_limit:
            raise Refusal(414, "request line too long")
        if b"\n" in buf:
            raise Refusal(400, "bare LF line ending")
        return
    if line_end > options.url_length_limit:
        raise Refusal(414, "request line too long")
    if len(buf) > options.max_header_bytes + options.url_length_limit:
        raise Refusal(431, "request head too large")
    if b"\n\n" in buf or b"\r\r" in buf:
        raise Refusal(400, "bare LF or CR line ending")


def _parse_head(head: bytes, options: ServerConfig) -> _Request:
    """Strict RFC 9112 parsing; anything ambiguous is a `Refusal`."""
    line_end = head.find(b"\r\n")
    if line_end > options.url_length_limit:
        raise Refusal(414, "request line too long")
    match = _REQUEST_LINE.fullmatch(head, 0, line_end)
    if match is None:
        if head[:line_end].count(b" ") == 1:
            raise Refusal(400, "HTTP/0.9 request or missing version")
        raise Refusal(400, "malformed request line")
    method, raw_target, major, minor = match.groups()
    if major != b"1" or minor not in (b"0", b"1"):
        raise Refusal(505, f"unsupported HTTP version {major.decode()}.{minor.decode()}")
    block = head[line_end + 2:]
    if _HEADER_BLOCK.fullmatch(block) is None:
        raise Refusal(400, "malformed header line (obs-fold, bare LF, control byte or "
                           "space before the colon)")
    # Names are tokens (ASCII) and values latin-1, as the pattern above just checked:
    # one decode for the whole block instead of two per line.
    lines = block.decode("latin-1").split("\r\n")
    lines.pop()  # the empty string after the last CRLF
    if len(lines) > options.max_header_count:
        raise Refusal(431, f"more than {options.max_header_count} header fields")
    if len(block) > options.max_header_bytes:
        raise Refusal(431, "header section too large")
    target = raw = raw_target.decode("ascii")
    authority = None
    if target[0] != "/" and not (target == "*" and method == b"OPTIONS"):
        target, authority = _absolute_form(target)
    version = "HTTP/1.1" if minor == b"1" else "HTTP/1.0"
    headers: dict = {}
    environ_headers = []
    for line in lines:
        name, _, value = line.partition(":")
        key = name.lower()
        text = value.strip(" \t")
        if key in headers:
            if key in _SINGLETONS:
                raise Refusal(400, f"duplicate {key} header")
            headers[key] = f"{headers[key]}{'; ' if key == 'cookie' else ','}{text}"
        else:
            headers[key] = text
        if "_" not in key:  # "X_Forwarded" must not be confused with "X-Forwarded"
            environ_headers.append(key)
    return _make_request(method.decode("ascii"), target, raw, authority, version, headers,
                         environ_headers, options)


def _absolute_form(target: str) -> tuple[str, str]:
    """RFC 9112 3.2.2: ``http(s)://authority[path][?query]`` -> (origin-form, authority).
    A missing path is "/"; userinfo, an empty host and other schemes are refused."""
    match = _ABSOLUTE_FORM.fullmatch(target)
    if match is None:
        raise Refusal(400, "request target must be a path or an http(s) URI")
    authority, rest = match.groups()
    if "@" in authority:
        raise Refusal(400, "userinfo in the request target")
    if not authority or authority[0] == ":":
        raise Refusal(400, "request target without a host")
    _check_host(authority, "request target")
    return (rest if rest[:1] == "/" else "/" + rest), authority


_valid_hosts: set = set()


def _check_host(host: str, where: str = "Host header") -> None:
    """RFC 9112 3.2: Host = uri-host [ ":" port ]; a refusal when invalid. Valid values
    are remembered (a few hundred at most): clients name the same hosts again."""
    if host in _valid_hosts:
        return
    match = _HOST.fullmatch(host)
    if match is None:
        raise Refusal(400, f"invalid host in the {where}")
    literal, port = match.groups()
    if literal[:1] == "[":
        try:
            ipaddress.IPv6Address(literal[1:-1])
        except ValueError:
            raise Refusal(400, f"invalid IPv6 address in the {where}") from None
    if port and int(port) > 65535:
        raise Refusal(400, f"invalid port in the {where}")
    if len(_valid_hosts) < 256:
        _valid_hosts.add(host)


def _has_token(value: str, token: str) -> bool:
    """Is `token` (lower-case) one of the comma-separated tokens in `value`
    (RFC 9110 7.6.1; tokens are case-insensitive)?"""
    value = value.lower()
    if value == token:
        return True
    return "," in value and any(part.strip(" \t") == token for part in value.split(","))


_environ_names: dict[str, str] = {}  # "x-request-id" -> "HTTP_X_REQUEST_ID"


def _make_request(method: str, target: str, raw_target: str, authority: Optional[str],
                  version: str, headers: dict, environ_keys: list, options: ServerConfig
                  ) -> _Request:
    content_length = None
    length_text = headers.get("content-length")
    if length_text is not None:
        if not _DIGITS.fullmatch(length_text.encode("latin-1")):
            raise Refusal(400, "invalid Content-Length")
        content_length = int(length_text)
    chunked = False
    transfer_encoding = headers.get("transfer-encoding")
    if transfer_encoding is not None:
        if version == "HTTP/1.0":
            raise Refusal(400, "Transfer-Encoding in an HTTP/1.0 request")
        if content_length is not None:
            raise Refusal(400, "both Content-Length and Transfer-Encoding")
        if transfer_encoding.lower() != "chunked":
            raise Refusal(501, f"unsupported Transfer-Encoding {transfer_encoding!r}")
        chunked = True
    host = headers.get("host")
    if host is None:
        if version == "HTTP/1.1":
            raise Refusal(400, "HTTP/1.1 request without Host")
    else:
        _check_host(host)
    if authority is not None:  # RFC 9112 3.2.2: the target's authority, not Host
        if host is None:
            environ_keys.append("host")
        headers["host"] = authority
    limit = options.max_request_body
    if limit is not None and content_length is not None and content_length > limit:
        raise Refusal(413, f"Content-Length {content_length} above max_request_body {limit}")
    connection = headers.get("connection")
    if not options.keepalive:
        keep_alive = False
    elif version == "HTTP/1.1" and options.max_http_version == "HTTP/1.1":
        keep_alive = connection is None or not _has_token(connection, "close")
    else:  # HTTP/1.0 keeps a connection only when asked to
        keep_alive = connection is not None and _has_token(connection, "keep-alive")
    seen = set()
    environ_headers = []
    for key in environ_keys:
        if key in seen or key in ("content-type", "content-length"):
            continue
        seen.add(key)
        name = _environ_names.get(key)
        if name is None:
            name = "HTTP_" + key.upper().replace("-", "_")
            if len(_environ_names) < _REMEMBERED:
                _environ_names[key] = name
        environ_headers.append((name, headers[key]))
    # RFC 9110 10.1.1: a server MUST ignore 100-continue in an HTTP/1.0 request.
    expect = version == "HTTP/1.1" and headers.get("expect", "").lower() == "100-continue"
    return _Request(method, target, raw_target, version, headers, environ_headers,
                    content_length, chunked, keep_alive, expect)


class Body:
    """`wsgi.input`: the request body, never more than Content-Length or the chunks."""

    def __init__(self, conn: Connection, request: _Request) -> None:
        self.conn = conn
        self.chunked = request.chunked
        self.remaining = request.content_length or 0
        self.limit = conn.options.max_request_body
        self.received = 0
        self.done = not request.chunked and self.remaining == 0
        self.expect_continue = request.expect_continue and not self.done
        self.response_started = False
        self.chunk_left = 0

    # -- PEP 3333 interface

    def read(self, size: Optional[int] = -1) -> bytes:
        if size is None or size < 0:
            parts = []
            while True:
                part = self._read_some(RECV_SIZE)
                if not part:
                    return b"".join(parts)
                parts.append(part)
        out = []
        while size > 0:
            part = self._read_some(size)
            if not part:
                break
            out.append(part)
            size -= len(part)
        return b"".join(out)

    def readline(self, size: Optional[int] = -1) -> bytes:
        limit = RECV_SIZE if size is None or size < 0 else size
        line = b""
        while len(line) < limit:
            part = self._read_some(limit - len(line), until_newline=True)
            if not part:
                break
            line += part
            if line.endswith(b"\n"):
                break
        return line

    def readlines(self, hint: Optional[int] = -1) -> list:
        return list(iter(self.readline, b""))

    def __iter__(self) -> Any:
        return iter(self.readline, b"")

    # -- framing

    def _read_some(self, size: int, until_newline: bool = False) -> bytes:
        if self.done:
            return b""
        self._continue()
        if self.chunked:
            if self.chunk_left == 0:
                self.chunk_left = self._next_chunk_size()
                if self.chunk_left == 0:
                    self.done = True
                    return b""
            want = min(size, self.chunk_left)
        else:
            want = min(size, self.remaining)
        data = self._take(want, until_newline)
        if self.chunked:
            self.chunk_left -= len(data)
            if self.chunk_left == 0:
                self._expect_crlf()
        else:
            self.remaining -= len(data)
            if self.remaining == 0:
                self.done = True
        self.received += len(data)
        if self.limit is not None and self.received > self.limit:
            raise Refusal(413, f"request body above max_request_body {self.limit}")
        return data

    def _continue(self) -> None:
        if self.expect_continue:
            self.expect_continue = False
            if not self.response_started:
                self.conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _fill(self) -> None:
        data = self.conn.recv(self.conn.options.socket_timeout)
        if not data:
            raise _ClientGone()
        self.conn.buf += data

    def _take(self, size: int, until_newline: bool) -> bytes:
        conn = self.conn
        if not conn.buf:
            self._fill()
        buf = conn.buf
        if until_newline:
            newline = buf.find(b"\n", 0, size)
            if newline >= 0:
                size = newline + 1
        data, conn.buf = buf[:size], buf[size:]
        return data

    def _line(self, limit: int = 4096) -> bytes:
        conn = self.conn
        while True:
            end = conn.buf.find(b"\r\n")
            if end >= 0:
                line, conn.buf = conn.buf[:end], conn.buf[end + 2:]
                return line
            if len(conn.buf) > limit or b"\n" in conn.buf:
                raise Refusal(400, "malformed chunked encoding")
            self._fill()

    def _next_chunk_size(self) -> int:
        match = _CHUNK_SIZE.fullmatch(self._line())
        if match is None:
            raise Refusal(400, "invalid chunk size")
        size = int(match.group(1), 16)
        if size == 0:
            self._discard_trailers()
        return size

    def _expect_crlf(self) -> None:
        if self._line(limit=2) != b"":
            raise Refusal(400, "chunk data longer than its size")

    def _discard_trailers(self) -> None:
        for _ in range(100):
            line = self._line()
            if not line:
                return
            if _HEADER_BLOCK.fullmatch(line + b"\r\n") is None:
                raise Refusal(400, "malformed trailer field")
        raise Refusal(431, "too many trailer fields")

    def finish(self) -> bool:
        """Read away what the app left unread, if little; False = close instead."""
        if self.done:
            return True
        if self.expect_continue:  # the client waits for 100 Continue: we never sent it
            return False
        try:
            budget = DISCARD_LIMIT
            while not self.done and budget > 0:
                budget -= len(self._read_some(min(budget, RECV_SIZE)))
        except (Refusal, _ClientGone):
            return False
        return self.done


class FileWrapper:
    """`wsgi.file_wrapper` (PEP 3333, "Optional Platform-Specific File Handling"): the
    file's content in blocks of `blksize` bytes, sent like any other body (TLS has no
    sendfile); `close()` closes the file, and the server calls it at the end."""

    __slots__ = ("blksize", "filelike")

    def __init__(self, filelike: Any, blksize: int = 65536) -> None:
        self.filelike = filelike
        self.blksize = blksize

    def __iter__(self) -> FileWrapper:
        return self

    def __next__(self) -> bytes:
        data = self.filelike.read(self.blksize)
        if data:
            return data
        raise StopIteration

    def close(self) -> None:
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()


def _not_bytes(data: Any) -> None:
    """PEP 3333: the body is bytes; anything else is the app's error (raised before
    the head is sent, when it comes first)."""
    if not isinstance(data, bytes):
        raise TypeError(f"the app's response body holds {type(data).__name__}, not bytes "
                        "(PEP 3333)")


# Status lines and response header names found valid, remembered (a few thousand at
# most): an app sends the same few again and again, and a set lookup costs less than
# a regular expression. Header values are checked every time (and never kept: they
# may be cookies).
_valid_statuses: set = set()
_valid_names: set = set()
_REMEMBERED = 4096


def _check_status(status: Any) -> None:
    if not isinstance(status, str) or not _STATUS.fullmatch(status):
        raise ValueError(f"invalid status line {status!r}")
    if len(_valid_statuses) < _REMEMBERED:
        _valid_statuses.add(status)


def _check_header(name: Any, value: Any) -> None:
    if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name) or \
            not isinstance(value, str) or _BAD_VALUE.search(value):
        raise ValueError(f"invalid response header {name!r}: {value!r}")
    if type(name) is str and len(_valid_names) < _REMEMBERED:
        _valid_names.add(name)


class _Response:
    """start_response(), the legacy write(), and sending the app's iterable."""

    def __init__(self, conn: Connection, request: _Request, body: Body) -> None:
        self.conn = conn
        self.request = request
        self.body = body
        self.status: Optional[str] = None
        self.headers: list = []
        self.head_sent = False
        self.status_code = 0
        self.body_bytes = 0  # bytes of the body handed to the client socket
        self.keep_alive = request.keep_alive
        self.length: Optional[int] = None
        self.chunked = False
        self.bodyless = request.method == "HEAD"

    def start_response(self, status: str, headers: list, exc_info: Any = None) -> Callable:
        if exc_info is not None:
            try:
                if self.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response() called twice without exc_info")
        if status not in _valid_statuses:
            _check_status(status)
        for name, value in headers:
            if name not in _valid_names or type(value) is not str or _BAD_VALUE.search(value):
                _check_header(name, value)
        self.status = status
        self.headers = headers
        self.status_code = int(status[:3])
        return self.write

    def _head(self, whole_body: Optional[int]) -> bytes:
        """The status line and headers, deciding framing and keep-alive; `whole_body` is
        the body's length when the app's whole body is at hand (None while it streams).
        Raises for an invalid Content-Length: nothing is sent then."""
        conn = self.conn
        options = conn.options
        code = self.status_code
        no_body = code in (204, 304) or code < 200
        head_request = self.bodyless
        self.bodyless = head_request or no_body
        has_date = has_connection = False
        lines = [f"{options.max_http_version} {self.status}\r\n"]
        capitalize = options.capitalize_response_headers
        for name, value in self.headers:
            lower, capitalized = _response_names.get(name) or _response_name(name)
            if lower == "content-length":
                digits = value.strip(" \t")
                if self.length is not None or not (digits.isdigit() and digits.isascii()):
                    raise ValueError(f"invalid or repeated Content-Length {value!r}")
                self.length = int(digits)
            elif lower == "connection":
                has_connection = True
                if _has_token(value, "close"):
                    self.keep_alive = False
            elif lower == "date":
                has_date = True
            lines.append(f"{capitalized if capitalize else name}: {value}\r\n")
        if not has_date:
            lines.append(f"Date: {_clock.date()}\r\n")
        if self.length is None and not no_body:
            if whole_body is not None and (whole_body or not head_request):
                # RFC 9110 9.3.2: for HEAD only a real length, never an invented 0
                self.length = whole_body
                lines.append(f"Content-Length: {whole_body}\r\n")
            elif head_request:
                pass  # the length of a body never produced is not known: say nothing
            elif self.request.version == "HTTP/1.1" and \
                    options.max_http_version == "HTTP/1.1":
                self.chunked = True
                lines.append("Transfer-Encoding: chunked\r\n")
            else:
                self.keep_alive = False  # the body ends when the connection does
        if conn.closing or not self.keep_alive:
            self.keep_alive = False
            if not has_connection:
                lines.append("Connection: close\r\n")
        elif self.request.version == "HTTP/1.0" and not has_connection:
            lines.append("Connection: keep-alive\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("latin-1")

    def write(self, data: bytes) -> None:
        """The legacy write() callable: send at once, headers first."""
        if self.status is None:
            raise AssertionError("write() before start_response()")
        if type(data) is not bytes:
            _not_bytes(data)
        self._send([data], final=False)

    def send(self, result: Iterable[bytes]) -> None:
        if type(result) is list and not self.head_sent and self.status is not None:
            for data in result:  # the common case: checked, then one sendall()
                if type(data) is not bytes:
                    _not_bytes(data)
            self._send(result, final=True)
            return
        pending: list = []
        size = 0
        minimum = self.conn.options.minimum_chunk_size
        for data in result:
            if self.status is None:
                raise AssertionError("the app yielded data before start_response()")
            if type(data) is not bytes:
                _not_bytes(data)
            if not data:
                continue
            pending.append(data)
            size += len(data)
            if size >= minimum:
                self._send(pending, final=False)
                pending, size = [], 0
        if self.status is None:
            raise AssertionError("the app returned without calling start_response()")
        self._send(pending, final=True)

    def _send(self, parts: list, final: bool) -> None:
        """Send `parts` (checked to be bytes), the head first if not sent yet. Every
        check comes before the first byte leaves, so a failing one can still be
        answered with a 500."""
        size = len(parts[0]) if len(parts) == 1 else sum(map(len, parts))
        out = []
        if not self.head_sent:
            out.append(self._head(size if final else None))
        total = self.body_bytes
        if size and not self.bodyless:
            total += size
            if self.length is not None and total > self.length:
                self.keep_alive = False
                raise ValueError("the app sent more bytes than its Content-Length")
            if self.chunked:
                out.append(b"%x\r\n" % size)
                out += parts
                out.append(b"\r\n")
            else:
                out += parts
        if final:
            if self.chunked:
                out.append(b"0\r\n\r\n")
            elif self.length is not None and total < self.length and not self.bodyless:
                self.keep_alive = False  # the client still waits for bytes: end it
        if out:
            self.head_sent = True
            self.body.response_started = True
            self.conn.send(b"".join(out) if len(out) > 1 else out[0])
        self.body_bytes = total

    def fail(self) -> None:
        """The app raised: a 500 if nothing was sent yet, else cut the response."""
        request = self.request
        log.error("application error: %s %s", request.method,
                  printable(request.raw_target, 200), exc_info=True)
        self._answer_instead(500)

    def refuse(self, refusal: Refusal) -> None:
        refusal_log.info("refused request body: client=%s status=%d reason=%s",
                         self.conn.peer, refusal.status, refusal.reason)
        self._answer_instead(refusal.status)

    def _answer_instead(self, status: int) -> None:
        self.keep_alive = False
        if self.head_sent:
            return  # too late for another status: closing tells the client
        self.head_sent = True
        self.status_code = status
        self.body_bytes = 0
        with contextlib.suppress(_ClientGone):
            if self.request.method == "HEAD":  # RFC 9110 9.3.2: no content
                self.conn.send(_REFUSAL_HEADS[status])
            else:
                self.conn.send(_REFUSALS[status])
                self.body_bytes = _REFUSAL_BODY[status]
