"""HTTP/1.1 for one connection: a strict request parser and a lean WSGI response writer.

Why not `eventlet.wsgi`'s protocol: it parses headers with the `email` package (a large
share of its CPU per request), accepts requests that proxies disagree on (obs-fold,
bare LF, control bytes, duplicate Content-Length: the raw material of request
smuggling), has no deadline for a request head that trickles in, and writes each
response in several `send()` calls (each one a TLS record and a syscall).

This module is engine-neutral: it needs a socket with `recv`, `sendall`, `settimeout`
and `shutdown`, as both green and blocking sockets have. The engine owns concurrency;
the `Connection` object tells it when the connection is idle, so a graceful stop can
close idle connections and let active ones finish.

Every request is refused the same way: a short status-only response with
``Connection: close``, then the connection is closed (see `_REFUSALS` for the table).
"""
from __future__ import annotations

import contextlib
import logging
import re
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, Callable, Optional
from urllib.parse import unquote

from .config import ServerConfig
from .logs import RateLimitedLog

log = logging.getLogger("securewsgi.http")
# Malformed requests are triggered by clients at will: rate-limit their log lines.
refusal_log = RateLimitedLog(logging.getLogger("securewsgi.http"))

WSGIApp = Callable[..., Iterable[bytes]]
AccessLogger = Callable[[dict, int, int, float], None]

_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
# METHOD SP request-target SP HTTP/x.y -- no control bytes or spaces in the target.
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([^\x00-\x20\x7f]+) HTTP/(\d)\.(\d)")
# name ":" OWS value OWS, CRLF-terminated; values allow HTAB and obs-text, no controls.
_HEADER_BLOCK = re.compile(rb"(?:" + _TOKEN + rb":[^\x00-\x08\x0a-\x1f\x7f]*\r\n)*")
_DIGITS = re.compile(rb"[0-9]{1,18}")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;[^\x00-\x08\x0a-\x1f\x7f]*)?")
_STATUS = re.compile(r"[1-5][0-9][0-9] [^\x00-\x1f\x7f]*")
_HEADER_NAME = re.compile(_TOKEN.decode())
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

DISCARD_LIMIT = 64 * 1024  # unread request body we read away to keep the connection
RECV_SIZE = 65536


class Refusal(Exception):
    """A request that gets a status-only answer and ends the connection."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _ClientGone(Exception):
    """The client closed or broke the connection: nothing to answer."""


_REASONS = {400: "Bad Request", 408: "Request Timeout", 413: "Content Too Large",
            414: "URI Too Long", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 501: "Not Implemented",
            505: "HTTP Version Not Supported"}


def _refusal_bytes(status: int) -> bytes:
    body = f"{status} {_REASONS[status]}\n".encode()
    return (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


_REFUSALS = {status: _refusal_bytes(status) for status in _REASONS}


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
_capitalized: dict[str, str] = {}


def _capitalize(name: str) -> str:
    """`content-TYPE` -> `Content-Type`, as eventlet does (cached: names repeat)."""
    cached = _capitalized.get(name)
    if cached is None:
        cached = "-".join(part.capitalize() for part in name.split("-"))
        if len(_capitalized) < 1024:
            _capitalized[name] = cached
    return cached


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
        with self._ending():
            while not self.closing:
                head = self._read_head()
                if head is None or not self._serve_one(head):
                    break

    def handle(self, head: bytes) -> bool:
        """Answer one request whose head an event-driven engine already took from
        `buf` (`take_head`); False when the connection must end afterwards."""
        with self._ending():
            return self._serve_one(head)
        return False  # reached only when `_ending` swallowed an exception

    @contextlib.contextmanager
    def _ending(self) -> Iterator[None]:
        """How a connection ends on errors: a refusal is answered, a vanished or
        silent client is not."""
        try:
            yield
        except Refusal as refusal:
            self._refuse(refusal)
        except _ClientGone:
            pass
        except socket.timeout:
            log.debug("connection idle too long: client=%s", self.peer)
        except OSError as exc:  # resets, TLS alerts from the peer
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
        with contextlib.suppress(OSError):
            self.sock.sendall(_REFUSALS[refusal.status])

    # ---------------------------------------------------------------- reading

    def recv(self, timeout: float) -> bytes:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(RECV_SIZE)
        except ConnectionResetError:
            raise _ClientGone() from None

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
            except socket.timeout:
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
        except (_ClientGone, OSError):
            response.keep_alive = False
        except Refusal as refusal:  # from wsgi.input: a body too large or malformed
            response.refuse(refusal)
        except Exception:
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
                          _printable(request.target))


@dataclass
class _Request:
    method: str
    target: str
    version: str
    headers: dict  # lower-case name -> value (str, latin-1), duplicates joined by ","
    environ_headers: list  # (HTTP_NAME, value)
    content_length: Optional[int]
    chunked: bool
    keep_alive: bool
    expect_continue: bool


def _check_partial_head(buf: bytes, options: ServerConfig) -> None:
    """Refuse early what can never become a valid head, before reading more of it."""
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
    lines = block.split(b"\r\n")
    lines.pop()  # the empty string after the last CRLF
    if len(lines) > options.max_header_count:
        raise Refusal(431, f"more than {options.max_header_count} header fields")
    if len(block) > options.max_header_bytes:
        raise Refusal(431, "header section too large")
    target = raw_target.decode("latin-1")
    if target[0] != "/" and not (target == "*" and method == b"OPTIONS"):
        raise Refusal(400, "request target must be a path (no absolute or authority form)")
    version = "HTTP/1.1" if minor == b"1" else "HTTP/1.0"
    headers: dict = {}
    environ_headers = []
    content_lengths = []
    for line in lines:
        name, _, value = line.partition(b":")
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        if key == "content-length":
            content_lengths.append(text)
        if key in headers:
            if key in ("host", "content-length", "transfer-encoding"):
                raise Refusal(400, f"duplicate {key} header")
            headers[key] = f"{headers[key]},{text}"
        else:
            headers[key] = text
        if "_" not in key:  # "X_Forwarded" must not be confused with "X-Forwarded"
            environ_headers.append(key)
    return _make_request(method.decode("ascii"), target, version, headers, environ_headers,
                         content_lengths, options)


def _make_request(method: str, target: str, version: str, headers: dict,
                  environ_keys: list, content_lengths: list, options: ServerConfig
                  ) -> _Request:
    content_length = None
    if content_lengths:
        if not _DIGITS.fullmatch(content_lengths[0].encode("latin-1")):
            raise Refusal(400, "invalid Content-Length")
        content_length = int(content_lengths[0])
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
    if version == "HTTP/1.1" and "host" not in headers:
        raise Refusal(400, "HTTP/1.1 request without Host")
    limit = options.max_request_body
    if limit is not None and content_length is not None and content_length > limit:
        raise Refusal(413, f"Content-Length {content_length} above max_request_body {limit}")
    connection = headers.get("connection", "").lower()
    if not options.keepalive:
        keep_alive = False
    elif version == "HTTP/1.1" and options.max_http_version == "HTTP/1.1":
        keep_alive = "close" not in connection
    else:  # HTTP/1.0 keeps a connection only when asked to
        keep_alive = "keep-alive" in connection
    seen = set()
    environ_headers = []
    for key in environ_keys:
        if key in seen or key in ("content-type", "content-length"):
            continue
        seen.add(key)
        environ_headers.append(("HTTP_" + key.upper().replace("-", "_"), headers[key]))
    expect = headers.get("expect", "").lower() == "100-continue"
    return _Request(method, target, version, headers, environ_headers, content_length,
                    chunked, keep_alive, expect)


def _printable(text: str, limit: int = 200) -> str:
    if text.isprintable() and len(text) <= limit:
        return text
    return text[:limit].encode("unicode_escape", "backslashreplace").decode("ascii")


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
                self.conn.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

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
        except (Refusal, _ClientGone, OSError):
            return False
        return self.done


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
        self.body_bytes = 0
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
        if not isinstance(status, str) or not _STATUS.fullmatch(status):
            raise ValueError(f"invalid status line {status!r}")
        for header in headers:
            name, value = header
            if not _HEADER_NAME.fullmatch(name) or not isinstance(value, str) or \
                    _BAD_VALUE.search(value):
                raise ValueError(f"invalid response header {name!r}: {value!r}")
        self.status = status
        self.headers = headers
        self.status_code = int(status[:3])
        return self.write

    def _head(self) -> bytes:
        """The status line and headers, deciding framing and keep-alive."""
        conn = self.conn
        options = conn.options
        code = self.status_code
        no_body = code in (204, 304) or code < 200
        self.bodyless = self.bodyless or no_body
        names = set()
        lines = [f"{options.max_http_version} {self.status}\r\n"]
        capitalize = options.capitalize_response_headers
        for name, value in self.headers:
            lower = name.lower()
            names.add(lower)
            if lower == "content-length":
                self.length = int(value) if value.isdigit() else None
            elif lower == "connection" and value.lower() == "close":
                self.keep_alive = False
            lines.append(f"{_capitalize(name) if capitalize else name}: {value}\r\n")
        if "date" not in names:
            lines.append(f"Date: {_clock.date()}\r\n")
        if self.length is None and not no_body:
            if self.request.version == "HTTP/1.1" and options.max_http_version == "HTTP/1.1":
                self.chunked = True
                lines.append("Transfer-Encoding: chunked\r\n")
            elif not self.bodyless:
                self.keep_alive = False  # the body ends when the connection does
        if conn.closing or not self.keep_alive:
            self.keep_alive = False
            if "connection" not in names:
                lines.append("Connection: close\r\n")
        elif self.request.version == "HTTP/1.0":
            lines.append("Connection: keep-alive\r\n")
        lines.append("\r\n")
        self.head_sent = True
        self.body.response_started = True
        return "".join(lines).encode("latin-1")

    def write(self, data: bytes) -> None:
        """The legacy write() callable: send at once, headers first."""
        if self.status is None:
            raise AssertionError("write() before start_response()")
        self._send([data], final=False)

    def send(self, result: Iterable[bytes]) -> None:
        if type(result) is list and not self.head_sent and self.status is not None:
            self._send(result, final=True)  # the common case: one sendall()
            return
        pending: list = []
        size = 0
        minimum = self.conn.options.minimum_chunk_size
        for data in result:
            if self.status is None:
                raise AssertionError("the app yielded data before start_response()")
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
        out = []
        if not self.head_sent:
            if final and self.length is None and self.status_code >= 200 and \
                    self.status_code not in (204, 304) and not self.headers_have_length():
                self.length = sum(map(len, parts))
                self.headers = [*self.headers, ("Content-Length", str(self.length))]
            out.append(self._head())
        if parts and not self.bodyless:
            data = b"".join(parts) if len(parts) > 1 else parts[0]
            if not isinstance(data, bytes):
                raise TypeError(f"the app yielded {type(data).__name__}, not bytes")
            self.body_bytes += len(data)
            if self.length is not None and self.body_bytes > self.length:
                self.keep_alive = False
                raise ValueError("the app sent more bytes than its Content-Length")
            if self.chunked:
                out += [b"%x\r\n" % len(data), data, b"\r\n"]
            else:
                out.append(data)
        if final:
            if self.chunked:
                out.append(b"0\r\n\r\n")
            elif self.length is not None and self.body_bytes < self.length \
                    and not self.bodyless:
                self.keep_alive = False  # the client still waits for bytes: end it
        if out:
            self.conn.sock.sendall(b"".join(out) if len(out) > 1 else out[0])

    def headers_have_length(self) -> bool:
        return any(name.lower() == "content-length" for name, _ in self.headers)

    def fail(self) -> None:
        """The app raised: an empty 500 if nothing was sent yet, else cut the response."""
        request = self.request
        log.error("application error: %s %s", request.method, _printable(request.target),
                  exc_info=True)
        self._answer_instead(500)

    def refuse(self, refusal: Refusal) -> None:
        refusal_log.info("refused request body: client=%s status=%d reason=%s",
                         self.conn.peer, refusal.status, refusal.reason)
        self._answer_instead(refusal.status)

    def _answer_instead(self, status: int) -> None:
        self.keep_alive = False
        if self.head_sent:
            return  # too late for another status: closing tells the client
        self.status_code = status
        with contextlib.suppress(OSError):
            self.conn.sock.sendall(_REFUSALS[status])
