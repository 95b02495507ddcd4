"""The servers under test, each serving bench/hello.py over mutual TLS.

A `Target` knows how to tell whether its software is installed (and which command
installs it), how to launch itself on a port with the test PKI, and its version.
The harness starts every target the same way (pinned to the server CPU, output to
files, stopped by PID) and checks before measuring that it answers the right body
and refuses a client without a certificate.

Configuration policy, so that the comparison is about servers and not settings:
one worker/process serving requests, each server's own defaults for concurrency
(eventlet's pool of 1024, gunicorn's 1000 worker connections, cheroot's 10 threads),
an access log to a file where the server has one, and idle/keep-alive timeouts
raised to 120 s everywhere so the idle-capacity test measures capacity, not timeout
policy. nginx, the ceiling, gets enough worker_connections for the idle test.
"""
from __future__ import annotations

import importlib.metadata
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
VENVS_DIR = BENCH_DIR / ".venvs"
IDLE_TIMEOUT = 120  # seconds; see the module docstring
CLIENT_NAME = "alice"
SETUP_HINT = "python -m bench --setup"


@dataclass(frozen=True)
class Env:
    """Paths shared by every target in one harness run."""

    workdir: Path
    pki: Path
    python: str = sys.executable
    # `--securewsgi-set server.max_connections=12000`: tuning experiments
    securewsgi_overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def certfile(self) -> Path:
        return self.pki / "server.pem"

    @property
    def keyfile(self) -> Path:
        return self.pki / "server-key.pem"

    @property
    def ca(self) -> Path:
        return self.pki / "ca.pem"

    @property
    def client_cert(self) -> Path:
        return self.pki / f"{CLIENT_NAME}.pem"

    @property
    def client_key(self) -> Path:
        return self.pki / f"{CLIENT_NAME}-key.pem"

    @property
    def client_combined(self) -> Path:
        """Certificate and key in one PEM, the form `ab -E` takes (FACTS 24)."""
        return self.pki / f"{CLIENT_NAME}-combined.pem"


@dataclass
class Launch:
    """How to start one target: argv, the port (0 = read from `port_pattern` in its
    stderr), and the configuration files written for it (shown in the results)."""

    argv: list[str]
    port: int
    port_pattern: Optional[str] = None
    cwd: Path = REPO_DIR
    files: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    name: str
    title: str
    notes: str
    launch: Callable[[Env, str], Launch]
    missing: Callable[[], Optional[str]]
    version: Callable[[], str]
    profile: bool = False


# -- helpers -------------------------------------------------------------------------

def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _module_version(name: str) -> Optional[str]:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _command_output(argv: list[str]) -> str:
    """stdout+stderr of a quick version command ('' when it cannot run)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout + done.stderr).strip()


def script(name: str) -> str:
    """A console script of this interpreter's environment, else one on PATH."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def venv_python(venv: str) -> Path:
    return VENVS_DIR / venv / "bin" / "python"


# -- securewsgi ----------------------------------------------------------------------

def securewsgi_config(env: Env, workers: int, access_log: Path) -> dict:
    """The full product: mutual TLS, identity, one authorization rule, access log."""
    return {
        # max_connections: the documented setting for many idle clients (README,
        # "Performance"); the default of 1024 is eventlet's pool size.
        "server": {"host": "127.0.0.1", "port": 0, "workers": workers,
                   "socket_timeout": IDLE_TIMEOUT, "max_connections": 12000},
        "tls": {"mode": "mutual", "certfile": str(env.certfile), "keyfile": str(env.keyfile),
                "ca_certs": str(env.ca)},
        "app": {"factory": "hello:app", "python_path": [str(BENCH_DIR)]},
        "identity": {"remote_user": "cn"},
        "authorization": {"default": "deny", "rules": [
            {"name": "bench-client", "paths": ["/*"], "allow": [{"cn": CLIENT_NAME}]}]},
        "logging": {"level": "INFO", "access_log": str(access_log), "format": "text"},
    }


def apply_overrides(config: dict, overrides: tuple[tuple[str, Any], ...]) -> dict:
    """Set dotted keys ('server.max_connections') in a nested config mapping."""
    for dotted, value in overrides:
        *parents, leaf = dotted.split(".")
        node = config
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return config


def parse_override(text: str) -> tuple[str, Any]:
    """'server.max_connections=12000' -> ('server.max_connections', 12000) (YAML value)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), yaml.safe_load(value)


def _securewsgi(workers: int) -> Callable[[Env, str], Launch]:
    def launch(env: Env, run_id: str) -> Launch:
        config_path = env.workdir / f"{run_id}.yaml"
        config = securewsgi_config(env, workers, env.workdir / f"{run_id}.access")
        text = yaml.safe_dump(apply_overrides(config, env.securewsgi_overrides), sort_keys=False)
        config_path.write_text(text)
        return Launch([env.python, "-m", "securewsgi", "--config", str(config_path)], 0,
                      port_pattern=r"listening on https://127\.0\.0\.1:(\d+)",
                      files={"service.yaml": text})
    return launch


def _securewsgi_missing() -> Optional[str]:
    if _module_version("securewsgi") is None:
        return "pip install -e . (from the repository root)"
    return None


def _securewsgi_version() -> str:
    return f"securewsgi {_module_version('securewsgi')}, eventlet {_module_version('eventlet')}"


# -- eventlet-raw, cheroot: scripts in bench/ ----------------------------------------

def _bench_script(name: str) -> Callable[[Env, str], Launch]:
    def launch(env: Env, run_id: str) -> Launch:
        port = free_port()
        argv = [env.python, str(BENCH_DIR / name), "--port", str(port),
                "--certfile", str(env.certfile), "--keyfile", str(env.keyfile),
                "--ca-certs", str(env.ca)]
        if name == "eventlet_raw.py":
            argv += ["--access-log", str(env.workdir / f"{run_id}.access")]
        return Launch(argv, port)
    return launch


def _cheroot_missing() -> Optional[str]:
    if _module_version("cheroot") is None:
        return f"pip install -r bench/requirements.txt (or {SETUP_HINT})"
    return None


# -- gunicorn (one venv per version: they cannot share one) --------------------------

def _gunicorn(venv: str, worker: str, extra: list[str]) -> Callable[[Env, str], Launch]:
    def launch(env: Env, run_id: str) -> Launch:
        port = free_port()
        argv = [str(VENVS_DIR / venv / "bin" / "gunicorn"), "-k", worker, "-w", "1",
                *extra, "-b", f"127.0.0.1:{port}", "--certfile", str(env.certfile),
                "--keyfile", str(env.keyfile), "--ca-certs", str(env.ca), "--cert-reqs", "2",
                "--keep-alive", str(IDLE_TIMEOUT), "--no-control-socket",
                "--access-logfile", str(env.workdir / f"{run_id}.access"),
                "--chdir", str(BENCH_DIR), "hello:app"]
        return Launch(argv, port)
    return launch


def _venv_missing(venv: str) -> Callable[[], Optional[str]]:
    def missing() -> Optional[str]:
        if not (VENVS_DIR / venv / "bin" / "gunicorn").exists():
            return f"bench/.venvs/{venv} is missing; {SETUP_HINT} creates it"
        return None
    return missing


def _venv_version(venv: str, modules: tuple[str, ...]) -> Callable[[], str]:
    def version() -> str:
        code = ("import importlib.metadata as m; print(', '.join(n + ' ' + m.version(n) "
                f"for n in {modules!r}))")
        return _command_output([str(venv_python(venv)), "-c", code]) or "?"
    return version


# -- uwsgi ---------------------------------------------------------------------------

def _uwsgi(env: Env, run_id: str) -> Launch:
    port = free_port()
    https = f"127.0.0.1:{port},{env.certfile},{env.keyfile},HIGH,!{env.ca}"  # ! = required
    argv = [script("uwsgi"), "--master", "--workers", "1", "--die-on-term",
            "--https", https, "--http-keepalive", "--http-timeout", str(IDLE_TIMEOUT),
            "--wsgi-file", str(BENCH_DIR / "hello.py"), "--callable", "app",
            "--logto", str(env.workdir / f"{run_id}.access")]
    return Launch(argv, port)


def _uwsgi_version() -> str:
    return f"uwsgi {_command_output([script('uwsgi'), '--version']) or '?'}"


def _uwsgi_missing() -> Optional[str]:
    help_text = _command_output([script("uwsgi"), "--help"])
    if not help_text:
        return f"pip install -r bench/requirements.txt (or {SETUP_HINT})"
    if "--https " not in help_text:
        return ("uwsgi built without SSL: apt-get install libssl-dev, then "
                "pip install --force-reinstall --no-cache-dir -r bench/requirements.txt")
    return None


# -- nginx ---------------------------------------------------------------------------

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {run}/nginx.pid;
error_log {run}/error.log warn;
events {{ worker_connections {connections}; }}
http {{
    access_log {run}/access.log;
    client_body_temp_path {run}/body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
    default_type text/plain;
    keepalive_timeout {idle}s;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_client_certificate {ca};
        ssl_verify_client on;
        location / {{ return 200 "hello, world\\n"; }}
    }}
}}
"""


def _nginx(env: Env, run_id: str) -> Launch:
    port = free_port()
    run_dir = env.workdir / run_id
    run_dir.mkdir(exist_ok=True)
    conf = NGINX_CONF.format(run=run_dir, port=port, cert=env.certfile, key=env.keyfile,
                             ca=env.ca, idle=IDLE_TIMEOUT, connections=16384, nofile=20000)
    conf_path = run_dir / "nginx.conf"
    conf_path.write_text(conf)
    argv = [shutil.which("nginx") or "nginx", "-c", str(conf_path), "-p", str(run_dir),
            "-e", str(run_dir / "error.log")]
    return Launch(argv, port, files={"nginx.conf": conf})


def _nginx_version() -> str:
    """'nginx/1.22.1 (OpenSSL 3.0.x)': the version and the TLS library it runs on."""
    details = _command_output(["nginx", "-V"])
    version = details.splitlines()[0].replace("nginx version: ", "") if details else "?"
    openssl = [line for line in details.splitlines() if "OpenSSL" in line]
    return f"{version} ({openssl[0].strip()})" if openssl else version


def _nginx_missing() -> Optional[str]:
    if shutil.which("nginx") is None:
        return f"apt-get install -y nginx (or {SETUP_HINT} as root)"
    return None


# -- the list ------------------------------------------------------------------------

def _found(name: str) -> Callable[[], str]:
    return lambda: f"{name} {_module_version(name) or '?'}"


TARGETS: tuple[Target, ...] = (
    Target("securewsgi", "securewsgi, 1 worker (full product)",
           "identity remote_user=cn, one rule allowing cn=alice on /* (default deny), "
           "access log to a file, socket_timeout 120 s, max_connections 12000 (the "
           "documented setting for many idle clients), everything else default "
           "(session_tickets auto: none in mutual mode)",
           _securewsgi(1), _securewsgi_missing, _securewsgi_version, profile=True),
    Target("securewsgi-2w", "securewsgi, 2 workers (full product)",
           "as securewsgi with server.workers: 2 (pinned to the same CPU set)",
           _securewsgi(2), _securewsgi_missing, _securewsgi_version),
    Target("eventlet-raw", "eventlet.wsgi.server on a green TLS socket",
           "bench/eventlet_raw.py: PROTOCOL_TLS_SERVER + CERT_REQUIRED green context "
           "wrapped around the listener, monkey_patch(), access log to a file, defaults "
           "(pool of 1024)", _bench_script("eventlet_raw.py"), _securewsgi_missing,
           lambda: f"eventlet {_module_version('eventlet')}"),
    Target("gunicorn-eventlet", "gunicorn 25.3 -k eventlet",
           "1 worker, --worker-connections default (1000), --keep-alive 120, access log "
           "to a file", _gunicorn("gunicorn-eventlet", "eventlet", []),
           _venv_missing("gunicorn-eventlet"),
           _venv_version("gunicorn-eventlet", ("gunicorn", "eventlet"))),
    Target("gunicorn-gthread", "gunicorn (current) -k gthread",
           "1 worker, --threads 4, --keep-alive 120, access log to a file",
           _gunicorn("gunicorn-gthread", "gthread", ["--threads", "4"]),
           _venv_missing("gunicorn-gthread"), _venv_version("gunicorn-gthread", ("gunicorn",))),
    Target("cheroot", "cheroot BuiltinSSLAdapter",
           "bench/cheroot_server.py: verify_mode set to CERT_REQUIRED, defaults (10 threads, "
           "keep_alive_conn_limit 10, listen backlog 5), timeout 120 s, no access log "
           "(cheroot has none)",
           _bench_script("cheroot_server.py"), _cheroot_missing, _found("cheroot")),
    Target("uwsgi", "uwsgi --https (router + 1 worker)",
           "--https addr,cert,key,HIGH,!ca (client certificate required), --master "
           "--workers 1 --http-keepalive --http-timeout 120, request log to a file",
           _uwsgi, _uwsgi_missing, _uwsgi_version),
    Target("nginx", "nginx (Debian), the ceiling",
           "worker_processes 1, ssl_verify_client on, return 200 \"hello, world\\n\", "
           "access log to a file, ssl_protocols TLSv1.2 TLSv1.3 (1.22 leaves 1.3 out), "
           "worker_connections 16384, keepalive_requests 1000000",
           _nginx, _nginx_missing, _nginx_version),
)


def by_name(names: Optional[list[str]]) -> list[Target]:
    """The targets named (all when None), in the canonical order."""
    if not names:
        return list(TARGETS)
    known = {t.name for t in TARGETS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [t for t in TARGETS if t.name in names]
