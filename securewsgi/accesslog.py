"""One access line per request: who (address, certificate CN), how (TLS version),
what (method, path), and the outcome (status, bytes, duration).

A plain WSGI wrapper, outermost in the pipeline, so it is engine-neutral and sees the
final status even when the identity middleware refuses the request.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any, Callable, Optional

from .logs import ACCESS_LOGGER

log = logging.getLogger(ACCESS_LOGGER)
errors = logging.getLogger("securewsgi.app")
WSGIApp = Callable[..., Iterable[bytes]]


class AccessLog:
    """Wrap `app`; log each request once its response has been fully sent."""

    def __init__(self, app: WSGIApp, log_x_forwarded_for: bool = True) -> None:
        self.app = app
        self.log_x_forwarded_for = log_x_forwarded_for

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        if log.disabled:
            return self.app(environ, start_response)
        started = time.monotonic()
        status: list[str] = ["500"]

        def capture(status_line: str, headers: list[Any], exc_info: Any = None) -> Callable:
            status[0] = status_line.split(" ", 1)[0]
            return start_response(status_line, headers, exc_info)

        try:
            body = self.app(environ, capture)
        except Exception:
            self._write(environ, "500", 0, started)
            raise
        if isinstance(body, list):  # the common case: no generator wrapper needed
            self._write(environ, status[0], sum(map(len, body)), started)
            return body
        return _Counted(body, lambda n: self._write(environ, status[0], n, started))

    def _write(self, environ: dict[str, Any], status: str, size: int, started: float) -> None:
        peer = environ.get("securewsgi.peer")
        client = f"{environ.get('REMOTE_ADDR', '-')}"
        forwarded = environ.get("HTTP_X_FORWARDED_FOR")
        if self.log_x_forwarded_for and forwarded:
            client = f"{forwarded.replace(' ', '')},{client}"
        path = environ.get("securewsgi.original_path") or environ.get(
            "RAW_PATH_INFO", environ.get("PATH_INFO", ""))
        if environ.get("QUERY_STRING"):
            path = f"{path}?{environ['QUERY_STRING']}"
        fields = {
            "client": client,
            "cn": (peer.common_name or "-") if peer is not None else "-",
            "tls": environ.get("SSL_PROTOCOL") or "-",
            "method": environ.get("REQUEST_METHOD", "-"),
            "path": _printable(path),
            "protocol": environ.get("SERVER_PROTOCOL", "-"),
            "status": int(status) if status.isdigit() else status,
            "bytes": size,
            "duration": round(time.monotonic() - started, 6),
        }
        log.info("access", extra=fields)


class _Counted:
    """Iterates the app's body, counting bytes; logs on close() (PEP 3333 guarantees
    the server calls it), and forwards close() to the app's iterable."""

    def __init__(self, body: Iterable[bytes], done: Callable[[int], None]) -> None:
        self.body = body
        self.done: Optional[Callable[[int], None]] = done
        self.size = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.body:
            self.size += len(chunk)
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            if self.done is not None:
                done, self.done = self.done, None
                done(self.size)


def _printable(text: str) -> str:
    """Escape control characters so a request path cannot forge log lines."""
    if text.isprintable():
        return text
    return text.encode("unicode_escape", "backslashreplace").decode("ascii")


__all__ = ["AccessLog"]
