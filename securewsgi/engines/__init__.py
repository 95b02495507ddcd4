"""Engines: what runs many connections at once. Each engine is one module here.

An engine owns concurrency and nothing else: it accepts on the listening socket that
`server/service.py` bound, runs each connection's TLS handshake under its own deadline, hands
the connection to the engine-neutral `http11.Connection`, and stops gracefully. Every
engine module provides the same two functions:

``prepare_process(config: ServerConfig, forked: bool) -> None``
    Called in the worker before the application is imported (eventlet's monkey
    patching must happen first; a forked worker may need a fresh event loop).
``run(listener, app, config, tls, *, access_log, proxy_from, on_signal, every,
at_start, on_connections) -> int``
    Serve until SIGTERM/SIGINT, then stop gracefully; return the exit code. The
    arguments are described in `eventlet.run`.

What both engines share (admission of unfinished handshakes, the connection's
environ, closing a TLS connection) lives in `admission.py` and `common.py`, so a third
engine (asyncio) is one more file.
"""
from __future__ import annotations

import importlib
from types import ModuleType

NAMES = ("eventlet", "threads")


def load(name: str) -> ModuleType:
    """The engine module for `server.engine`; imported only when serving, so a worker
    on the threads engine never imports eventlet."""
    if name not in NAMES:
        raise ValueError(f"unknown engine {name!r}")
    return importlib.import_module(f"{__name__}.{name}")
