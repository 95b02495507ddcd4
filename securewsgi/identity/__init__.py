"""Identity: who is calling, and may they? `IdentityMiddleware` (``middleware``) with
the forwarded-certificate trust (``forwarded``), path normalisation (``paths``) and
the compiled authorization rules (``authz``). It needs no securewsgi server: the same
middleware runs in a Paste pipeline (`filter_factory`) and under other servers.

`PeerIdentity`, the parsed certificate it works with, comes from the TLS layer
(`securewsgi.tls.peer`) and is re-exported here.
"""
from __future__ import annotations

from ..tls.peer import PeerIdentity
from .middleware import IdentityMiddleware, filter_factory

__all__ = ["IdentityMiddleware", "PeerIdentity", "filter_factory"]
