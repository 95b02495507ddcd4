"""wrk, the HTTP/1.1 load generator of every throughput and latency run, with a client
certificate.

Debian's wrk speaks HTTP/1.1 keep-alive but has no client-certificate option, so the
harness preloads a small shim (bench/wrkcert.c) built on first use into bench/.build/.
The shim also makes every connection a full handshake (wrk would resume the previous
session on reconnect) and counts connects, handshakes and resumptions, printed at
exit: the harness checks with them that a keep-alive run reused its connections and
that a new-connection run made one full mutual-TLS handshake per request.

bench/wrk_report.lua prints wrk's numbers as one JSON line and, with WRK_RATE set,
paces requests to a fixed offered rate.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Optional

from .targets import BENCH_DIR, Env

BUILD_DIR = BENCH_DIR / ".build"
SHIM_SOURCE = BENCH_DIR / "wrkcert.c"
SHIM = BUILD_DIR / "wrkcert.so"
SCRIPT = BENCH_DIR / "wrk_report.lua"
OPENSSL_HEADER = Path("/usr/include/openssl/ssl.h")
INSTALL_WRK = "apt-get install -y wrk (or python -m bench --setup as root)"
INSTALL_BUILD = "apt-get install -y gcc libssl-dev (or python -m bench --setup as root)"


def shim_command() -> list[str]:
    return [shutil.which("gcc") or "gcc", "-shared", "-fPIC", "-O2", "-o", str(SHIM),
            str(SHIM_SOURCE), "-ldl", "-lssl"]


def build_shim() -> Optional[str]:
    """Build bench/.build/wrkcert.so when missing or older than its source; the
    reason it cannot be built, or None."""
    if SHIM.exists() and SHIM.stat().st_mtime >= SHIM_SOURCE.stat().st_mtime:
        return None
    if shutil.which("gcc") is None or not OPENSSL_HEADER.exists():
        return f"bench/wrkcert.c needs gcc and libssl-dev to build: {INSTALL_BUILD}"
    BUILD_DIR.mkdir(exist_ok=True)
    try:
        done = subprocess.run(shim_command(), capture_output=True, text=True, timeout=120,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"building bench/wrkcert.c failed: {exc}"
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        return "building bench/wrkcert.c failed: " + (lines[-1] if lines else "gcc failed")
    return None


def missing() -> Optional[str]:
    """Why wrk cannot be used here (not installed, shim not buildable), or None."""
    if shutil.which("wrk") is None:
        return f"wrk not installed: {INSTALL_WRK}"
    return build_shim()


def version() -> str:
    if shutil.which("wrk") is None:
        return "-"
    try:
        done = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "wrk ?"
    first = (done.stdout + done.stderr).strip().splitlines()
    match = re.match(r"wrk (\S+)", first[0]) if first else None
    return f"wrk {match.group(1)}" if match else "wrk ?"


def argv(url: str, connections: int, duration: float, timeout: float,
         new_connections: bool) -> list[str]:
    """One wrk thread (it runs pinned to the one load-generator CPU). With
    `new_connections` every request carries `Connection: close`: the server answers
    and closes, wrk reconnects, each request is a new TCP connection and handshake."""
    seconds = max(1, round(duration))
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout",
               f"{timeout:g}s", "-s", str(SCRIPT)]
    if new_connections:
        command += ["-H", "Connection: close"]
    return [*command, url]


def environment(env: Env, rate: Optional[float] = None) -> dict[str, str]:
    """The shim preloaded, the client certificate named, the pacing rate if any."""
    values = dict(os.environ, LD_PRELOAD=str(SHIM), WRK_CLIENT_CERT=str(env.client_cert),
                  WRK_CLIENT_KEY=str(env.client_key))
    values.pop("WRK_RATE", None)
    if rate:
        values["WRK_RATE"] = f"{rate:g}"
    return values


def shown_environment(rate: bool = False) -> str:
    """The environment as the page shows it (before the command)."""
    text = ("LD_PRELOAD=bench/.build/wrkcert.so WRK_CLIENT_CERT=$BENCH_TMP/pki/alice.pem "
            "WRK_CLIENT_KEY=$BENCH_TMP/pki/alice-key.pem")
    return text + (" WRK_RATE=RATE" if rate else "")


_COUNTS = re.compile(r"wrkcert: connects=(\d+) handshakes=(\d+) resumed=(\d+)")


def parse(stdout: str, stderr: str, connections: int) -> dict[str, Any]:
    """wrk's numbers: requests/s, latency percentiles (ms), errors, and the shim's
    counts for a run with `connections` connections. `connections` in the result
    excludes the one probe connect wrk makes at start-up; `reconnects` are handshakes
    beyond one per connection slot, and `keepalive_share` is the share of requests
    that did not need one."""
    data: Optional[dict[str, Any]] = None
    for line in stdout.splitlines():
        if line.startswith("WRKJSON "):
            try:
                data = json.loads(line[len("WRKJSON "):])
            except ValueError:
                data = None
    result: dict[str, Any] = {"rps": None}
    if data is None:
        return result
    seconds = data["duration_us"] / 1e6
    errors = data["errors"]
    result.update({
        "complete": data["requests"],
        "rps": round(data["requests"] / seconds, 1) if seconds > 0 else None,
        "failed": errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        "non_2xx": errors["status"],
        "errors": {k: v for k, v in errors.items() if v},
        "wall_seconds_wrk": round(seconds, 3),
    })
    if data["requests"]:
        for key in ("p50", "p90", "p99", "p999"):
            result[f"{key}_ms"] = round(data[f"{key}_us"] / 1000, 3)
        result["mean_ms"] = round(data["mean_us"] / 1000, 3)
        result["max_ms"] = round(data["max_us"] / 1000, 3)
    if data.get("rate"):
        result["offered_rps"] = data["rate"]
    counts = _COUNTS.search(stderr)
    if counts:
        connects, handshakes, resumed = (int(g) for g in counts.groups())
        reconnects = max(0, handshakes - connections)
        result.update({"connections": max(0, connects - 1), "handshakes": handshakes,
                       "reconnects": reconnects, "resumed": resumed})
        if data["requests"]:
            result["keepalive_share"] = round(
                max(0.0, 1 - reconnects / data["requests"]), 3)
            result["handshakes_per_request"] = round(handshakes / data["requests"], 3)
    return result
