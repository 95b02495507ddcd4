"""`[server:main] use = egg:securewsgi#main`: Paste Deploy's own `loadserver` and
`loadapp`, as `pserve` calls them, in a real child process serving the INI's app over
mutual TLS with the service file's identity, authorization and engine; SIGTERM stops it
gracefully with exit code 0."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any, Optional

import pytest
import requests
import yaml
from paste.deploy import loadserver
from support import REPO, PKIFiles, run_command, session, stop_process, wait_for

from securewsgi.errors import ConfigError

APPS = REPO / "tests" / "apps"
_LISTENING = re.compile(r"listening on https://127\.0\.0\.1:(\d+)")

# What pserve does, reduced to PasteDeploy's calls: the server first, then the app.
LAUNCHER = """
import sys
from paste.deploy import loadapp, loadserver

uri = "config:" + sys.argv[1]
server = loadserver(uri)
app = loadapp(uri)
server(app)
"""

PASTE_APPS = '''
"""The INI's application: /slow from tests/apps/slow.py, everything else echo.py."""
from echo import app as echo
from slow import app as slow


def factory(global_conf, **local_conf):
    def app(environ, start_response):
        if environ.get("PATH_INFO") == "/slow":
            return slow(environ, start_response)
        return echo(environ, start_response)
    return app
'''


class Launcher:
    """The launcher script in a child process we own, stopped by its PID."""

    def __init__(self, ini: Path, cwd: Path) -> None:
        script = cwd / "launcher.py"
        script.write_text(LAUNCHER)
        self.err_path = cwd / "launcher.stderr"
        env = dict(os.environ, PYTHONWARNINGS="ignore",
                   PYTHONPATH=os.pathsep.join([str(APPS), str(ini.parent)]))
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, str(script), str(ini)], cwd=str(cwd),
                                         stdout=subprocess.DEVNULL, stderr=err, env=env)
        self.port = 0

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def listening(self, timeout: float = 20.0) -> Launcher:
        def started() -> Optional[re.Match]:
            if self.proc.poll() is not None:
                raise AssertionError(f"exited with {self.proc.returncode}:\n{self.stderr}")
            return _LISTENING.search(self.stderr)

        self.port = int(wait_for(started, timeout, what="'listening on'").group(1))
        return self

    def url(self, path: str) -> str:
        return f"https://localhost:{self.port}{path}"

    def stop(self) -> int:
        return stop_process(self.proc, 30)


def _deployment(root: Path, test_pki: PKIFiles, engine: str, workers: int = 1,
                **service: Any) -> Path:
    """deploy/app.ini naming ../conf/service.yaml; returns the INI's path."""
    (root / "deploy").mkdir()
    (root / "conf").mkdir()
    (root / "elsewhere").mkdir()
    data: dict[str, Any] = {
        "server": {"port": 0, "engine": engine, "workers": workers},
        "tls": test_pki.tls_section(),
        # Not importable: serving proves the INI's app is used instead.
        "app": {"factory": "not_a_module_anywhere:app"},
        "identity": {"remote_user": "cn"},
        "authorization": {"rules": [{"name": "admin", "paths": ["/admin/*"],
                                     "allow": [{"cn": "alice"}]}]},
    }
    data.update(service)
    (root / "conf" / "service.yaml").write_text(yaml.safe_dump(data))
    (root / "deploy" / "paste_apps.py").write_text(PASTE_APPS)
    ini = root / "deploy" / "app.ini"
    ini.write_text(textwrap.dedent("""\
        [server:main]
        use = egg:securewsgi#main
        config = ../conf/service.yaml

        [app:main]
        use = call:paste_apps:factory
        """))
    return ini


@pytest.mark.parametrize("workers", [1, 2])
def test_loadserver_serves_the_ini_app_over_mutual_tls(tmp_path: Path, test_pki: PKIFiles,
                                                       engine: str, workers: int) -> None:
    ini = _deployment(tmp_path, test_pki, engine, workers)
    launcher = Launcher(ini, cwd=tmp_path / "elsewhere").listening()
    try:
        with session(test_pki.ca_pem, test_pki.clients["alice"]) as alice:
            env = alice.get(launcher.url("/admin/panel"), timeout=10).json()
        assert env["REMOTE_USER"] == "alice"
        assert env["SSL_CLIENT_S_DN_CN"] == "alice"
        assert env["wsgi.url_scheme"] == "https"
        with session(test_pki.ca_pem, test_pki.clients["bob"]) as bob:
            assert bob.get(launcher.url("/admin/panel"), timeout=10).status_code == 403
            assert bob.get(launcher.url("/"), timeout=10).status_code == 200
        with session(test_pki.ca_pem) as anonymous, pytest.raises(
                requests.exceptions.RequestException):
            anonymous.get(launcher.url("/"), timeout=10)
        assert (f"serving the app the Paste Deploy launcher loaded from {ini}; the app "
                f"section of service.yaml is ignored") in launcher.stderr
        assert f"{workers} worker(s), engine {engine}" in launcher.stderr
    finally:
        code = launcher.stop()
    assert code == 0, launcher.stderr
    assert "Traceback" not in launcher.stderr


def test_sigterm_lets_the_in_flight_request_finish(tmp_path: Path, test_pki: PKIFiles,
                                                   engine: str) -> None:
    launcher = Launcher(_deployment(tmp_path, test_pki, engine),
                        cwd=tmp_path / "elsewhere").listening()
    replies: list = []

    def slow_request() -> None:
        with session(test_pki.ca_pem, test_pki.clients["alice"]) as alice:
            replies.append(alice.get(launcher.url("/slow?seconds=1"), timeout=30))

    thread = threading.Thread(target=slow_request)
    thread.start()
    try:
        # wsgi.errors reaches the log: the app is now inside the request.
        wait_for(lambda: "ERROR securewsgi.app slow request started" in launcher.stderr,
                 what="the slow request to start")
        launcher.proc.send_signal(signal.SIGTERM)
        assert launcher.proc.wait(30) == 0, launcher.stderr
    finally:
        thread.join(30)
        launcher.stop()
    assert [(r.status_code, r.text) for r in replies] == [(200, "done\n")]


def test_a_start_up_error_is_one_line_and_its_exit_code(tmp_path: Path,
                                                        test_pki: PKIFiles) -> None:
    tls = {**test_pki.tls_section(), "keyfile": str(test_pki.clients["bob"].key)}
    ini = _deployment(tmp_path, test_pki, "threads", tls=tls)
    launcher = Launcher(ini, cwd=tmp_path / "elsewhere")
    assert launcher.proc.wait(30) == 2
    errors = [line for line in launcher.stderr.splitlines() if "securewsgi:" in line]
    assert len(errors) == 1, launcher.stderr
    assert errors[0].startswith(f"securewsgi: {tmp_path / 'conf' / 'service.yaml'}: "
                                f"tls.keyfile: private key ")
    assert "Traceback" not in launcher.stderr


@pytest.mark.parametrize(("server_section", "service_text", "expected"), [
    ("config = ../conf/service.yaml", "server:\n  prot: 1\n",
     "{service}: server.prot: unknown key (did you mean 'port'?)"),
    ("config = ../conf/absent.yaml", None, "{conf}/absent.yaml: no such file"),
    ("", None, "{ini}: config: egg:securewsgi#main needs `config = FILE`"),
    ("config = ../conf/service.yaml\nhost = 0.0.0.0", None,
     "{ini}: host: unknown option of egg:securewsgi#main"),
])
def test_loadserver_reports_a_bad_service_file_in_one_line(
        tmp_path: Path, test_pki: PKIFiles, server_section: str,
        service_text: Optional[str], expected: str) -> None:
    """Only failures load in this process: a good server section would apply eventlet's
    monkey patching here, as it does in a launcher."""
    ini = _deployment(tmp_path, test_pki, "eventlet")
    service = tmp_path / "conf" / "service.yaml"
    if service_text is not None:
        service.write_text(service_text)
    ini.write_text(ini.read_text().replace("config = ../conf/service.yaml\n",
                                           server_section + "\n"))
    with pytest.raises(ConfigError) as info:
        loadserver(f"config:{ini}")
    message = str(info.value)
    assert message.startswith(expected.format(service=service, conf=tmp_path / "conf",
                                              ini=ini)), message
    assert "\n" not in message


def test_the_shipped_paste_server_ini_serves_the_sample(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    shutil.copy(REPO / "etc" / "paste-server.ini", etc)
    service = (REPO / "etc" / "service.yaml").read_text()
    assert "  port: 8443\n" in service
    (etc / "service.yaml").write_text(service.replace("  port: 8443\n", "  port: 0\n"))
    created = run_command("securewsgi-certs", "init", str(etc / "pki"), "--client", "alice")
    assert created.returncode == 0, created.stderr
    launcher = Launcher(etc / "paste-server.ini", cwd=tmp_path).listening()
    try:
        with session(etc / "pki" / "ca.pem") as alice:
            alice.cert = (str(etc / "pki" / "alice.pem"), str(etc / "pki" / "alice-key.pem"))
            answer = alice.get(launcher.url("/hello"), timeout=10).json()
        assert answer["client"]["common_name"] == "alice"
        assert answer["tls"]["REMOTE_USER"] == "alice"
    finally:
        assert launcher.stop() == 0, launcher.stderr
