"""The one WSGI app every benchmark target serves: 13 bytes with a Content-Length.

It is as small as an app can be so that the numbers measure the server (TLS, HTTP
parsing, the per-request machinery), not the application.
"""
from __future__ import annotations

from typing import Any, Callable

BODY = b"hello, world\n"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """Answer every request with `BODY`."""
    start_response("200 OK", list(HEADERS))
    return [BODY]


application = app  # the name uwsgi and some servers look for by default
