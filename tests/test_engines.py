"""Leaving eventlet by one key: `server.engine: threads` serves the same service file,
never imports eventlet, and keeps a blocking app concurrent without monkey-patching;
the configuration refuses what would only make sense on eventlet."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from support import REPO, PKIFiles, ServerProcess, run_command, session, wait_for

from securewsgi.config import load_config
from securewsgi.errors import ConfigError

APPS = str(Path(__file__).parent / "apps")


@pytest.fixture(scope="module")
def threads_server(start_server, test_pki: PKIFiles, engine: str) -> ServerProcess:
    return start_server({"tls": test_pki.tls_section("mutual"),
                         "server": {"threads": 16},
                         "app": {"factory": "engine_probe:app", "python_path": [APPS]}},
                        name=f"probe-{engine}")


def test_the_start_up_line_names_the_engine(threads_server: ServerProcess,
                                            engine: str) -> None:
    expected = "engine threads (16 threads)" if engine == "threads" else \
        "engine eventlet (monkey-patched)"
    assert expected in threads_server.stderr


def test_a_threads_worker_never_imports_eventlet(threads_server: ServerProcess, test_pki,
                                                 engine: str) -> None:
    with session(test_pki.ca_pem, test_pki.clients["alice"]) as s:
        answer = s.get(threads_server.url("/modules"), timeout=10).json()
    assert answer["eventlet_imported"] is (engine == "eventlet")
    assert answer["socket_is_green"] is (engine == "eventlet")


def test_forked_workers_import_eventlet_only_on_its_engine(start_server, test_pki,
                                                          engine: str) -> None:
    server = start_server({"tls": test_pki.tls_section("mutual"),
                           "server": {"workers": 2},
                           "app": {"factory": "engine_probe:app", "python_path": [APPS]}},
                          name="probe-workers")
    with session(test_pki.ca_pem, test_pki.clients["alice"]) as s:
        for _ in range(6):
            answer = s.get(server.url("/modules"), timeout=10).json()
            assert answer["eventlet_imported"] is (engine == "eventlet")


def test_a_blocking_app_stays_concurrent_without_monkey_patching(start_server, test_pki,
                                                                 engine: str) -> None:
    """32 requests that each block 0.3 s in time.sleep: on the threads engine they run
    side by side (16 threads: two rounds, about 0.6 s); eventlet needs monkey_patch for
    that, and without it they run one after another."""
    server_config = {"threads": 16} if engine == "threads" else {"monkey_patch": False}
    server = start_server({"tls": test_pki.tls_section("mutual"), "server": server_config,
                           "app": {"factory": "slow:app", "python_path": [APPS]}},
                          name=f"blocking-{engine}")

    def one(_: int) -> int:
        with session(test_pki.ca_pem, test_pki.clients["alice"]) as s:
            return s.get(server.url("/slow?seconds=0.3"), timeout=30).status_code

    started = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(one, range(32)))
    elapsed = time.monotonic() - started
    assert statuses == [200] * 32
    if engine == "threads":
        assert elapsed < 3.0, f"32 blocking requests took {elapsed:.1f}s on 16 threads"
    else:
        assert elapsed > 32 * 0.3 * 0.9, "without monkey_patch eventlet cannot overlap them"


def _service(tmp_path: Path, server: dict) -> Path:
    path = tmp_path / "service.yaml"
    path.write_text(yaml.safe_dump({"server": server,
                                    "tls": {"mode": "none"},
                                    "app": {"factory": "securewsgi.demo:app"}}))
    return path


def test_monkey_patch_true_with_threads_is_a_config_error(tmp_path: Path) -> None:
    path = _service(tmp_path, {"engine": "threads", "monkey_patch": True})
    with pytest.raises(ConfigError, match=r"server\.monkey_patch: applies to the eventlet "
                                          r"engine only"):
        load_config(path)
    done = run_command(sys.executable, "-m", "securewsgi", "--config", str(path), "--check")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("server", [{"engine": "threads"},
                                    {"engine": "threads", "monkey_patch": False},
                                    {"engine": "threads", "threads": 1},
                                    {"engine": "eventlet", "monkey_patch": True}])
def test_engine_settings_that_are_fine(tmp_path: Path, server: dict) -> None:
    config = load_config(_service(tmp_path, server))
    assert config.server.engine == server["engine"]


@pytest.mark.parametrize(("server", "message"), [
    ({"engine": "asyncio"}, r"server\.engine: must be one of eventlet, threads"),
    ({"engine": "threads", "threads": 0}, r"server\.threads: must be between 1 and 4096"),
    ({"max_handshakes": 0}, r"server\.max_handshakes: must be between 1"),
    ({"max_handshakes_per_ip": -1}, r"server\.max_handshakes_per_ip: must be between 0"),
])
def test_engine_settings_that_are_refused(tmp_path: Path, server: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(_service(tmp_path, server))


def test_the_quick_start_works_with_engine_threads(tmp_path: Path, engine: str) -> None:
    """README's sample service, unchanged but for `engine: threads`: alice 200, bob 403
    on /admin/panel."""
    etc = tmp_path / "etc"
    etc.mkdir()
    text = (REPO / "etc" / "service.yaml").read_text()
    assert "\nserver:\n" in text
    text = text.replace("\nserver:\n", f"\nserver:\n  engine: {engine}\n", 1)
    text = text.replace("port: 8443", "port: 0")
    certs = shutil.which("securewsgi-certs") or str(Path(sys.executable).with_name(
        "securewsgi-certs"))
    subprocess.run([certs, "init", str(etc / "pki"), "--client", "alice", "--client", "bob"],
                   check=True, capture_output=True, timeout=60)
    server = ServerProcess(tmp_path / "run", {}, name="service", text=text)
    server.config_path = etc / "service.yaml"
    server.config_path.write_text(text)
    server.start()
    try:
        pki = etc / "pki"
        for name, status in (("alice", 200), ("bob", 403)):
            with session(pki / "ca.pem") as s:
                s.cert = (str(pki / f"{name}.pem"), str(pki / f"{name}-key.pem"))
                assert s.get(server.url("/admin/panel"), timeout=10).status_code == status
        wait_for(lambda: "denied by rule admin: GET /admin/panel client=CN=bob"
                 in server.stderr, what="the denial line")
    finally:
        assert server.stop() == 0
