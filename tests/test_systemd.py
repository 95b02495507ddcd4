"""systemd integration with real processes and sockets.

Readiness: the test binds the NOTIFY_SOCKET datagram socket systemd would, and reads
what the server sends (READY=1 only once every worker serves, RELOADING=1 with
MONOTONIC_USEC around SIGHUP, STOPPING=1, and the STATUS lines `systemctl status`
shows). Socket activation: the test opens the listening socket and passes it as fd 3
with LISTEN_FDS/LISTEN_PID, as systemd does, and also through the real
`systemd-socket-activate`.
"""
from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from launch_support import ACTIVATE, LaunchedServer, NotifySocket, monotonic_usec, short_socket_path
from support import PKIFiles, free_port, session, wait_for

APPS = str(Path(__file__).parent / "apps")
CLOCK = r"\d\d:\d\d:\d\d"


@pytest.fixture()
def notify(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotifySocket]:
    """A NOTIFY_SOCKET: a path, or an abstract socket ("@name") when the test asks."""
    if getattr(request, "param", "path") == "abstract":
        address = f"@securewsgi-test-{id(request)}-{tmp_path.name}"
    else:
        address = short_socket_path(tmp_path, "notify.sock")
    sock = NotifySocket(address)
    yield sock
    sock.close()


def _tls_copy(test_pki: PKIFiles, directory: Path) -> dict:
    """A mutual-TLS section whose server cert/key are copies the test may break."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "server.pem", directory / "server-key.pem"
    shutil.copy(test_pki.server_cert, cert)
    shutil.copy(test_pki.server_key, key)
    return test_pki.tls_section("mutual", certfile=str(cert), keyfile=str(key))


def _app(**extra: object) -> dict:
    return {"factory": "lifecycle:app", "python_path": [APPS], **extra}


def _get(server: LaunchedServer, test_pki: PKIFiles, path: str = "/") -> dict:
    with session(test_pki.ca_pem, test_pki.clients["alice"]) as s:
        response = s.get(server.url(path), timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


# ------------------------------------------------------------------------ notify


@pytest.mark.parametrize(("workers", "notify"), [(1, "path"), (2, "abstract")],
                         indirect=["notify"], ids=["1-worker-path", "2-workers-abstract"])
def test_ready_reloading_stopping_and_status(engine: str, workers: int, notify: NotifySocket,
                                             test_pki: PKIFiles, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    server = LaunchedServer(tmp_path, {
        "tls": _tls_copy(test_pki, tmp_path / "tls"), "app": _app(),
        "server": {"workers": workers}}, engine=engine,
        env={"NOTIFY_SOCKET": notify.address, "GATE_DIR": str(gate)})
    server.launch()
    try:
        # Every worker is importing the app and held there: nothing may say "ready".
        wait_for(lambda: len(list(gate.glob("importing-*"))) == workers, timeout=20,
                 what=f"{workers} worker(s) importing the app")
        assert server.proc.poll() is None, server.stderr
        assert notify.pending() == []
        (gate / "open").touch()

        ready = notify.next()
        assert ready == {"READY": "1", "STATUS": f"serving {workers} worker"
                         f"{'s' if workers > 1 else ''}, mutual TLS, engine {engine}"}
        server.wait_listening()
        assert _get(server, test_pki)["environ"] == {  # the app's children inherit none
            "NOTIFY_SOCKET": None, "LISTEN_FDS": None, "LISTEN_PID": None,
            "LISTEN_FDNAMES": None}

        before = monotonic_usec()
        server.signal(signal.SIGHUP)
        reloading = notify.next()
        assert reloading["RELOADING"] == "1"
        assert before <= int(reloading["MONOTONIC_USEC"]) <= monotonic_usec()
        reloaded = notify.next()
        assert reloaded["READY"] == "1"
        assert re.fullmatch(rf"{re.escape(ready['STATUS'])}; reloaded TLS material at "
                            rf"{CLOCK}", reloaded["STATUS"]), reloaded

        (tmp_path / "tls" / "server-key.pem").write_text("not a key\n")
        server.signal(signal.SIGHUP)
        assert notify.next()["RELOADING"] == "1"
        refused = notify.next()
        assert refused["READY"] == "1"
        assert re.fullmatch(rf"{re.escape(ready['STATUS'])}; TLS reload at {CLOCK} failed, "
                            r"still serving the previous material \(see the log\)",
                            refused["STATUS"]), refused
        assert _get(server, test_pki)["pid"]  # still serving, with the old material

        server.signal(signal.SIGTERM)
        assert notify.next() == {"STOPPING": "1",
                                 "STATUS": "stopping: finishing in-flight requests"}
        assert server.exit_code() == 0
        assert notify.pending() == []  # STOPPING=1 once, nothing after it
    finally:
        (gate / "open").touch()
        server.stop()


def test_an_unusable_notify_socket_does_not_stop_the_server(engine: str, test_pki: PKIFiles,
                                                            tmp_path: Path) -> None:
    """Nobody listening on NOTIFY_SOCKET (systemd gone, a stale variable): one warning,
    and the server serves and stops as usual."""
    server = LaunchedServer(tmp_path, {"tls": test_pki.tls_section("mutual"),
                                       "app": _app()}, engine=engine,
                            env={"NOTIFY_SOCKET": str(tmp_path / "nobody.sock")})
    server.launch()
    try:
        server.wait_listening()
        assert _get(server, test_pki)["pid"]
        server.wait_log("cannot notify systemd at NOTIFY_SOCKET=")
        server.signal(signal.SIGTERM)
        assert server.exit_code() == 0
        assert server.stderr.count("cannot notify systemd") == 1
    finally:
        server.stop()


# ------------------------------------------------------------- socket activation


def _activated(tmp_path: Path, config: dict, sock: socket.socket, engine: str,
               **env: str) -> LaunchedServer:
    server = LaunchedServer(tmp_path, config, engine=engine, env=env)
    argv = [sys.executable, "-c", ACTIVATE, str(sock.fileno()), "-m", "securewsgi",
            "--config", str(server.config_path)]
    return server.launch(argv, pass_fds=(sock.fileno(),))


@pytest.mark.parametrize("workers", [1, 2])
def test_socket_activation_serves_the_inherited_socket(engine: str, workers: int,
                                                       test_pki: PKIFiles,
                                                       tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    # An address that is not this machine's: binding it would fail, so serving at all
    # shows the server took the socket it was given.
    config = {"tls": test_pki.tls_section("mutual"), "app": _app(),
              "server": {"host": "192.0.2.1", "port": 9, "workers": workers}}
    server = _activated(tmp_path, config, listener, engine)
    listener.close()  # the server has its own copy now, as with systemd
    try:
        server.wait_listening()
        assert f"listening on https://127.0.0.1:{port} (socket from systemd) (pid " \
               f"{server.pid}," in server.stderr
        assert server.port == port
        answers = [_get(server, test_pki) for _ in range(4)]
        assert all(a["environ"]["LISTEN_FDS"] is None and a["environ"]["LISTEN_PID"] is None
                   for a in answers), answers
        server.signal(signal.SIGTERM)
        assert server.exit_code() == 0
        assert "Traceback" not in server.stderr
    finally:
        server.stop()


def _udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def _not_listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def _unix(tmp_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(short_socket_path(tmp_path, "activated.sock"))
    sock.listen()
    return sock


@pytest.mark.parametrize(("kind", "says"), [
    ("udp", "is not a stream socket"),
    ("not listening", "is not listening"),
    ("unix", "is a unix socket, not TCP"),
])
def test_socket_activation_refuses_a_socket_it_cannot_serve(kind: str, says: str,
                                                            test_pki: PKIFiles,
                                                            tmp_path: Path) -> None:
    sock = {"udp": _udp, "not listening": _not_listening}.get(kind, lambda: _unix(tmp_path))()
    with sock:
        server = _activated(tmp_path, {"tls": test_pki.tls_section("server")}, sock,
                            "threads")
        try:
            assert server.exit_code() == 1
        finally:
            server.stop()
    errors = server.stderr.strip().splitlines()
    assert len(errors) == 1, server.stderr
    assert errors[0].startswith("securewsgi-run: socket activation: the socket systemd "
                                f"passed (fd 3) {says}"), errors
    assert "ListenStream=" in errors[0]


def test_variables_meant_for_another_process_are_ignored(test_pki: PKIFiles,
                                                         tmp_path: Path) -> None:
    """LISTEN_PID names another process (an ancestor exec'd us without clearing them):
    bind as configured, and do not pass the variables on."""
    server = LaunchedServer(tmp_path, {"tls": test_pki.tls_section("mutual"), "app": _app()},
                            engine="threads", env={"LISTEN_FDS": "1", "LISTEN_PID": "1"})
    server.launch()
    try:
        server.wait_listening()
        assert "socket from systemd" not in server.stderr
        assert _get(server, test_pki)["environ"]["LISTEN_FDS"] is None
    finally:
        server.stop()


SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")


@pytest.mark.skipif(SOCKET_ACTIVATE is None, reason="systemd-socket-activate is not "
                    "installed (Debian package systemd; .ci/run installs it)")
def test_systemd_socket_activate_starts_the_server_on_the_first_connection(
        engine: str, test_pki: PKIFiles, tmp_path: Path, notify: NotifySocket) -> None:
    """The real tool: it listens, starts securewsgi when the first client connects,
    and that client's request, waiting in the backlog meanwhile, is answered."""
    assert SOCKET_ACTIVATE is not None
    port = free_port()
    server = LaunchedServer(tmp_path, {"tls": test_pki.tls_section("mutual"), "app": _app(),
                                       "server": {"port": 9}}, engine=engine,
                            env={"NOTIFY_SOCKET": notify.address})
    # The tool passes on only the variables it is told to (-E).
    argv = [SOCKET_ACTIVATE, "-l", f"127.0.0.1:{port}", "-E", "NOTIFY_SOCKET",
            "-E", "PYTHONWARNINGS", *server.command()]
    server.launch(argv)
    try:
        wait_for(lambda: f"Listening on 127.0.0.1:{port}" in server.stderr, timeout=20,
                 what="systemd-socket-activate listening")
        assert "securewsgi" not in server.stderr  # not started before a client comes
        server.port = port
        answer = _get(server, test_pki)  # this connection starts the server
        assert answer["pid"] == server.pid  # the tool exec'd securewsgi in its own place
        assert answer["environ"]["LISTEN_FDS"] is None
        assert f"listening on https://127.0.0.1:{port} (socket from systemd)" in server.stderr
        assert notify.next()["READY"] == "1"
        server.signal(signal.SIGTERM)
        assert notify.next()["STOPPING"] == "1"
        assert server.exit_code() == 0
    finally:
        server.stop()



# ------------------------------------------------------------------------ watchdog


def test_watchdog_pings_come_from_the_serving_loop(engine: str, notify: NotifySocket,
                                                  test_pki: PKIFiles, tmp_path: Path) -> None:
    """WatchdogSec= (WATCHDOG_USEC): WATCHDOG=1 every half of it, from the loop, so a
    single worker whose loop is blocked stops sending them and systemd restarts it.
    A request that blocks an eventlet loop (time.sleep, no monkey-patching) leaves a
    gap; on the threads engine the loop turns on beside it."""
    server_section: dict = {"workers": 1}
    if engine == "eventlet":
        server_section["monkey_patch"] = False
    server = LaunchedServer(tmp_path, {"tls": test_pki.tls_section("mutual"), "app": _app(),
                                       "server": server_section}, engine=engine,
                            env={"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "400000"})
    server.launch()
    try:
        assert notify.next()["READY"] == "1"
        for _ in range(3):
            assert notify.next(timeout=5) == {"WATCHDOG": "1"}
        done = threading.Event()

        def slow() -> None:
            try:
                _get(server, test_pki, "/slow?seconds=3")
            finally:
                done.set()

        server.wait_listening()
        threading.Thread(target=slow, daemon=True).start()
        server.wait_log("slow request started")
        arrivals = [time.monotonic()]
        while not done.is_set() or len(arrivals) < 3:
            assert notify.next(timeout=10) == {"WATCHDOG": "1"}
            arrivals.append(time.monotonic())
        longest = max(b - a for a, b in zip(arrivals, arrivals[1:]))
        if engine == "eventlet":
            assert longest >= 2.5, arrivals
        else:
            assert longest < 1.5, arrivals
        server.signal(signal.SIGTERM)
        assert server.exit_code() == 0
    finally:
        server.stop()


# ------------------------------------------------------------------- shipped units

ETC = Path(__file__).resolve().parent.parent / "etc"


def _directives(path: Path) -> list[tuple[str, str]]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [(key.strip(), value.strip()) for key, _, value in
            (line.partition("=") for line in lines if "=" in line and line[0] not in "#;")]


def test_the_shipped_service_is_type_notify_and_the_socket_unit_passes_one_socket() -> None:
    service = dict(_directives(ETC / "securewsgi.service"))
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert "AF_UNIX" in service["RestrictAddressFamilies"]  # the notify socket
    socket_unit = _directives(ETC / "securewsgi.socket")
    assert [key for key, _ in socket_unit].count("ListenStream") == 1
    assert dict(socket_unit)["Accept"] == "no"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (Debian package systemd)")
def test_systemd_analyze_verifies_the_shipped_units(tmp_path: Path) -> None:
    """systemd's own checker, offline: no unknown keys, no bad values (the unit's
    ExecStart points at this checkout's securewsgi-run, which must exist)."""
    run = str(Path(sys.executable).with_name("securewsgi-run"))
    service = (ETC / "securewsgi.service").read_text()
    (tmp_path / "myapi.service").write_text(
        service.replace("/opt/myapi/venv/bin/securewsgi-run", run))
    shutil.copy(ETC / "securewsgi.socket", tmp_path / "myapi.socket")
    result = subprocess.run(["systemd-analyze", "verify", "myapi.service", "myapi.socket"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == "", result.stderr
