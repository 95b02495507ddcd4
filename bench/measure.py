"""One measurement each: a throughput run, an idle-capacity run, a silent-connection
run, a CPU profile. Each takes a running server and returns a plain dict for the
results file; none of them decides anything (report.py does).

The load generator always runs pinned to the client CPU, the server to the server
CPU; every run reports both processes' CPU use, and the per-CPU busy share, so a
saturated load generator or a noisy neighbour is visible next to the number.
"""
from __future__ import annotations

import json
import re
import shutil
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

from . import procs, wrk
from .targets import BLOCKING_SLEEP, REPO_DIR, SERVER_NAME, Env

# Leave this much headroom past a run's own duration before killing the client.
GRACE_SECONDS = 30.0
PYSPY_RATE = 200  # samples per second
# Idle test: connections opened at once; one whole wave failing means the server has
# stopped accepting, so the test gives up instead of waiting out N/64 more timeouts.
IDLE_PARALLEL = 64


@dataclass(frozen=True)
class Plan:
    """How long and how often: the full run and --quick differ only here."""

    duration: float = 10.0
    warmup: float = 2.0
    repeat: int = 3
    concurrency: int = 50
    # latency at a fixed offered rate: this share of the slowest target's keep-alive
    # capacity (median, same run), offered to every target
    rate_share: float = 0.5
    rate: Optional[float] = None  # fixed rate (req/s) instead of the share
    blocking_clients: int = 32
    idle_counts: tuple[int, ...] = (1000, 10000)
    silent_count: int = 50
    fresh_samples: int = 9
    fresh_timeout: float = 5.0
    connect_timeout: float = 10.0
    profile_seconds: float = 10.0
    client: str = "wrk"         # "wrk", "ab" or "python" (bench/loadgen.py)
    server_cpus: str = "0"
    client_cpus: str = "1"
    quick: bool = False


@dataclass
class Running:
    """A started, verified server: what the measurements need to reach it."""

    name: str  # the run id, e.g. securewsgi-r0
    process: procs.Group
    port: int
    target: str


# -- throughput ----------------------------------------------------------------------

def ab_argv(env: Env, url: str, plan: Plan, duration: float, keepalive: bool) -> list[str]:
    """ab with the client certificate; -l because servers that close without
    close_notify would otherwise count every response as a length failure (ab with
    OpenSSL 3 reads the missing close_notify as a truncated response),
    -r so one reset does not end the run, -n huge so -t decides when it stops."""
    seconds = max(1, round(duration))  # ab reads -t as whole seconds (0.5 means no limit)
    argv = ["ab", "-q", "-l", "-r", "-c", str(plan.concurrency), "-t", str(seconds),
            "-n", "100000000", "-s", f"{plan.connect_timeout:g}", "-E", str(env.client_combined)]
    if keepalive:
        argv.insert(1, "-k")
    return [*argv, url]


def loadgen_argv(env: Env, mode: str, port: int, *options: str) -> list[str]:
    return [env.python, "-m", "bench.loadgen", mode, "--port", str(port), "--ca", str(env.ca),
            "--cert", str(env.client_cert), "--key", str(env.client_key), *options]


def url(port: int) -> str:
    return f"https://127.0.0.1:{port}/"


def throughput_argv(env: Env, port: int, plan: Plan, duration: float,
                    keepalive: bool, connections: Optional[int] = None) -> list[str]:
    """The load generator's command for one throughput run (before pinning)."""
    connections = connections or plan.concurrency
    if plan.client == "wrk":
        argv = wrk.argv(url(port), connections, duration, plan.connect_timeout,
                        new_connections=not keepalive)
        # Host as every other client sends it (mod_wsgi-express answers 403 to others)
        return [*argv[:-1], "-H", f"Host: {SERVER_NAME}", argv[-1]]
    if plan.client == "ab":
        return ab_argv(env, url(port), replace(plan, concurrency=connections), duration,
                       keepalive)
    return loadgen_argv(env, "load", port, "--connections", str(connections),
                        "--duration", f"{duration:g}", "--timeout", f"{plan.connect_timeout:g}",
                        *([] if keepalive else ["--new-connection"]))


def throughput(env: Env, server: Running, plan: Plan, keepalive: bool,
               duration: Optional[float] = None, tag: str = "",
               rate: Optional[float] = None, connections: Optional[int] = None,
               ) -> dict[str, Any]:
    """Requests/s, latency percentiles and server CPU per request for one run
    (keep-alive or new connections; with `rate`, keep-alive paced to that rate)."""
    duration = duration or plan.duration
    if rate and plan.client != "wrk":
        return {"error": "latency at a fixed rate needs wrk (bench/wrk_report.lua paces it)"}
    argv = throughput_argv(env, server.port, plan, duration, keepalive, connections)
    environment = wrk.environment(env, rate) if plan.client == "wrk" else None
    (user_before, system_before), ticks_before = server.process.cpu_split(), procs.cpu_ticks()
    done = procs.run_bounded(procs.pinned(plan.client_cpus, argv), duration + GRACE_SECONDS,
                             env.workdir, f"{server.name}-{tag or 'load'}", cwd=REPO_DIR,
                             env=environment)
    user_after, system_after = server.process.cpu_split()
    server_user, server_system = user_after - user_before, system_after - system_before
    server_cpu = server_user + server_system
    shares = procs.cpu_shares(ticks_before, procs.cpu_ticks())
    parsers = {"wrk": lambda: wrk.parse(done.stdout, done.stderr,
                                        connections or plan.concurrency),
               "ab": lambda: parse_ab(done.stdout), "python": lambda: parse_loadgen(done.stdout)}
    result = parsers[plan.client]()
    read_errors = (result.get("errors") or {}).get("read", 0)
    if plan.client == "wrk" and not keepalive and read_errors:
        # A server that closes after its answer without saying `Connection: close`
        # (uWSGI's router) makes wrk send its next request on the closed connection:
        # a read error, then the reconnect. Not a failed request: the handshake count
        # shows each request still had its own connection.
        result["read_errors"] = read_errors
        result["failed"] = max(0, (result.get("failed") or 0) - read_errors)
    if result.get("rps") is None:
        result["error"] = _failure(done)
    wall = max(done.wall_seconds, 1e-6)
    result.update({
        "client": plan.client, "seconds": round(done.wall_seconds, 2),
        "server_cpu_pct": round(100 * server_cpu / wall, 1),
        "client_cpu_pct": round(100 * done.cpu_seconds / wall, 1),
        "cpu_shares": shares,
    })
    if result.get("complete"):
        # server CPU time (all its processes, from /proc) per request answered
        result["server_cpu_us"] = round(1e6 * server_cpu / result["complete"], 1)
        result["server_user_us"] = round(1e6 * server_user / result["complete"], 1)
        result["server_system_us"] = round(1e6 * server_system / result["complete"], 1)
    return result


def _failure(done: procs.Finished) -> str:
    if done.timed_out:
        return f"load generator did not finish within {done.wall_seconds:.0f}s"
    lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    return lines[-1][:200] if lines else f"load generator exited {done.returncode}"


_AB_FIELDS = {
    "complete": r"Complete requests:\s+(\d+)",
    "failed": r"Failed requests:\s+(\d+)",
    "keepalive_requests": r"Keep-Alive requests:\s+(\d+)",
    "non_2xx": r"Non-2xx responses:\s+(\d+)",
    "rps": r"Requests per second:\s+([\d.]+)",
    "p50_ms": r"^\s+50%\s+(\d+)",
    "p99_ms": r"^\s+99%\s+(\d+)",
    "tls": r"SSL/TLS Protocol:\s+(\S+)",
    "key_exchange": r"Server Temp Key:\s+(.+)$",
}


def parse_ab(text: str) -> dict[str, Any]:
    """The numbers of ab's report (latency percentiles are whole milliseconds)."""
    result: dict[str, Any] = {}
    for key, pattern in _AB_FIELDS.items():
        match = re.search(pattern, text, re.MULTILINE)
        value: Any = match.group(1).strip() if match else None
        if value is not None and key not in ("tls", "key_exchange"):
            value = float(value) if "." in value or key == "rps" else int(value)
        result[key] = value
    if result.get("complete") and result.get("keepalive_requests") is not None:
        result["keepalive_share"] = round(result["keepalive_requests"] / result["complete"], 3)
    return result


def parse_loadgen(text: str) -> dict[str, Any]:
    data = _last_json(text) or {}
    result = {k: data.get(k) for k in ("rps", "p50_ms", "p99_ms")}
    result["complete"] = data.get("requests")
    result["failed"] = sum((data.get("errors") or {}).values())
    result["errors"] = data.get("errors")
    if data.get("requests"):
        reused = data["requests"] - data.get("connections_opened", 0)
        result["keepalive_share"] = round(max(0, reused) / data["requests"], 3)
    return result


def _last_json(text: str) -> Optional[dict[str, Any]]:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


# -- the blocking app -----------------------------------------------------------------

def blocking(env: Env, server: Running, plan: Plan, tag: str) -> dict[str, Any]:
    """Keep-alive throughput of `blocking_clients` clients against an app that sleeps
    BLOCKING_SLEEP s per request; the expected ceiling is clients / sleep."""
    timeout = max(plan.connect_timeout, 60.0)  # unpatched eventlet queues every request
    result = throughput(env, server, replace(plan, connect_timeout=timeout), True,
                        tag=tag, connections=plan.blocking_clients)
    result["ceiling_rps"] = round(plan.blocking_clients / BLOCKING_SLEEP, 1)
    return result


# -- silent connections --------------------------------------------------------------

def silent_argv(env: Env, port: int, plan: Plan) -> list[str]:
    return loadgen_argv(env, "silent", port, "--connections", str(plan.silent_count),
                        "--samples", str(plan.fresh_samples),
                        "--fresh-timeout", f"{plan.fresh_timeout:g}")


def silent(env: Env, server: Running, plan: Plan, tag: str) -> dict[str, Any]:
    """Fresh-client latency on a quiet server, then with `silent_count` silent TCP
    connections open (connected, nothing sent)."""
    argv = silent_argv(env, server.port, plan)
    budget = 2 * plan.fresh_samples * plan.fresh_timeout + GRACE_SECONDS
    done = procs.run_bounded(procs.pinned(plan.client_cpus, argv), budget, env.workdir,
                             f"{server.name}-{tag}", cwd=REPO_DIR)
    data = _last_json(done.stdout)
    if data is None or "error" in data:
        return {"error": (data or {}).get("error") or _failure(done)}
    return {
        "quiet_ms": data["quiet"]["ms"], "silent_ms": data["silent"]["ms"],
        "ratio": data["ratio"], "quiet_error": data["quiet"]["error"],
        "silent_error": data["silent"]["error"], "silent_connections": data["silent_connections"],
        "open_error": data["open_error"],
        "quiet_samples_ms": data["quiet"]["samples_ms"],
        "silent_samples_ms": data["silent"]["samples_ms"],
    }


# -- idle capacity -------------------------------------------------------------------

def open_deadline_for(count: int) -> float:
    """Seconds the idle test may spend opening `count` connections (>= 100/s)."""
    return max(30.0, count / 100)


def idle_argv(env: Env, port: int, plan: Plan, count: int) -> list[str]:
    return loadgen_argv(env, "idle", port, "--connections", str(count),
                        "--timeout", f"{plan.connect_timeout:g}",
                        "--open-deadline", f"{open_deadline_for(count):g}",
                        "--samples", str(plan.fresh_samples),
                        "--fresh-timeout", f"{plan.fresh_timeout:g}", "--hold-timeout", "120",
                        "--parallel", str(IDLE_PARALLEL), "--give-up-after", str(IDLE_PARALLEL))


def idle(env: Env, server: Running, plan: Plan, count: int, tag: str) -> dict[str, Any]:
    """Hold `count` mutual-TLS keep-alive connections; RSS per held connection and
    a fresh client's latency while they are held."""
    rss_before = server.process.rss_kib()
    argv = idle_argv(env, server.port, plan, count)
    open_deadline = open_deadline_for(count)
    client = procs.Process(procs.pinned(plan.client_cpus, argv), env.workdir,
                           f"{server.name}-{tag}", cwd=REPO_DIR, interactive=True)
    try:
        held = _last_json(client.read_line(open_deadline + GRACE_SECONDS) or "")
        if held is None:
            return {"requested": count, "error": "load generator gave no report: "
                    + client.last_error_line()}
        settle_rss(server.process)
        rss_held = server.process.rss_kib()
        client.write_line("go")
        done = _last_json(client.read_line(plan.fresh_samples * plan.fresh_timeout
                                           + GRACE_SECONDS) or "") or {}
    finally:
        client.stop(grace=5)
    held_count = held.get("held", 0)
    fresh = done.get("fresh") or {"ms": None, "error": "no report from the load generator"}
    return {
        "requested": count, "held": held_count, "failed": held.get("failed"),
        "first_error": held.get("first_error"), "gave_up": held.get("gave_up"),
        "open_seconds": held.get("open_seconds"), "still_open": done.get("still_open"),
        "rss_before_kib": rss_before, "rss_held_kib": rss_held,
        "rss_per_conn_kib": round((rss_held - rss_before) / held_count, 2) if held_count else None,
        "fresh_ms": fresh.get("ms"), "fresh_error": fresh.get("error"),
        "fresh_samples_ms": fresh.get("samples_ms"),
    }


def settle_rss(process: procs.Process, timeout: float = 3.0) -> None:
    """Wait (bounded) until the server's RSS stops growing: it may still be finishing
    the last handshakes when the client reports them held."""
    deadline = time.monotonic() + timeout
    last = process.rss_kib()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = process.rss_kib()
        if now == last:
            return
        last = now


# -- CPU profile ---------------------------------------------------------------------

def pyspy_path() -> Optional[str]:
    from .targets import script

    found = script("py-spy")
    return found if shutil.which(found) else None


def pyspy_argv(spy: str, pid: int, plan: Plan, output: Path) -> list[str]:
    return [spy, "record", "--pid", str(pid), "--duration", f"{plan.profile_seconds:g}",
            "--rate", str(PYSPY_RATE), "--format", "raw", "--function", "--nonblocking",
            "--gil",
            "--output", str(output)]


def profile(env: Env, server: Running, plan: Plan, keepalive: bool,
            out_dir: Path, tag: str) -> dict[str, Any]:
    """Sample the server with py-spy while the load generator drives it.

    py-spy attaches by PID (it needs ptrace: root or CAP_SYS_PTRACE), samples without
    pausing the process (--nonblocking) and groups samples by function. It runs on
    the client CPU so the server keeps its own core.
    """
    spy = pyspy_path()
    if spy is None:
        return {"error": "py-spy not installed: pip install -r bench/requirements.txt"}
    raw = out_dir / f"{tag}.txt"
    argv = pyspy_argv(spy, server.process.pid, plan, raw)
    sampler = procs.Process(procs.pinned(plan.client_cpus, argv), env.workdir,
                            f"{server.name}-{tag}-pyspy")
    try:  # the load run starts at once and outlasts the sampling window
        load = throughput(env, server, plan, keepalive, duration=plan.profile_seconds + 1,
                          tag=tag)
        deadline = time.monotonic() + GRACE_SECONDS
        while sampler.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        sampler.stop(grace=5)
    if not raw.exists():
        return {"error": "py-spy wrote no profile: " + sampler.last_error_line()}
    summary = summarize_profile(raw.read_text())
    summary["expected_samples"] = int(plan.profile_seconds * PYSPY_RATE)
    if load.get("rps"):
        # Python time per request: GIL-held seconds over the requests of the window
        summary["python_us"] = round(
            1e6 * summary["samples"] / PYSPY_RATE / (load["rps"] * plan.profile_seconds), 1)
        for key in ("rps", "server_cpu_us", "server_user_us", "server_system_us"):
            summary[key] = load.get(key)
    summary["raw_file"] = str(raw)
    summary["command"] = " ".join(argv)
    return summary


def summarize_profile(raw: str, top: int = 15) -> dict[str, Any]:
    """Self and inclusive shares per function from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [short_frame(frame) for frame in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count

    def shares(counter: Counter[str], count: int = top) -> list[list[Any]]:
        return [[name, round(100 * n / total, 1)] for name, n in counter.most_common(count)]

    layers: Counter[str] = Counter()
    for frame, count in own.items():
        layers[layer_of(frame)] += count
    return {"samples": total, "self": shares(own), "inclusive": shares(inclusive),
            "layers": shares(layers, len(layers))}


# -- CPU by component (perf), every target ------------------------------------------

PERF_FREQUENCY = 999  # samples per second per running thread (cpu-clock: works in VMs)
# Which component a sample's shared object belongs to (first match wins); anything
# else is the server's own code (nginx, uwsgi, apache2 and its modules).
COMPONENTS = (
    (re.compile(r"^libcrypto|^libssl"), "OpenSSL"),
    (re.compile(r"^libpython|^python3|\.cpython-|^mod_wsgi"), "Python"),
    (re.compile(r"^\[kernel"), "kernel"),
    (re.compile(r"^libc\.so|^libm\.so|^ld-linux|^libpthread|^\[vdso\]"), "C library"),
)
OWN_CODE = "server's own code"
COMPONENT_ORDER = ("OpenSSL", "C library", "Python", OWN_CODE, "kernel")


def perf_path() -> Optional[str]:
    return shutil.which("perf")


def component_of(dso: str) -> str:
    """'libcrypto.so.3' -> 'OpenSSL'; 'nginx' -> the server's own code."""
    for pattern, component in COMPONENTS:
        if pattern.search(dso):
            return component
    return OWN_CODE


def perf_argv(perf: str, pids: list[int], seconds: float, output: Path) -> list[str]:
    return [perf, "record", "-e", "cpu-clock", "-F", str(PERF_FREQUENCY), "-q",
            "-p", ",".join(str(pid) for pid in pids), "-o", str(output),
            "--", "sleep", f"{seconds:g}"]


def components(env: Env, server: Running, plan: Plan, keepalive: bool,
               out_dir: Path, tag: str) -> dict[str, Any]:
    """Where the server's CPU goes, by shared object, while wrk drives it.

    perf samples every thread of every process of the target (whatever its process
    model), on CPU only, so the same measurement fits nginx, uWSGI, Apache and
    Python servers alike: OpenSSL's handshakes and record encryption, the C
    library, the Python interpreter, the server's own code and the kernel. It
    runs on the client CPU; the load run outlasts the sampling window.
    """
    perf = perf_path()
    if perf is None:
        return {"error": "perf not installed: apt-get install -y linux-perf"}
    seconds = plan.profile_seconds
    data = out_dir / f"{tag}.perf"
    argv = perf_argv(perf, server.process.pids(), seconds, data)
    sampler = procs.Process(procs.pinned(plan.client_cpus, argv), env.workdir,
                            f"{server.name}-{tag}-perf")
    try:
        load = throughput(env, server, plan, keepalive, duration=seconds + 1, tag=tag)
        deadline = time.monotonic() + GRACE_SECONDS
        while sampler.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        sampler.stop(grace=5)
    if not data.exists():
        return {"error": "perf wrote no samples: " + sampler.last_error_line()}
    report = procs.run_bounded([perf, "report", "-i", str(data), "--stdio", "--sort", "dso",
                                "-F", "sample,dso"], GRACE_SECONDS, env.workdir,
                               f"{server.name}-{tag}-perf-report")
    data.unlink(missing_ok=True)  # tens of MB; the summary is what the page needs
    counts = summarize_perf(report.stdout)
    if not counts or not load.get("rps"):
        return {"error": "no perf samples or no requests: "
                         + (report.stderr.strip().splitlines() or ["?"])[-1][:200]}
    requests = load["rps"] * seconds
    total = sum(counts.values())
    return {
        "samples": total, "rps": load["rps"], "server_cpu_us": load.get("server_cpu_us"),
        "us": {name: round(1e6 * n / PERF_FREQUENCY / requests, 1)
               for name, n in counts.items()},
        "share": {name: round(100 * n / total, 1) for name, n in counts.items()},
        "command": " ".join(argv),
    }


def summarize_perf(text: str) -> dict[str, int]:
    """Samples per component from `perf report --sort dso -F sample,dso` lines."""
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        fields = line.split(None, 1)
        if len(fields) != 2 or line.startswith("#") or not fields[0].isdigit():
            continue
        counts[component_of(fields[1].strip())] += int(fields[0])
    return dict(counts)


# Which part of the server a function belongs to, by its file (first match wins).
LAYERS = (
    ("securewsgi/engines/", "engine (event loop, connection bookkeeping)"),
    ("securewsgi/http11.py", "HTTP/1.1 protocol (parse, environ, response)"),
    ("accesslog.py", "access log"),
    ("securewsgi/identity/", "identity and authorization middleware"),
    ("securewsgi/", "securewsgi, other"),
    ("stdlib ssl.py", "Python's ssl module (its Python code; OpenSSL itself runs "
                      "without the GIL)"),
    ("eventlet/", "eventlet (hub, green sockets)"),
    ("greenlet", "eventlet (hub, green sockets)"),
    ("bench/hello.py", "the application (bench/hello.py)"),
    ("stdlib ", "other standard library (threading, ...)"),
)


def layer_of(frame: str) -> str:
    """'take_head (securewsgi/http11.py:306)' -> 'HTTP/1.1 protocol (...)'."""
    for marker, layer in LAYERS:
        if marker in frame:
            return layer
    return "other"


def short_frame(frame: str) -> str:
    """'recv_into (/…/site-packages/eventlet/green/ssl.py:259)' -> 'recv_into
    (eventlet/green/ssl.py:259)'."""
    match = re.match(r"(.*) \((.*)\)$", frame)
    if not match:
        return frame
    name, where = match.groups()
    for marker in ("site-packages/", "/lib/python3", str(REPO_DIR) + "/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            if marker == "/lib/python3":
                where = "stdlib " + where.split("/", 1)[-1]
            break
    return f"{name} ({where})"

