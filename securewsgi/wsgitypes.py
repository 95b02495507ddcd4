"""The WSGI types the package annotates with, defined once (PEP 3333)."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Callable

#: A WSGI application: ``app(environ, start_response)`` returning the body's chunks.
WSGIApp = Callable[..., Iterable[bytes]]
