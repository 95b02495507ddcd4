"""Prometheus metrics (`metrics.port`): a real server under a small real load, scraped
before and after, and every counter checked to have moved by exactly the load it saw;
with one worker and with two (the supervisor serves the totals), on both engines."""
from __future__ import annotations

import datetime
import json
import os
import re
import signal
import socket
import ssl
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families
from support import (
    PKIFiles,
    ServerProcess,
    client_context,
    raw_https,
    run_command,
    status_of,
    wait_for,
)

from securewsgi.config import load_config
from securewsgi.errors import ConfigError

APPS = str(Path(__file__).parent / "apps")
_METRICS_LINE = re.compile(r"metrics: http://127\.0\.0\.1:(\d+)/metrics")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# ------------------------------------------------------------------ helpers


def metrics_port(server: ServerProcess) -> int:
    """The port the start-up line names (metrics.port 0 picks a free one)."""
    match = wait_for(lambda: _METRICS_LINE.search(server.stderr),
                     what="the start-up line naming the metrics URL")
    return int(match.group(1))


def scrape(port: int, path: str = "/metrics") -> Samples:
    response = requests.get(f"http://127.0.0.1:{port}{path}", timeout=10)
    assert response.status_code == 200, response.text
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 for a labelled series that has not been counted yet."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def request(server: ServerProcess, ctx: ssl.SSLContext, method: str = "GET",
            path: str = "/") -> int:
    """One request on a connection of its own (one TLS handshake each); its status."""
    head = (f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n"
            f"Connection: close\r\n\r\n").encode()
    return status_of(raw_https(server, head, ctx))


def refused_handshake(server: ServerProcess, ctx: ssl.SSLContext) -> None:
    """A handshake the server refuses (TLS 1.3 reports it at the first read)."""
    with pytest.raises((ssl.SSLError, OSError)):
        response = raw_https(server, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", ctx)
        if not response:
            raise ConnectionResetError("closed without a response")


def service(test_pki: PKIFiles, workers: int = 1, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "server": {"workers": workers},
        "tls": test_pki.tls_section("mutual"),
        # Off on purpose: the engines must still report every response to metrics.
        "logging": {"access_log": False},
        "app": {"factory": "lifecycle:app", "python_path": [APPS]},
        "authorization": {"rules": [{"name": "admin", "paths": ["/admin/*"],
                                     "allow": [{"cn": "bob"}]}]},
        "metrics": {"port": 0},
    }
    config.update(extra)
    return config


def wait_for_sample(port: int, name: str, expected: float, what: str,
                    timeout: float = 10.0, **labels: str) -> Samples:
    """Scrape until `name{labels}` equals `expected` (gauges refresh every second)."""
    found: list[Samples] = []

    def matches() -> bool:
        found[:] = [scrape(port)]
        return value(found[0], name, **labels) == expected

    wait_for(matches, timeout, interval=0.1, what=what)
    return found[0]


@pytest.fixture(scope="module")
def one_worker(start_server, test_pki: PKIFiles) -> ServerProcess:
    return start_server(service(test_pki), name="metrics1")


# ------------------------------------------------------------- one worker


def test_requests_denials_and_handshakes_counted_exactly(one_worker: ServerProcess,
                                                         test_pki: PKIFiles) -> None:
    port = metrics_port(one_worker)
    alice = client_context(test_pki.ca_pem, test_pki.clients["alice"])
    before = scrape(port)
    statuses = [request(one_worker, alice) for _ in range(5)]
    statuses += [request(one_worker, alice, "POST", "/x") for _ in range(2)]
    statuses += [request(one_worker, alice, "BREW", "/pot")]  # not a standard method
    statuses += [request(one_worker, alice, "GET", "/admin/users") for _ in range(3)]
    assert statuses == [200] * 8 + [403] * 3
    after = scrape(port)
    assert moved(before, after, "securewsgi_requests_total", code="2xx", method="GET") == 5
    assert moved(before, after, "securewsgi_requests_total", code="2xx", method="POST") == 2
    assert moved(before, after, "securewsgi_requests_total", code="2xx", method="other") == 1
    assert moved(before, after, "securewsgi_requests_total", code="4xx", method="GET") == 3
    assert moved(before, after, "securewsgi_authorization_denied_total", rule="admin") == 3
    assert moved(before, after, "securewsgi_tls_handshakes_total") == 11
    assert moved(before, after, "securewsgi_request_duration_seconds_count") == 11
    assert moved(before, after, "securewsgi_request_duration_seconds_bucket", le="+Inf") == 11
    assert 0 < moved(before, after, "securewsgi_request_duration_seconds_sum") < 11 * 5


def test_connection_gauges_follow_open_and_busy_connections(
        one_worker: ServerProcess, test_pki: PKIFiles) -> None:
    port = metrics_port(one_worker)
    ctx = client_context(test_pki.ca_pem, test_pki.clients["alice"])
    idle = []
    try:
        for _ in range(3):  # keep-alive connections, each after one answered request
            sock = ctx.wrap_socket(socket.create_connection(
                (one_worker.host, one_worker.port), timeout=10), server_hostname="localhost")
            sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            idle.append(sock)
        slow = threading.Thread(target=request, args=(one_worker, ctx, "GET",
                                                      "/slow?seconds=4"))
        slow.start()
        wait_for_sample(port, "securewsgi_connections", 1, "one active connection",
                        state="active")
        samples = wait_for_sample(port, "securewsgi_connections", 3,
                                  "three idle connections", state="idle")
        assert value(samples, "securewsgi_connections", state="active") == 1
        slow.join(30)
    finally:
        for sock in idle:
            sock.close()
    wait_for_sample(port, "securewsgi_connections", 0, "no idle connection left",
                    state="idle")
    wait_for_sample(port, "securewsgi_connections", 0, "no active connection left",
                    state="active")


def test_days_left_for_the_certificate_and_the_ca(one_worker: ServerProcess,
                                                  test_pki: PKIFiles) -> None:
    samples = scrape(metrics_port(one_worker))
    now = datetime.datetime.now(datetime.timezone.utc)
    not_after = x509.load_pem_x509_certificate(
        test_pki.server_cert.read_bytes()).not_valid_after_utc
    expected = (not_after - now).total_seconds() / 86400
    assert abs(value(samples, "securewsgi_tls_certificate_days_left") - expected) < 0.01
    ca_expected = (test_pki.ca.cert.not_valid_after_utc - now).total_seconds() / 86400
    assert abs(value(samples, "securewsgi_tls_ca_days_left") - ca_expected) < 0.01


def test_only_metrics_is_served(one_worker: ServerProcess) -> None:
    base = f"http://127.0.0.1:{metrics_port(one_worker)}"
    response = requests.get(f"{base}/metrics", timeout=10)
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "# TYPE securewsgi_requests_total counter" in response.text
    assert requests.head(f"{base}/metrics", timeout=10).status_code == 200
    assert requests.get(f"{base}/", timeout=10).status_code == 404
    assert requests.get(f"{base}/metrics/x", timeout=10).status_code == 404
    refused = requests.post(f"{base}/metrics", timeout=10)
    assert refused.status_code == 405 and refused.headers["Allow"] == "GET, HEAD"
    openmetrics = requests.get(f"{base}/metrics", timeout=10, headers={
        "Accept": "application/openmetrics-text; version=1.0.0"})
    assert openmetrics.headers["Content-Type"].startswith("application/openmetrics-text")
    assert openmetrics.text.rstrip().endswith("# EOF")


# ------------------------------------------------ refusals and reloads, 1 and 2 workers


def _write_server_pair(test_pki: PKIFiles, directory: Path, days: int) -> None:
    """A server certificate valid for `days` more days, swapped in atomically."""
    from securewsgi import pki

    now = datetime.datetime.now(datetime.timezone.utc)
    cert, key = test_pki.ca.issue_server(["localhost", "127.0.0.1"],
                                         not_after=now + datetime.timedelta(days=days))
    pki.write_cert(directory / "server.pem.tmp", cert)
    pki.write_key(directory / "server-key.pem.tmp", key)
    os.replace(directory / "server.pem.tmp", directory / "server.pem")
    os.replace(directory / "server-key.pem.tmp", directory / "server-key.pem")


def _plain_http(server: ServerProcess) -> bytes:
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        return sock.recv(65536)


def _silent(server: ServerProcess) -> None:
    """A TCP connection that never says hello, held until the server gives up on it."""
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        assert sock.recv(1) == b""


@pytest.mark.parametrize("workers", [1, 2])
def test_refusals_by_reason_and_reloads_once_per_service(
        start_server, test_pki: PKIFiles, tmp_path: Path, workers: int) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    _write_server_pair(test_pki, certs, days=365)
    tls = test_pki.tls_section("mutual", certfile=str(certs / "server.pem"),
                               keyfile=str(certs / "server-key.pem"))
    config = service(test_pki, workers=workers, tls=tls)
    config["server"]["handshake_timeout"] = 1
    server = start_server(config, name=f"refusals{workers}")
    port = metrics_port(server)
    before = scrape(port)

    unknown_ca = client_context(test_pki.ca_pem, test_pki.clients["unknown-ca"])
    for _ in range(2):
        refused_handshake(server, unknown_ca)
    refused_handshake(server, client_context(test_pki.ca_pem))  # no certificate at all
    assert _plain_http(server).startswith(b"HTTP/1.1 400 Bad Request")
    _silent(server)
    server.wait_log(r"reason=no TLS handshake within 1s")
    after = scrape(port)
    refused = "securewsgi_tls_handshakes_refused_total"
    # The label is the log line's own reason (less what varies per client).
    for reason, count in [("client certificate from an unknown CA", 2),
                          ("no client certificate", 1),
                          ("plain HTTP sent to the TLS port", 1),
                          ("no TLS handshake within 1s", 1)]:
        assert moved(before, after, refused, reason=reason) == count, reason
        assert f"reason={reason}" in server.stderr
    assert moved(before, after, "securewsgi_tls_handshakes_total") == 0

    # A good reload and a refused one: each counted once, however many workers reload.
    reloads = "securewsgi_tls_reloads_total"
    _write_server_pair(test_pki, certs, days=30)
    server.signal(signal.SIGHUP)
    wait_for(lambda: server.stderr.count("TLS material reloaded (SIGHUP)") == workers,
             what="every worker reloaded")
    samples = wait_for_sample(port, reloads, value(before, reloads, result="ok") + 1,
                              "one reload counted", result="ok")
    wait_for(lambda: abs(value(scrape(port), "securewsgi_tls_certificate_days_left") - 30)
             < 0.01, what="the reloaded certificate's days left")
    (certs / "server-key.pem").write_bytes(test_pki.clients["bob"].key.read_bytes())
    server.signal(signal.SIGHUP)
    failures = workers + (1 if workers > 1 else 0)  # the supervisor says it too
    wait_for(lambda: server.stderr.count("TLS reload (SIGHUP) failed") == failures,
             what="every process refused the broken key")
    samples = wait_for_sample(port, reloads, value(before, reloads, result="failed") + 1,
                              "one failed reload counted", result="failed")
    assert moved(before, samples, reloads, result="ok") == 1
    assert abs(value(samples, "securewsgi_tls_certificate_days_left") - 30) < 0.01


# ------------------------------------------------------------------ workers


def _pid_of(sock: Any) -> int:
    """The pid of the worker that answered one request on `sock` (lifecycle app)."""
    sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    response = b""
    while b"}" not in response:
        chunk = sock.recv(65536)
        assert chunk, response
        response += chunk
    assert status_of(response) == 200
    return int(json.loads(response.split(b"\r\n\r\n", 1)[1])["pid"])


def _connect(server: ServerProcess, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    return ctx.wrap_socket(socket.create_connection((server.host, server.port), timeout=10),
                           server_hostname="localhost")


def test_two_workers_one_scrape_sees_the_totals(start_server, test_pki: PKIFiles) -> None:
    server = start_server(service(test_pki, workers=2), name="metrics2")
    port = metrics_port(server)
    ctx = client_context(test_pki.ca_pem, test_pki.clients["alice"])
    before = scrape(port)
    served: dict[int, int] = {}
    for _ in range(200):  # bounded: until both workers have answered some
        with _connect(server, ctx) as sock:
            pid = _pid_of(sock)
        served[pid] = served.get(pid, 0) + 1
        if len(served) == 2 and min(served.values()) >= 2:
            break
    assert len(served) == 2, served
    assert server.pid not in served  # the supervisor serves /metrics, workers requests
    total = sum(served.values())
    after = scrape(port)
    assert moved(before, after, "securewsgi_requests_total", code="2xx", method="GET") == total
    assert moved(before, after, "securewsgi_tls_handshakes_total") == total
    assert moved(before, after, "securewsgi_request_duration_seconds_count") == total
    assert 300 < value(after, "securewsgi_tls_certificate_days_left") < 400

    # A worker killed while it holds a connection: its counts stay in the totals, and
    # its last published gauges go with it (the connection it held is gone).
    held = _connect(server, ctx)
    victim = _pid_of(held)
    wait_for_sample(port, "securewsgi_connections", 1, "the held connection counted",
                    state="idle")
    os.kill(victim, signal.SIGKILL)
    server.wait_log(r"worker \d died \(killed by SIGKILL\)")
    held.close()
    wait_for_sample(port, "securewsgi_connections", 0, "the dead worker's gauge dropped",
                    state="idle")
    final = scrape(port)
    assert value(final, "securewsgi_requests_total", code="2xx", method="GET") == value(
        after, "securewsgi_requests_total", code="2xx", method="GET") + 1


# ------------------------------------------------------------- configuration

MINIMAL = """
tls:
  certfile: PKI/server.pem
  keyfile: PKI/server-key.pem
app:
  factory: securewsgi.demo:app
"""


@pytest.fixture()
def write(tmp_path: Path, test_pki: PKIFiles):
    def write(text: str, name: str = "service.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).replace("PKI", str(test_pki.dir)))
        return path

    return write


def test_metrics_are_off_by_default_and_read_from_yaml_and_ini(write) -> None:
    assert not load_config(write(MINIMAL)).metrics.enabled
    yaml_config = load_config(write(MINIMAL + "metrics:\n  port: 9100\n  host: '::1'\n"))
    assert (yaml_config.metrics.port, yaml_config.metrics.host) == (9100, "::1")
    ini = write("[tls]\ncertfile = PKI/server.pem\nkeyfile = PKI/server-key.pem\n"
                "[app]\nfactory = securewsgi.demo:app\n[metrics]\nport = 9100\n",
                name="service.ini")
    assert load_config(ini).metrics == yaml_config.metrics.__class__(port=9100)


@pytest.mark.parametrize(("extra", "key", "cause"), [
    ("metrics:\n  port: -1\n", "metrics.port", "must be between 0 and 65535, got -1"),
    ("metrics:\n  port: 70000\n", "metrics.port", "must be between 0 and 65535"),
    ("metrics:\n  port: nine\n", "metrics.port", "expected a whole number"),
    ("metrics:\n  host: 127.0.0.1\n", "metrics.host", "has no effect without metrics.port"),
    ("metrics:\n  port: 9100\n  host: 'not a host'\n", "metrics.host",
     "expected an IP address or a host name"),
    ("metrics:\n  port: 9100\n  path: /m\n", "metrics.path", "unknown key"),
    ("server:\n  port: 9100\nmetrics:\n  port: 9100\n", "metrics.port",
     "is server.port (9100): /metrics needs a port of its own"),
    ("metric:\n  port: 9100\n", "metric", "unknown section (did you mean 'metrics'?)"),
])
def test_config_errors_are_one_line_naming_the_key(write, extra: str, key: str,
                                                   cause: str) -> None:
    path = write(MINIMAL + extra)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: "), message
    assert cause in message and "\n" not in message


def test_check_names_the_endpoint_and_warns_off_loopback(write) -> None:
    path = write(MINIMAL + "metrics:\n  port: 9100\n  host: 0.0.0.0\n")
    result = run_command("securewsgi-run", "--config", str(path), "--check")
    assert result.returncode == 0, result.stderr
    assert "metrics: http://0.0.0.0:9100/metrics (plain HTTP" in result.stdout
    assert re.search(r"warning: metrics.host is 0.0.0.0, which is not loopback", result.stdout)
    dumped = run_command("securewsgi-run", "--config", str(path), "--print-config")
    assert "metrics:\n  port: 9100\n  host: 0.0.0.0\n" in dumped.stdout


def test_a_metrics_port_in_use_refuses_the_start(write) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        path = write(MINIMAL + f"server:\n  port: 0\nmetrics:\n  port: {busy}\n")
        result = run_command("securewsgi-run", "--config", str(path), timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"securewsgi-run: metrics.port: 127.0.0.1:{busy} is already in use by another "
        "process")


def test_a_scrape_skips_a_worker_file_not_yet_sized(tmp_path: Path) -> None:
    """A worker creates its metrics file empty and sizes it a moment later; a scrape
    in between used to fail (mmap refuses an empty file) and answered 500."""
    from prometheus_client import CollectorRegistry, Counter, generate_latest
    from prometheus_client.values import MultiProcessValue

    from securewsgi import metrics

    directory = str(tmp_path)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    try:
        import prometheus_client.values as values
        saved = values.ValueClass
        values.ValueClass = MultiProcessValue(lambda: 4242)
        try:
            counter = Counter("securewsgi_demo_total", "a counter", registry=None)
            counter.inc(3)
        finally:
            values.ValueClass = saved
    finally:
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]
    (tmp_path / "counter_4343.db").write_bytes(b"")  # created, not yet sized
    registry = CollectorRegistry()
    registry.register(metrics._Collector(directory))
    scrape = generate_latest(registry).decode()
    assert "securewsgi_demo_total 3.0" in scrape
