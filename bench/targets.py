"""The servers under test, each serving bench/hello.py over mutual TLS.

A `Target` knows how to tell whether its software is installed (and which command
installs it), how to launch itself on a port with the test PKI, and its version.
The harness starts every target the same way (pinned to the server CPU, output to
files, stopped by PID) and checks before measuring that it answers the right body
and refuses a client without a certificate.

Configuration policy, so that the comparison is about servers and not settings:
one worker/process running the app, each server's own defaults for concurrency
(eventlet's pool of 1024, the threads engine's 64 threads, mod_wsgi-express's 5
threads, gunicorn's 1000 worker connections, cheroot's 10 threads), an access log
to a file where the server has one, and idle/keep-alive timeouts raised to 120 s
everywhere so the idle-capacity test measures capacity, not timeout policy. nginx
(alone, or in front of uWSGI) gets enough worker_connections for the idle test.
Every process of a target (uWSGI's router and worker, nginx and uWSGI, Apache's
processes and mod_wsgi's daemon) runs pinned to the server CPU, and its CPU time is
counted.
"""
from __future__ import annotations

import importlib.metadata
import os
import pwd
import re
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
DEPLOY_DIR = REPO_DIR / "etc" / "deploy"
IDLE_TIMEOUT = 120  # seconds; see the module docstring
CLIENT_NAME = "alice"
SERVER_NAME = "localhost"  # in the test PKI's server certificate; every client sends it
SETUP_HINT = "python -m bench --setup"
BLOCKING_SLEEP = 0.2  # seconds: bench/blocking.py


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
        """Certificate and key in one PEM, the form `ab -E` takes (it has no key option)."""
        return self.pki / f"{CLIENT_NAME}-combined.pem"


@dataclass
class Helper:
    """A process a target needs started first (uWSGI behind nginx), and how to tell
    it is ready."""

    name: str
    argv: list[str]
    ready: Callable[[], bool]


@dataclass
class Launch:
    """How to start one target: argv, the port (0 = read from `port_pattern` in its
    stderr), processes to start before it, and the configuration files written for it
    (shown in the results)."""

    argv: list[str]
    port: int
    port_pattern: Optional[str] = None
    cwd: Path = REPO_DIR
    files: dict[str, str] = field(default_factory=dict)
    helpers: list[Helper] = field(default_factory=list)


@dataclass(frozen=True)
class Target:
    name: str
    title: str
    notes: str
    launch: Callable[[Env, str], Launch]
    missing: Callable[[], Optional[str]]
    version: Callable[[], str]
    profile: bool = False
    # "targets": the comparison; "blocking": the blocking-app test (its own section)
    section: str = "targets"


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

def securewsgi_config(env: Env, workers: int, access_log: Path, engine: str = "eventlet",
                      factory: str = "hello:app", monkey_patch: Optional[bool] = None) -> dict:
    """The full product: mutual TLS, identity, one authorization rule, access log."""
    server: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "workers": workers,
                              "socket_timeout": IDLE_TIMEOUT, "max_connections": 12000}
    # max_connections: the documented setting for many idle clients
    # (docs/source/operations.rst); the default of 1024 is eventlet's pool size.
    if engine != "eventlet":
        server["engine"] = engine
    if monkey_patch is not None:
        server["monkey_patch"] = monkey_patch
    return {
        "server": server,
        "tls": {"mode": "mutual", "certfile": str(env.certfile), "keyfile": str(env.keyfile),
                "ca_certs": str(env.ca)},
        "app": {"factory": factory, "python_path": [str(BENCH_DIR)]},
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


def _securewsgi(engine: str = "eventlet", factory: str = "hello:app",
                monkey_patch: Optional[bool] = None) -> Callable[[Env, str], Launch]:
    def launch(env: Env, run_id: str) -> Launch:
        config_path = env.workdir / f"{run_id}.yaml"
        config = securewsgi_config(env, 1, env.workdir / f"{run_id}.access", engine,
                                   factory, monkey_patch)
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
                "--config", str(BENCH_DIR / "gunicorn_no_tickets.py"),
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


# -- nginx, and nginx in front of uWSGI ---------------------------------------------

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {nofile};
{user}pid {run}/nginx.pid;
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
{server}
}}
"""

NGINX_SERVER = """\
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_client_certificate {ca};
        ssl_verify_client on;
{tickets}        location / {{ return 200 "hello, world\\n"; }}
    }}"""
# securewsgi sends no session tickets in mutual mode (tls.session_tickets auto): with a
# client certificate, each of the two tickets OpenSSL sends by default costs about a
# sixth of the handshake (the session, certificate included, encrypted into it). Every
# peer is set the same way, so every target does the same handshake work; the
# nginx-tickets target keeps nginx's default, to show what the tickets cost.
NGINX_NO_TICKETS = "        ssl_session_tickets off;\n"

NGINX_UWSGI_TEMPLATE = DEPLOY_DIR / "nginx-uwsgi" / "nginx-server.conf.template"
UWSGI_PARAMS = Path("/etc/nginx/uwsgi_params")  # Debian's nginx-common


def _nginx_conf(run_dir: Path, server: str) -> str:
    # As root, nginx's workers switch to "nobody", who cannot reach a socket in the
    # run's private temporary directory (uWSGI's): keep them the current user.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return NGINX_CONF.format(run=run_dir, idle=IDLE_TIMEOUT, connections=16384, nofile=20000,
                             user=user, server=server)


def _nginx_argv(run_dir: Path, conf_path: Path) -> list[str]:
    return [shutil.which("nginx") or "nginx", "-c", str(conf_path), "-p", str(run_dir),
            "-e", str(run_dir / "error.log")]


def _nginx(tickets: bool = False) -> Callable[[Env, str], Launch]:
    def launch(env: Env, run_id: str) -> Launch:
        port = free_port()
        run_dir = env.workdir / run_id
        run_dir.mkdir(exist_ok=True)
        conf = _nginx_conf(run_dir, NGINX_SERVER.format(
            port=port, cert=env.certfile, key=env.keyfile, ca=env.ca,
            tickets="" if tickets else NGINX_NO_TICKETS))
        conf_path = run_dir / "nginx.conf"
        conf_path.write_text(conf)
        return Launch(_nginx_argv(run_dir, conf_path), port, files={"nginx.conf": conf})
    return launch


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


def render_deploy_template(template: Path, values: dict[str, str]) -> str:
    """What `envsubst '${A} ${B}'` does with exactly the listed names."""
    text = template.read_text()
    for name, value in values.items():
        placeholder = "${" + name + "}"
        if placeholder not in text:
            raise ValueError(f"{template}: no placeholder {placeholder}")
        text = text.replace(placeholder, value)
    return text


def _uwsgi_nginx(env: Env, run_id: str) -> Launch:
    """etc/deploy/nginx-uwsgi's server block (ssl_verify_client on instead of optional:
    a certificate is required, as everywhere here) in front of one uWSGI process
    serving the hello app over the uwsgi protocol on a unix socket."""
    port = free_port()
    run_dir = env.workdir / run_id
    run_dir.mkdir(exist_ok=True)
    socket_path = run_dir / "uwsgi.sock"
    uwsgi_log = run_dir / "uwsgi.log"
    backend = [script("uwsgi"), "--master", "--processes", "1", "--die-on-term",
               "--socket", str(socket_path), "--buffer-size", "32768",
               "--wsgi-file", str(BENCH_DIR / "hello.py"), "--callable", "app",
               "--logto", str(uwsgi_log)]

    def ready() -> bool:
        try:
            return socket_path.exists() and "WSGI app 0" in uwsgi_log.read_text(
                errors="replace")
        except OSError:
            return False

    server = render_deploy_template(NGINX_UWSGI_TEMPLATE, {
        "LISTEN": f"127.0.0.1:{port}", "SERVER_NAME": SERVER_NAME,
        "SERVER_CERT": str(env.certfile), "SERVER_KEY": str(env.keyfile),
        "CLIENT_CA": str(env.ca), "UWSGI_SOCKET": str(socket_path)})
    if "ssl_verify_client optional;" not in server:
        raise ValueError(f"{NGINX_UWSGI_TEMPLATE}: expected 'ssl_verify_client optional;'")
    server = server.replace("ssl_verify_client optional;",
                            "ssl_verify_client on;\n" + NGINX_NO_TICKETS.rstrip("\n"))
    (run_dir / "server.conf").write_text(server)
    shutil.copy(UWSGI_PARAMS, run_dir / "uwsgi_params")
    conf = _nginx_conf(run_dir, "    include server.conf;")
    conf_path = run_dir / "nginx.conf"
    conf_path.write_text(conf)
    shown_server = "\n".join(line for line in server.splitlines()
                             if line.strip() and not line.lstrip().startswith("#"))
    return Launch(_nginx_argv(run_dir, conf_path), port,
                  helpers=[Helper("uwsgi", backend, ready)],
                  files={"nginx.conf": conf, "server.conf (comments left out)": shown_server})


def _uwsgi_nginx_missing() -> Optional[str]:
    return _nginx_missing() or _uwsgi_missing(need_https=False) or (
        None if UWSGI_PARAMS.exists() else "/etc/nginx/uwsgi_params missing: "
        "apt-get install -y nginx")


def _uwsgi_nginx_version() -> str:
    return f"{_uwsgi_version()}; {_nginx_version()}"


# -- uwsgi ---------------------------------------------------------------------------

def _uwsgi(env: Env, run_id: str) -> Launch:
    port = free_port()
    https = f"127.0.0.1:{port},{env.certfile},{env.keyfile},HIGH,!{env.ca}"  # ! = required
    # --ini first: uWSGI builds the TLS context with the ssl options read so far
    argv = [script("uwsgi"), "--ini", str(BENCH_DIR / "uwsgi-no-tickets.ini"),
            "--master", "--workers", "1", "--die-on-term", "--https", https,
            "--http-keepalive", "--http-timeout", str(IDLE_TIMEOUT),
            "--wsgi-file", str(BENCH_DIR / "hello.py"), "--callable", "app",
            "--logto", str(env.workdir / f"{run_id}.access")]
    return Launch(argv, port)


def _uwsgi_version() -> str:
    return f"uwsgi {_command_output([script('uwsgi'), '--version']) or '?'}"


def _uwsgi_missing(need_https: bool = True) -> Optional[str]:
    help_text = _command_output([script("uwsgi"), "--help"])
    if not help_text:
        return f"pip install -r bench/requirements.txt (or {SETUP_HINT})"
    if need_https and "--https " not in help_text:
        return ("uwsgi built without SSL: apt-get install libssl-dev, then "
                "pip install --force-reinstall --no-cache-dir -r bench/requirements.txt")
    return None


# -- Apache httpd + mod_wsgi (mod_wsgi-express) --------------------------------------

# mod_wsgi-express's own client-certificate options (--ssl-ca-certificate-file,
# --ssl-verify-client PATH) ask for the certificate *after* the handshake, per
# location (TLS 1.3 post-handshake authentication), and write `SSLVerifyClient none`
# into the virtual host. Required at the handshake, like every other target here, is
# etc/deploy/apache-mod_wsgi's way: an --include-file with the mod_ssl directives.
# Capacity: mod_wsgi-express sizes Apache for 20 clients (1.5 x its 5 threads, rounded
# up); with the load generator's 50 connections Apache's event MPM then closes
# keep-alive connections (measured: a third of the "keep-alive" requests needed a new
# handshake), and it stops a child process (closing its connections) whenever
# threads are idle. --max-clients 64 and the spare-thread lines keep its 4 x 16
# threads running, so every connection stays alive, as nginx's worker_connections and
# securewsgi's max_connections are raised for the same reason.
MOD_WSGI_MAX_CLIENTS = 64
MOD_WSGI_INCLUDE = """\
SSLCACertificateFile {ca}
SSLVerifyClient require
SSLVerifyDepth 1
SSLSessionTickets off
StartServers 4
MinSpareThreads 64
MaxSpareThreads 128
"""


def unprivileged(argv: list[str]) -> list[str]:
    """Apache refuses to serve as root: as root, run it in a user namespace as
    "nobody", whom the kernel still treats as the owner of root's files (as
    tests/test_other_servers.py does). Unchanged when not root."""
    if os.geteuid() != 0:
        return argv
    nobody = pwd.getpwnam("nobody")
    return [shutil.which("unshare") or "unshare", "--user", f"--map-user={nobody.pw_uid}",
            f"--map-group={nobody.pw_gid}", *argv]


def _mod_wsgi(env: Env, run_id: str) -> Launch:
    port, http_port = free_port(), free_port()
    run_dir = env.workdir / run_id
    run_dir.mkdir(exist_ok=True)
    include_text = MOD_WSGI_INCLUDE.format(ca=env.ca)
    include = run_dir / "client-certificate.conf"
    include.write_text(include_text)
    argv = [script("mod_wsgi-express"), "start-server", str(BENCH_DIR / "hello.py"),
            "--server-name", SERVER_NAME, "--host", "127.0.0.1", "--port", str(http_port),
            "--https-port", str(port), "--https-only",
            "--ssl-certificate-file", str(env.certfile),
            "--ssl-certificate-key-file", str(env.keyfile), "--include-file", str(include),
            "--processes", "1", "--max-clients", str(MOD_WSGI_MAX_CLIENTS),
            "--keep-alive-timeout", str(IDLE_TIMEOUT), "--access-log",
            "--server-root", str(run_dir / "httpd"), "--locale", "C.UTF-8"]
    return Launch(unprivileged(argv), port, files={"client-certificate.conf": include_text})


def _mod_wsgi_missing() -> Optional[str]:
    if shutil.which("apache2") is None and shutil.which("httpd") is None:
        return (f"apt-get install -y apache2 apache2-dev, then pip install mod_wsgi "
                f"(or {SETUP_HINT} as root)")
    if not Path(script("mod_wsgi-express")).exists():
        return f"pip install mod_wsgi (needs apache2-dev; or {SETUP_HINT})"
    if os.geteuid() == 0 and shutil.which("unshare") is None:
        return "Apache will not run as root and unshare is missing: apt-get install util-linux"
    return None


def _mod_wsgi_version() -> str:
    apache = _command_output([shutil.which("apache2") or "apache2", "-v"])
    match = re.search(r"Apache/(\S+)", apache)
    return (f"mod_wsgi {_module_version('mod_wsgi') or '?'}, "
            f"Apache {match.group(1) if match else '?'}")


# -- the list ------------------------------------------------------------------------

def _found(name: str) -> Callable[[], str]:
    return lambda: f"{name} {_module_version(name) or '?'}"


NGINX_NOTES = ("worker_processes 1, ssl_verify_client on, return 200 \"hello, world\\n\", "
               "access log to a file, ssl_protocols TLSv1.2 TLSv1.3 (1.22 leaves 1.3 out), "
               "worker_connections 16384, keepalive_requests 1000000")

SECUREWSGI_NOTES = ("identity remote_user=cn, one rule allowing cn=alice on /* (default "
                    "deny), access log to a file, socket_timeout 120 s, max_connections "
                    "12000 (the documented setting for many idle clients), everything else "
                    "default (session_tickets auto: none in mutual mode)")

TARGETS: tuple[Target, ...] = (
    Target("securewsgi", "securewsgi, eventlet engine, 1 worker (full product)",
           SECUREWSGI_NOTES + "; server.engine: eventlet (the default, monkey_patch true)",
           _securewsgi(), _securewsgi_missing, _securewsgi_version, profile=True),
    Target("securewsgi-threads", "securewsgi, threads engine, 1 worker (full product)",
           "as securewsgi, plus server.engine: threads (its default pool of 64 threads, no "
           "monkey-patching)",
           _securewsgi("threads"), _securewsgi_missing, _securewsgi_version, profile=True),
    Target("uwsgi-https", "uWSGI --https router + 1 worker",
           "--https addr,cert,key,HIGH,!ca (client certificate required), ssl-option = "
           "16384 (SSL_OP_NO_TICKET, as every target: bench/uwsgi-no-tickets.ini), --master "
           "--workers 1 --http-keepalive --http-timeout 120, request log to a file; the "
           "router and the worker are two processes, both on the server CPU",
           _uwsgi, _uwsgi_missing, _uwsgi_version),
    Target("uwsgi-nginx", "nginx -> uWSGI (uwsgi protocol), 1 uWSGI process",
           "etc/deploy/nginx-uwsgi/nginx-server.conf.template rendered as shipped except "
           "ssl_verify_client on (required, not optional) and ssl_session_tickets off (as "
           "every target); nginx worker_processes 1, access "
           "log; uWSGI --master --processes 1 --socket (unix) --buffer-size 32768, request "
           "log; both on the server CPU",
           _uwsgi_nginx, _uwsgi_nginx_missing, _uwsgi_nginx_version),
    Target("mod_wsgi", "Apache httpd + mod_wsgi (mod_wsgi-express), 1 daemon process",
           "mod_wsgi-express start-server --processes 1 (one daemon process, its default 5 "
           "threads), --https-only, --keep-alive-timeout 120, --access-log; client "
           "certificate required at the handshake by an --include-file (SSLVerifyClient "
           "require, and SSLSessionTickets off as every target; mod_wsgi-express's own "
           "--ssl-verify-client asks after the handshake, "
           "TLS 1.3 post-handshake auth), as etc/deploy/apache-mod_wsgi does; Apache's event "
           "MPM sized for the 50 connections (--max-clients 64, StartServers 4, spare "
           "threads 64-128: with mod_wsgi-express's 20 it closed a third of the keep-alive "
           "connections); run in a user namespace when root (Apache refuses root)",
           _mod_wsgi, _mod_wsgi_missing, _mod_wsgi_version),
    Target("nginx", "nginx (Debian), the ceiling (no Python)",
           NGINX_NOTES + ", ssl_session_tickets off",
           _nginx(), _nginx_missing, _nginx_version),
    Target("nginx-tickets", "nginx, with its default session tickets",
           NGINX_NOTES + "; ssl_session_tickets left on (nginx's default: two TLS 1.3 "
           "tickets per full handshake), to show what they cost",
           _nginx(tickets=True), _nginx_missing, _nginx_version),
    Target("eventlet-raw", "eventlet.wsgi.server on a green TLS socket",
           "bench/eventlet_raw.py: PROTOCOL_TLS_SERVER + CERT_REQUIRED green context "
           "wrapped around the listener (num_tickets 0, as every target), monkey_patch(), "
           "access log to a file, defaults (pool of 1024)", _bench_script("eventlet_raw.py"),
           _securewsgi_missing,
           lambda: f"eventlet {_module_version('eventlet')}"),
    Target("gunicorn-eventlet", "gunicorn 25.3 -k eventlet",
           "1 worker, --worker-connections default (1000), --keep-alive 120, access log "
           "to a file, no session tickets (bench/gunicorn_no_tickets.py)",
           _gunicorn("gunicorn-eventlet", "eventlet", []),
           _venv_missing("gunicorn-eventlet"),
           _venv_version("gunicorn-eventlet", ("gunicorn", "eventlet"))),
    Target("gunicorn-gthread", "gunicorn (current) -k gthread",
           "1 worker, --threads 4, --keep-alive 120, access log to a file, no session "
           "tickets (bench/gunicorn_no_tickets.py)",
           _gunicorn("gunicorn-gthread", "gthread", ["--threads", "4"]),
           _venv_missing("gunicorn-gthread"), _venv_version("gunicorn-gthread", ("gunicorn",))),
    Target("cheroot", "cheroot BuiltinSSLAdapter",
           "bench/cheroot_server.py: verify_mode set to CERT_REQUIRED, num_tickets 0, "
           "defaults (10 threads, "
           "keep_alive_conn_limit 10, listen backlog 5), timeout 120 s, no access log "
           "(cheroot has none)",
           _bench_script("cheroot_server.py"), _cheroot_missing, _found("cheroot")),
    # The blocking-app test: bench/blocking.py sleeps 0.2 s per request.
    Target("blocking-eventlet-patched", "eventlet engine, monkey_patch: true",
           "as securewsgi, app bench/blocking.py (time.sleep(0.2) per request)",
           _securewsgi(factory="blocking:app", monkey_patch=True), _securewsgi_missing,
           _securewsgi_version, section="blocking"),
    Target("blocking-eventlet-unpatched", "eventlet engine, monkey_patch: false",
           "as securewsgi with server.monkey_patch: false, app bench/blocking.py",
           _securewsgi(factory="blocking:app", monkey_patch=False), _securewsgi_missing,
           _securewsgi_version, section="blocking"),
    Target("blocking-threads", "threads engine (64 threads, no monkey-patching)",
           "as securewsgi-threads, app bench/blocking.py",
           _securewsgi("threads", factory="blocking:app"), _securewsgi_missing,
           _securewsgi_version, section="blocking"),
)

# The blocking-app test runs when the target it varies is selected.
BLOCKING_FOR = {"blocking-eventlet-patched": "securewsgi",
                "blocking-eventlet-unpatched": "securewsgi",
                "blocking-threads": "securewsgi-threads"}


def by_name(names: Optional[list[str]]) -> list[Target]:
    """The targets named (all when None), in the canonical order, with the blocking-app
    variants of the securewsgi targets selected."""
    known = [t.name for t in TARGETS if t.section == "targets"]
    names = names or known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [t for t in TARGETS if t.name in names or BLOCKING_FOR.get(t.name) in names]
