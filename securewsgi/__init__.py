"""securewsgi: serve any WSGI application over TLS or mutual TLS.

The public API is small and imported lazily, so that ``import securewsgi`` (for the
client helper or the middleware under another server) never pulls in eventlet.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_config": "securewsgi.config.loader",
    "Config": "securewsgi.config.schema",
    "ConfigError": "securewsgi.errors",
    "SecureWSGIError": "securewsgi.errors",
    "serve": "securewsgi.server.service",
    "PeerIdentity": "securewsgi.tls.peer",
    "IdentityMiddleware": "securewsgi.identity.middleware",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'securewsgi' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
