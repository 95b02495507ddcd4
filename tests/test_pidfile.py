"""`securewsgi-run --pid FILE` with real processes: written once the socket is bound,
naming the process systemd or an init script would signal, removed at exit; a file
naming a running process refuses the start, a stale one is replaced."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from launch_support import LaunchedServer
from support import PKIFiles, session


def _server(tmp_path: Path, test_pki: PKIFiles, engine: str, **server: object
            ) -> LaunchedServer:
    return LaunchedServer(tmp_path, {"tls": test_pki.tls_section("mutual"),
                                     "server": dict(server)}, engine=engine)


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(30)
    return proc.pid


@pytest.mark.parametrize("workers", [1, 2])
def test_pid_file_is_written_once_listening_and_removed_at_exit(
        engine: str, workers: int, test_pki: PKIFiles, tmp_path: Path) -> None:
    pid_file = tmp_path / "run" / "myapi.pid"
    pid_file.parent.mkdir()
    server = _server(tmp_path, test_pki, engine, workers=workers)
    server.launch(server.command("--pid", str(pid_file)))
    try:
        server.wait_listening()
        # The main process: with workers, the supervisor that passes signals on.
        assert pid_file.read_text() == f"{server.pid}\n"
        assert [p.name for p in pid_file.parent.iterdir()] == ["myapi.pid"]  # no temp left
        with session(test_pki.ca_pem, test_pki.clients["alice"]) as s:
            assert s.get(server.url("/"), timeout=10).status_code == 200
        server.signal(signal.SIGTERM)
        assert server.exit_code() == 0
        assert not pid_file.exists()
    finally:
        server.stop()


def test_a_stale_pid_file_is_replaced(engine: str, test_pki: PKIFiles, tmp_path: Path) -> None:
    pid_file = tmp_path / "myapi.pid"
    dead = _dead_pid()
    pid_file.write_text(f"{dead}\n")
    server = _server(tmp_path, test_pki, engine)
    server.launch(server.command("--pid", str(pid_file)))
    try:
        server.wait_listening()
        assert pid_file.read_text() == f"{server.pid}\n"
        assert f"pid file {pid_file} names pid {dead}, which is not running: replacing it" \
               in server.stderr
    finally:
        server.stop()
    assert not pid_file.exists()


def test_a_pid_file_naming_a_running_process_refuses_the_start(test_pki: PKIFiles,
                                                               tmp_path: Path) -> None:
    pid_file = tmp_path / "myapi.pid"
    running = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                               stdin=subprocess.PIPE)
    try:
        pid_file.write_text(f"{running.pid}\n")
        server = _server(tmp_path, test_pki, "threads")
        server.launch(server.command("--pid", str(pid_file)))
        try:
            assert server.exit_code() == 1
        finally:
            server.stop()
    finally:
        running.communicate(timeout=10)
    assert server.stderr.splitlines() == [
        f"securewsgi-run: pid file {pid_file} names pid {running.pid}, which is running: "
        "is this service already started? (if that process is something else, remove "
        "the file)"]
    assert pid_file.read_text() == f"{running.pid}\n"  # left alone


def test_no_pid_file_when_the_port_cannot_be_bound(engine: str, test_pki: PKIFiles,
                                                   tmp_path: Path) -> None:
    pid_file = tmp_path / "myapi.pid"
    with socket.create_server(("127.0.0.1", 0)) as taken:
        server = _server(tmp_path, test_pki, engine, port=taken.getsockname()[1])
        server.launch(server.command("--pid", str(pid_file)))
        try:
            assert server.exit_code() == 1
        finally:
            server.stop()
    assert "is already in use" in server.stderr
    assert not pid_file.exists()


def test_a_pid_file_in_a_missing_directory_is_refused_before_binding(
        test_pki: PKIFiles, tmp_path: Path) -> None:
    pid_file = tmp_path / "no-such-dir" / "myapi.pid"
    server = _server(tmp_path, test_pki, "threads")
    server.launch(server.command("--pid", str(pid_file)))
    try:
        assert server.exit_code() == 1
    finally:
        server.stop()
    assert server.stderr.splitlines() == [
        f"securewsgi-run: pid file {pid_file}: cannot write to {pid_file.parent} "
        "(missing or not writable)"]
