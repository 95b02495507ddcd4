"""`server.worker_timeout`: a worker whose loop stops turning is killed and replaced,
while the other worker keeps serving; a slow request that does not block the loop
(the threads engine) is left alone. Real processes, real signals, real clients."""
from __future__ import annotations

import os
import re
import signal
import threading
from pathlib import Path

import pytest
import requests
from launch_support import NotifySocket, short_socket_path
from support import PKIFiles, ServerProcess, session, wait_for

from securewsgi.config import load_config

APPS = str(Path(__file__).parent / "apps")
TIMEOUT = 2  # seconds: short for the tests, with room for a busy CI machine
STUCK = (r"ERROR securewsgi\.supervisor worker (\d) \(pid (\d+)\) is stuck: its loop has "
         r"not run for (\d+\.\d)s \(server\.worker_timeout 2s\); killing it \(SIGKILL\) "
         r"and starting another")


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _two_workers(server: ServerProcess) -> list[int]:
    return wait_for(lambda: len(_children(server.pid)) == 2 and _children(server.pid),
                    timeout=20, what="two workers")


def _server(start_server, test_pki: PKIFiles, engine: str, app: dict, name: str,
            **env: str) -> ServerProcess:
    server = {"workers": 2, "worker_timeout": TIMEOUT}
    if engine == "eventlet":
        server["monkey_patch"] = False  # so time.sleep in the app blocks the loop
    return start_server({"tls": test_pki.tls_section("mutual"), "server": server,
                         "app": app}, name=name, env=env)


class Requests(threading.Thread):
    """GET / in a loop from one client until stopped (bounded), recording each answer's
    worker pid (0 from an app that does not say it) or the failure."""

    def __init__(self, url: str, test_pki: PKIFiles, keep_alive: bool) -> None:
        super().__init__(daemon=True)
        self.url, self.test_pki, self.keep_alive = url, test_pki, keep_alive
        self.pids: list[int] = []
        self.failures: list[str] = []
        self.stop_flag = threading.Event()

    def run(self) -> None:
        with session(self.test_pki.ca_pem, self.test_pki.clients["alice"]) as s:
            for _ in range(5000):
                if self.stop_flag.is_set():
                    return
                headers = {} if self.keep_alive else {"Connection": "close"}
                try:
                    response = s.get(self.url, timeout=10, headers=headers)
                    if response.status_code == 200:
                        json = response.headers["Content-Type"] == "application/json"
                        self.pids.append(response.json()["pid"] if json else 0)
                    else:
                        self.failures.append(f"{response.status_code} {response.text[:80]}")
                except requests.RequestException as exc:
                    self.failures.append(repr(exc))

    def finish(self) -> None:
        self.stop_flag.set()
        self.join(30)


def test_a_stuck_worker_is_replaced_while_the_other_keeps_serving(
        start_server, engine: str, test_pki: PKIFiles, tmp_path: Path) -> None:
    """A worker stopped dead (SIGSTOP: its loop cannot turn, on either engine) is
    killed after worker_timeout and replaced; a client of the other worker never
    notices, and systemd's STATUS line says what happened."""
    notify = NotifySocket(short_socket_path(tmp_path, "notify.sock"))
    try:
        server = _server(start_server, test_pki, engine,
                         {"factory": "lifecycle:app", "python_path": [APPS]}, "stuck",
                         NOTIFY_SOCKET=notify.address)
        workers = _two_workers(server)
        assert notify.next()["READY"] == "1"
        steady = Requests(server.url("/"), test_pki, keep_alive=True)
        steady.start()
        wait_for(lambda: len(steady.pids) >= 5, what="requests on the keep-alive connection")
        serving = steady.pids[0]
        (stuck,) = [pid for pid in workers if pid != serving]
        os.kill(stuck, signal.SIGSTOP)
        seen = len(steady.pids)

        text = server.wait_log(STUCK, timeout=15)
        slot, pid, seconds = re.search(STUCK, text).groups()
        assert int(pid) == stuck and TIMEOUT <= float(seconds) < TIMEOUT + 2
        replaced = wait_for(lambda: len(_children(server.pid)) == 2 and
                            stuck not in _children(server.pid) and _children(server.pid),
                            timeout=15, what="a replacement worker")
        wait_for(lambda: len(steady.pids) >= seen + 20, what="requests after the kill")
        steady.finish()
        assert steady.failures == []
        assert set(steady.pids) == {serving}  # the same worker throughout

        status = notify.next()
        assert re.fullmatch(rf"serving 2 workers, mutual TLS, engine {engine}; worker {slot} "
                            r"replaced at \d\d:\d\d:\d\d \(stuck \d+s\)", status["STATUS"]), status
        assert "READY" not in status  # still ready: nothing for systemd to restart
        (new,) = set(replaced) - {serving}
        server.wait_log(rf"worker {slot} started \(pid {new}\)")
        with session(test_pki.ca_pem, test_pki.clients["alice"]) as s:
            pids = {s.get(server.url("/"), timeout=10, headers={"Connection": "close"}
                          ).json()["pid"] for _ in range(20)}
        assert pids <= set(replaced)
        assert len(re.findall(r" ERROR ", server.stderr)) == 1, server.stderr
        server.signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0
    finally:
        notify.close()


def test_a_request_that_blocks_the_loop(start_server, engine: str, test_pki: PKIFiles
                                        ) -> None:
    """time.sleep in the app without monkey-patching blocks an eventlet worker's whole
    loop: the worker is replaced, and meanwhile the other worker answers every new
    connection. On the threads engine the request runs on a pool thread, the loop
    turns on, and the slow request simply completes."""
    server = _server(start_server, test_pki, engine,
                     {"factory": "slow:app", "python_path": [APPS]}, "blocking")
    workers = _two_workers(server)
    slow: dict = {}

    def slow_request() -> None:
        with session(test_pki.ca_pem, test_pki.clients["alice"]) as s:
            try:
                slow["response"] = s.get(server.url("/slow?seconds=5"), timeout=30)
            except requests.RequestException as exc:
                slow["error"] = exc

    thread = threading.Thread(target=slow_request, daemon=True)
    thread.start()
    server.wait_log("slow request started")
    others = Requests(server.url("/"), test_pki, keep_alive=False)
    others.start()
    if engine == "eventlet":
        text = server.wait_log(STUCK, timeout=15)
        stuck = int(re.search(STUCK, text).group(2))
        assert stuck in workers
        thread.join(30)
        assert "error" in slow  # its worker was killed under it
        wait_for(lambda: len(_children(server.pid)) == 2 and stuck not in
                 _children(server.pid), timeout=15, what="a replacement worker")
    else:
        thread.join(30)
        assert slow["response"].status_code == 200
        assert _children(server.pid) == workers  # nobody was replaced
        assert "is stuck" not in server.stderr
    count = len(others.pids)
    wait_for(lambda: len(others.pids) >= count + 10, what="requests after the slow one")
    others.finish()
    # Only the blocked worker stopped accepting: every new connection was answered.
    assert others.failures == []
    server.signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0


@pytest.mark.parametrize(("value", "expected"), [("0", 0.0), ("2.5", 2.5), (None, 60.0)])
def test_worker_timeout_setting(value: object, expected: float, tmp_path: Path) -> None:
    path = tmp_path / "service.yaml"
    server = "" if value is None else f"server: {{worker_timeout: {value}}}\n"
    path.write_text(server + "tls: {mode: none}\napp: {factory: 'securewsgi.demo:app'}\n")
    assert load_config(path).server.worker_timeout == expected


def test_a_negative_worker_timeout_is_a_config_error(tmp_path: Path) -> None:
    from securewsgi.errors import ConfigError

    path = tmp_path / "service.yaml"
    path.write_text("server: {worker_timeout: -1}\ntls: {mode: none}\n"
                    "app: {factory: 'securewsgi.demo:app'}\n")
    with pytest.raises(ConfigError, match=r"server\.worker_timeout.*must be >= 0"):
        load_config(path)


def test_a_worker_draining_after_its_own_sigterm_is_not_taken_for_stuck(
        start_server, engine: str, test_pki: PKIFiles, tmp_path: Path) -> None:
    """A worker told to stop (SIGTERM to it alone) stops its loop's periodic tasks while
    its requests drain; that is not being stuck, even for longer than worker_timeout."""
    notify = NotifySocket(short_socket_path(tmp_path, "notify.sock"))
    try:
        server = start_server({"tls": test_pki.tls_section("mutual"),
                               "server": {"workers": 2, "worker_timeout": TIMEOUT},
                               "app": {"factory": "lifecycle:app", "python_path": [APPS]}},
                              name="draining", env={"NOTIFY_SOCKET": notify.address})
        # READY=1: every worker has beaten once, so each is watched from here on.
        assert notify.next()["READY"] == "1"
    finally:
        notify.close()
    _two_workers(server)
    slow: dict = {}

    def slow_request() -> None:
        with session(test_pki.ca_pem, test_pki.clients["alice"]) as s:
            slow["response"] = s.get(server.url("/slow?seconds=4"), timeout=30)

    thread = threading.Thread(target=slow_request, daemon=True)
    thread.start()
    text = server.wait_log(r"slow request started in pid \d+")
    draining = int(re.search(r"slow request started in pid (\d+)", text).group(1))
    os.kill(draining, signal.SIGTERM)
    thread.join(30)
    assert slow["response"].status_code == 200
    assert slow["response"].json()["pid"] == draining
    server.wait_log(r"worker \d died \(exit code 0\)")
    assert "is stuck" not in server.stderr
    server.signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0
