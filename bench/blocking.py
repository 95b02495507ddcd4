"""The blocking-app test's app: hello.py's answer after `time.sleep(0.2)`.

It stands for an app that blocks in a library (a database driver, `requests`): a
server keeps its throughput only if a sleeping request does not stop the others. The
threads engine runs it in its pool; the eventlet engine needs `monkey_patch` to turn
the sleep into a green one.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from hello import BODY, HEADERS

SLEEP_SECONDS = 0.2


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """Sleep, then answer like hello.app."""
    time.sleep(SLEEP_SECONDS)
    start_response("200 OK", list(HEADERS))
    return [BODY]
