"""Test support: a real securewsgi process on 127.0.0.1, a test PKI, and real clients.

No mocks: every server test starts `python -m securewsgi --config FILE` in its own
process with port 0, learns the port from its start-up log line, and talks to it over
loopback with `requests`, `ssl` sockets, `curl` or `openssl s_client`. Waits poll with
a deadline; nothing sleeps a fixed time.
"""
from __future__ import annotations

import configparser
import datetime
import io
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import requests
import trustme
import yaml
from cryptography.x509.oid import ExtendedKeyUsageOID

from securewsgi import pki
from securewsgi.identity import PeerIdentity

REPO = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"listening on (https?)://(\[[^\]]+\]|[^:]+):(\d+)")


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
             what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy, or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# ------------------------------------------------------------------------------ PKI


@dataclass
class Client:
    """A client certificate on disk."""

    cert: Path
    key: Path

    @property
    def pair(self) -> tuple[str, str]:
        return str(self.cert), str(self.key)


def memory_peer(ca: trustme.CA, common_name: str, *identities: str) -> PeerIdentity:
    """The TLS identity of a client certificate that exists only in memory (trustme):
    for tests that need a certificate with some name, not the behaviour of
    `securewsgi.pki` / `securewsgi-certs` (`PKIFiles` is for those, and for servers)."""
    leaf = ca.issue_cert(*identities, common_name=common_name)
    return PeerIdentity.from_pem(leaf.cert_chain_pems[0].bytes(), source="tls")


class PKIFiles:
    """A CA with server and client certificates (good and deliberately bad)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = pki.CertificateAuthority.create("securewsgi test CA")
        self.ca_pem = self._write_cert("ca.pem", self.ca.cert)
        self.server_cert, self.server_key = self.write_pair(
            "server", *self.ca.issue_server(["localhost", "127.0.0.1", "::1"]))
        now = datetime.datetime.now(datetime.timezone.utc)
        self.clients: dict[str, Client] = {}
        self.add_client("alice", san_uri=["spiffe://example.org/ns/ops/alice"])
        self.add_client("bob")
        self.add_client("expired", not_before=now - datetime.timedelta(days=30),
                        not_after=now - datetime.timedelta(days=1))
        self.add_client("future", not_before=now + datetime.timedelta(days=1),
                        not_after=now + datetime.timedelta(days=30))
        self.add_client("server-eku", extended_key_usage=(ExtendedKeyUsageOID.SERVER_AUTH,))
        self.other_ca = pki.CertificateAuthority.create("some other CA")
        self.other_ca_pem = self._write_cert("other-ca.pem", self.other_ca.cert)
        cert, key = self.other_ca.issue_client("mallory")
        self.clients["unknown-ca"] = Client(*self.write_pair("mallory", cert, key))
        self.crl = self.dir / "crl.pem"
        pki.write_crl(self.crl, self.ca.build_crl([]))

    def add_client(self, name: str, **kwargs: Any) -> Client:
        cert, key = self.ca.issue_client(name, **kwargs)
        client = Client(*self.write_pair(name, cert, key))
        self.clients[name] = client
        return client

    def write_pair(self, stem: str, cert: Any, key: Any) -> tuple[Path, Path]:
        cert_path = self._write_cert(f"{stem}.pem", cert)
        key_path = self.dir / f"{stem}-key.pem"
        pki.write_key(key_path, key)
        return cert_path, key_path

    def _write_cert(self, name: str, cert: Any) -> Path:
        path = self.dir / name
        pki.write_cert(path, cert)
        return path

    def tls_section(self, mode: str = "mutual", **extra: Any) -> dict[str, Any]:
        section: dict[str, Any] = {"mode": mode, "certfile": str(self.server_cert),
                                   "keyfile": str(self.server_key)}
        if mode in ("optional", "mutual"):
            section["ca_certs"] = str(self.ca_pem)
        section.update(extra)
        return section


# --------------------------------------------------------------------------- server

ENGINES = ("eventlet", "threads")


def with_engine(text: str, suffix: str, engine: str) -> str:
    """A service file's text with `server.engine` set (unless the file sets it)."""
    if suffix in (".yaml", ".yml"):
        data = yaml.safe_load(text) or {}
        data.setdefault("server", {}).setdefault("engine", engine)
        return yaml.safe_dump(data)
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    if not parser.has_section("server"):
        parser.add_section("server")
    if not parser.has_option("server", "engine"):
        parser.set("server", "engine", engine)
    out = io.StringIO()
    parser.write(out)
    return out.getvalue()



class ServerProcess:
    """`python -m securewsgi --config FILE` in a child process we own (stopped by PID)."""

    def __init__(self, directory: Path, config: dict[str, Any], name: str = "service",
                 suffix: str = ".yaml", text: Optional[str] = None,
                 env: Optional[dict[str, str]] = None, engine: Optional[str] = None) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.config_path = directory / f"{name}{suffix}"
        if text is None:
            config.setdefault("server", {}).setdefault("port", 0)
            config.setdefault("app", {"factory": "securewsgi.demo:app"})
            if engine is not None:
                config["server"].setdefault("engine", engine)
            text = yaml.safe_dump(config)
        elif engine is not None:
            text = with_engine(text, suffix, engine)
        self.engine = engine
        self.config_path.write_text(text)
        self.stdout_path = directory / f"{name}.stdout"
        self.stderr_path = directory / f"{name}.stderr"
        self.env = dict(os.environ, PYTHONWARNINGS="ignore", **(env or {}))
        self.proc: Optional[subprocess.Popen] = None
        self.scheme = "https"
        self.host = "127.0.0.1"
        self.port = 0

    def start(self, timeout: float = 15.0) -> ServerProcess:
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "securewsgi", "--config", str(self.config_path)],
                stdout=out, stderr=err, env=self.env, cwd=str(self.dir),
            )

        def listening() -> Optional[re.Match]:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n"
                                     f"{self.stderr}")
            return _LISTENING.search(self.stderr)

        match = wait_for(listening, timeout, what="the server's 'listening on' line")
        self.scheme, self.host, self.port = match.group(1), match.group(2).strip("[]"), int(
            match.group(3))
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def url(self, path: str = "/", host: str = "localhost") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def settled_fds(self, timeout: float = 10.0) -> int:
        """The fd count once it stops changing (connections being closed settle)."""
        readings: list = []

        def settled() -> bool:
            readings.append(self.open_fds())
            return len(readings) >= 5 and len(set(readings[-5:])) == 1

        wait_for(settled, timeout, interval=0.05, what="a settled fd count")
        return readings[-1]

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        return stop_process(self.proc, timeout)

    def wait_log(self, pattern: str, timeout: float = 10.0, stream: str = "stderr") -> str:
        return wait_for(lambda: re.search(pattern, getattr(self, stream)) and getattr(
            self, stream), timeout, what=f"log line matching {pattern!r}")

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def stop_process(proc: subprocess.Popen, timeout: float) -> int:
    """SIGTERM a process we started, SIGKILL it if it outlives `timeout`; its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def run_command(*args: str, timeout: float = 60.0, **kwargs: Any
                ) -> subprocess.CompletedProcess:
    """Run one of our console commands as a user would (a separate process)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.update(kwargs.pop("env", {}))
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                          env=env, **kwargs)


# --------------------------------------------------------------------------- clients


def session(ca: Path, client: Optional[Client] = None) -> requests.Session:
    """A requests session that trusts only `ca`: with `trust_env` off, because requests
    ignores `Session.verify` when REQUESTS_CA_BUNDLE is set and `trust_env` is on."""
    s = requests.Session()
    s.trust_env = False
    s.verify = str(ca)
    if client is not None:
        s.cert = client.pair
    return s


def client_context(ca: Path, client: Optional[Client] = None,
                   minimum: Optional[ssl.TLSVersion] = None,
                   maximum: Optional[ssl.TLSVersion] = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        ctx.load_cert_chain(*client.pair)
    if minimum is not None:
        ctx.minimum_version = minimum
    if maximum is not None:
        ctx.maximum_version = maximum
    return ctx


def raw_https(server: ServerProcess, request: bytes, ctx: ssl.SSLContext,
              timeout: float = 10.0) -> bytes:
    """Send `request` bytes over TLS exactly as given; return everything read."""
    source = "::1" if ":" in server.host else "127.0.0.1"
    return exchange(server.port, request, ctx, source=source, host=server.host,
                    timeout=timeout)


def status_of(response: bytes) -> int:
    match = re.match(rb"HTTP/1\.[01] (\d{3})", response)
    assert match, f"not an HTTP response: {response[:200]!r}"
    return int(match.group(1))


def openssl_s_client(server: ServerProcess, *args: str, request: bytes = b"",
                     timeout: float = 20.0) -> subprocess.CompletedProcess:
    cmd = ["openssl", "s_client", "-connect", f"{server.host}:{server.port}",
           "-servername", "localhost", "-ign_eof", *args]
    return subprocess.run(cmd, input=request, capture_output=True, timeout=timeout)


# ------------------------------------------------- small peers for client-side tests
# securewsgi refuses to serve some things on purpose (an expired certificate) and never
# does others (closing abruptly right after a TLS 1.3 handshake); these stdlib peers
# produce them for real on 127.0.0.1. Each runs one bounded accept loop in a thread.
# (Imported here so that the appended helpers leave the file's header alone.)
import struct  # noqa: E402
import threading  # noqa: E402


def free_port() -> int:
    """A port nothing listens on (bound once, then closed): connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _ThreadPeer:
    """Accept connections on 127.0.0.1 in a thread until `stop()`; `handle` each one."""

    def __init__(self, backlog: int = 16) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(backlog)
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.held: list = []  # connections kept open on purpose, closed by stop()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def url(self, path: str = "/", host: str = "127.0.0.1", scheme: str = "https") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def start(self) -> _ThreadPeer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(10)
        for conn in self.held:
            conn.close()
        self.listener.close()

    def __enter__(self) -> _ThreadPeer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            conn.settimeout(5)
            try:
                self.handle(conn)
            except (OSError, ssl.SSLError):
                conn.close()

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError


class TCPPeer(_ThreadPeer):
    """A TCP server that answers `reply` to whatever arrives, or never answers at all
    (`reply=None`: the connection is held open, as a stuck server would)."""

    def __init__(self, reply: Optional[bytes] = None, backlog: int = 16) -> None:
        super().__init__(backlog)
        self.reply = reply

    def handle(self, conn: socket.socket) -> None:
        if self.reply is None:
            self.held.append(conn)
            return
        with conn:
            conn.recv(65536)
            conn.sendall(self.reply)


class UnacceptedListener:
    """A listener with a full accept queue: the next connect() gets no SYN-ACK and
    times out (Linux drops SYNs when the backlog is full)."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.port = self.listener.getsockname()[1]
        self.filler = socket.create_connection(("127.0.0.1", self.port), timeout=5)

    def close(self) -> None:
        self.filler.close()
        self.listener.close()


def http_response(status: str = "200 OK", body: bytes = b"ok\n") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}"
            f"\r\nConnection: close\r\n\r\n").encode() + body


def _reset(conn: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a server that drops a client does."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


class TLSPeer(_ThreadPeer):
    """A stdlib `ssl` server: completes the handshake, then answers `reply` to the first
    request — or, when `drop_unless` is given, resets the connection right after the
    handshake unless the client certificate's CN is `drop_unless` (no alert: the
    silent TLS 1.3 refusal a client can only see as a reset or EOF)."""

    def __init__(self, context: ssl.SSLContext, reply: bytes = b"",
                 drop_unless: Optional[str] = None) -> None:
        super().__init__()
        self.context = context
        self.reply = reply or http_response()
        self.drop_unless = drop_unless

    @staticmethod
    def context_for(cert: Path, key: Path, client_ca: Optional[Path] = None,
                    version: Optional[ssl.TLSVersion] = None) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        if client_ca is not None:
            ctx.load_verify_locations(str(client_ca))
            ctx.verify_mode = ssl.CERT_OPTIONAL
        if version is not None:
            ctx.minimum_version = ctx.maximum_version = version
        return ctx

    def handle(self, conn: socket.socket) -> None:
        tls = self.context.wrap_socket(conn, server_side=True)
        if self.drop_unless is not None and self._common_name(tls) != self.drop_unless:
            _reset(tls)
            return
        with tls:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = tls.recv(65536)
                if not chunk:
                    return
                head += chunk
            tls.sendall(self.reply)

    @staticmethod
    def _common_name(tls: ssl.SSLSocket) -> Optional[str]:
        peer = tls.getpeercert() or {}
        for rdn in peer.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return value
        return None


# ------------------------------------------ real proxies in front: nginx and HAProxy
# tests/test_load_balancers.py runs the shipped etc/deploy files with the real nginx and
# HAProxy. These helpers find the programs, fill in templates, run foreground processes
# we own (stopped by PID), and make requests from a chosen loopback address.
import json  # noqa: E402
import shutil  # noqa: E402

DEPLOY = REPO / "etc" / "deploy"
_SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin",
                              "/sbin"])
_PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


def find_program(name: str) -> Optional[str]:
    """`name` on PATH or in an sbin directory: Debian installs nginx and haproxy in
    /usr/sbin, which is often not on a normal user's PATH."""
    return shutil.which(name, path=_SBIN_PATH)


def render_template(template: Path, values: dict[str, str]) -> str:
    """What `envsubst '${A} ${B}'` does with exactly the listed names, but strict: every
    ${NAME} in the template needs a value and every value a placeholder, so a template
    and the code that fills it cannot drift apart unnoticed."""
    text = template.read_text()
    used = set(_PLACEHOLDER.findall(text))
    missing, unused = sorted(used - values.keys()), sorted(values.keys() - used)
    if missing or unused:
        raise AssertionError(f"{template}: no value for {missing}; no placeholder for {unused}")
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


def port_accepts(port: int, host: str = "127.0.0.1") -> bool:
    """Does something accept TCP connections on host:port right now?"""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


class ForegroundProcess:
    """A program that stays in the foreground (nginx `daemon off`, `haproxy -db`), its
    output in one file; ready when `ready()` says so (default: `port` accepts a
    connection); stopped by its PID."""

    def __init__(self, name: str, argv: list[str], directory: Path, port: int,
                 env: Optional[dict[str, str]] = None,
                 ready: Optional[Callable[[], Any]] = None) -> None:
        self.name, self.argv, self.dir, self.port = name, argv, directory, port
        self.env = dict(os.environ, **(env or {}))
        self.ready = ready or (lambda: port_accepts(self.port))
        self.output_path = directory / f"{name}.out"
        self.proc: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 15.0) -> ForegroundProcess:
        with open(self.output_path, "wb") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                         env=self.env, cwd=str(self.dir))

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n"
                                     f"{self.output}")
            return self.ready()

        wait_for(ready, timeout, interval=0.05, what=f"{self.name} ready on port {self.port}")
        return self

    @property
    def output(self) -> str:
        return self.output_path.read_text(errors="replace") if self.output_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout)


def exchange(port: int, request: bytes, ctx: Optional[ssl.SSLContext] = None,
             source: str = "127.0.0.1", host: str = "127.0.0.1",
             server_hostname: str = "localhost", timeout: float = 10.0) -> bytes:
    """Send `request` on a new connection to host:port from the loopback address `source`
    (Linux routes all of 127.0.0.0/8 to lo, so a client can look different from a proxy
    on the same machine), over TLS when `ctx` is given; return all bytes until close."""
    with socket.create_connection((host, port), timeout=timeout,
                                  source_address=(source, 0)) as sock:
        conn = sock if ctx is None else ctx.wrap_socket(sock, server_hostname=server_hostname)
        with conn:
            conn.sendall(request)
            chunks = []
            while True:
                try:
                    data = conn.recv(65536)
                except (ssl.SSLZeroReturnError, ConnectionResetError):
                    break
                if not data:
                    break
                chunks.append(data)
            return b"".join(chunks)


def json_body(response: bytes) -> dict:
    """The JSON body of a raw HTTP response (tests/apps/echo.py answers its environ)."""
    assert status_of(response) == 200, response[:300]
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


def haproxy_servers(stats_socket: Path, backend: str) -> dict[str, dict[str, str]]:
    """Server name -> its `show stat` row (CSV columns such as `status`: "UP", "DOWN",
    "UP 1/2"..., and `check_status`: "L7OK", "L4CON"...) from HAProxy's stats socket."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(stats_socket))
        sock.sendall(b"show stat\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    lines = data.decode().splitlines()
    header = lines[0].lstrip("# ").split(",")
    rows = [dict(zip(header, line.split(","))) for line in lines[1:] if line]
    return {row["svname"]: row for row in rows
            if row["pxname"] == backend and row["svname"] not in ("FRONTEND", "BACKEND")}
