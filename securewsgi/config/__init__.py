"""Configuration: a service file (YAML or INI) in, one validated, immutable `Config` out.

``schema`` holds the dataclasses (`Config` and one per section), ``loader`` reads and
validates files into them, ``dump`` writes a `Config` back out (``--print-config``).
"""
from __future__ import annotations

from .loader import load_config
from .schema import (
    AllowEntry,
    AppConfig,
    AuthorizationConfig,
    Config,
    IdentityConfig,
    LoggingConfig,
    MetricsConfig,
    RuleConfig,
    ServerConfig,
    TLSConfig,
)

__all__ = ["AllowEntry", "AppConfig", "AuthorizationConfig", "Config", "IdentityConfig",
           "LoggingConfig", "MetricsConfig", "RuleConfig", "ServerConfig", "TLSConfig",
           "load_config"]
