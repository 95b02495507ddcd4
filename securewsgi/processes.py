"""Whether a process is still there, for a stale PID file and a dead worker's metrics."""
from __future__ import annotations

import os


def exists(pid: int) -> bool:
    """True while `pid` names a live process (also one of another user, which signal 0
    may not reach: PermissionError still proves it exists)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
