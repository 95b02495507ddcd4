"""Client side: the `requests` session helper (``sessions``) and the connection
diagnosis behind ``securewsgi-check`` (``diagnose``).

``from securewsgi.client import session`` is the helper most users need.
"""
from __future__ import annotations

from .sessions import (
    CONFIG_KEYS,
    ClientConfigError,
    ClientSettings,
    read_client_config,
    session,
    ssl_context,
)

__all__ = ["CONFIG_KEYS", "ClientConfigError", "ClientSettings", "read_client_config",
           "session", "ssl_context"]
