"""One access line per request: who (address, certificate CN), how (TLS version),
what (method, path), and the outcome (status, body bytes, seconds).

Called by the HTTP protocol once a response is complete, so it sees the real status
and byte count without wrapping the app. It stays off the `logging` machinery, which
costs more per request than the rest of the line: the line is formatted directly and
written with one `os.write()`, which also keeps lines from several workers whole.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional, Union

from ..text import printable

log = logging.getLogger("securewsgi.access")
# Bound at import, before the engine monkey-patches `os`: a log file write is fast and
# must not go through the green wrapper's extra hub round-trip per request.
_write = os.write


class AccessLogWriter:
    """`writer(environ, status, body_bytes, seconds)` appends one line to the target."""

    def __init__(self, target: Union[str, Path], fmt: str = "text",
                 log_x_forwarded_for: bool = True) -> None:
        self.target = target
        self.json = fmt == "json"
        self.log_x_forwarded_for = log_x_forwarded_for
        self.fd = -1
        self.own_fd = False
        self._second = -1
        self._stamp = ""
        self._failed = False
        self.reopen()

    def reopen(self) -> None:
        """(Re)open the target; a rotated log file is reopened on SIGHUP."""
        if self.target in ("-", "stdout"):
            self.fd, self.own_fd = 1, False
            return
        if self.target == "stderr":
            self.fd, self.own_fd = 2, False
            return
        fd = os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        old, self.fd, self.own_fd = (self.fd if self.own_fd else -1), fd, True
        if old >= 0:
            os.close(old)

    def __call__(self, environ: dict, status: int, size: int, seconds: float) -> None:
        line = self.json_line(environ, status, size, seconds) if self.json else \
            self.text_line(environ, status, size, seconds)
        try:
            _write(self.fd, line.encode("utf-8", "backslashreplace"))
        except OSError as exc:
            if not self._failed:  # say it once; keep serving
                self._failed = True
                log.error("cannot write the access log %s: %s", self.target, exc)

    def _time(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((now - second) * 1000):03d}Z"

    def _fields(self, environ: dict) -> tuple:
        get = environ.get
        client = get("REMOTE_ADDR", "-")
        if self.log_x_forwarded_for:
            forwarded = get("HTTP_X_FORWARDED_FOR")
            if forwarded:
                client = f"{forwarded.replace(' ', '')},{client}"
        peer = get("securewsgi.peer")
        cn = (peer.common_name or "-") if peer is not None else "-"
        path = get("securewsgi.original_path") or get("RAW_PATH_INFO") or get("PATH_INFO", "")
        query = get("QUERY_STRING")
        if query:
            path = f"{path}?{query}"
        method = get("REQUEST_METHOD", "-")
        # Nearly every line has nothing to escape: one check of the client-chosen
        # fields together, and `_field` for each only when something needs it.
        chosen = f"{client}{cn}{method}{path}"
        if not chosen.isprintable() or " " in chosen or "\\" in chosen:
            client, cn, method, path = _field(client), _field(cn), _field(method), _field(path)
        return (client, cn, get("SSL_PROTOCOL") or "-", method, path,
                get("SERVER_PROTOCOL", "-"))

    def text_line(self, environ: dict, status: int, size: int, seconds: float) -> str:
        client, cn, tls, method, path, protocol = self._fields(environ)
        return (f'{self._time()} {client} {cn} {tls} "{method} {path} {protocol}" '
                f'{status} {size} {seconds:.4f}\n')

    def json_line(self, environ: dict, status: int, size: int, seconds: float) -> str:
        client, cn, tls, method, path, protocol = self._fields(environ)
        record: dict[str, Any] = {
            "time": self._time(), "level": "INFO", "logger": "securewsgi.access",
            "client": client, "cn": cn, "tls": tls, "method": method, "path": path,
            "protocol": protocol, "status": status, "bytes": size,
            "duration": round(seconds, 6),
        }
        return json.dumps(record, ensure_ascii=False) + "\n"

    def close(self) -> None:
        if self.own_fd and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _field(text: str) -> str:
    """One field of a text line: escaped (`printable`), and without spaces, which
    separate the fields (a space is written as in a URL, ``%20``)."""
    return printable(text).replace(" ", "%20")


def make_writer(target: Optional[Union[str, Path]], fmt: str,
                log_x_forwarded_for: bool) -> Optional[AccessLogWriter]:
    return None if target is None else AccessLogWriter(target, fmt, log_x_forwarded_for)
