"""Test app for start-up and systemd tests: answers JSON with this worker's pid and the
systemd variables it inherited (all must be gone). GET /slow?seconds=N answers after
N seconds (time.sleep: green when eventlet monkey-patches), saying so in the log first.

With GATE_DIR set, importing it writes GATE_DIR/importing-PID and then waits (at most
30 s) for GATE_DIR/open: a test holds every worker in start-up and can show that
nothing reports "ready" before the workers serve.
"""
import json
import os
import time
from pathlib import Path
from urllib.parse import parse_qs

_GATE = os.environ.get("GATE_DIR")
if _GATE:
    (Path(_GATE) / f"importing-{os.getpid()}").touch()
    _deadline = time.monotonic() + 30
    while not (Path(_GATE) / "open").exists() and time.monotonic() < _deadline:
        time.sleep(0.02)

_VARIABLES = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


def app(environ, start_response):
    if environ.get("PATH_INFO") == "/slow":
        seconds = float(parse_qs(environ.get("QUERY_STRING", "")).get("seconds", ["1"])[0])
        environ["wsgi.errors"].write(f"slow request started in pid {os.getpid()}\n")
        environ["wsgi.errors"].flush()
        time.sleep(seconds)
    body = json.dumps({"pid": os.getpid(),
                       "environ": {name: os.environ.get(name) for name in _VARIABLES}}
                      ).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
