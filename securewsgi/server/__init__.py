"""The server: `serve(config)` wires config -> TLS -> listener -> app -> engine
(``service``), with the supervisor of the workers, the listening socket, systemd,
the access log, the application loader and the Paste Deploy server factory beside it.
"""
from __future__ import annotations

from .service import plain_http_warnings, prepare, serve, summary_lines

__all__ = ["plain_http_warnings", "prepare", "serve", "summary_lines"]
