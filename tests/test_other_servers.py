"""Identity under other servers, with the real servers: the identity filter
(`client_cert_from = server`) under Apache httpd + mod_wsgi and under nginx + uWSGI,
running the shipped files of etc/deploy/apache-mod_wsgi and etc/deploy/nginx-uwsgi.

The hosting server does the TLS handshake and verifies the client; the filter takes the
certificate from environ SSL_CLIENT_CERT (only when SSL_CLIENT_VERIFY is SUCCESS), rebuilds
every SSL_CLIENT_* key from it and enforces the shipped policy.yaml: /admin/* for CN=alice,
/api/* for any verified client, everything else open. The shipped paste.ini is used as
is except for its one `[app:app]` line, pointed at tests/apps/echo.py (answers its
environ as JSON).

Requirements (CI installs them; without them these tests FAIL, they do not skip):
Debian packages apache2 apache2-dev nginx, and in this venv `pip install mod_wsgi uwsgi`
(both compile against this Python).

Apache refuses to serve as root (a compile-time check), and as another user it cannot
read a Python that lives under /root (mode 0700; CI's pyenv Python does). So when the
tests run as root, Apache runs in a user namespace (`unshare --user`) as an unprivileged
user whom the kernel still treats as the owner of root's files. It is the same Apache.

Every process is ours and stopped by PID; every address is on loopback, every port
chosen at run time; every wait polls with a deadline.
"""
from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import requests
from support import (
    DEPLOY,
    Client,
    ForegroundProcess,
    PKIFiles,
    client_context,
    exchange,
    find_program,
    free_port,
    json_body,
    port_accepts,
    render_template,
    session,
    status_of,
    wait_for,
)

from securewsgi.identity import PeerIdentity

APACHE_DIR = DEPLOY / "apache-mod_wsgi"
UWSGI_DIR = DEPLOY / "nginx-uwsgi"
APPS = Path(__file__).parent / "apps"
SERVER_NAME = "localhost"  # in the test PKI's server certificate
DEMO_APP = "use = call:securewsgi.demo:app_factory"
ECHO_APP = "use = call:echo_factory:app_factory"
FORBIDDEN = b"403 Forbidden: access to this resource is not allowed\n"
UWSGI_PARAMS = Path("/etc/nginx/uwsgi_params")  # Debian's nginx-common

# The mod_wsgi-express options of the shipped deployment (README.rst shows each);
# the tests add only --server-root, --python-path (for the echo app) and --locale.
APACHE_OPTIONS = ("--server-name", "--host", "--port", "--https-port", "--https-only",
                  "--ssl-certificate-file", "--ssl-certificate-key-file",
                  "--ssl-environment", "--include-file", "--log-to-terminal")


# ------------------------------------------------------------------ programs we need


def _venv_program(name: str, install: str) -> str:
    """`name` from this venv's bin (pip-installed, built for this Python), else PATH."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: {install}", pytrace=False)
    return found


def mod_wsgi_express() -> str:
    if find_program("apache2") is None and find_program("httpd") is None:
        pytest.fail("Apache httpd is not installed: apt-get install apache2 apache2-dev, "
                    "then pip install mod_wsgi into this venv", pytrace=False)
    return _venv_program("mod_wsgi-express", f"{sys.executable} -m pip install mod_wsgi "
                         "(compiles against this Python; needs Debian's apache2 apache2-dev)")


def uwsgi() -> str:
    return _venv_program("uwsgi", f"{sys.executable} -m pip install uwsgi (compiles; "
                         "needs a C compiler and this Python's headers)")


def nginx() -> str:
    found = find_program("nginx")
    if found is None or not UWSGI_PARAMS.exists():
        pytest.fail("nginx is not installed: apt-get install nginx", pytrace=False)
    return found


def unprivileged(argv: list[str]) -> list[str]:
    """`argv` as a non-root user (see the module docstring); unchanged when not root."""
    if os.geteuid() != 0:
        return argv
    nobody = pwd.getpwnam("nobody")
    wrapper = [shutil.which("unshare") or "unshare", "--user",
               f"--map-user={nobody.pw_uid}", f"--map-group={nobody.pw_gid}"]
    try:
        probe = subprocess.run([*wrapper, "true"], capture_output=True, text=True,
                               timeout=10)
        problem = probe.stderr.strip() if probe.returncode else ""
    except OSError as exc:
        problem = str(exc)
    if problem:
        pytest.fail("Apache will not serve as root, and `unshare --user` (to run it "
                    f"unprivileged) failed: {problem}; run the tests as a non-root user, "
                    "or allow user namespaces (util-linux's unshare)", pytrace=False)
    return [*wrapper, *argv]


# ------------------------------------------------------------------ the front ends


@dataclass
class Front:
    """A front end that terminates TLS: the client-facing process and those behind it."""

    name: str
    port: int
    processes: list[ForegroundProcess] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"https://{SERVER_NAME}:{self.port}{path}"

    @property
    def log(self) -> str:
        """Everything the processes wrote (error logs included)."""
        parts = []
        for proc in self.processes:
            parts.append(proc.output)
            parts.extend(p.read_text(errors="replace") for p in proc.dir.glob("*.log"))
        return "\n".join(parts)


def deployment(shipped: Path, directory: Path) -> Path:
    """A copy of a shipped deployment directory; its paste.ini serves the echo app."""
    target = directory / shipped.name
    shutil.copytree(shipped, target)
    ini = target / "paste.ini"
    text = ini.read_text()
    assert text.count(DEMO_APP) == 1, f"{shipped}/paste.ini: expected one {DEMO_APP!r}"
    ini.write_text(text.replace(DEMO_APP, ECHO_APP))
    return target


class Launcher:
    """Starts the servers of this module; stops them all, by PID, when it ends."""

    def __init__(self, tmp: pytest.TempPathFactory, test_pki: PKIFiles) -> None:
        self.tmp, self.pki = tmp, test_pki
        self.started: list[ForegroundProcess] = []

    def _start(self, proc: ForegroundProcess, timeout: float = 30.0) -> ForegroundProcess:
        self.started.append(proc)
        return proc.start(timeout)

    def stop_all(self) -> None:
        """SIGTERM each (front ends first); each must stop by itself, no SIGKILL (for
        uWSGI that is the shipped `die-on-term`: by default SIGTERM means reload)."""
        killed = []
        for proc in reversed(self.started):
            proc.stop()
            if proc.proc is not None and proc.proc.returncode == -signal.SIGKILL:
                killed.append(proc.name)
        assert not killed, f"did not stop on SIGTERM: {killed}"

    # Apache httpd + mod_wsgi, as README.rst starts it

    def apache(self, name: str, *extra: str) -> Front:
        express = mod_wsgi_express()
        directory = self.tmp.mktemp(name)
        app_dir = deployment(APACHE_DIR, directory)
        http_port, https_port = free_port(), free_port()
        options = {
            "--server-name": SERVER_NAME, "--host": "127.0.0.1", "--port": str(http_port),
            "--https-port": str(https_port), "--https-only": None,
            "--ssl-certificate-file": str(self.pki.server_cert),
            "--ssl-certificate-key-file": str(self.pki.server_key),
            "--ssl-environment": None,
            "--include-file": str(app_dir / "securewsgi-ssl.conf"),
            "--log-to-terminal": None,
        }
        assert tuple(options) == APACHE_OPTIONS
        argv = [express, "start-server", str(app_dir / "securewsgi.wsgi")]
        for option, value in options.items():
            argv += [option] if value is None else [option, value]
        argv += ["--server-root", str(directory / "httpd"), "--python-path", str(APPS),
                 "--locale", "C.UTF-8", *extra]
        proc = ForegroundProcess("apache", unprivileged(argv), directory, https_port,
                                 env={"CLIENT_CA": str(self.pki.ca_pem)})
        return Front(name, https_port, [self._start(proc)])

    # uWSGI behind nginx

    def uwsgi(self) -> tuple[Path, ForegroundProcess]:
        program = uwsgi()
        directory = self.tmp.mktemp("uwsgi")
        app_dir = deployment(UWSGI_DIR, directory)
        socket_path = directory / "uwsgi.sock"
        ini = app_dir / "uwsgi.ini"
        ini.write_text(render_template(app_dir / "uwsgi.ini.template", {
            "UWSGI_SOCKET": str(socket_path), "VENV": sys.prefix}))
        argv = [program, "--ini", str(ini), "--pythonpath", str(APPS)]
        proc = ForegroundProcess("uwsgi", argv, directory, 0, ready=lambda: (
            socket_path.exists() and "WSGI app 0 (mountpoint='') ready" in proc.output))
        return socket_path, self._start(proc)

    def nginx(self, name: str, socket_path: Path,
              edit: Callable[[str], str] = lambda text: text) -> ForegroundProcess:
        """nginx with the shipped server block (rendered, then `edit`ed) in a minimal
        main configuration of ours, Debian's uwsgi_params beside it."""
        program = nginx()
        directory = self.tmp.mktemp(name)
        port = free_port()
        server = render_template(UWSGI_DIR / "nginx-server.conf.template", {
            "LISTEN": f"127.0.0.1:{port}", "SERVER_NAME": SERVER_NAME,
            "SERVER_CERT": str(self.pki.server_cert), "SERVER_KEY": str(self.pki.server_key),
            "CLIENT_CA": str(self.pki.ca_pem), "UWSGI_SOCKET": str(socket_path)})
        (directory / "server.conf").write_text(edit(server))
        shutil.copy(UWSGI_PARAMS, directory / "uwsgi_params")
        (directory / "nginx.conf").write_text("\n".join([
            "worker_processes 1;",
            "events { worker_connections 64; }",
            "http {",
            f"    access_log {directory}/access.log;",
            *(f"    {kind}_temp_path {directory}/{kind};"
              for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")),
            "    include server.conf;",
            "}", ""]))
        # as root, nginx's workers would switch to "nobody": keep them the current user
        user = "user root;" if os.geteuid() == 0 else ""
        argv = [program, "-e", str(directory / "error.log"), "-p", str(directory),
                "-c", str(directory / "nginx.conf"), "-g",
                f"daemon off; pid {directory}/nginx.pid; "
                f"error_log {directory}/error.log notice; {user}"]
        return self._start(ForegroundProcess("nginx", argv, directory, port))


@pytest.fixture(scope="module")
def launch(tmp_path_factory: pytest.TempPathFactory, test_pki: PKIFiles
           ) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path_factory, test_pki)
    yield launcher
    launcher.stop_all()


@pytest.fixture(scope="module")
def apache(launch: Launcher) -> Front:
    """Apache + mod_wsgi as shipped: every client asked for a certificate, optional."""
    return launch.apache("apache")


@pytest.fixture(scope="module")
def apache_per_path(launch: Launcher) -> Front:
    """The mod_wsgi-express way README.rst warns about: --ssl-ca-certificate-file and
    --ssl-verify-client /admin (a certificate is asked for under /admin only)."""
    return launch.apache("apache-per-path", "--ssl-ca-certificate-file",
                         str(launch.pki.ca_pem), "--ssl-verify-client", "/admin")


@pytest.fixture(scope="module")
def apache_without_cert_data(launch: Launcher) -> Front:
    """The usual mistake (--ssl-environment alone exports no certificate): mod_ssl
    verifies the client (SSL_CLIENT_VERIFY SUCCESS) but does not export SSL_CLIENT_CERT
    (a later `SSLOptions -ExportCertData`, as if the include file were missing)."""
    extra = launch.tmp.mktemp("no-cert-data") / "no-export-cert-data.conf"
    extra.write_text("SSLOptions -ExportCertData\n")
    return launch.apache("apache-no-cert-data", "--include-file", str(extra))


@pytest.fixture(scope="module")
def uwsgi_backend(launch: Launcher) -> tuple[Path, ForegroundProcess]:
    return launch.uwsgi()


@pytest.fixture(scope="module")
def nginx_uwsgi(launch: Launcher, uwsgi_backend: tuple[Path, ForegroundProcess]) -> Front:
    """nginx (as shipped: ssl_verify_client optional) -> uWSGI over a unix socket."""
    socket_path, backend = uwsgi_backend
    proxy = launch.nginx("nginx", socket_path)
    return Front("nginx", proxy.port, [proxy, backend])


@pytest.fixture(scope="module")
def nginx_no_ca(launch: Launcher, uwsgi_backend: tuple[Path, ForegroundProcess]) -> Front:
    """The shipped server block with `ssl_verify_client optional_no_ca` (which it warns
    against): nginx lets in certificates it could not verify, SSL_CLIENT_VERIFY FAILED."""
    socket_path, backend = uwsgi_backend

    def no_ca(text: str) -> str:
        assert text.count("ssl_verify_client optional;") == 1
        return text.replace("ssl_verify_client optional;", "ssl_verify_client optional_no_ca;")

    proxy = launch.nginx("nginx-no-ca", socket_path, no_ca)
    return Front("nginx-no-ca", proxy.port, [proxy, backend])


@pytest.fixture(params=["apache", "nginx"])
def front(request: pytest.FixtureRequest) -> Front:
    return request.getfixturevalue({"apache": "apache", "nginx": "nginx_uwsgi"}[
        request.param])


# ------------------------------------------------------------------ clients


def client(test_pki: PKIFiles, name: str) -> Optional[Client]:
    return None if name == "anonymous" else test_pki.clients[name]


def get(front: Front, test_pki: PKIFiles, path: str, who: str = "anonymous",
        headers: Optional[dict[str, str]] = None) -> requests.Response:
    """GET over a new connection, as `who` (a test PKI client, or "anonymous")."""
    with session(test_pki.ca_pem, client(test_pki, who)) as s:
        return s.get(front.url(path), headers=headers, timeout=15, allow_redirects=False)


def environ_of(response: requests.Response, front: Front) -> dict[str, Any]:
    assert response.status_code == 200, (
        f"{response.status_code} {response.text[:300]!r}\n--- {front.name} logs:\n"
        f"{front.log[-3000:]}")
    return response.json()


def refused(front: Front, test_pki: PKIFiles, path: str, who: str,
            headers: Optional[dict[str, str]] = None) -> requests.Response:
    response = get(front, test_pki, path, who, headers)
    assert response.status_code == 403, (response.status_code, response.text[:300])
    assert response.content == FORBIDDEN  # the filter's answer; no certificate echoed
    return response


def escaped_pem(test_pki: PKIFiles, name: str) -> str:
    """A certificate as nginx's $ssl_client_escaped_cert writes it."""
    return urllib.parse.quote(test_pki.clients[name].cert.read_text(), safe="")


def forged_headers(test_pki: PKIFiles) -> dict[str, str]:
    """Every way a client might claim to be alice in request headers."""
    pem = escaped_pem(test_pki, "alice")
    return {
        "X-SSL-Client-Cert": pem,
        "SSL-Client-Cert": pem,
        "SSL_CLIENT_CERT": pem,        # underscores: nginx and Apache drop such headers
        "SSL-Client-Verify": "SUCCESS",
        "SSL_CLIENT_VERIFY": "SUCCESS",
        "X-Forwarded-Client-Cert": f'Cert="{pem}"',
        "X-Client-Cert": pem,
        "Remote-User": "alice",
        "X-Remote-User": "alice",
        "SSL-Client-S-DN-CN": "alice",
    }


IDENTITY_HEADER_KEYS = ("HTTP_X_SSL_CLIENT", "HTTP_SSL_CLIENT", "HTTP_X_FORWARDED_CLIENT_CERT",
                        "HTTP_X_CLIENT_CERT", "HTTP_REMOTE_USER", "HTTP_X_REMOTE_USER")


def identity_keys(env: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in env.items() if k.startswith("SSL_CLIENT_")}


def expected_identity(test_pki: PKIFiles, name: str) -> dict[str, str]:
    """The SSL_CLIENT_* keys securewsgi-run gives for this client."""
    peer = PeerIdentity.from_pem(test_pki.clients[name].cert.read_bytes(), source="server")
    return dict(peer.environ())


def raw_get(front: Front, test_pki: PKIFiles, path: str, who: str) -> bytes:
    """A request with `path` sent byte for byte (requests would normalise it)."""
    request = (f"GET {path} HTTP/1.1\r\nHost: {SERVER_NAME}\r\n"
               "Connection: close\r\n\r\n").encode()
    ctx = client_context(test_pki.ca_pem, client(test_pki, who))
    return exchange(front.port, request, ctx, server_hostname=SERVER_NAME)


# ------------------------------------------------------------------ both front ends


def test_verified_client_is_the_identity(front: Front, test_pki: PKIFiles) -> None:
    env = environ_of(get(front, test_pki, "/admin/whoami", "alice"), front)
    assert env["REMOTE_USER"] == "alice"
    assert env["securewsgi.peer.source"] == "server"
    assert env["wsgi.url_scheme"] == "https"
    assert env["PATH_INFO"] == "/admin/whoami"
    # every identity key of the environ rebuilt by the filter: names and formats exactly
    # as securewsgi-run's (SSL_CLIENT_CERT is PEM again though nginx sent it URL-escaped;
    # nothing of the server's own set, e.g. mod_ssl's SSL_CLIENT_CERT_CHAIN_0, is left)
    got, expected = identity_keys(env), expected_identity(test_pki, "alice")
    remain = got.pop("SSL_CLIENT_V_REMAIN"), expected.pop("SSL_CLIENT_V_REMAIN")
    assert got == expected
    assert abs(int(remain[0]) - int(remain[1])) <= 1
    assert env["SSL_CLIENT_S_DN_CN"] == "alice"
    assert env["SSL_CLIENT_SAN_URI_0"] == "spiffe://example.org/ns/ops/alice"


def test_policy_refuses_another_client(front: Front, test_pki: PKIFiles) -> None:
    refused(front, test_pki, "/admin/whoami", "bob")
    env = environ_of(get(front, test_pki, "/api/things", "bob"), front)  # any: true
    assert env["REMOTE_USER"] == "bob"
    assert env["SSL_CLIENT_S_DN_CN"] == "bob"
    assert env["securewsgi.peer.source"] == "server"


def test_client_without_certificate_is_anonymous(front: Front, test_pki: PKIFiles) -> None:
    env = environ_of(get(front, test_pki, "/"), front)
    assert identity_keys(env) == {"SSL_CLIENT_VERIFY": "NONE"}  # no empty SSL_CLIENT_CERT
    assert "REMOTE_USER" not in env
    assert env["securewsgi.peer.source"] is None
    refused(front, test_pki, "/admin/whoami", "anonymous")
    refused(front, test_pki, "/api/things", "anonymous")


@pytest.mark.parametrize("who", ["bob", "anonymous"])
def test_identity_headers_do_not_change_the_outcome(front: Front, test_pki: PKIFiles,
                                                    who: str) -> None:
    headers = forged_headers(test_pki)
    refused(front, test_pki, "/admin/whoami", who, headers)
    env = environ_of(get(front, test_pki, "/", who, headers), front)
    if who == "anonymous":
        refused(front, test_pki, "/api/things", who, headers)
        assert identity_keys(env) == {"SSL_CLIENT_VERIFY": "NONE"}
        assert "REMOTE_USER" not in env
        assert env["securewsgi.peer.source"] is None
    else:
        assert env["REMOTE_USER"] == who
        assert env["SSL_CLIENT_S_DN_CN"] == who
        assert env["SSL_CLIENT_CERT"] == test_pki.clients[who].cert.read_text()


def test_identity_headers_do_not_reach_the_app(front: Front, test_pki: PKIFiles) -> None:
    """Identity-looking request headers from an untrusted peer are removed (an
    app written for a front end that sets such headers must not be fooled)."""
    env = environ_of(get(front, test_pki, "/", "anonymous", forged_headers(test_pki)), front)
    leaked = sorted(k for k in env if k.startswith(IDENTITY_HEADER_KEYS))
    assert leaked == []
    assert env["HTTP_HOST"].startswith(SERVER_NAME)  # other headers still arrive


@pytest.mark.parametrize("path", ["/%61dmin/whoami", "/x/../admin/whoami", "//admin/whoami",
                                  "/admin/./whoami", "/./admin"])
@pytest.mark.parametrize("who", ["bob", "anonymous"])
def test_paths_that_normalise_into_admin_are_judged_by_its_rule(
        front: Front, test_pki: PKIFiles, path: str, who: str) -> None:
    response = raw_get(front, test_pki, path, who)
    assert status_of(response) in (400, 403), response[:300]


def test_alice_may_spell_the_admin_path_differently(front: Front, test_pki: PKIFiles) -> None:
    env = json_body(raw_get(front, test_pki, "/%61dmin/x/../whoami", "alice"))
    assert env["PATH_INFO"] == "/admin/whoami"  # the path judged is the path routed
    assert env["REMOTE_USER"] == "alice"


def test_refusals_are_logged_with_the_rule(front: Front, test_pki: PKIFiles) -> None:
    refused(front, test_pki, "/admin/logged", "bob")
    wait_for(lambda: re.search(r"denied by rule admin: GET /admin/logged client=CN=bob",
                               front.log), 10, what=f"the denial in {front.name}'s log")


@pytest.mark.parametrize("who", ["unknown-ca", "expired"])
def test_unverifiable_certificate_never_reaches_the_app(front: Front, test_pki: PKIFiles,
                                                        who: str) -> None:
    """`optional` tolerates only a missing certificate: mod_ssl fails the handshake,
    nginx answers 400 itself; either way the app never runs."""
    try:
        response = get(front, test_pki, "/", who)
    except requests.exceptions.ConnectionError:  # SSLError is one
        return
    assert response.status_code == 400
    assert "application/json" not in response.headers.get("Content-Type", "")


# ------------------------------------------------------------------ one front end each


def test_apache_ssl_verify_client_path_gives_identity_only_there(
        apache_per_path: Front, test_pki: PKIFiles) -> None:
    """With --ssl-ca-certificate-file and --ssl-verify-client /admin, mod_wsgi-express's
    virtual host says `SSLVerifyClient none` (overriding the include file) and asks for
    a certificate under /admin only, after the handshake (TLS 1.3 post-handshake
    authentication). It works there; elsewhere even alice is anonymous."""
    front = apache_per_path
    env = environ_of(get(front, test_pki, "/admin/whoami", "alice"), front)
    assert env["REMOTE_USER"] == "alice"
    assert env["securewsgi.peer.source"] == "server"
    refused(front, test_pki, "/admin/whoami", "bob")
    try:
        response = get(front, test_pki, "/admin/whoami")
        assert response.status_code == 403
    except requests.exceptions.ConnectionError:
        pass  # mod_ssl closed the connection: no certificate where one is required
    env = environ_of(get(front, test_pki, "/", "alice"), front)
    assert identity_keys(env) == {"SSL_CLIENT_VERIFY": "NONE"}
    assert "REMOTE_USER" not in env


def test_apache_without_export_cert_data_refuses_verified_clients_loudly(
        apache_without_cert_data: Front, test_pki: PKIFiles) -> None:
    """A verified client whose certificate the filter cannot see is refused (400) and
    the error names the cause, rather than quietly being served as anonymous."""
    front = apache_without_cert_data
    response = get(front, test_pki, "/", "alice")
    assert response.status_code == 400, (response.status_code, response.text[:300])
    wait_for(lambda: "client_cert_from = server, but the hosting server's certificate "
             "cannot be used" in front.log, 10, what="the filter's error in Apache's log")
    env = environ_of(get(front, test_pki, "/"), front)  # no certificate: still served
    assert identity_keys(env) == {"SSL_CLIENT_VERIFY": "NONE"}


def test_apache_reads_the_include_files_placeholder_from_the_environment(
        apache: Front) -> None:
    """The shipped include file is used as is: Apache itself fills in ${CLIENT_CA}."""
    assert "AH00111" not in apache.log  # "Config variable ${...} is not defined"


def test_nginx_optional_no_ca_certificate_is_anonymous(nginx_no_ca: Front,
                                                       test_pki: PKIFiles) -> None:
    """nginx let mallory in (SSL_CLIENT_VERIFY FAILED:..., her certificate in
    SSL_CLIENT_CERT): the filter must not believe the certificate."""
    front = nginx_no_ca
    env = environ_of(get(front, test_pki, "/", "unknown-ca"), front)
    assert identity_keys(env) == {"SSL_CLIENT_VERIFY": "NONE"}
    assert "REMOTE_USER" not in env
    assert env["securewsgi.peer.source"] is None
    refused(front, test_pki, "/api/things", "unknown-ca")
    refused(front, test_pki, "/admin/whoami", "unknown-ca")
    # a verified client still works through the same block
    assert environ_of(get(front, test_pki, "/admin/x", "alice"), front)["REMOTE_USER"] == "alice"


# ------------------------------------------------------------------ the shipped files


_PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


@pytest.mark.parametrize("path", [UWSGI_DIR / "nginx-server.conf.template",
                                  UWSGI_DIR / "uwsgi.ini.template",
                                  APACHE_DIR / "securewsgi-ssl.conf"],
                         ids=lambda p: p.name)
def test_templates_document_their_placeholders(path: Path) -> None:
    """The envsubst command in the header lists exactly the placeholders used."""
    text = path.read_text()
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    documented = re.search(r"envsubst '([^']*)'", text.replace("\n#", " "))
    assert documented, "no envsubst example in the header"
    assert set(_PLACEHOLDER.findall(documented.group(1))) == set(_PLACEHOLDER.findall(body))


def test_apache_readme_shows_the_tested_command() -> None:
    readme = (APACHE_DIR / "README.rst").read_text()
    for option in APACHE_OPTIONS:
        assert re.search(rf"{option}\b", readme), option
    assert "--ssl-ca-certificate-file" in readme  # ... and why not to use it


@pytest.mark.parametrize("directory", [APACHE_DIR, UWSGI_DIR], ids=lambda p: p.name)
def test_shipped_pipeline_takes_the_identity_from_the_server(directory: Path) -> None:
    from paste.deploy import loadapp

    app = loadapp("config:paste.ini", relative_to=str(directory))
    assert app.client_cert_from == "server"
    assert app.remote_user == "cn"
    assert app.policy.active


def test_uwsgi_socket_is_reachable_only_by_its_owner_and_group(
        uwsgi_backend: tuple[Path, ForegroundProcess]) -> None:
    socket_path, _ = uwsgi_backend
    assert oct(socket_path.stat().st_mode & 0o777) == oct(0o660)


def test_servers_listen_on_loopback_only(apache: Front, nginx_uwsgi: Front) -> None:
    for front in (apache, nginx_uwsgi):
        assert port_accepts(front.port, "127.0.0.1")
        assert not port_accepts(front.port, "127.0.0.2")  # bound to 127.0.0.1, not *
