"""Beyond one machine, with the real nginx and HAProxy running the shipped etc/deploy files.

1. TLS terminated at the proxy: nginx verifies the client and forwards its certificate
   (a) over plain HTTP on loopback (X-SSL-Client-Cert, trusted by address), or
   (b) over mutual TLS, nginx proving who it is (XFCC, trusted by address AND identity).
2. TLS passed through: HAProxy in TCP mode balances raw TLS connections over two
   instances with PROXY protocol v2; each instance verifies the client itself and sees
   its real address. The test client connects from 127.0.0.2 (Linux routes 127.0.0.0/8
   to lo) so that "the client" and "the proxy" (127.0.0.1) differ.

Every address and port is on loopback and chosen at run time; every process is ours and
stopped by PID; every wait polls with a deadline.
"""
from __future__ import annotations

import os
import re
import signal
import ssl
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Union

import pytest
from support import (
    DEPLOY,
    Client,
    ForegroundProcess,
    PKIFiles,
    ServerProcess,
    client_context,
    exchange,
    find_program,
    free_port,
    haproxy_servers,
    json_body,
    render_template,
    status_of,
    wait_for,
)

NGINX = find_program("nginx")
HAPROXY = find_program("haproxy")
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed "
                                 "(Debian package: nginx)")
needs_haproxy = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed "
                                   "(Debian package: haproxy)")

APPS = str(Path(__file__).parent / "apps")
CLIENT = "127.0.0.2"      # a client on "another machine"
STRANGER = "127.0.0.3"    # a process that is neither the proxy nor a trusted address
BACKEND_NAME = "localhost"  # the name in the test PKI's server certificate


# ------------------------------------------------------------------ process plumbing


class Launcher:
    """Starts securewsgi instances (from shipped service files) and proxies for one
    module, and stops them all, proxies first, when the module ends."""

    def __init__(self, tmp: pytest.TempPathFactory, test_pki: PKIFiles, engine: str) -> None:
        self.tmp, self.pki, self.engine = tmp, test_pki, engine
        self.started: list[Union[ServerProcess, ForegroundProcess]] = []

    def instances(self, service_file: Path, name: str, count: int = 2,
                  **env: str) -> list[ServerProcess]:
        """`count` instances of a shipped service file, started in parallel."""
        environ = {"SECUREWSGI_HOST": "127.0.0.1", "SECUREWSGI_PORT": "0",
                   "SECUREWSGI_WORKERS": "1", "APP_FACTORY": "echo:app",
                   "TLS_DIR": str(self.pki.dir),
                   "PYTHONPATH": os.pathsep.join(filter(None, [
                       APPS, os.environ.get("PYTHONPATH")])), **env}
        servers = [ServerProcess(self.tmp.mktemp(f"{name}{i}"), {}, name=name,
                                 text=service_file.read_text(), env=environ,
                                 engine=self.engine)
                   for i in range(count)]
        self.started.extend(servers)
        with ThreadPoolExecutor(count) as pool:
            list(pool.map(ServerProcess.start, servers))
        return servers

    def nginx(self, template: Path, **values: str) -> ForegroundProcess:
        """nginx in the foreground with `template` rendered as its whole configuration."""
        directory = self.tmp.mktemp("nginx")
        port = free_port()
        for sub in ("state", "logs"):
            (directory / sub).mkdir()
        conf = directory / "nginx.conf"
        conf.write_text(render_template(template, {
            "LISTEN": f"127.0.0.1:{port}", "SERVER_NAME": BACKEND_NAME,
            "SERVER_CERT": str(self.pki.server_cert), "SERVER_KEY": str(self.pki.server_key),
            "CLIENT_CA": str(self.pki.ca_pem), "STATE_DIR": str(directory / "state"),
            "LOG_DIR": str(directory / "logs"), **values}))
        # as root, nginx's workers would switch to "nobody": keep them the current user
        user = "user root;" if os.geteuid() == 0 else ""
        argv = [str(NGINX), "-e", str(directory / "error.log"), "-p", str(directory),
                "-c", str(conf), "-g", f"daemon off; pid {directory}/nginx.pid; "
                f"error_log {directory}/error.log notice; {user}"]
        return self._start(ForegroundProcess("nginx", argv, directory, port))

    def haproxy(self, instances: list[ServerProcess]) -> ForegroundProcess:
        """HAProxy in the foreground with etc/deploy/haproxy/haproxy.cfg as shipped;
        ready once both instances passed their health check."""
        directory = self.tmp.mktemp("haproxy")
        port = free_port()
        env = {"LISTEN": f"127.0.0.1:{port}", "BACKEND_NAME": BACKEND_NAME,
               "SECUREWSGI_1": f"127.0.0.1:{instances[0].port}",
               "SECUREWSGI_2": f"127.0.0.1:{instances[-1].port}",
               "CHECK_CERT": str(self._check_bundle(directory)),
               "CHECK_CA": str(self.pki.ca_pem), "CHECK_INTER": "500ms",
               "HAPROXY_LOG": "stderr", "HAPROXY_STATS_SOCKET": str(directory / "admin.sock")}
        argv = [str(HAPROXY), "-f", str(DEPLOY / "haproxy" / "haproxy.cfg"), "-db"]
        stats = directory / "admin.sock"

        def both_up() -> bool:
            """Both passed an HTTPS check, asked on the stats socket (a probe connection
            to the frontend would reach an instance, logged there as a refused
            handshake)."""
            try:
                servers = haproxy_servers(stats, "securewsgi").values()
            except OSError:  # not created or not listening yet
                return False
            return bool(servers) and all(
                (s["status"], s["check_status"]) == ("UP", "L7OK") for s in servers)

        return self._start(ForegroundProcess("haproxy", argv, directory, port, env,
                                             ready=both_up))

    def _check_bundle(self, directory: Path) -> Path:
        """HAProxy's `crt`: the health check's client certificate and key in one file."""
        check = client(self.pki, "haproxy-check")
        bundle = directory / "haproxy-check.pem"
        bundle.write_text(check.cert.read_text() + check.key.read_text())
        bundle.chmod(0o600)
        return bundle

    def _start(self, proc: ForegroundProcess) -> ForegroundProcess:
        self.started.append(proc)
        return proc.start()

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()


@pytest.fixture(scope="module")
def launch(tmp_path_factory: pytest.TempPathFactory, test_pki: PKIFiles, engine: str
           ) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path_factory, test_pki, engine)
    yield launcher
    launcher.stop_all()


def client(test_pki: PKIFiles, name: str) -> Client:
    """A client certificate of the session PKI, issued on first use."""
    return test_pki.clients.get(name) or test_pki.add_client(name)


def backend_status(proxy: ForegroundProcess) -> dict[str, str]:
    """Server name -> "UP", "DOWN", ... as HAProxy sees it now."""
    servers = haproxy_servers(proxy.dir / "admin.sock", "securewsgi")
    return {name: row["status"] for name, row in servers.items()}


def request(path: str = "/whoami", headers: str = "") -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}"
            "Connection: close\r\n\r\n").encode()


def escaped_pem(test_pki: PKIFiles, name: str) -> str:
    """A certificate as nginx's $ssl_client_escaped_cert writes it."""
    return urllib.parse.quote(client(test_pki, name).cert.read_text(), safe="")


def forged(test_pki: PKIFiles, name: str) -> str:
    """Both forwarded-certificate headers, claiming to be `name`."""
    pem = escaped_pem(test_pki, name)
    return f'X-SSL-Client-Cert: {pem}\r\nX-Forwarded-Client-Cert: Cert="{pem}"\r\n'


def tls_as(test_pki: PKIFiles, name: str = "") -> ssl.SSLContext:
    return client_context(test_pki.ca_pem, client(test_pki, name) if name else None)


def environ_via(port: int, ctx: Any, path: str = "/whoami", headers: str = "",
                source: str = CLIENT) -> dict[str, Any]:
    return json_body(exchange(port, request(path, headers), ctx, source=source))


# --------------------------------------------------- 1. TLS terminated at nginx


@pytest.fixture(scope="module")
def nginx_to_http(launch: Launcher) -> dict[str, Any]:
    """Variant (a): nginx -> two instances over plain HTTP on loopback."""
    instances = launch.instances(DEPLOY / "nginx" / "backend-http.yaml", "plain")
    proxy = launch.nginx(DEPLOY / "nginx" / "mtls-to-http.conf.template",
                         BACKEND_1=f"127.0.0.1:{instances[0].port}",
                         BACKEND_2=f"127.0.0.1:{instances[1].port}")
    return {"proxy": proxy, "instances": instances}


@pytest.fixture(scope="module")
def nginx_to_mtls(launch: Launcher, test_pki: PKIFiles) -> dict[str, Any]:
    """Variant (b): nginx -> two instances over mutual TLS, as CN=nginx-proxy."""
    instances = launch.instances(DEPLOY / "nginx" / "backend-mtls.yaml", "mtls",
                                 PROXY_NETWORK="127.0.0.1/32")
    proxy_cert = client(test_pki, "nginx-proxy")
    proxy = launch.nginx(DEPLOY / "nginx" / "mtls-to-mtls.conf.template",
                         BACKEND_1=f"127.0.0.1:{instances[0].port}",
                         BACKEND_2=f"127.0.0.1:{instances[1].port}",
                         PROXY_CERT=str(proxy_cert.cert), PROXY_KEY=str(proxy_cert.key),
                         BACKEND_CA=str(test_pki.ca_pem), BACKEND_NAME=BACKEND_NAME)
    return {"proxy": proxy, "instances": instances}


@pytest.fixture(params=["to-http", "to-mtls"])
def via_nginx(request: pytest.FixtureRequest, engine: str) -> dict[str, Any]:
    """Either topology (on the module's engine: `engine` is named so that pytest
    parametrizes this dynamic look-up too)."""
    return request.getfixturevalue({"to-http": "nginx_to_http",
                                    "to-mtls": "nginx_to_mtls"}[request.param])


@needs_nginx
def test_nginx_forwards_the_verified_client_certificate(via_nginx, test_pki) -> None:
    env = environ_via(via_nginx["proxy"].port, tls_as(test_pki, "alice"))
    assert env["SSL_CLIENT_VERIFY"] == "SUCCESS"
    assert env["SSL_CLIENT_S_DN"] == "CN=alice"
    assert env["SSL_CLIENT_SAN_URI_0"] == "spiffe://example.org/ns/ops/alice"
    assert env["REMOTE_USER"] == "alice"
    assert env["securewsgi.peer.source"] == "proxy"
    assert env["REMOTE_ADDR"] == "127.0.0.1"          # the TCP peer is nginx ...
    assert env["HTTP_X_FORWARDED_FOR"] == CLIENT      # ... which names the client
    assert "HTTP_X_SSL_CLIENT_CERT" not in env        # consumed: the identity keys are
    assert "HTTP_X_FORWARDED_CLIENT_CERT" not in env  # the one API


@needs_nginx
def test_nginx_balances_over_both_instances(via_nginx, test_pki) -> None:
    """nginx workers each keep their own round-robin turn: ask until both answered."""
    expected = {str(server.port) for server in via_nginx["instances"]}
    seen: set = set()
    for _ in range(4 * (os.cpu_count() or 1) + 4):
        env = environ_via(via_nginx["proxy"].port, tls_as(test_pki, "bob"))
        assert env["SSL_CLIENT_S_DN"] == "CN=bob"
        seen.add(env["SERVER_PORT"])
        if seen == expected:
            break
    assert seen == expected


@needs_nginx
def test_nginx_replaces_forwarded_headers_sent_by_the_client(via_nginx, test_pki) -> None:
    """alice claims to be bob in both header formats; proxy_set_header overwrites them."""
    env = environ_via(via_nginx["proxy"].port, tls_as(test_pki, "alice"),
                      headers=forged(test_pki, "bob"))
    assert env["SSL_CLIENT_S_DN"] == "CN=alice"
    assert env["REMOTE_USER"] == "alice"
    assert "HTTP_X_SSL_CLIENT_CERT" not in env
    assert "HTTP_X_FORWARDED_CLIENT_CERT" not in env


@needs_nginx
@pytest.mark.parametrize("who", ["", "unknown-ca", "expired"])
def test_nginx_refuses_clients_it_cannot_verify(nginx_to_http, test_pki, who: str) -> None:
    """ssl_verify_client on: nginx answers 400 itself; nothing reaches securewsgi."""
    response = exchange(nginx_to_http["proxy"].port, request(), tls_as(test_pki, who),
                        source=CLIENT)
    assert status_of(response) == 400
    assert b"SSL certificate" in response
    assert b"SSL_CLIENT" not in response


@needs_nginx
def test_forwarded_header_from_an_untrusted_address_is_dropped(nginx_to_http,
                                                               test_pki) -> None:
    """Straight to a plain-HTTP instance from 127.0.0.3 (trusted_proxies is
    127.0.0.1/32): the header is removed, the caller is anonymous, the API refuses it."""
    port = nginx_to_http["instances"][0].port
    headers = forged(test_pki, "alice")
    env = environ_via(port, None, "/healthz", headers, source=STRANGER)
    assert env["SSL_CLIENT_VERIFY"] == "NONE"
    assert "SSL_CLIENT_S_DN" not in env and "REMOTE_USER" not in env
    assert "HTTP_X_SSL_CLIENT_CERT" not in env
    assert status_of(exchange(port, request("/whoami", headers), source=STRANGER)) == 403


@needs_nginx
def test_address_trust_alone_believes_any_local_process(nginx_to_http, test_pki) -> None:
    """Why variant (b) exists: over plain HTTP, ANY process on the proxy's address can
    claim any identity — the instance cannot tell it from nginx."""
    env = environ_via(nginx_to_http["instances"][0].port, None,
                      headers=forged(test_pki, "alice"), source="127.0.0.1")
    assert env["SSL_CLIENT_S_DN"] == "CN=alice"
    assert env["securewsgi.peer.source"] == "proxy"


@needs_nginx
@pytest.mark.parametrize("who, source, expected", [
    ("bob", "127.0.0.1", "CN=bob"),                    # right address, not the proxy
    ("nginx-proxy", STRANGER, "CN=nginx-proxy"),       # the proxy's cert, wrong address
    ("nginx-proxy", "127.0.0.1", "CN=alice"),          # both: what nginx does
])
def test_mtls_instance_believes_only_the_proxy_identity(nginx_to_mtls, test_pki, who: str,
                                                        source: str, expected: str) -> None:
    """Straight to a mutual-TLS instance with a valid certificate and a forwarded
    header for alice: honoured only from CN=nginx-proxy at 127.0.0.1."""
    env = environ_via(nginx_to_mtls["instances"][0].port, tls_as(test_pki, who),
                      headers=forged(test_pki, "alice"), source=source)
    assert env["SSL_CLIENT_S_DN"] == expected
    assert env["securewsgi.peer.source"] == ("proxy" if expected == "CN=alice" else "tls")
    assert "HTTP_X_FORWARDED_CLIENT_CERT" not in env


# ----------------------------------------------- 2. TLS passed through HAProxy


@pytest.fixture(scope="module")
def passthrough(launch: Launcher) -> dict[str, Any]:
    instances = launch.instances(DEPLOY / "haproxy" / "backend.yaml", "passthrough",
                                 HAPROXY_NETWORK="127.0.0.1/32")
    return {"proxy": launch.haproxy(instances), "instances": instances}


@needs_haproxy
def test_haproxy_round_robin_and_each_instance_sees_the_client(passthrough,
                                                               test_pki) -> None:
    envs = [environ_via(passthrough["proxy"].port, tls_as(test_pki, "alice"))
            for _ in range(4)]
    ports = [env["SERVER_PORT"] for env in envs]
    assert set(ports) == {str(server.port) for server in passthrough["instances"]}
    assert all(a != b for a, b in zip(ports, ports[1:])), ports  # strictly alternating
    for env in envs:
        assert env["REMOTE_ADDR"] == CLIENT                # from the PROXY v2 header
        assert env["SSL_CLIENT_S_DN"] == "CN=alice"        # verified by the instance
        assert env["REMOTE_USER"] == "alice"
        assert env["securewsgi.peer.source"] == "tls"
    for server in passthrough["instances"]:
        server.wait_log(rf" {CLIENT} alice TLSv1\.3 \"GET /whoami", stream="stdout")


@needs_haproxy
@pytest.mark.parametrize("who, reason", [("", "no client certificate"),
                                         ("unknown-ca", "unknown CA")])
def test_each_instance_refuses_bad_clients_itself(passthrough, test_pki, who: str,
                                                  reason: str) -> None:
    """HAProxy only moves bytes: the instance refuses the handshake, and its log names
    the real client address."""
    with pytest.raises((ssl.SSLError, OSError)):
        environ_via(passthrough["proxy"].port, tls_as(test_pki, who))

    def logged() -> bool:
        return any(f"TLS handshake failed: client={CLIENT}" in server.stderr
                   and reason in server.stderr for server in passthrough["instances"])

    wait_for(logged, 5, what=f"a refused handshake from {CLIENT} ({reason})")


@needs_haproxy
def test_health_checks_reach_the_app_without_log_noise(passthrough) -> None:
    """HTTPS checks (PROXY LOCAL + mutual TLS + GET /healthz) are served by the app;
    no refused handshakes from HAProxy's address. A PROXY header without an address
    does not make the connection a trusted forwarder: the caller is the certificate of
    its own handshake, the check's."""
    for server in passthrough["instances"]:
        server.wait_log(r' 127\.0\.0\.1 haproxy-check TLSv1\.3 "GET /healthz HTTP/1\.1" 200 ',
                        stream="stdout")
        assert "TLS handshake failed: client=127.0.0.1" not in server.stderr
        assert "PROXY header refused" not in server.stderr


@needs_haproxy
def test_a_killed_instance_costs_no_request(launch: Launcher, test_pki) -> None:
    """SIGKILL one instance between requests: `retries` + `option redispatch 1` send the
    refused connects to the other one until the health check marks it DOWN; no client
    sees a failure, before or after."""
    instances = launch.instances(DEPLOY / "haproxy" / "backend.yaml", "survivor",
                                 HAPROXY_NETWORK="127.0.0.1/32")
    proxy = launch.haproxy(instances)
    victim, survivor = instances
    ctx = tls_as(test_pki, "alice")

    def ask() -> str:
        return environ_via(proxy.port, ctx, "/healthz")["SERVER_PORT"]

    assert {ask(), ask()} == {str(victim.port), str(survivor.port)}
    os.kill(victim.pid, signal.SIGKILL)
    victim.proc.wait(5)
    answered = [ask() for _ in range(10)]  # before the check notices
    wait_for(lambda: backend_status(proxy)["app1"].startswith("DOWN"), 5, interval=0.05,
             what="HAProxy marking the killed instance DOWN")
    answered += [ask() for _ in range(10)]
    assert answered == [str(survivor.port)] * 20
    assert backend_status(proxy)["app2"] == "UP"
    # the path was really taken: tcplog's retry counter "+N" = redispatched N times
    wait_for(lambda: re.search(r"securewsgi/app2 \S+ \d+ -- \S+/\+\d ", proxy.output), 5,
             what="a redispatched connection in HAProxy's log")


@needs_haproxy
def test_forwarded_header_through_passthrough_is_never_believed(launch: Launcher,
                                                                test_pki) -> None:
    """trusted_proxies covers a subnet that holds HAProxy AND clients (a cloud load
    balancer's VPC): a client there, presenting bob's certificate through HAProxy,
    claims alice in a header. Only HAProxy is a proxy here, and it cannot have written
    that header."""
    instances = launch.instances(DEPLOY / "haproxy" / "backend.yaml", "subnet", count=1,
                                 HAPROXY_NETWORK="127.0.0.0/8")
    proxy = launch.haproxy(instances)
    env = environ_via(proxy.port, tls_as(test_pki, "bob"), headers=forged(test_pki, "alice"))
    assert env["REMOTE_ADDR"] == CLIENT
    assert env["SSL_CLIENT_S_DN"] == "CN=bob"
